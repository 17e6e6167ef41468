//! ES256: ECDSA on P-256 with SHA-256 (RFC 7518 §3.4), verified with the `p256` crate.
//!
//! - A key is the JWK's `x` and `y`, 32 bytes each; the point must be on the curve, with
//!   coordinates below the field prime, and not the identity. It is checked once, when the
//!   key set is loaded.
//! - A signature is `R || S`, 64 bytes, never DER. Any other length, `R` or `S` equal to
//!   zero, or `R` or `S` not below the group order `n` is a bad signature.
//! - High-S signatures (`S > n/2`) are accepted, as ECDSA itself (and `p256` 0.13, used
//!   before) accepts them: P-256 has no low-S rule (`NORMALIZE_S` is `false` for it), and
//!   the JWS signer decides which of `S` and `n - S` it sends.
//!
//! The digest is SHA-256 of the signing input; verification reads public data only.

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// A P-256 public key, validated.
pub(crate) type Es256VerifyingKey = VerifyingKey;

/// Length of one P-256 coordinate, and of `R` and of `S`.
const COORDINATE_LEN: usize = 32;

/// The key from a JWK's decoded `x` and `y`.
pub(crate) fn verifying_key(x: &[u8], y: &[u8]) -> Result<Es256VerifyingKey, String> {
    if x.len() != COORDINATE_LEN || y.len() != COORDINATE_LEN {
        return Err("P-256 coordinates must be 32 bytes each".to_owned());
    }
    // SEC1 uncompressed encoding: 0x04 || x || y. It cannot encode the identity (whose
    // SEC1 form is a single 0x00), and (0, 0) is not on the curve; `from_sec1_bytes`
    // still refuses the identity explicitly.
    let mut sec1 = Vec::with_capacity(1 + 2 * COORDINATE_LEN);
    sec1.push(0x04);
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| {
        "not a valid P-256 public key (a point off the curve, the identity, or a coordinate \
         not below the field prime)"
            .to_owned()
    })
}

/// Whether `sig` is a valid ES256 signature of `input` under `key`.
pub(crate) fn verify(key: &Es256VerifyingKey, input: &[u8], sig: &[u8]) -> bool {
    // `from_slice` refuses a length other than 64 and R or S that is zero or not below n.
    let Ok(signature) = Signature::from_slice(sig) else {
        return false;
    };
    let digest = Sha256::digest(input);
    key.verify_prehash(&digest, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The order `n` of the P-256 group, big-endian.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc,
        0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];
    /// The field prime `p`, big-endian.
    const P: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    /// The generator's coordinates: a valid public key.
    const GX: [u8; 32] = [
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77,
        0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
    ];
    const GY: [u8; 32] = [
        0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b,
        0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
    ];

    /// `a + b` on 32-byte big-endian numbers (no overflow in these tests).
    fn add(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
        out
    }

    #[test]
    fn generator_is_a_valid_key_and_bad_points_are_refused() {
        assert!(verifying_key(&GX, &GY).is_ok());
        let mut off_curve = GY;
        off_curve[31] ^= 1;
        for (x, y) in [(GX, off_curve), ([0; 32], [0; 32])] {
            let err = verifying_key(&x, &y).unwrap_err();
            assert!(err.contains("not a valid P-256 public key"), "{err}");
        }
    }

    #[test]
    fn non_canonical_coordinate_is_refused() {
        // x + p names the same field element as x: a lax decoder would accept it.
        let mut small_x = [0u8; 32];
        small_x[31] = 1;
        let x_plus_p = add(&small_x, &P);
        assert!(verifying_key(&x_plus_p, &GY).is_err());
    }

    #[test]
    fn coordinates_of_the_wrong_length_are_refused() {
        let err = verifying_key(&GX[1..], &GY).unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
    }

    #[test]
    fn scalars_out_of_range_or_wrong_length_are_bad_signatures() {
        let key = verifying_key(&GX, &GY).unwrap();
        let one = {
            let mut b = [0u8; 32];
            b[31] = 1;
            b
        };
        for (r, s) in [([0u8; 32], one), (one, [0u8; 32]), (N, one), (one, N), (one, [0xff; 32])] {
            let sig: Vec<u8> = r.iter().chain(s.iter()).copied().collect();
            assert!(Signature::from_slice(&sig).is_err());
            assert!(!verify(&key, b"input", &sig));
        }
        assert!(!verify(&key, b"input", &[1u8; 63]));
        assert!(!verify(&key, b"input", &[1u8; 65]));
        assert!(!verify(&key, b"input", &[]));
    }
}
