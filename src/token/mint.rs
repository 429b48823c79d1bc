//! Minting tickets: what a studio backend does after authenticating a player, here for the
//! example matchmaker, the tests and the benchmarks. The director itself never mints: it only
//! verifies (`ticket`). Keys are generated with ring (Ed25519, P-256, HS256 secrets); an RSA
//! key comes from elsewhere as PKCS#1 or PKCS#8 DER (ring cannot generate RSA keys).
//!
//! Owns a signing key and its public JWK. Must not verify or read files.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SecureRandom;
use ring::signature::KeyPair;
use serde_json::{Value, json};

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot generate a key: {0}")]
    Generate(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A signing key with its kid and the JWK a director verifies it with.
pub struct Minter {
    pub alg: Algorithm,
    pub kid: String,
    key: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Minter {
    /// A fresh key of `alg` (`EdDSA`, `ES256` or `HS256`; RS256: [`Minter::rsa`]).
    pub fn generate(alg: Algorithm, kid: &str) -> Result<Self, MintError> {
        super::jose::install();
        let rng = ring::rand::SystemRandom::new();
        let gen_err = |e: ring::error::Unspecified| MintError::Generate(e.to_string());
        let (key, jwk) = match alg {
            Algorithm::EdDSA => {
                let pkcs8 =
                    ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(gen_err)?;
                let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|e| MintError::Generate(e.to_string()))?;
                (
                    EncodingKey::from_ed_der(pkcs8.as_ref()),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}),
                )
            }
            Algorithm::ES256 => {
                let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                let pkcs8 =
                    ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(gen_err)?;
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
                    .map_err(|e| MintError::Generate(e.to_string()))?;
                // Uncompressed SEC1 point: 0x04 ‖ x ‖ y.
                let point = pair.public_key().as_ref();
                let (x, y) = point
                    .get(1..33)
                    .zip(point.get(33..65))
                    .ok_or_else(|| MintError::Generate("unexpected P-256 point".into()))?;
                (
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                    json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)}),
                )
            }
            Algorithm::HS256 => {
                let mut secret = [0u8; 32];
                rng.fill(&mut secret).map_err(gen_err)?;
                (
                    EncodingKey::from_secret(&secret),
                    json!({"kty": "oct", "k": b64(&secret)}),
                )
            }
            other => {
                return Err(MintError::Generate(format!(
                    "{other:?} keys are not generated here (RS256: Minter::rsa)"
                )));
            }
        };
        Ok(Self::with(alg, kid, key, jwk))
    }

    /// An RS256 minter from an RSA private key (PKCS#1 or PKCS#8 DER).
    pub fn rsa(kid: &str, der: &[u8]) -> Result<Self, MintError> {
        super::jose::install();
        let (n, e) = (super::jose::RING_PROVIDER
            .jwk_utils
            .extract_rsa_public_key_components)(der)
        .map_err(|e| MintError::Generate(e.to_string()))?;
        Ok(Self::with(
            Algorithm::RS256,
            kid,
            EncodingKey::from_rsa_der(der),
            json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)}),
        ))
    }

    fn with(alg: Algorithm, kid: &str, key: EncodingKey, mut jwk: Value) -> Self {
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            alg,
            kid: kid.to_string(),
            key,
            jwk,
        }
    }

    /// The public JWK (the HS256 secret itself for `oct`: a shared secret is both sides').
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A ticket with these claims, signed, its header naming the kid.
    pub fn mint(&self, claims: &Value) -> Result<String, MintError> {
        self.mint_with(claims, Some(&self.kid))
    }

    /// A ticket with these claims and header `kid` (`None`: no kid).
    pub fn mint_with(&self, claims: &Value, kid: Option<&str>) -> Result<String, MintError> {
        super::jose::install();
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| MintError::Sign(e.to_string()))
    }
}

/// A JWKS document of these minters' public keys.
pub fn jwks(minters: &[&Minter]) -> String {
    json!({"keys": minters.iter().map(|m| m.jwk().clone()).collect::<Vec<_>>()}).to_string()
}
