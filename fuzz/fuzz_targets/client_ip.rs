//! The client address (`client_addr::client_ip`, `client_addr::normalise_ip`) from the request's
//! `x-forwarded-for` values and Envoy's downstream address (the `:downstream` line of
//! the text request, see `TextRequest`), for every number of trusted hops the
//! configuration allows (0-16).
//!
//! Invariants: a result is an IP address in canonical text (it parses, prints the same,
//! is no IPv4-mapped IPv6 address, has no port or brackets), so two spellings of one
//! address never count as two; with no trusted hop it is the downstream address whatever
//! the header says; with N hops it is the N-th entry from the right before the one this
//! Envoy appended, or the downstream address when there are too few.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use portcullis_core::client_addr::{client_ip, normalise_ip};
use portcullis_fuzz::TextRequest;

fn assert_canonical(ip: &str) {
    let Ok(parsed) = ip.parse::<IpAddr>() else { panic!("{ip:?} is not an address") };
    assert_eq!(parsed.to_string(), ip, "not canonical");
    if let IpAddr::V6(v6) = parsed {
        assert!(v6.to_ipv4_mapped().is_none(), "{ip}: IPv4-mapped");
    }
    assert_eq!(normalise_ip(ip).as_deref(), Some(ip), "normalising twice changes {ip}");
}

fuzz_target!(|data: &[u8]| {
    let text = TextRequest::parse(data);
    let request = &text.parts;
    let downstream = text.knob(":downstream");
    let from_downstream = downstream.and_then(normalise_ip);
    if let Some(ip) = &from_downstream {
        assert_canonical(ip);
    }
    let entries: Vec<&str> = request
        .header_values("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();

    for hops in 0..=16_u32 {
        let ip = client_ip(request, downstream, hops);
        if let Some(ip) = &ip {
            assert_canonical(ip);
        }
        let n = usize::try_from(hops).unwrap_or(usize::MAX);
        let expected = match entries.len().checked_sub(1 + n) {
            Some(i) if hops > 0 => normalise_ip(entries[i]),
            _ => from_downstream.clone(),
        };
        assert_eq!(ip, expected, "{hops} trusted hops: not the entry left of this Envoy's");
    }
});
