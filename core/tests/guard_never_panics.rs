//! Property tests: the parsers of the stateful guards (descriptors, account sources,
//! login bodies, client addresses, control-plane answers, shared-data slots) return a
//! result, never panic, on any input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(target_arch = "wasm32"))]

use portcullis_core::guard::{client_ip, form_field, normalise_ip, AccountSource, Descriptor, LeaseSlot};
use portcullis_core::wire::{LockoutReply, RateLimitBatch, RateLimitReply};
use portcullis_core::RequestParts;
use proptest::prelude::*;

fn request(headers: Vec<(String, String)>) -> RequestParts {
    RequestParts::new("POST", "a", "/login", headers, &Default::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn descriptor_and_account_source_parsing_never_panics(s in "\\PC{0,40}") {
        let _ = Descriptor::parse(&s);
        let _ = AccountSource::parse(&s);
    }

    #[test]
    fn account_extraction_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256), field in "[a-z.]{1,12}") {
        let r = request(vec![("x-user".into(), String::from_utf8_lossy(&body).into_owned())]);
        for src in [format!("json:{field}"), format!("form:{field}"), "header:x-user".to_string()] {
            if let Ok(source) = AccountSource::parse(&src) {
                if let Some(account) = source.extract(&r, &body) {
                    prop_assert!(!account.is_empty() && account.len() <= 512);
                }
            }
        }
        let _ = form_field(&body, &field);
    }

    #[test]
    fn client_addresses_are_parsed_or_refused(xff in "[0-9a-f:.,\\[\\] ]{0,60}", down in "[0-9a-f:.\\[\\]]{0,40}", hops in 0u32..5) {
        let r = request(vec![("x-forwarded-for".into(), xff)]);
        if let Some(ip) = client_ip(&r, Some(&down), hops) {
            prop_assert!(ip.parse::<std::net::IpAddr>().is_ok());
        }
        let _ = normalise_ip(&down);
    }

    #[test]
    fn control_plane_answers_and_slots_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = serde_json::from_slice::<RateLimitReply>(&bytes);
        let _ = serde_json::from_slice::<RateLimitBatch>(&bytes);
        let _ = serde_json::from_slice::<LockoutReply>(&bytes);
        let slot = LeaseSlot::decode(&bytes);
        let _ = slot.spend(1, u64::MAX);
        let _ = slot.visible_remaining(0);
    }
}
