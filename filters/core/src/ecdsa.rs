//! The ECDSA signature check behind ES256 and ES384 tokens.
//!
//! jwt-simple checks ECDSA with RustCrypto's portable curves: about 330 µs
//! per P-256 verification natively on the reference machine, three times
//! what Envoy's jwt_authn spends on a whole fresh token. Natively the check
//! runs on ring instead, whose P-256 and P-384 are constant-time assembly
//! (about 60 µs for P-256); in wasm, where that assembly cannot run, it
//! stays RustCrypto's. Only this primitive differs between the engines:
//! the token's parsing and its claim checks are the same code
//! ([`crate::jwt`]), and the unit tests run on both targets.

/// A curve and its hash, as JOSE pairs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// ES256: P-256 with SHA-256.
    P256,
    /// ES384: P-384 with SHA-384.
    P384,
}

impl Curve {
    /// Bytes of one coordinate (and of each of `r` and `s`).
    pub fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// A public key that checks fixed-size (`r || s`) JOSE signatures.
pub struct EcdsaKey {
    curve: Curve,
    key: backend::Key,
}

impl EcdsaKey {
    /// `point` is the uncompressed SEC1 encoding (`04 || x || y`). A point
    /// that is not on the curve is refused here, at load.
    pub fn new(curve: Curve, point: &[u8]) -> Result<EcdsaKey, String> {
        if point.len() != 1 + 2 * curve.size() || point.first() != Some(&0x04) {
            return Err("not an uncompressed point".into());
        }
        Ok(EcdsaKey {
            curve,
            key: backend::Key::new(curve, point)?,
        })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// Whether `signature` (`r || s`, each [`Curve::size`] bytes) signs
    /// `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature.len() == 2 * self.curve.size() && self.key.verify(message, signature)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod backend {
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey, VerificationAlgorithm,
    };

    use super::Curve;

    pub struct Key(UnparsedPublicKey<Vec<u8>>);

    impl Key {
        pub fn new(curve: Curve, point: &[u8]) -> Result<Key, String> {
            let algorithm: &'static dyn VerificationAlgorithm = match curve {
                Curve::P256 => &ECDSA_P256_SHA256_FIXED,
                Curve::P384 => &ECDSA_P384_SHA384_FIXED,
            };
            // ring parses the point when it verifies: check it now with
            // RustCrypto, so that a key off the curve fails at load.
            let on_curve = match curve {
                Curve::P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
                Curve::P384 => p384::PublicKey::from_sec1_bytes(point).is_ok(),
            };
            if !on_curve {
                return Err("the point is not on the curve".into());
            }
            Ok(Key(UnparsedPublicKey::new(algorithm, point.to_vec())))
        }

        pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
            self.0.verify(message, signature).is_ok()
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod backend {
    use p256::ecdsa::signature::Verifier as _;

    use super::Curve;

    pub enum Key {
        P256(p256::ecdsa::VerifyingKey),
        P384(p384::ecdsa::VerifyingKey),
    }

    impl Key {
        pub fn new(curve: Curve, point: &[u8]) -> Result<Key, String> {
            let off_curve = |_| String::from("the point is not on the curve");
            Ok(match curve {
                Curve::P256 => {
                    Key::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(off_curve)?)
                }
                Curve::P384 => {
                    Key::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(off_curve)?)
                }
            })
        }

        pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
            match self {
                Key::P256(key) => p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|s| key.verify(message, &s).is_ok()),
                Key::P384(key) => p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|s| key.verify(message, &s).is_ok()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jwt_simple::prelude::*;

    use super::*;

    #[test]
    fn checks_what_jwt_simple_signs_and_nothing_else() {
        let pair = ES256KeyPair::generate();
        let point = pair.public_key().public_key().to_bytes_uncompressed();
        let key = EcdsaKey::new(Curve::P256, &point).unwrap();
        let token = pair.sign(Claims::create(Duration::from_mins(5))).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = crate::jwt::decode_b64(signature).unwrap();
        assert!(key.verify(signed.as_bytes(), &signature));
        assert!(!key.verify(format!("{signed}x").as_bytes(), &signature));
        let mut flipped = signature.clone();
        flipped[10] ^= 1;
        assert!(!key.verify(signed.as_bytes(), &flipped));
        assert!(!key.verify(signed.as_bytes(), &signature[..63]));
        let other = ES256KeyPair::generate()
            .public_key()
            .public_key()
            .to_bytes_uncompressed();
        assert!(
            !EcdsaKey::new(Curve::P256, &other)
                .unwrap()
                .verify(signed.as_bytes(), &signature)
        );
    }

    #[test]
    fn p384_checks_what_jwt_simple_signs() {
        let pair = ES384KeyPair::generate();
        let point = pair.public_key().public_key().to_bytes_uncompressed();
        let key = EcdsaKey::new(Curve::P384, &point).unwrap();
        let token = pair.sign(Claims::create(Duration::from_mins(5))).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = crate::jwt::decode_b64(signature).unwrap();
        assert!(key.verify(signed.as_bytes(), &signature));
        assert!(!key.verify(b"other", &signature));
    }

    #[test]
    fn a_point_off_the_curve_is_refused_at_load() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7u8; 64]);
        assert!(EcdsaKey::new(Curve::P256, &point).is_err());
        assert!(EcdsaKey::new(Curve::P256, &point[..40]).is_err());
        assert!(EcdsaKey::new(Curve::P384, &point).is_err());
    }
}
