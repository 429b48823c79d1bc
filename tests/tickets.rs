//! Who may ask (SPEC §2): player tickets end to end. Tickets of every algorithm are minted
//! with keys generated here; the director verifies them against a JWKS from a file or a
//! Secret served by the fake API server, refuses every bad ticket as `unauthorized` before any
//! resolution or allocation (the fake API server counts POSTs), counts each refusal by reason,
//! takes a rotated JWKS without a restart, and passes `sub` on as the player id (Agones'
//! players list, the PROXY v2 header).

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::fake_kube::{FakeKube, start as start_kube, wait};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use udp_director::token::mint::{Minter, jwks};

const NS: &str = "game-servers";

/// An RSA key generated once per test binary (ring cannot generate RSA keys).
fn rsa_der() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        key.to_pkcs1_der().unwrap().as_bytes().to_vec()
    })
}

fn minter(alg: Algorithm, kid: &str) -> Minter {
    match alg {
        Algorithm::RS256 => Minter::rsa(kid, rsa_der()).unwrap(),
        other => Minter::generate(other, kid).unwrap(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "aud": "udp-director", "iss": "https://auth.example.com",
        "exp": now() + 60, "iat": now()})
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("ok")
}

fn failures(admin: std::net::SocketAddr, reason: &str) -> f64 {
    metric(
        admin,
        &format!("udp_director_query_auth_failures_total{{reason=\"{reason}\"}}"),
    )
}

fn jwks_reloads(admin: std::net::SocketAddr, result: &str) -> f64 {
    metric(
        admin,
        &format!("udp_director_jwks_reloads_total{{result=\"{result}\"}}"),
    )
}

const QUERY_AUTH: &str =
    "audience: udp-director\n  issuer: https://auth.example.com\n  leewaySeconds: 5\n";

/// Writes `text` to `path` by a rename (a mounted Secret changes the same way: one swap).
fn swap(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tickets_of_every_algorithm_allocate_and_bad_ones_cost_no_allocation() {
    let algs = [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::HS256,
    ];
    let minters: Vec<Minter> = algs
        .iter()
        .enumerate()
        .map(|(i, a)| minter(*a, &format!("k{i}")))
        .collect();
    let dir = testkit::TempDir::new("tickets").unwrap();
    let path = dir.path.join("jwks.json");
    std::fs::write(&path, jwks(&minters.iter().collect::<Vec<_>>())).unwrap();
    let fake = FakeKube::start().await;
    for i in 0..4u16 {
        fake.apply("gameservers", json!({"apiVersion": "agones.dev/v1", "kind": "GameServer",
            "metadata": {"name": format!("gs-{i}"), "namespace": NS, "labels": {"agones.dev/fleet": "f1"}},
            "status": {"state": "Ready", "address": "127.0.0.1", "nodeName": "n",
                "ports": [{"name": "default", "port": 7000 + i}],
                "lists": {"players": {"capacity": 8, "values": []}}}}));
    }
    // `auth` is left out: `ticket` is the default for an allocating mapping.
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\n\
         queryAuth:\n  jwksFile: {}\n  {QUERY_AUTH}\
         resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    \
         namespace: {NS}\n    labelSelector: {{agones.dev/fleet: f1}}\n    addressPath: status.address\n    \
         portName: default\n    allocate: {{playersList: players, preferAllocated: true}}\n",
        path.display()
    );
    let env = start_kube(&yaml, Arc::clone(&fake)).await;
    let (addr, admin) = (env.director.query_addr, env.director.admin_addr);
    assert!(
        wait(Duration::from_secs(10), || http_get(admin, "/readyz").0
            == 200)
        .await
    );
    let ask = |q: Value| query(addr, &q.to_string());

    // Every algorithm's ticket allocates, and `sub` is the player Agones lists.
    let mut listed = Vec::new();
    for m in &minters {
        let sub = format!("player-{:?}", m.alg).to_lowercase();
        let answer = ask(json!({"resourceType": "gs", "ticket": m.mint(&claims(&sub)).unwrap()}));
        assert_eq!(code(&answer), "ok", "{:?}: {answer}", m.alg);
        listed.push(sub);
    }
    assert_eq!(fake.allocations(), 4);
    let gs = fake
        .get("agones.dev/v1", "gameservers", NS, "gs-0")
        .unwrap();
    let on_gs0: Vec<String> = gs["status"]["lists"]["players"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(on_gs0, listed, "packed onto one server, listed by `sub`");
    // The same player again: the allocation is handed out again, not made twice.
    let again = ask(json!({"resourceType": "gs", "playerId": "player-eddsa",
        "ticket": minters[0].mint(&claims("player-eddsa")).unwrap()}));
    assert_eq!(code(&again), "ok", "{again}");
    assert_eq!(fake.allocations(), 4);

    // Every refusal: `unauthorized`, counted by reason, no allocation.
    let ed = &minters[0];
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let with = |patch: Value| {
        let mut c = claims("p-x");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        ed.mint(&c).unwrap()
    };
    let rsa_jwk = minters[2].jwk().to_string();
    let confused = {
        use base64::Engine;
        let input = format!(
            "{}.{}",
            b64(&json!({"alg": "HS256", "kid": "k2"})),
            b64(&claims("p-x"))
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, rsa_jwk.as_bytes());
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!(
            "{input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    };
    let stranger = minter(Algorithm::EdDSA, "k0");
    let cases: Vec<(&str, Value)> = vec![
        (
            "missing_ticket",
            json!({"resourceType": "gs", "playerId": "p-x"}),
        ),
        (
            "malformed",
            json!({"resourceType": "gs", "ticket": "not.a-jwt"}),
        ),
        (
            "algorithm",
            json!({"resourceType": "gs", "ticket": format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims("p-x")))}),
        ),
        (
            "algorithm",
            json!({"resourceType": "gs", "ticket": confused}),
        ),
        (
            "unknown_key",
            json!({"resourceType": "gs", "ticket": ed.mint_with(&claims("p-x"), Some("k9")).unwrap()}),
        ),
        (
            "signature",
            json!({"resourceType": "gs", "ticket": stranger.mint(&claims("p-x")).unwrap()}),
        ),
        (
            "expired",
            json!({"resourceType": "gs", "ticket": with(json!({"exp": now() - 60}))}),
        ),
        (
            "not_yet_valid",
            json!({"resourceType": "gs", "ticket": with(json!({"nbf": now() + 600}))}),
        ),
        (
            "audience",
            json!({"resourceType": "gs", "ticket": with(json!({"aud": "someone-else"}))}),
        ),
        (
            "issuer",
            json!({"resourceType": "gs", "ticket": with(json!({"iss": "https://evil.example"}))}),
        ),
        (
            "subject",
            json!({"resourceType": "gs", "ticket": with(json!({"sub": "not a player id"}))}),
        ),
        (
            "player_id",
            json!({"resourceType": "gs", "playerId": "p-y", "ticket": with(json!({}))}),
        ),
        (
            "scope",
            json!({"resourceType": "gs", "ticket": with(json!({"udpDirector": {"resourceTypes": ["other"]}}))}),
        ),
        (
            "scope",
            json!({"resourceType": "gs", "labelSelector": {"agones.dev/fleet": "f1"},
                "ticket": with(json!({"udpDirector": {"labels": {"agones.dev/fleet": "f2"}}}))}),
        ),
        (
            "client_ip",
            json!({"resourceType": "gs", "clientIp": "127.0.0.2", "ticket": with(json!({}))}),
        ),
    ];
    for (reason, q) in &cases {
        let before = failures(admin, reason);
        let answer = ask(q.clone());
        assert_eq!(code(&answer), "unauthorized", "{reason}: {answer}");
        assert!(
            !answer["error"]["message"].as_str().unwrap().is_empty(),
            "{answer}"
        );
        assert_eq!(failures(admin, reason), before + 1.0, "{reason}");
    }
    assert_eq!(fake.allocations(), 4, "no refused query reached the API");
    assert_eq!(
        metric(admin, "udp_director_queries_total{result=\"unauthorized\"}"),
        cases.len() as f64
    );
}

/// A static mapping that needs tickets, over one backend, with `extra` mapping keys.
fn ticket_mapping(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "  game:\n    auth: ticket\n{extra}    static:\n      - {{name: game-0, address: \"{}\", port: {}}}\n",
        backend.ip(),
        backend.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_file_rotates_without_a_restart_and_a_bad_one_is_rejected_whole() {
    let (old, new) = (
        minter(Algorithm::EdDSA, "2026-11"),
        minter(Algorithm::ES256, "2026-12"),
    );
    let dir = testkit::TempDir::new("jwks-file").unwrap();
    let path = dir.path.join("jwks.json");
    std::fs::write(&path, jwks(&[&old])).unwrap();
    let backend = Backend::new();
    let yaml = testkit::yaml::director(
        &format!("queryAuth:\n  jwksFile: {}\n  {QUERY_AUTH}", path.display()),
        &[ticket_mapping(backend.addr, "")],
    );
    let d = start(udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()).await;
    let (addr, admin) = (d.query_addr, d.admin_addr);
    let ask = |m: &Minter| {
        let answer = query(
            addr,
            &json!({"resourceType": "game", "ticket": m.mint(&claims("p-1")).unwrap()}).to_string(),
        );
        code(&answer).to_string()
    };
    assert_eq!(metric(admin, "udp_director_jwks_keys"), 1.0);
    assert_eq!(ask(&old), "ok");
    assert_eq!(ask(&new), "unauthorized");
    // Rotation, step 1: the new key added beside the old one.
    swap(&path, &jwks(&[&new, &old]));
    assert!(
        wait(Duration::from_secs(5), || jwks_reloads(admin, "applied")
            >= 1.0)
        .await
    );
    assert_eq!(ask(&new), "ok");
    assert_eq!(ask(&old), "ok");
    // A broken file is rejected whole: both keys stay.
    swap(&path, r#"{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}"#);
    assert!(
        wait(Duration::from_secs(5), || jwks_reloads(admin, "rejected")
            >= 1.0)
        .await
    );
    assert_eq!(ask(&new), "ok");
    assert_eq!(ask(&old), "ok");
    // Step 2: the old key removed.
    swap(&path, &jwks(&[&new]));
    assert!(
        wait(Duration::from_secs(5), || jwks_reloads(admin, "applied")
            >= 2.0)
        .await
    );
    assert_eq!(ask(&new), "ok");
    assert_eq!(ask(&old), "unauthorized");
    assert!(failures(admin, "unknown_key") >= 2.0);
    assert_eq!(metric(admin, "udp_director_jwks_keys"), 1.0);
    d.stop().await;
}

fn jwks_secret(text: &str) -> Value {
    use base64::Engine;
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "jwks", "namespace": "udp"},
        "data": {"jwks.json": base64::engine::general_purpose::STANDARD.encode(text)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_secret_is_watched_and_rotates() {
    let (old, new) = (minter(Algorithm::HS256, "a"), minter(Algorithm::RS256, "b"));
    let fake = FakeKube::start().await;
    fake.apply("secrets", jwks_secret(&jwks(&[&old])));
    let backend = Backend::new();
    let yaml = testkit::yaml::director(
        &format!("queryAuth:\n  jwksSecret: udp/jwks\n  {QUERY_AUTH}"),
        &[ticket_mapping(backend.addr, "")],
    );
    let env = start_kube(&yaml, Arc::clone(&fake)).await;
    let (addr, admin) = (env.director.query_addr, env.director.admin_addr);
    let ask = move |m: &Minter| {
        let line =
            json!({"resourceType": "game", "ticket": m.mint(&claims("p-1")).unwrap()}).to_string();
        let answer = query(addr, &line);
        code(&answer).to_string()
    };
    assert_eq!(ask(&old), "ok");
    assert_eq!(ask(&new), "unauthorized");
    // The watch's first event repeats what was fetched at start.
    let applied = jwks_reloads(admin, "applied");
    fake.apply("secrets", jwks_secret(&jwks(&[&new])));
    assert!(
        wait(Duration::from_secs(10), || jwks_reloads(admin, "applied")
            > applied)
        .await
    );
    assert!(wait(Duration::from_secs(5), || ask(&new) == "ok").await);
    assert_eq!(ask(&old), "unauthorized");
    // Not a JWKS: rejected, the keys in force stay.
    fake.apply("secrets", jwks_secret("[]"));
    assert!(
        wait(Duration::from_secs(10), || jwks_reloads(admin, "rejected")
            >= 1.0)
        .await
    );
    assert_eq!(ask(&new), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_v2_header_carries_sub_as_the_player_id() {
    let m = minter(Algorithm::EdDSA, "k");
    let dir = testkit::TempDir::new("jwks-proxy").unwrap();
    let path = dir.path.join("jwks.json");
    std::fs::write(&path, jwks(&[&m])).unwrap();
    let backend = Backend::new();
    let yaml = testkit::yaml::director(
        &format!("queryAuth:\n  jwksFile: {}\n  {QUERY_AUTH}", path.display()),
        &[ticket_mapping(backend.addr, "    proxyProtocol: v2\n")],
    );
    let d = start(udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()).await;
    // The client names no player (it could not choose one anyway): the ticket does.
    let token = token_for(
        d.query_addr,
        &json!({"resourceType": "game", "ticket": m.mint(&claims("sub-7f3a")).unwrap()})
            .to_string(),
    );
    let c = Client::new(d.data_addr);
    c.send(token.as_bytes());
    c.send(b"hello");
    let (datagram, _) = backend.recv().expect("the payload reaches the game server");
    let header = ppp::v2::Header::try_from(&datagram[..]).expect("a PROXY v2 header");
    let id = header
        .tlvs()
        .map(|t| t.unwrap())
        .find(|t| t.kind == 0x05)
        .map(|t| t.value.to_vec());
    assert_eq!(id.as_deref(), Some(&b"sub-7f3a"[..]));
    assert_eq!(&datagram[header.len()..], b"hello");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_mappings_ask_nothing_and_a_plain_caller_cannot_set_client_ip() {
    let backend = Backend::new();
    let yaml = testkit::yaml::director("", &[testkit::yaml::echo_mapping(&[backend.addr])]);
    let d = start(udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()).await;
    let answer = query(d.query_addr, r#"{"resourceType":"echo","playerId":"p-1"}"#);
    assert_eq!(code(&answer), "ok", "{answer}");
    // clientIp binds a token to another address: only a verified backend may say so.
    let answer = query(
        d.query_addr,
        r#"{"resourceType":"echo","clientIp":"127.0.0.2"}"#,
    );
    assert_eq!(code(&answer), "unauthorized", "{answer}");
    assert_eq!(failures(d.admin_addr, "client_ip"), 1.0);
    // A ticket to a director that verifies none is refused, not ignored.
    let answer = query(d.query_addr, r#"{"resourceType":"echo","ticket":"a.b.c"}"#);
    assert_eq!(code(&answer), "unauthorized", "{answer}");
    d.stop().await;
}
