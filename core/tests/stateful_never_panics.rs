//! Property tests: the parsers of the stateful checks (descriptors, account sources,
//! login bodies, client addresses, control-plane answers, shared-data slots) return a
//! result, never panic, on any input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(target_arch = "wasm32"))]

use portcullis_core::account::AccountSource;
use portcullis_core::client_addr::{client_ip, normalise_ip};
use portcullis_core::ratelimit::{Descriptor, LeaseSlot};
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
    fn account_extraction_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        field in "[a-z.]{1,12}",
        content_type in "(application/(json|x-www-form-urlencoded|a\\+json)|text/plain|\\PC{0,20})(; ?charset=[a-zA-Z0-9\"-]{0,8})?",
    ) {
        let header = String::from_utf8_lossy(&body).into_owned();
        let r = request(vec![("x-user".into(), header), ("content-type".into(), content_type)]);
        for src in [format!("json:{field}"), format!("form:{field}"), "header:x-user".to_string()] {
            if let Ok(source) = AccountSource::parse(&src) {
                if let Ok(account) = source.extract(&r, &body) {
                    prop_assert!(!account.is_empty() && account.len() <= 512);
                }
            }
        }
    }

    #[test]
    fn json_bodies_with_the_field_are_read_or_refused(
        value in "\\PC{0,40}",
        pad in proptest::collection::vec(("[a-z]{1,6}", "\\PC{0,10}"), 0..4),
    ) {
        let mut doc = serde_json::Map::new();
        for (k, v) in pad {
            doc.insert(k, serde_json::Value::String(v));
        }
        doc.insert("username".into(), serde_json::Value::String(value.clone()));
        let body = serde_json::to_vec(&doc).unwrap();
        let r = request(vec![("content-type".into(), "application/json".into())]);
        let got = AccountSource::parse("json:username").unwrap().extract(&r, &body);
        match got {
            Ok(account) => prop_assert_eq!(account, value.trim()),
            Err(_) => prop_assert!(value.trim().is_empty()),
        }
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
