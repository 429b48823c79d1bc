//! Backend callers over mTLS (SPEC §2 "Who may ask"): with `queryTls` the query port speaks
//! TLS; a caller whose client certificate chains to `clientCaFile` needs no ticket and may
//! set `clientIp` (the token then redeems only from that IP) and `playerId`; a caller
//! without a certificate is a player like any other; a certificate from another CA, or plain
//! TCP, gets no answer. The CA and every certificate are generated here (rcgen), the
//! certificate files re-read on change. Loopback only: 127.0.0.2 stands in for the player.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::fake_kube::wait;
use common::*;
use jsonwebtoken::Algorithm;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use udp_director::token::mint::{Minter, jwks};

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate and its key (PEM) for `name`, signed by `ca`.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    (p.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
}

fn connector(
    ca: &CertifiedIssuer<'static, KeyPair>,
    client: Option<&(String, String)>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One query over TLS: the answer, or `None` when the connection gave none (handshake
/// refused, closed) — and the server's certificate.
async fn ask_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    line: &str,
) -> (Option<Value>, Option<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("director.test").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return (None, None);
    };
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    if tls.write_all(format!("{line}\n").as_bytes()).await.is_err() {
        return (None, server_cert);
    }
    let mut answer = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(&mut tls).read_line(&mut answer),
    )
    .await;
    match read {
        Ok(Ok(n)) if n > 0 => (Some(serde_json::from_str(&answer).unwrap()), server_cert),
        _ => (None, server_cert),
    }
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("ok")
}

struct Setup {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: testkit::TempDir,
    minter: Minter,
}

impl Setup {
    fn new() -> Self {
        let ca = ca("udp-director test CA");
        let dir = testkit::TempDir::new("query-tls").unwrap();
        let (cert, key) = leaf(&ca, "director.test", false);
        std::fs::write(dir.path.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path.join("tls.key"), key).unwrap();
        std::fs::write(dir.path.join("ca.crt"), ca.pem()).unwrap();
        let minter = Minter::generate(Algorithm::EdDSA, "k").unwrap();
        std::fs::write(dir.path.join("jwks.json"), jwks(&[&minter])).unwrap();
        Self { ca, dir, minter }
    }

    fn yaml(&self, backend: SocketAddr) -> String {
        let p = |f: &str| self.dir.path.join(f).display().to_string();
        testkit::yaml::director(
            &format!(
                "queryTls:\n  certFile: {}\n  keyFile: {}\n  clientCaFile: {}\n\
                 queryAuth:\n  jwksFile: {}\n  audience: udp-director\n",
                p("tls.crt"),
                p("tls.key"),
                p("ca.crt"),
                p("jwks.json")
            ),
            &[format!(
                "  game:\n    auth: ticket\n    static:\n      - {{name: game-0, address: \"{}\", port: {}}}\n",
                backend.ip(),
                backend.port()
            )],
        )
    }
}

fn udp_from(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_backend_binds_the_token_to_the_players_ip_and_nobody_else_may() {
    let setup = Setup::new();
    let backend = Backend::new();
    let yaml = setup.yaml(backend.addr);
    let d = start(udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()).await;
    let (addr, admin) = (d.query_addr, d.admin_addr);
    let matchmaker = connector(&setup.ca, Some(&leaf(&setup.ca, "matchmaker", true)));
    let player = connector(&setup.ca, None);

    // The matchmaker asks for player p-9 at 127.0.0.2: no ticket needed.
    let (answer, _) = ask_tls(
        addr,
        &matchmaker,
        r#"{"resourceType":"game","clientIp":"127.0.0.2","playerId":"p-9"}"#,
    )
    .await;
    let answer = answer.expect("an answer");
    assert_eq!(code(&answer), "ok", "{answer}");
    let token = answer["token"].as_str().unwrap().to_string();
    // The token opens at once from the player's IP only; from anywhere else it is only
    // challenged (proof of address), and a sender that does not answer opens nothing.
    let data = d.data_addr;
    let from_caller = udp_from("127.0.0.1");
    from_caller.send_to(token.as_bytes(), data).unwrap();
    from_caller.send_to(b"not mine", data).unwrap();
    backend.expect_silence(Duration::from_millis(500));
    assert!(
        wait(Duration::from_secs(3), || metric(
            admin,
            "udp_director_path_challenges_total{outcome=\"sent\"}"
        ) >= 1.0)
        .await
    );
    let from_player = udp_from("127.0.0.2");
    from_player.send_to(token.as_bytes(), data).unwrap();
    from_player.send_to(b"hello", data).unwrap();
    let (got, _) = backend.recv().expect("the player's datagram arrives");
    assert_eq!(got, b"hello");

    // A player over TLS without a certificate: a ticket, and no clientIp.
    let (answer, _) = ask_tls(
        addr,
        &player,
        r#"{"resourceType":"game","clientIp":"127.0.0.2","playerId":"p-9"}"#,
    )
    .await;
    assert_eq!(code(&answer.unwrap()), "unauthorized");
    let (answer, _) = ask_tls(addr, &player, r#"{"resourceType":"game"}"#).await;
    assert_eq!(code(&answer.unwrap()), "unauthorized");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let ticket = setup
        .minter
        .mint(&json!({"sub": "p-9", "aud": "udp-director", "exp": exp}))
        .unwrap();
    let (answer, _) = ask_tls(
        addr,
        &player,
        &json!({"resourceType": "game", "ticket": ticket}).to_string(),
    )
    .await;
    assert_eq!(code(&answer.clone().unwrap()), "ok", "{answer:?}");
    assert_eq!(
        metric(
            admin,
            "udp_director_query_auth_failures_total{reason=\"client_ip\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "udp_director_query_auth_failures_total{reason=\"missing_ticket\"}"
        ),
        1.0
    );

    // A certificate from another CA: no answer at all.
    let stranger_ca = ca("someone else's CA");
    let stranger = connector(&setup.ca, Some(&leaf(&stranger_ca, "matchmaker", true)));
    let (answer, _) = ask_tls(
        addr,
        &stranger,
        r#"{"resourceType":"game","clientIp":"127.0.0.2"}"#,
    )
    .await;
    assert!(answer.is_none(), "{answer:?}");
    // Plain TCP to the TLS port: no answer either (a plain client cannot set clientIp here).
    let plain = tokio::task::spawn_blocking(move || {
        testkit::query_raw(addr, r#"{"resourceType":"game","clientIp":"127.0.0.2"}"#)
    })
    .await
    .unwrap();
    assert!(
        plain.as_ref().map_or(true, |l| !l.contains("token")),
        "{plain:?}"
    );
    assert!(
        wait(Duration::from_secs(5), || metric(
            admin,
            "udp_director_query_connections_closed_total{reason=\"tls_handshake\"}"
        ) >= 2.0)
        .await
    );
    assert_eq!(metric(admin, "udp_director_tokens_issued_total"), 2.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_files_are_reread_on_change() {
    let setup = Setup::new();
    let backend = Backend::new();
    let d = start(udp_director::config::ValidConfig::from_yaml(&setup.yaml(backend.addr)).unwrap())
        .await;
    let (addr, admin) = (d.query_addr, d.admin_addr);
    let player = connector(&setup.ca, None);
    let (_, first) = ask_tls(addr, &player, r#"{"resourceType":"game"}"#).await;
    let first = first.expect("a server certificate");
    // A renewed certificate (same name, new key): each file swapped by a rename.
    let (cert, key) = leaf(&setup.ca, "director.test", false);
    for (file, text) in [("tls.crt", &cert), ("tls.key", &key)] {
        let path = setup.dir.path.join(file);
        std::fs::write(path.with_extension("tmp"), text).unwrap();
        std::fs::rename(path.with_extension("tmp"), path).unwrap();
    }
    let renewed = CertificateDer::from_pem_slice(cert.as_bytes())
        .unwrap()
        .to_vec();
    let mut seen = first.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen != renewed && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let (_, Some(c)) = ask_tls(addr, &player, r#"{"resourceType":"game"}"#).await {
            seen = c;
        }
    }
    assert_eq!(seen, renewed, "new connections get the renewed certificate");
    assert_ne!(first, renewed);
    assert!(
        metric(
            admin,
            "udp_director_query_tls_reloads_total{result=\"applied\"}"
        ) >= 1.0
    );
    // A broken key is rejected whole: the renewed certificate stays in force.
    let path = setup.dir.path.join("tls.key");
    std::fs::write(path.with_extension("tmp"), "not a key").unwrap();
    std::fs::rename(path.with_extension("tmp"), &path).unwrap();
    assert!(
        wait(Duration::from_secs(5), || metric(
            admin,
            "udp_director_query_tls_reloads_total{result=\"rejected\"}"
        ) >= 1.0)
        .await
    );
    let (answer, cert) = ask_tls(addr, &player, r#"{"resourceType":"game"}"#).await;
    assert_eq!(cert, Some(renewed));
    assert_eq!(code(&answer.unwrap()), "unauthorized", "still answering");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_asks_as_a_backend_over_mtls() {
    let setup = Setup::new();
    let backend = Backend::new();
    let d = start(udp_director::config::ValidConfig::from_yaml(&setup.yaml(backend.addr)).unwrap())
        .await;
    let addr = d.query_addr;
    let (cert, key) = leaf(&setup.ca, "matchmaker", true);
    let ca_pem = setup.ca.pem();
    let (grant, refused) = tokio::task::spawn_blocking(move || {
        use udp_director_client::{Query, tls};
        let caller = tls::Backend::from_pem(
            ca_pem.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
            "director.test",
        )
        .unwrap();
        let grant = caller.ask(
            addr,
            &Query::new("game")
                .player_id("p-7")
                .client_ip("127.0.0.2".parse().unwrap()),
        );
        // Garbage in place of the key is refused when the settings are built, not later.
        let refused =
            tls::Backend::from_pem(ca_pem.as_bytes(), b"", b"not a key", "director.test").is_err();
        (grant, refused)
    })
    .await
    .unwrap();
    let grant = grant.expect("a grant for the backend's player");
    assert_eq!(grant.target.name, "game-0");
    assert!(refused);
    let from_player = udp_from("127.0.0.2");
    from_player
        .send_to(grant.token.as_bytes(), d.data_addr)
        .unwrap();
    from_player.send_to(b"hi", d.data_addr).unwrap();
    assert_eq!(backend.recv().expect("forwarded").0, b"hi");
    d.stop().await;
}
