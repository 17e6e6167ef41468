//! Property tests of the path normaliser: on any input it answers (never panics); its
//! output is a fixed point; the output has no dot segment, no `//` and no `;`; and the
//! stricter options only ever turn an accepted path into a refused one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(target_arch = "wasm32"))]

use portcullis_core::path::{normalize, NotNormalized, Parameters, PathOptions};
use proptest::prelude::*;

/// Paths built from the characters that matter to normalisation, so that dot segments,
/// escapes and parameters come up often.
fn tricky_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just(";".to_string()),
            Just("%".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%25".to_string()),
            Just("%3b".to_string()),
            Just("%00".to_string()),
            Just("\\".to_string()),
            "[a-zA-Z0-9%:@=+~_-]{1,3}",
        ],
        0..16,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

fn check_output(out: &str, options: &PathOptions) {
    assert!(out.starts_with('/'), "{out}");
    assert!(!out.contains("//"), "{out}");
    assert!(!out.contains(';'), "{out}");
    for segment in out.split('/') {
        assert!(segment != "." && segment != "..", "{out}");
    }
    assert_eq!(normalize(out, options).as_deref(), Ok(out), "not a fixed point");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn normalising_any_string_answers_without_panicking(s in "\\PC{0,64}") {
        let _ = normalize(&s, &PathOptions::default());
    }

    #[test]
    fn normalised_paths_are_canonical_fixed_points(path in tricky_path()) {
        let options = PathOptions::default();
        if let Ok(out) = normalize(&path, &options) {
            check_output(&out, &options);
        }
    }

    #[test]
    fn stricter_options_never_accept_what_the_default_refuses(path in tricky_path()) {
        let default = normalize(&path, &PathOptions::default());
        for options in [
            PathOptions { not_normalized: NotNormalized::Reject, parameters: Parameters::Strip },
            PathOptions { not_normalized: NotNormalized::Normalize, parameters: Parameters::Reject },
            PathOptions { not_normalized: NotNormalized::Reject, parameters: Parameters::Reject },
        ] {
            if let Ok(out) = normalize(&path, &options) {
                prop_assert_eq!(Ok(out.clone()), default.clone());
                check_output(&out, &options);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_answer_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = normalize(&format!("/{s}"), &PathOptions::default());
    }
}
