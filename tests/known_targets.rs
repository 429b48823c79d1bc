//! A sealed token names its target, so whoever holds a key (or a leaked one) could mint a
//! token for any address of the pod network. The director opens a session only to an address
//! the token's mapping knows (static endpoints, watch caches, what this replica allocated) or
//! one inside `targetNetworks`; anything else is refused and counted (`unknown_target`).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine;
use common::{metric, start};
use testkit::{EchoServer, TempDir};
use udp_director::config::ValidConfig;
use udp_director::token::KeySet;
use udp_director::token::sealed::{Contents, seal};

const KEY: [u8; 32] = [7; 32];

fn key_line() -> String {
    format!(
        "k1 {}\n",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    )
}

fn config(keys: &std::path::Path, echo: SocketAddr, extra: &str) -> ValidConfig {
    let text = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\naccessLog: false\n\
         tokenFormat: sealed\ntokenKeysFile: \"{}\"\ntokenClientBinding: none\n{extra}\n\
         resourceQueryMapping:\n  echo:\n    static:\n      - {{name: b0, address: 127.0.0.1, port: {}}}\n",
        keys.display(),
        echo.port()
    );
    ValidConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A token sealed with the director's own key for `target` (what a leaked key allows).
fn minted(target: SocketAddr) -> String {
    let keys = KeySet::parse(&key_line()).unwrap();
    let issued_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    seal(
        &keys,
        [9; 12],
        &Contents {
            issued_ms,
            ttl_ms: 30_000,
            resume_s: 600,
            single_use: false,
            target,
            client: None,
            proxy: false,
            player: None,
            extra_ports: Vec::new(),
            mapping: "echo".into(),
            namespace: "default".into(),
            name: "b0".into(),
        },
    )
}

/// Sends `token` then a datagram from a fresh socket: true when an echo comes back.
fn plays(data: SocketAddr, token: &str) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    socket.send_to(token.as_bytes(), data).unwrap();
    socket.send_to(b"ping", data).unwrap();
    let mut buf = [0u8; 64];
    socket.recv(&mut buf).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_naming_an_address_its_mapping_does_not_know_opens_nothing() {
    let dir = TempDir::new("known").unwrap();
    let keys = dir.path.join("token-keys");
    std::fs::write(&keys, key_line()).unwrap();
    let game = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let elsewhere = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let d = start(config(&keys, game.addr, "")).await;
    let data = d.data_addr;
    let (good, bad) = (minted(game.addr), minted(elsewhere.addr));
    let served = tokio::task::spawn_blocking(move || (plays(data, &good), plays(data, &bad)))
        .await
        .unwrap();
    assert_eq!(
        served,
        (true, false),
        "the known endpoint opens, the other does not"
    );
    assert_eq!(
        elsewhere.received(),
        0,
        "not one byte reached the unknown address"
    );
    assert_eq!(
        metric(
            d.admin_addr,
            "udp_director_tokens_rejected_total{reason=\"unknown_target\"}"
        ),
        1.0
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_networks_admit_addresses_the_mappings_do_not_list() {
    let dir = TempDir::new("known-nets").unwrap();
    let keys = dir.path.join("token-keys");
    std::fs::write(&keys, key_line()).unwrap();
    let game = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let elsewhere = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let d = start(config(
        &keys,
        game.addr,
        "targetNetworks: [\"127.0.0.0/8\"]",
    ))
    .await;
    let data = d.data_addr;
    let token = minted(elsewhere.addr);
    assert!(
        tokio::task::spawn_blocking(move || plays(data, &token))
            .await
            .unwrap(),
        "inside targetNetworks"
    );
    d.stop().await;
}
