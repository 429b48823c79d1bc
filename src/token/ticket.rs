//! Player tickets (SPEC §2 "Who may ask"): a JWT the studio's backend issued after it
//! authenticated the player, verified against the operator's JWKS.
//!
//! | the ticket                                           | refusal ([`AuthFailure`])       |
//! |------------------------------------------------------|---------------------------------|
//! | not three base64url parts, header or claims not JSON | `malformed`                     |
//! | `alg` none, unsupported, or not the key's algorithm  | `algorithm`                     |
//! | `kid` unknown (no `kid`: not exactly one key of alg) | `unknown_key`                   |
//! | signature does not verify                            | `signature`                     |
//! | `aud` missing or not `audience`                      | `audience`                      |
//! | `iss` missing or not `issuer` (when set)             | `issuer`                        |
//! | no `exp`, or `exp` not a number                      | `malformed`                     |
//! | `now >= exp + leeway`                                | `expired`                       |
//! | `now + leeway < nbf` (or `iat`)                      | `not_yet_valid`                 |
//! | `sub` missing or not a usable player id              | `subject`                       |
//! | then, against the query ([`permit`]):                |                                 |
//! | `playerId` given and not `sub`                       | `player_id`                     |
//! | `udpDirector.resourceTypes` without the query's type | `scope`                         |
//! | `udpDirector.labels` contradicting the query's       | `scope`                         |
//!
//! A permitted query leaves with `playerId = sub` and the ticket's labels ANDed into its
//! selector. Time is an argument (unix seconds): only the shell reads the clock.
//!
//! Keys: a JWKS (RFC 7517) of `EdDSA` (OKP Ed25519), `ES256` (EC P-256), `RS256` (RSA, at
//! least 2048 bits) and `HS256` (oct, at least 32 bytes) keys. Each key has exactly one
//! algorithm, from its type (a key's `alg`, if given, must agree), so a ticket can never pick
//! how its key is used. A set with any unusable key is rejected whole ([`TicketKeys::parse`]).
//!
//! Owns ticket verification and JWKS parsing. Must not read files, watch anything or resolve.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::model::AuthFailure;
use crate::protocol::query::{QueryRequest, player_id_problem};

/// Shortest HS256 secret: the hash's output, 256 bits (RFC 7518 §3.2).
pub const HMAC_MIN_BYTES: usize = 32;
/// Smallest RSA modulus: 2048 bits (what ring verifies).
pub const RSA_MIN_BITS: usize = 2048;
/// Most keys in one JWKS (rotation needs two or three; a bound keeps a lookup cheap).
pub const MAX_KEYS: usize = 64;

/// A JWKS that cannot be used, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS (a JSON object with `keys`: [...] of RFC 7517 keys): {0}")]
    Shape(String),
    #[error("the JWKS holds no key")]
    Empty,
    #[error("the JWKS holds {0} keys; at most {MAX_KEYS}")]
    TooMany(usize),
    #[error("key {index} ({kid}): {problem}")]
    Key {
        index: usize,
        kid: String,
        problem: String,
    },
    #[error("kid `{0}` is used by two keys")]
    DuplicateKid(String),
}

/// One verification key and the one algorithm it verifies.
pub struct TicketKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The keys of one version of the JWKS.
#[derive(Debug)]
pub struct TicketKeys {
    keys: Vec<TicketKey>,
}

fn b64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("not base64url ({e})"))
}

impl TicketKeys {
    /// Parses a JWKS document; any unusable key rejects it whole.
    pub fn parse(text: &str) -> Result<Self, JwksError> {
        super::jose::install();
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| JwksError::Shape(e.to_string()))?;
        if set.keys.is_empty() {
            return Err(JwksError::Empty);
        }
        if set.keys.len() > MAX_KEYS {
            return Err(JwksError::TooMany(set.keys.len()));
        }
        let mut keys: Vec<TicketKey> = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let key = parse_key(index, jwk, &keys)?;
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// The key ids (keys without one show as `-`), for logs.
    pub fn kids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.kid.clone().unwrap_or_else(|| "-".to_string()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a ticket names: by `kid`, or without one the only key of its algorithm.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&TicketKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut of_alg = self.keys.iter().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }
}

/// The JWK at `index`, checked against the keys `before` it (a `kid` used twice) and on its
/// own: its use, its type and size, and a declared `alg` that agrees with its type.
fn parse_key(index: usize, jwk: &Jwk, before: &[TicketKey]) -> Result<TicketKey, JwksError> {
    let kid = jwk.common.key_id.clone();
    let err = |problem: String| JwksError::Key {
        index,
        kid: kid.clone().unwrap_or_else(|| "no kid".to_string()),
        problem,
    };
    if let Some(other) = &kid
        && before.iter().any(|k| k.kid.as_ref() == Some(other))
    {
        return Err(JwksError::DuplicateKid(other.clone()));
    }
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err(err("`use` must be `sig` (or absent)".to_string()));
    }
    let alg = key_algorithm(&jwk.algorithm).map_err(&err)?;
    let declared = jwk.common.key_algorithm;
    if !declared_agrees(declared, alg) {
        return Err(err(format!(
            "`alg` {declared:?} is not supported for this key; a {alg:?} key may say only {alg:?}"
        )));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| err(e.to_string()))?;
    Ok(TicketKey { kid, alg, key })
}

/// The one algorithm a key's type and curve allow, once its material is the right size;
/// otherwise what is wrong with it.
fn key_algorithm(params: &AlgorithmParameters) -> Result<Algorithm, String> {
    let (alg, check) = match params {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            let x = b64(&p.x)?;
            (
                Algorithm::EdDSA,
                (x.len() == 32)
                    .then_some(())
                    .ok_or("an Ed25519 `x` is 32 bytes".to_string()),
            )
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            return Err(format!(
                "OKP curve {:?} is not supported; use Ed25519",
                p.curve
            ));
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            (
                Algorithm::ES256,
                (x.len() == 32 && y.len() == 32)
                    .then_some(())
                    .ok_or("a P-256 `x` and `y` are 32 bytes each".to_string()),
            )
        }
        AlgorithmParameters::EllipticCurve(p) => {
            return Err(format!(
                "EC curve {:?} is not supported; use P-256 (ES256)",
                p.curve
            ));
        }
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n)?;
            b64(&p.e)?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8);
            (
                Algorithm::RS256,
                (bits >= RSA_MIN_BITS).then_some(()).ok_or(format!(
                    "an RSA modulus of at least {RSA_MIN_BITS} bits is needed, found about {bits}"
                )),
            )
        }
        AlgorithmParameters::OctetKey(p) => {
            let k = b64(&p.value)?;
            (
                Algorithm::HS256,
                (k.len() >= HMAC_MIN_BYTES).then_some(()).ok_or(format!(
                    "an HS256 secret of at least {HMAC_MIN_BYTES} bytes is needed, found {}",
                    k.len()
                )),
            )
        }
    };
    check?;
    Ok(alg)
}

/// Whether a key's declared `alg` (if any) is the one its type allows.
fn declared_agrees(declared: Option<KeyAlgorithm>, alg: Algorithm) -> bool {
    match declared {
        None => true,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::HS256) => alg == Algorithm::HS256,
        Some(_) => false,
    }
}

/// The JWKS in force, swapped whole on reload (like the sealed-token key ring).
#[derive(Debug, Default)]
pub struct Jwks {
    keys: ArcSwapOption<TicketKeys>,
}

impl Jwks {
    pub fn new(keys: TicketKeys) -> Self {
        Self {
            keys: ArcSwapOption::from_pointee(keys),
        }
    }

    /// Parses `text` and swaps it in; an invalid text leaves the keys in force.
    pub fn replace(&self, text: &str) -> Result<Arc<TicketKeys>, JwksError> {
        let keys = Arc::new(TicketKeys::parse(text)?);
        self.keys.store(Some(Arc::clone(&keys)));
        Ok(keys)
    }

    pub fn load(&self) -> Option<Arc<TicketKeys>> {
        self.keys.load_full()
    }
}

/// What every ticket must carry (`queryAuth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRules {
    pub audience: String,
    pub issuer: Option<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: u64,
}

/// What a ticket may ask for (`udpDirector` claim).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    #[serde(default)]
    pub resource_types: Option<Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A verified ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The player id.
    pub sub: String,
    pub scope: Option<Scope>,
}

/// The claims the director reads; the rest of the payload is the issuer's business.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub udp_director: Option<Scope>,
}

/// A refusal and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub reason: AuthFailure,
    pub message: String,
}

fn refused(reason: AuthFailure, message: impl Into<String>) -> Refused {
    Refused {
        reason,
        message: message.into(),
    }
}

/// The header fields read before choosing a key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Verifies `jwt` with `keys` under `rules` at `now` (unix seconds).
pub fn verify(
    keys: &TicketKeys,
    jwt: &str,
    rules: &TicketRules,
    now: u64,
) -> Result<Ticket, Refused> {
    super::jose::install();
    let (key, alg) = header_key(keys, jwt)?;
    let claims = jsonwebtoken::decode::<Claims>(jwt, &key.key, &validation(alg, rules))
        .map_err(|e| decode_refusal(&e, rules))?
        .claims;
    check_claims(&claims, rules.leeway, now)
}

/// A ticket that is not a signed JWT, and why.
fn malformed(why: &str) -> Refused {
    refused(
        AuthFailure::Malformed,
        format!("the ticket is not a signed JWT: {why}"),
    )
}

/// The key `jwt`'s header names and the algorithm it claims, read before anything is
/// verified: three parts, a JSON header with an accepted `alg`, a known key of that algorithm.
fn header_key<'k>(keys: &'k TicketKeys, jwt: &str) -> Result<(&'k TicketKey, Algorithm), Refused> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three base64url parts"));
    };
    let header: RawHeader = b64(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| malformed("the header is not base64url JSON with `alg`"))?;
    let alg = match header.alg.as_str() {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        "HS256" => Algorithm::HS256,
        other => {
            return Err(refused(
                AuthFailure::Algorithm,
                format!(
                    "ticket algorithm {:?} is not accepted; use EdDSA, ES256, RS256 or HS256",
                    other.chars().take(16).collect::<String>()
                ),
            ));
        }
    };
    let key = keys.find(header.kid.as_deref(), alg).ok_or_else(|| {
        refused(
            AuthFailure::UnknownKey,
            match &header.kid {
                Some(kid) => format!(
                    "the ticket's key {:?} is not in the director's JWKS",
                    kid.chars().take(64).collect::<String>()
                ),
                None => "the ticket names no `kid` and the JWKS has not exactly one key of its algorithm".to_string(),
            },
        )
    })?;
    if key.alg != alg {
        return Err(refused(
            AuthFailure::Algorithm,
            format!("the ticket says {alg:?} but its key is a {:?} key", key.alg),
        ));
    }
    Ok((key, alg))
}

/// What `jsonwebtoken` checks: the signature with `alg` only, `aud` (and `iss` when set)
/// present and equal. Time is left to [`check_claims`], which takes `now`.
fn validation(alg: Algorithm, rules: &TicketRules) -> Validation {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let mut required = vec!["aud"];
    validation.set_audience(&[&rules.audience]);
    if let Some(issuer) = &rules.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The refusal for a ticket `jsonwebtoken` would not decode.
fn decode_refusal(e: &jsonwebtoken::errors::Error, rules: &TicketRules) -> Refused {
    match e.kind() {
        ErrorKind::InvalidSignature => refused(
            AuthFailure::Signature,
            "the ticket's signature does not verify",
        ),
        ErrorKind::InvalidAlgorithm => refused(
            AuthFailure::Algorithm,
            "the ticket's algorithm does not match its key",
        ),
        ErrorKind::InvalidAudience => audience(rules),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => audience(rules),
        ErrorKind::InvalidIssuer => issuer(rules),
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => issuer(rules),
        _ => malformed("its claims are not a JSON object of the usual types"),
    }
}

fn audience(rules: &TicketRules) -> Refused {
    refused(
        AuthFailure::Audience,
        format!("the ticket's `aud` must be {:?}", rules.audience),
    )
}

fn issuer(rules: &TicketRules) -> Refused {
    refused(
        AuthFailure::Issuer,
        format!(
            "the ticket's `iss` must be {:?}",
            rules.issuer.as_deref().unwrap_or_default()
        ),
    )
}

/// The time and subject rules on verified claims, at `now` (unix seconds).
pub fn check_claims(claims: &Claims, leeway: u64, now: u64) -> Result<Ticket, Refused> {
    let Some(exp) = claims.exp else {
        return Err(refused(
            AuthFailure::Malformed,
            "the ticket has no `exp`; tickets must expire",
        ));
    };
    if now >= exp.saturating_add(leeway) {
        return Err(refused(AuthFailure::Expired, "the ticket has expired"));
    }
    for (claim, at) in [("nbf", claims.nbf), ("iat", claims.iat)] {
        if let Some(at) = at
            && now.saturating_add(leeway) < at
        {
            return Err(refused(
                AuthFailure::NotYetValid,
                format!("the ticket is not valid yet (`{claim}` lies ahead)"),
            ));
        }
    }
    let sub = claims.sub.clone().ok_or_else(|| {
        refused(
            AuthFailure::Subject,
            "the ticket has no `sub` (the player id)",
        )
    })?;
    if let Some(problem) = player_id_problem(&sub) {
        return Err(refused(
            AuthFailure::Subject,
            format!("the ticket's `sub` is not a usable player id: {problem}"),
        ));
    }
    Ok(Ticket {
        sub,
        scope: claims.udp_director.clone(),
    })
}

/// Checks `request` against a verified `ticket` and makes it the ticket's: `playerId` is `sub`,
/// the ticket's labels are ANDed into the selector.
pub fn permit(ticket: &Ticket, request: &mut QueryRequest) -> Result<(), Refused> {
    if let Some(asked) = &request.player_id
        && *asked != ticket.sub
    {
        return Err(refused(
            AuthFailure::PlayerId,
            "`playerId` differs from the ticket's `sub`; leave it out or send the same",
        ));
    }
    if let Some(scope) = &ticket.scope {
        if let Some(types) = &scope.resource_types
            && !types.contains(&request.resource_type)
        {
            return Err(refused(
                AuthFailure::Scope,
                format!(
                    "the ticket does not permit resourceType `{}`",
                    request.resource_type
                ),
            ));
        }
        for (k, v) in &scope.labels {
            match request.label_selector.get(k) {
                Some(asked) if asked != v => {
                    return Err(refused(
                        AuthFailure::Scope,
                        format!("the ticket permits only `{k}={v}`"),
                    ));
                }
                Some(_) => {}
                None => {
                    request.label_selector.insert(k.clone(), v.clone());
                }
            }
        }
    }
    request.player_id = Some(ticket.sub.clone());
    Ok(())
}

#[cfg(test)]
#[path = "ticket_tests.rs"]
mod tests;
