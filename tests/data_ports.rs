//! Several data ports per token (SPEC §3 `dataPorts`): one query, one token, and a session
//! on every data port towards the same target object's matching port, each keyed by the
//! client address on its port and reset on its own.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use udp_director::config::ValidConfig;

/// Two game servers, each with a `default` and a `voice` port; the director's data ports
/// 0 (game, the endpoint's `default`) and 0 (voice).
fn config(servers: &[(&Backend, &Backend)], extra: &str) -> ValidConfig {
    let mut mapping = String::from("  game:\n    loadBalancing: {type: roundRobin}\n    static:\n");
    for (i, (game, voice)) in servers.iter().enumerate() {
        mapping.push_str(&format!(
            "      - {{name: gs-{i}, address: 127.0.0.1, ports: [{{name: default, port: {}}}, {{name: voice, port: {}}}], labels: {{n: \"{i}\"}}}}\n",
            game.addr.port(),
            voice.addr.port()
        ));
    }
    let yaml = testkit::yaml::director(
        &format!(
            "dataPorts:\n  - {{port: 0, targetPortName: default}}\n  - {{port: 0, targetPortName: voice}}\n{extra}"
        ),
        &[mapping],
    );
    ValidConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_opens_game_and_voice_on_the_same_server() {
    let (g0, v0, g1, v1) = (
        Backend::new(),
        Backend::new(),
        Backend::new(),
        Backend::new(),
    );
    let d = start(config(&[(&g0, &v0), (&g1, &v1)], "")).await;
    assert_eq!(d.data_addrs.len(), 2);
    let (game_port, voice_port) = (d.data_addrs[0], d.data_addrs[1]);
    assert_ne!(game_port, voice_port);
    let servers = [(&g0, &v0), (&g1, &v1)];
    for round in 0..8 {
        let answer = query(d.query_addr, r#"{"resourceType":"game"}"#);
        let token = answer["token"].as_str().unwrap().to_string();
        let n: usize = answer["target"]["name"].as_str().unwrap()[3..]
            .parse()
            .unwrap();
        let (game, voice) = servers[n];
        let (gc, vc) = (Client::new(game_port), Client::new(voice_port));
        let seen = establish(&gc, &token, game);
        let heard = establish(&vc, &token, voice);
        // Both ways, independently; nothing crosses to the other port or server.
        gc.send(format!("move {round}").as_bytes());
        vc.send(format!("talk {round}").as_bytes());
        assert_eq!(
            game.recv().unwrap(),
            (format!("move {round}").into_bytes(), seen)
        );
        assert_eq!(
            voice.recv().unwrap(),
            (format!("talk {round}").into_bytes(), heard)
        );
        voice.socket.send_to(b"speech", heard).unwrap();
        assert_eq!(vc.recv().as_deref(), Some(&b"speech"[..]));
        let (other_game, other_voice) = servers[1 - n];
        other_game.expect_silence(Duration::from_millis(20));
        other_voice.expect_silence(Duration::from_millis(20));
    }
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_sessions_active"
    ) == 16.0));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_data_port_keeps_one_session_per_token_and_resets_on_its_own() {
    let (g0, v0, g1, v1) = (
        Backend::new(),
        Backend::new(),
        Backend::new(),
        Backend::new(),
    );
    let d = start(config(
        &[(&g0, &v0), (&g1, &v1)],
        "loadBalancing: {type: first}\n",
    ))
    .await;
    let (game_port, voice_port) = (d.data_addrs[0], d.data_addrs[1]);
    let first = token_for(
        d.query_addr,
        r#"{"resourceType":"game","labelSelector":{"n":"0"}}"#,
    );
    let second = token_for(
        d.query_addr,
        r#"{"resourceType":"game","labelSelector":{"n":"1"}}"#,
    );
    let (gc, vc) = (Client::new(game_port), Client::new(voice_port));
    establish(&gc, &first, &g0);
    establish(&vc, &first, &v0);
    // The voice session moves to server 1; the game session stays on server 0.
    vc.send(&[MAGIC, second.as_bytes()].concat());
    vc.send(b"v");
    assert_eq!(v1.recv().unwrap().0, b"v");
    gc.send(b"g");
    assert_eq!(g0.recv().unwrap().0, b"g");
    // The same token from another address on the game port is a NAT rebinding of the game
    // session (one session per token per data port), not a second one, once the new address
    // proves it receives there; voice is untouched.
    let rebound = Client::new(game_port);
    rebound.send(first.as_bytes());
    rebound.prove(&first);
    rebound.send(b"g2");
    assert_eq!(g0.recv().unwrap().0, b"g2");
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_sessions_active"
    ) == 2.0));
    d.stop().await;
}

#[test]
fn data_ports_are_validated() {
    let err = |extra: &str| {
        ValidConfig::from_yaml(&testkit::yaml::director(
            extra,
            &[testkit::yaml::static_mapping(
                "echo",
                "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
            )],
        ))
        .unwrap_err()
        .to_string()
    };
    // (The harness's config sets `dataPort: 0`, so the first entry is port 0 too.)
    let e = err("dataPorts:\n  - {port: 0}\n  - {port: 7778}\n");
    assert!(e.contains("dataPorts[1].targetPortName"), "{e}");
    let e = err(
        "dataPorts:\n  - {port: 0}\n  - {port: 7777, targetPort: 9}\n  - {port: 7777, targetPort: 9}\n",
    );
    assert!(e.contains("listed twice"), "{e}");
    let e = err("dataPorts:\n  - {port: 0, protocol: SCTP}\n");
    assert!(e.contains("dataPorts[0].protocol"), "{e}");
    let e = err("dataPorts:\n  - {port: 0, protocol: TCP}\n");
    assert!(
        e.contains("dataPorts[0].protocol") && e.contains("main UDP port"),
        "{e}"
    );
    let e = err(
        "dataPorts:\n  - {port: 0}\n  - {port: 7000, protocol: TCP, targetPort: 9}\n  - {port: 7000, protocol: tcp, targetPort: 9}\n",
    );
    assert!(
        e.contains("dataPorts[2].port") && e.contains("twice"),
        "{e}"
    );
    // The same number as UDP and as TCP is two ports.
    assert!(
        ValidConfig::from_yaml(&testkit::yaml::director(
            "dataPorts:\n  - {port: 0}\n  - {port: 7000, targetPort: 9}\n  - {port: 7000, protocol: TCP, targetPort: 9}\n",
            &[testkit::yaml::echo_mapping(&["127.0.0.1:9".parse().unwrap()])],
        ))
        .is_ok()
    );
    let e = err("dataPorts: []\n");
    assert!(e.contains("at least one"), "{e}");
    let e = err("dataPorts:\n  - {port: 0, targetPortName: a, targetPort: 1}\n");
    assert!(e.contains("not both"), "{e}");
    let e = err("dataPorts:\n  - {port: 7000}\n");
    assert!(e.contains("either `dataPort` or `dataPorts`"), "{e}");
}

/// Sealed tokens carry the extra ports: a replica that never saw the query opens both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_tokens_carry_every_data_port() {
    use base64::Engine;
    let (g0, v0) = (Backend::new(), Backend::new());
    let dir = testkit::TempDir::new("data-ports-sealed").unwrap();
    let keys = dir.path.join("token-keys");
    let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
    std::fs::write(&keys, format!("k1 {key}\n")).unwrap();
    let extra = format!("tokenFormat: sealed\ntokenKeysFile: {}\n", keys.display());
    let issuer = start(config(&[(&g0, &v0)], &extra)).await;
    let other = start(config(&[(&g0, &v0)], &extra)).await;
    let token = token_for(issuer.query_addr, r#"{"resourceType":"game"}"#);
    let (gc, vc) = (
        Client::new(other.data_addrs[0]),
        Client::new(other.data_addrs[1]),
    );
    establish(&gc, &token, &g0);
    establish(&vc, &token, &v0);
    issuer.stop().await;
    other.stop().await;
}

#[test]
fn a_static_endpoint_without_a_data_ports_port_is_a_config_error() {
    let yaml = testkit::yaml::director(
        "dataPorts:\n  - {port: 0, targetPortName: default}\n  - {port: 0, targetPortName: voice}\n",
        &["  game:\n    static:\n      - {name: gs-0, address: 127.0.0.1, ports: [{name: default, port: 9001}]}\n".to_string()],
    );
    let e = ValidConfig::from_yaml(&yaml).unwrap_err().to_string();
    assert!(
        e.contains("resourceQueryMapping.game.static[0].ports") && e.contains("`voice`"),
        "{e}"
    );
    // `port:` serves every data port.
    ValidConfig::from_yaml(&yaml.replace("ports: [{name: default, port: 9001}]", "port: 9001"))
        .unwrap();
}
