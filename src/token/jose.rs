//! jsonwebtoken's crypto on ring: the one crypto stack of the director (sealed tokens, kube's
//! TLS). jsonwebtoken 10 reaches its signatures through a process-wide [`CryptoProvider`];
//! this module is that provider for the four algorithms tickets may use (SPEC §2: `EdDSA`
//! (Ed25519), `ES256`, `RS256`, `HS256`). Every other algorithm is refused by the factories,
//! so even a caller that forgot to narrow `Validation::algorithms` cannot reach one.
//!
//! [`install`] must run before any jsonwebtoken call (the ticket verifier calls it): without a
//! backend feature jsonwebtoken's fallback provider panics.
//!
//! Owns the signature primitives behind tickets. Must not parse tickets or keys sets.

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, KeyPair};

/// The ring-backed provider.
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: rsa_components,
        extract_ec_public_key_coordinates: ec_coordinates,
        compute_digest: digest,
    },
};

/// Makes [`RING_PROVIDER`] jsonwebtoken's provider for this process (idempotent; a provider
/// installed earlier by someone else stays, and then it must be one that does not panic).
pub fn install() {
    let _ = RING_PROVIDER.install_default();
}

fn unsupported() -> Error {
    ErrorKind::InvalidAlgorithm.into()
}

/// What verifies one algorithm with one key.
enum Verify {
    Hmac(ring::hmac::Key),
    /// Ed25519 and ECDSA P-256 (fixed-size signatures): the public key bytes.
    Public(&'static dyn sig::VerificationAlgorithm, Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

struct Verifier {
    alg: Algorithm,
    how: Verify,
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match &self.how {
            Verify::Hmac(key) => ring::hmac::verify(key, msg, signature).is_ok(),
            Verify::Public(alg, key) => sig::UnparsedPublicKey::new(*alg, key)
                .verify(msg, signature)
                .is_ok(),
            Verify::Rsa { n, e } => sig::RsaPublicKeyComponents { n, e }
                .verify(&sig::RSA_PKCS1_2048_8192_SHA256, msg, signature)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// A verifier for `alg` with `key`, refusing a key of another family (algorithm confusion:
/// an HS256 ticket against an RSA key never reaches HMAC).
fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let how = match (alg, key.kind()) {
        (Algorithm::HS256, DecodingKeyKind::SecretOrDer(secret)) => {
            Verify::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
        }
        (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(public)) => {
            Verify::Public(&sig::ED25519, public.clone())
        }
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
            Verify::Public(&sig::ECDSA_P256_SHA256_FIXED, point.clone())
        }
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => Verify::Rsa {
            n: n.clone(),
            e: e.clone(),
        },
        _ => return Err(unsupported()),
    };
    Ok(Box::new(Verifier { alg: *alg, how }))
}

/// What signs one algorithm (minting tickets: the example matchmaker, tests, benchmarks).
enum Sign {
    Hmac(ring::hmac::Key),
    Ed25519(sig::Ed25519KeyPair),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair),
}

struct Signer {
    alg: Algorithm,
    how: Sign,
}

impl signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.how {
            Sign::Hmac(key) => Ok(ring::hmac::sign(key, msg).as_ref().to_vec()),
            Sign::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
            Sign::Ecdsa(pair) => pair
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            Sign::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(&sig::RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
        }
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// A signer for `alg`: Ed25519 and P-256 keys as PKCS#8 DER, RSA as PKCS#8 or PKCS#1 DER.
fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let der = key.inner();
    let how = match alg {
        Algorithm::HS256 => Sign::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, der)),
        Algorithm::EdDSA => Sign::Ed25519(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?,
        ),
        Algorithm::ES256 => Sign::Ecdsa(
            sig::EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
                &ring::rand::SystemRandom::new(),
            )
            .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?,
        ),
        Algorithm::RS256 => Sign::Rsa(
            sig::RsaKeyPair::from_pkcs8(der)
                .or_else(|_| sig::RsaKeyPair::from_der(der))
                .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?,
        ),
        _ => return Err(unsupported()),
    };
    Ok(Box::new(Signer { alg: *alg, how }))
}

/// `(n, e)` of an RSA private key (PKCS#8 or PKCS#1 DER), big-endian.
fn rsa_components(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair = sig::RsaKeyPair::from_pkcs8(der)
        .or_else(|_| sig::RsaKeyPair::from_der(der))
        .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?;
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((public.n, public.e))
}

/// The curve and `(x, y)` of a P-256 private key (PKCS#8 DER).
fn ec_coordinates(der: &[u8], alg: Algorithm) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    if alg != Algorithm::ES256 {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    let pair = sig::EcdsaKeyPair::from_pkcs8(
        &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        der,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    // Uncompressed SEC1 point: 0x04 ‖ x (32 bytes) ‖ y (32 bytes).
    match pair.public_key().as_ref() {
        [0x04, rest @ ..] if rest.len() == 64 => Ok((
            EllipticCurve::P256,
            rest[..32].to_vec(),
            rest[32..].to_vec(),
        )),
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
    };
    ring::digest::digest(alg, data).as_ref().to_vec()
}
