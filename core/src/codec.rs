//! Byte-level helpers every part of Portcullis shares (core, filter and control plane):
//! hex, percent-decoding, big-endian integers in fixed-size records, HMAC-SHA256 and
//! cutting text to a byte budget. One implementation of each, so that a key, a record
//! or a decoded query means the same thing wherever it is read.
//!
//! Decoders of untrusted bytes never panic: a malformed record reads as `None`, a bad
//! percent-escape stays as written.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// A query-string component (`application/x-www-form-urlencoded` rules: `+` is a space),
/// decoded. Invalid escapes stay as written and invalid UTF-8 becomes U+FFFD, so this
/// never fails.
pub fn percent_decode_query(s: &str) -> String {
    percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The bytes a percent-encoded string stands for (`+` is not special). Invalid escapes
/// stay as written.
pub fn percent_decode_bytes(s: &str) -> Vec<u8> {
    percent_decode_str(s).collect()
}

/// Everything but RFC 3986 unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `s` as a query-string value: everything but RFC 3986 unreserved characters escaped.
pub fn percent_encode_query_value(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// `values` written big-endian, one after the other, into the front of `out` (as many
/// as fit in whole).
pub fn write_u64s(out: &mut [u8], values: &[u64]) {
    for (chunk, v) in out.chunks_exact_mut(8).zip(values) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
}

/// Exactly `N` big-endian `u64`s; `None` for any other length.
pub fn read_u64s<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
    if bytes.len() != N.checked_mul(8)? {
        return None;
    }
    let mut values = [0u64; N];
    for (v, chunk) in values.iter_mut().zip(bytes.chunks_exact(8)) {
        *v = u64::from_be_bytes(chunk.try_into().ok()?);
    }
    Some(values)
}

/// Exactly one big-endian `u64`; `None` for any other length.
pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    read_u64s::<1>(bytes).map(|[v]| v)
}

/// A length as the 8-byte big-endian prefix of a hashed field, so that fields written
/// one after another cannot be regrouped (`"ab" ‖ "c"` and `"a" ‖ "bc"` differ).
pub fn length_prefix(len: usize) -> [u8; 8] {
    u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes()
}

/// An HMAC-SHA256 state keyed with `key` (any length). The key is brought to the block
/// size here (hashed when longer, zero-padded, as RFC 2104 does) so that the infallible
/// constructor applies and no error path is needed; the padded copy is wiped after use.
/// Clone the state to hash several messages under one key without redoing the key
/// schedule.
pub fn hmac_sha256_keyed(key: &[u8]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    if key.len() > block.len() {
        for (b, k) in block.iter_mut().zip(Sha256::digest(key)) {
            *b = k;
        }
    } else {
        for (b, k) in block.iter_mut().zip(key) {
            *b = *k;
        }
    }
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

/// HMAC-SHA256(`key`, the concatenation of `parts`).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac_sha256_keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `s` cut to at most `max_bytes` bytes, on a character boundary.
pub fn truncate(s: &str, max_bytes: usize) -> &str {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn matches_the_rfc_4231_vectors_and_the_hmac_crate_for_every_key_length() {
        // RFC 4231 test case 2 (short key) and 6 (key longer than the block).
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let mac = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        for len in [0, 1, 32, 63, 64, 65, 200] {
            let key = vec![0x5a; len];
            let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            reference.update(b"message");
            let expected: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(hmac_sha256(&key, &[b"message"]), expected, "key of {len} bytes");
        }
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn query_components_are_decoded_and_bad_escapes_stay() {
        assert_eq!(percent_decode_query("%41%42+c"), "AB c");
        assert_eq!(percent_decode_query("%"), "%");
        assert_eq!(percent_decode_query("%4"), "%4");
        assert_eq!(percent_decode_query("%ff"), "\u{fffd}");
        assert_eq!(percent_decode_bytes("a+%2F%ff"), b"a+/\xff");
        assert_eq!(percent_encode_query_value("a b/é~._-"), "a%20b%2F%C3%A9~._-");
    }

    #[test]
    fn u64_records_round_trip_and_other_lengths_are_refused() {
        let mut out = [0u8; 24];
        write_u64s(&mut out, &[1, u64::MAX, 0x0102_0304_0506_0708]);
        assert_eq!(out[..8], [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(read_u64s::<3>(&out), Some([1, u64::MAX, 0x0102_0304_0506_0708]));
        assert_eq!(read_u64s::<3>(&out[..23]), None);
        assert_eq!(read_u64s::<2>(&out), None);
        assert_eq!(read_u64(&out[16..]), Some(0x0102_0304_0506_0708));
        assert_eq!(read_u64(b"short"), None);
        assert_eq!(length_prefix(3), [0, 0, 0, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("abcdef", 4), "abcd");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a", "é is two bytes: cut before it");
        assert_eq!(truncate("é", 0), "");
    }
}
