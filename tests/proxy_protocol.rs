//! PROXY protocol v2 towards game servers (SPEC §4, `proxyProtocol: v2`): every datagram to
//! such a mapping's targets starts with a header naming the client and the director's data
//! address, with the query's `playerId` as a `PP2_TYPE_UNIQUE_ID` TLV; replies carry none;
//! other mappings' targets get plain datagrams. The headers are read by the independent
//! `ppp` parser, through the real listeners on loopback (IPv4 and IPv6).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use ppp::v2;

/// What a PROXY v2 header says: source, destination, the unique id TLV.
type Said = (SocketAddr, SocketAddr, Option<Vec<u8>>);

/// The PROXY v2 header of `datagram` and the payload after it.
fn split(datagram: &[u8]) -> (Said, Vec<u8>) {
    let header = v2::Header::try_from(datagram).expect("a PROXY v2 header `ppp` accepts");
    assert_eq!(header.command, v2::Command::Proxy);
    assert_eq!(header.protocol, v2::Protocol::Datagram);
    let (src, dst) = match header.addresses {
        v2::Addresses::IPv4(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        v2::Addresses::IPv6(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        other => panic!("addresses {other:?}"),
    };
    let id = header
        .tlvs()
        .map(|t| t.expect("valid TLVs"))
        .find(|t| t.kind == 0x05)
        .map(|t| t.value.to_vec());
    ((src, dst, id), datagram[header.len()..].to_vec())
}

fn mapping(name: &str, backend: SocketAddr, proxy: bool) -> String {
    format!(
        "  {name}:\n{}    static:\n      - {{name: {name}-0, address: \"{}\", port: {}}}\n",
        if proxy { "    proxyProtocol: v2\n" } else { "" },
        backend.ip(),
        backend.port()
    )
}

fn bind(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram");
    (buf[..n].to_vec(), from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_datagrams_carry_the_client_address_and_player_id_replies_carry_nothing() {
    let (game, plain) = (Backend::new(), Backend::new());
    let yaml = testkit::yaml::director(
        "",
        &[
            mapping("game", game.addr, true),
            mapping("plain", plain.addr, false),
        ],
    );
    let d = start(udp_director::config::ValidConfig::from_yaml(&yaml).unwrap()).await;
    let c = Client::new(d.data_addr);
    let token = token_for(
        d.query_addr,
        r#"{"resourceType":"game","playerId":"player-7f3a"}"#,
    );
    c.send(token.as_bytes());
    let big = vec![0xAB; 60_000];
    for payload in [&b"hello"[..], &big[..], &b"\xff\xff\xff\xffgetstatus"[..]] {
        c.send(payload);
        let (got, from) = game.recv().expect("the game server hears the client");
        let ((src, dst, id), body) = split(&got);
        assert_eq!(src, c.local_addr(), "the client's own address and port");
        assert_eq!(dst, d.data_addr, "the director's data address");
        assert_eq!(id.as_deref(), Some(&b"player-7f3a"[..]));
        assert_eq!(body, payload, "the payload intact after the header");
        game.socket.send_to(b"welcome", from).unwrap();
        assert_eq!(c.recv().as_deref(), Some(&b"welcome"[..]), "no header back");
    }
    // Without a playerId: the header has no TLV. Another mapping: no header at all.
    let c2 = Client::new(d.data_addr);
    c2.send(token_for(d.query_addr, r#"{"resourceType":"game"}"#).as_bytes());
    c2.send(b"x");
    let ((src, _, id), body) = split(&game.recv().unwrap().0);
    assert_eq!((src, id, body), (c2.local_addr(), None, b"x".to_vec()));
    let c3 = Client::new(d.data_addr);
    establish(
        &c3,
        &token_for(d.query_addr, r#"{"resourceType":"plain"}"#),
        &plain,
    );
    // The bytes counted are the clients'.
    assert!(eventually(Duration::from_secs(3), || metric(
        d.admin_addr,
        "udp_director_datagram_bytes_total{direction=\"client_to_target\"}"
    ) == (5 + 60_000 + 13 + 1 + 5)
        as f64));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_and_sealed_tokens_keep_the_header_and_player_id() {
    let game = bind("::1");
    let dir = testkit::TempDir::new("proxy-v6").unwrap();
    let keys = dir.path.join("token-keys");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(&keys, format!("k1 {key}\n")).unwrap();
    let mut yaml = testkit::yaml::director(
        &format!("tokenFormat: sealed\ntokenKeysFile: {}\n", keys.display()),
        &[mapping("game", game.local_addr().unwrap(), true)],
    );
    yaml = yaml.replace("bindAddress: 127.0.0.1", "bindAddress: \"::1\"");
    let d = start(
        udp_director::config::ValidConfig::from_yaml(&yaml)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}")),
    )
    .await;
    let client = bind("::1");
    let token = token_for(d.query_addr, r#"{"resourceType":"game","playerId":"p-1"}"#);
    assert_ne!(token.len(), 36, "a sealed token");
    client.send_to(token.as_bytes(), d.data_addr).unwrap();
    client.send_to(b"hello6", d.data_addr).unwrap();
    let (got, from) = recv(&game);
    let ((src, dst, id), body) = split(&got);
    assert_eq!(src, client.local_addr().unwrap());
    assert_eq!(dst, d.data_addr);
    assert_eq!(
        id.as_deref(),
        Some(&b"p-1"[..]),
        "the player id rides in the sealed token"
    );
    assert_eq!(body, b"hello6");
    game.send_to(b"back", from).unwrap();
    assert_eq!(recv(&client).0, b"back");
    // A player id that cannot fit an IPv6 sealed token is refused with a clear message.
    let long = "p".repeat(30);
    let answer = query(
        d.query_addr,
        &format!(r#"{{"resourceType":"game","playerId":"{long}"}}"#),
    );
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not fit"),
        "{answer}"
    );
    d.stop().await;
}
