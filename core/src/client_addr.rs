//! The client address: which address a request comes from (the `clientIp` section and
//! the `clientIp` descriptor, lockout by address, burst reports). Envoy decides what it
//! trusts of `x-forwarded-for`; this module only reads what Envoy passed on.

use serde::Deserialize;

use crate::request::RequestParts;

/// How the client address is found.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Proxies in front of Envoy that append to `x-forwarded-for` (set Envoy's
    /// `xff_num_trusted_hops` to the same number). 0: `x-forwarded-for` is ignored and
    /// the TCP peer is the client. Either way Envoy must run with
    /// `use_remote_address: true` (see [`client_ip`]).
    #[serde(default)]
    pub trusted_hops: u32,
}

/// The client address. `downstream` is Envoy's `source.address`: with the
/// connection manager's `use_remote_address: true` (which the filter requires) the TCP
/// peer, whatever `x-forwarded-for` says, or Envoy's own pick from that header when its
/// `xff_num_trusted_hops` is set. There is no attribute for the TCP peer alone: with
/// `use_remote_address: false` Envoy puts the header's last entry there, which the
/// client chooses.
///
/// With `trusted_hops` = N > 0 the client is the N-th address from the right of
/// `x-forwarded-for` as it reached Envoy (all values joined in order), as Envoy's
/// `xff_num_trusted_hops` picks it: the last entry of the header the filter sees is the
/// one this Envoy appended, so the count starts left of it. With too few entries, or
/// N = 0, it is `downstream`. Ports and IPv6 brackets are removed; IPv4-mapped IPv6
/// addresses become IPv4; anything that is not an address yields `None`.
pub fn client_ip(request: &RequestParts, downstream: Option<&str>, trusted_hops: u32) -> Option<String> {
    if trusted_hops > 0 {
        let mut entries: Vec<&str> = request
            .header_values("x-forwarded-for")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        // Appended by this Envoy (`use_remote_address: true`).
        entries.pop();
        let n = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
        if let Some(e) = entries.len().checked_sub(n).and_then(|i| entries.get(i)) {
            return normalise_ip(e);
        }
    }
    downstream.and_then(normalise_ip)
}

/// An address without port or brackets, in canonical form.
pub fn normalise_ip(s: &str) -> Option<String> {
    use std::net::{IpAddr, SocketAddr};
    let s = s.trim();
    let ip: IpAddr = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))?.parse().ok()?,
        },
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    Some(ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(headers: &[(&str, &str)]) -> RequestParts {
        RequestParts::post("/login?x=1", headers)
    }

    #[test]
    fn client_ip_uses_the_downstream_address_unless_hops_are_trusted() {
        // 4.4.4.4: appended by this Envoy (the TCP peer).
        let r = req(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3, 4.4.4.4")]);
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 0).as_deref(), Some("10.0.0.9"), "XFF ignored");
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 1).as_deref(), Some("3.3.3.3"));
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 2).as_deref(), Some("2.2.2.2"));
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 3).as_deref(), Some("1.1.1.1"));
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 4).as_deref(), Some("10.0.0.9"), "too few entries");
        let only_envoys = req(&[("x-forwarded-for", "4.4.4.4")]);
        assert_eq!(client_ip(&only_envoys, Some("10.0.0.9:5555"), 1).as_deref(), Some("10.0.0.9"));
        assert_eq!(client_ip(&r, Some("[::ffff:10.1.2.3]:80"), 0).as_deref(), Some("10.1.2.3"));
        assert_eq!(client_ip(&r, Some("[2001:DB8::1]:443"), 0).as_deref(), Some("2001:db8::1"));
        let bad = req(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(client_ip(&bad, None, 1), None);
    }
}
