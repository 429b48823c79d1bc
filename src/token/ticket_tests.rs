use super::*;
use crate::token::mint::{Minter, jwks};
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use std::sync::OnceLock;

const NOW: u64 = 1_800_000_000;

fn rules() -> TicketRules {
    TicketRules {
        audience: "udp-director".to_string(),
        issuer: Some("https://auth.example.com".to_string()),
        leeway: 5,
    }
}

fn claims() -> Value {
    json!({"sub": "player-1", "aud": "udp-director", "iss": "https://auth.example.com",
        "exp": NOW + 60, "iat": NOW})
}

/// An RSA key generated once per test binary (2048 bits: ring verifies nothing smaller).
fn rsa_der() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let mut rng = rsa::rand_core::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        key.to_pkcs1_der().unwrap().as_bytes().to_vec()
    })
}

fn minter(alg: Algorithm, kid: &str) -> Minter {
    match alg {
        Algorithm::RS256 => Minter::rsa(kid, rsa_der()).unwrap(),
        other => Minter::generate(other, kid).unwrap(),
    }
}

const ALGS: [Algorithm; 4] = [
    Algorithm::EdDSA,
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::HS256,
];

fn reason(r: Result<Ticket, Refused>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason.as_str(),
    }
}

#[test]
fn tickets_of_every_algorithm_verify_and_name_their_player() {
    let minters: Vec<Minter> = ALGS
        .iter()
        .enumerate()
        .map(|(i, a)| minter(*a, &format!("k{i}")))
        .collect();
    let keys = TicketKeys::parse(&jwks(&minters.iter().collect::<Vec<_>>())).unwrap();
    assert_eq!(keys.len(), 4);
    for m in &minters {
        let jwt = m.mint(&claims()).unwrap();
        let ticket = verify(&keys, &jwt, &rules(), NOW).unwrap();
        assert_eq!(ticket.sub, "player-1", "{:?}", m.alg);
        assert_eq!(ticket.scope, None);
        // Without a kid: the only key of its algorithm.
        let jwt = m.mint_with(&claims(), None).unwrap();
        assert_eq!(
            reason(verify(&keys, &jwt, &rules(), NOW)),
            "ok",
            "{:?}",
            m.alg
        );
    }
}

#[test]
fn every_refusal_has_its_reason() {
    let ed = minter(Algorithm::EdDSA, "ed");
    let hs = minter(Algorithm::HS256, "hs");
    let rs = minter(Algorithm::RS256, "rs");
    let keys = TicketKeys::parse(&jwks(&[&ed, &hs, &rs])).unwrap();
    let check = |jwt: &str| reason(verify(&keys, jwt, &rules(), NOW));
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        ed.mint(&c).unwrap()
    };
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    // Not a JWT at all.
    assert_eq!(check("not-a-jwt"), "malformed");
    assert_eq!(check("a.b.c.d"), "malformed");
    assert_eq!(check("!!!.e30.sig"), "malformed");
    // alg: none, with or without a signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "ed"})),
        b64(&claims())
    );
    assert_eq!(check(&none), "algorithm");
    assert_eq!(check(&format!("{none}c2ln")), "algorithm");
    // An algorithm the director does not accept.
    let hs512 = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "HS512", "kid": "hs"})),
        b64(&claims())
    );
    assert_eq!(check(&hs512), "algorithm");
    // Algorithm confusion: an HS256 ticket whose secret is the RSA key's public JWK, against
    // the RSA key's kid.
    let confused = {
        let secret = rs.jwk().to_string();
        let header = json!({"alg": "HS256", "kid": "rs", "typ": "JWT"});
        let signing_input = format!("{}.{}", b64(&header), b64(&claims()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    };
    assert_eq!(check(&confused), "algorithm");
    // An EdDSA ticket naming the HS256 key.
    assert_eq!(
        check(&ed.mint_with(&claims(), Some("hs")).unwrap()),
        "algorithm"
    );
    // Unknown kid; no kid with several keys of one algorithm is refused too.
    assert_eq!(
        check(&ed.mint_with(&claims(), Some("gone")).unwrap()),
        "unknown_key"
    );
    let other_ed = minter(Algorithm::EdDSA, "ed2");
    let two = TicketKeys::parse(&jwks(&[&ed, &other_ed])).unwrap();
    assert_eq!(
        reason(verify(
            &two,
            &ed.mint_with(&claims(), None).unwrap(),
            &rules(),
            NOW
        )),
        "unknown_key"
    );
    // Signed by another key under this kid.
    assert_eq!(
        check(&other_ed.mint_with(&claims(), Some("ed")).unwrap()),
        "signature"
    );
    // A claim changed after signing.
    let good = ed.mint(&claims()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims();
    forged["sub"] = json!("someone-else");
    assert_eq!(
        check(&format!("{}.{}.{}", parts[0], b64(&forged), parts[2])),
        "signature"
    );
    // Time.
    assert_eq!(check(&with(json!({"exp": NOW - 10}))), "expired");
    assert_eq!(check(&with(json!({"exp": NOW - 5}))), "expired");
    assert_eq!(
        check(&with(json!({"exp": NOW - 4}))),
        "ok",
        "within the leeway"
    );
    assert_eq!(check(&with(json!({"exp": null}))), "malformed");
    assert_eq!(check(&with(json!({"exp": "tomorrow"}))), "malformed");
    assert_eq!(check(&with(json!({"nbf": NOW + 60}))), "not_yet_valid");
    assert_eq!(
        check(&with(json!({"nbf": NOW + 5}))),
        "ok",
        "within the leeway"
    );
    assert_eq!(check(&with(json!({"iat": NOW + 3600}))), "not_yet_valid");
    // Audience and issuer.
    assert_eq!(check(&with(json!({"aud": "another-service"}))), "audience");
    assert_eq!(check(&with(json!({"aud": null}))), "audience");
    assert_eq!(
        check(&with(json!({"aud": ["another-service", "udp-director"]}))),
        "ok"
    );
    assert_eq!(
        check(&with(json!({"iss": "https://evil.example"}))),
        "issuer"
    );
    assert_eq!(check(&with(json!({"iss": null}))), "issuer");
    let no_issuer = TicketRules {
        issuer: None,
        ..rules()
    };
    assert_eq!(
        reason(verify(&keys, &with(json!({"iss": null})), &no_issuer, NOW)),
        "ok"
    );
    // Subject.
    assert_eq!(check(&with(json!({"sub": null}))), "subject");
    assert_eq!(check(&with(json!({"sub": "auth0|123 456"}))), "subject");
    assert_eq!(check(&with(json!({"sub": "x".repeat(37)}))), "subject");
}

#[test]
fn a_ticket_narrows_the_query_and_becomes_its_player() {
    let ticket = Ticket {
        sub: "p-1".to_string(),
        scope: Some(Scope {
            resource_types: Some(vec!["gs".to_string()]),
            labels: BTreeMap::from([("region".to_string(), "eu".to_string())]),
        }),
    };
    let request = |v: Value| -> QueryRequest { serde_json::from_value(v).unwrap() };
    let mut q = request(json!({"resourceType": "gs", "labelSelector": {"map": "dust"}}));
    permit(&ticket, &mut q).unwrap();
    assert_eq!(q.player_id.as_deref(), Some("p-1"));
    assert_eq!(q.label_selector["region"], "eu");
    assert_eq!(q.label_selector["map"], "dust");
    let mut q = request(
        json!({"resourceType": "gs", "playerId": "p-1", "labelSelector": {"region": "eu"}}),
    );
    assert!(permit(&ticket, &mut q).is_ok());
    let refusal = |v: Value| {
        let mut q = request(v);
        permit(&ticket, &mut q).unwrap_err().reason.as_str()
    };
    assert_eq!(
        refusal(json!({"resourceType": "gs", "playerId": "p-2"})),
        "player_id"
    );
    assert_eq!(refusal(json!({"resourceType": "other"})), "scope");
    assert_eq!(
        refusal(json!({"resourceType": "gs", "labelSelector": {"region": "us"}})),
        "scope"
    );
    // Without a scope any resource type, and the labels as asked.
    let open = Ticket {
        sub: "p-1".to_string(),
        scope: None,
    };
    let mut q = request(json!({"resourceType": "anything"}));
    permit(&open, &mut q).unwrap();
    assert_eq!(q.player_id.as_deref(), Some("p-1"));
    assert!(q.label_selector.is_empty());
}

#[test]
fn the_scope_claim_is_read_from_the_ticket() {
    let m = minter(Algorithm::ES256, "es");
    let keys = TicketKeys::parse(&jwks(&[&m])).unwrap();
    let mut c = claims();
    c["udpDirector"] = json!({"resourceTypes": ["gs"], "labels": {"region": "eu"}});
    let ticket = verify(&keys, &m.mint(&c).unwrap(), &rules(), NOW).unwrap();
    let scope = ticket.scope.unwrap();
    assert_eq!(scope.resource_types, Some(vec!["gs".to_string()]));
    assert_eq!(scope.labels["region"], "eu");
    // A scope of the wrong shape is a malformed ticket, not a wider one.
    c["udpDirector"] = json!({"resourceTypes": "gs"});
    assert_eq!(
        reason(verify(&keys, &m.mint(&c).unwrap(), &rules(), NOW)),
        "malformed"
    );
}

#[test]
fn a_jwks_with_any_unusable_key_is_rejected_whole() {
    let ed = minter(Algorithm::EdDSA, "ed");
    let good = ed.jwk().clone();
    let set = |keys: Vec<Value>| json!({"keys": keys}).to_string();
    let err = |text: String| TicketKeys::parse(&text).unwrap_err().to_string();
    assert!(TicketKeys::parse(&set(vec![good.clone()])).is_ok());
    assert!(err("not json".into()).contains("not a JWKS"));
    assert!(err(set(vec![])).contains("no key"));
    assert!(err(set(vec![good.clone(), good.clone()])).contains("used by two keys"));
    let mut short = json!({"kty": "oct", "k": "c2hvcnQ", "kid": "hs"});
    assert!(err(set(vec![good.clone(), short.clone()])).contains("at least 32 bytes"));
    short["k"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]));
    assert!(TicketKeys::parse(&set(vec![good.clone(), short.clone()])).is_ok());
    let mut wrong_alg = good.clone();
    wrong_alg["alg"] = json!("RS256");
    assert!(err(set(vec![wrong_alg])).contains("`alg`"));
    let mut enc = good.clone();
    enc["use"] = json!("enc");
    assert!(err(set(vec![enc])).contains("`use`"));
    let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384",
        "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 48]),
        "y": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 48])});
    assert!(err(set(vec![p384])).contains("P-256"));
    let small_rsa = json!({"kty": "RSA", "kid": "small",
        "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB"});
    assert!(err(set(vec![small_rsa])).contains("2048"));
    // The holder keeps the keys in force when a new text is rejected.
    let jwks_in_force = Jwks::new(TicketKeys::parse(&set(vec![good])).unwrap());
    assert!(jwks_in_force.replace("{}").is_err());
    assert_eq!(jwks_in_force.load().unwrap().kids(), ["ed"]);
}

#[test]
fn claims_are_checked_at_the_time_given() {
    let c = Claims {
        sub: Some("p".to_string()),
        exp: Some(100),
        nbf: Some(50),
        iat: Some(50),
        udp_director: None,
    };
    let at = |now| reason(check_claims(&c, 0, now));
    assert_eq!(at(49), "not_yet_valid");
    assert_eq!(at(50), "ok");
    assert_eq!(at(99), "ok");
    assert_eq!(at(100), "expired");
    assert_eq!(reason(check_claims(&c, 10, 109)), "ok");
    assert_eq!(reason(check_claims(&c, 10, 40)), "ok");
    assert_eq!(reason(check_claims(&c, u64::MAX, u64::MAX)), "expired");
}
