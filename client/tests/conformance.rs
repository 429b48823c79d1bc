//! The Rust client against `conformance/vectors.json`, the file every client (C ABI, C#,
//! Node) is held to: query lines, answers and errors, every datagram and control frame byte
//! for byte, what a client makes of what arrives, and the PROXY v2 header a game server
//! sees (read by the independent `ppp` parser, not by our own code).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use udp_director_client::core::{Config, Core, Incoming, TransmitKind};
use udp_director_client::frames::{self, Frame, MAX_CONTROL_LEN};
use udp_director_client::{Query, QueryError, parse_answer};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conformance/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn array<const N: usize>(hex: &str) -> [u8; N] {
    unhex(hex).try_into().unwrap()
}

#[test]
fn query_lines_match_the_vectors() {
    let v = vectors();
    let cases = v["queries"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let b = &case["builder"];
        let mut q = Query::new(str_of(b, "resourceType"));
        if let Some(ns) = b["namespace"].as_str() {
            q = q.namespace(ns);
        }
        for (key, add) in [
            ("labels", Query::label as fn(Query, &str, &str) -> Query),
            ("annotations", Query::annotation),
        ] {
            for pair in b[key].as_array().into_iter().flatten() {
                q = add(q, pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
            }
        }
        if let Some(st) = b.get("status") {
            let expected: Vec<&str> = st["expectedValues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap())
                .collect();
            q = q.status(str_of(st, "jsonPath"), &expected);
        }
        if let Some(p) = b["playerId"].as_str() {
            q = q.player_id(p);
        }
        if let Some(t) = b["ticket"].as_str() {
            q = q.ticket(t);
        }
        let line = q.to_line();
        let sent: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(sent, case["request"], "{}", case["name"]);
        if let Some(exact) = case["line"].as_str() {
            assert_eq!(line, exact, "{}", case["name"]);
        }
    }
}

#[test]
fn answers_and_error_answers_match_the_vectors() {
    let v = vectors();
    let mut codes = Vec::new();
    for case in v["answers"].as_array().unwrap() {
        let name = &case["name"];
        let line = str_of(case, "line");
        match parse_answer(line) {
            Ok(g) => {
                let want = &case["grant"];
                assert_eq!(g.token, str_of(want, "token"), "{name}");
                assert_eq!(Some(g.ttl_seconds), want["ttlSeconds"].as_u64(), "{name}");
                assert_eq!(g.resume_seconds, want["resumeSeconds"].as_u64(), "{name}");
                let t = &want["target"];
                assert_eq!(g.target.namespace, str_of(t, "namespace"));
                assert_eq!(g.target.name, str_of(t, "name"));
                assert_eq!(g.target.address.as_deref(), t["address"].as_str());
                assert_eq!(g.target.port.map(u64::from), t["port"].as_u64());
                // The window the token re-opens a session for.
                let reopen = case["reopenSeconds"].as_u64().unwrap();
                let c = Core::new(
                    &["127.0.0.1:7777".parse().unwrap()],
                    g.token.as_bytes(),
                    Duration::from_secs(reopen),
                    Config::default(),
                    Instant::now(),
                )
                .unwrap();
                assert!(!c.needs_query(Instant::now()), "{name}");
            }
            Err(QueryError::Refused { code, message }) => {
                assert_eq!(code, str_of(&case["error"], "code"), "{name}");
                assert_eq!(message, str_of(&case["error"], "message"), "{name}");
                codes.push(code);
            }
            Err(QueryError::Garbled(_)) => assert_eq!(case["garbled"], true, "{name}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    for code in [
        "bad_request",
        "too_large",
        "unknown_resource_type",
        "forbidden_namespace",
        "no_match",
        "unavailable",
        "rate_limited",
        "unauthorized",
        "internal",
    ] {
        assert!(codes.iter().any(|c| c == code), "no vector for {code}");
    }
}

#[test]
fn every_datagram_is_written_byte_for_byte() {
    let v = vectors();
    let mut kinds = Vec::new();
    for case in v["datagrams"].as_array().unwrap() {
        let name = &case["name"];
        let want = unhex(str_of(case, "hex"));
        let magic = case["magic"].as_str().map(unhex).unwrap_or_default();
        let token = case["token"].as_str().unwrap_or_default().as_bytes();
        let mut out = [0u8; MAX_CONTROL_LEN];
        let kind = str_of(case, "kind");
        let n = match kind {
            "token" => frames::write_token(&mut out, token),
            "resume" => frames::write_resume(&mut out, &magic, token),
            "challenge" => frames::write_challenge(&mut out, &magic, &array(str_of(case, "nonce"))),
            "response" => {
                frames::write_response(&mut out, &magic, &array(str_of(case, "nonce")), token)
            }
            "ping" => frames::write_ping(&mut out, &magic, &array(str_of(case, "id"))),
            "pong" => frames::write_pong(
                &mut out,
                &magic,
                &array(str_of(case, "id")),
                str_of(case, "receiveNs").parse().unwrap(),
                str_of(case, "sendNs").parse().unwrap(),
            ),
            other => panic!("unknown kind {other}"),
        };
        assert_eq!(out[..n], want[..], "{name}");
        // And read back the same way.
        let parsed = frames::parse(&want, &magic).unwrap();
        match (kind, parsed) {
            ("token", None) => {}
            ("resume", Some(Frame::Resume { token: t })) => assert_eq!(t, token),
            ("challenge", Some(Frame::Challenge { .. }))
            | ("response", Some(Frame::Response { .. }))
            | ("ping", Some(Frame::Ping { .. }))
            | ("pong", Some(Frame::Pong { .. })) => {}
            (k, p) => panic!("{name}: {k} read as {p:?}"),
        }
        kinds.push(kind.to_string());
    }
    for kind in ["token", "resume", "challenge", "response", "ping", "pong"] {
        assert!(kinds.iter().any(|k| k == kind), "no vector for {kind}");
    }
}

#[test]
fn what_arrives_is_classified_as_the_vectors_say_and_challenges_are_answered() {
    let v = vectors();
    let inbound = &v["inbound"];
    let magic = unhex(str_of(inbound, "magic"));
    let token = str_of(inbound, "token").as_bytes();
    let director: SocketAddr = "127.0.0.1:7777".parse().unwrap();
    for case in inbound["cases"].as_array().unwrap() {
        let name = &case["name"];
        let t0 = Instant::now();
        let cfg = Config {
            magic: magic.clone(),
            ..Config::default()
        };
        let mut c = Core::new(&[director], token, Duration::from_secs(30), cfg, t0).unwrap();
        let mut out = [0u8; MAX_CONTROL_LEN];
        assert_eq!(
            c.poll_transmit(t0, &mut out).map(|t| t.kind),
            Some(TransmitKind::Token)
        );
        let datagram = unhex(str_of(case, "hex"));
        let got = c.handle_datagram(t0, director, &datagram);
        match str_of(case, "class") {
            "data" => assert_eq!(got, Incoming::Data, "{name}"),
            "challenge" => {
                assert_eq!(got, Incoming::Challenge, "{name}");
                let t = c.poll_transmit(t0, &mut out).unwrap();
                assert_eq!(t.destination, director);
                assert_eq!(out[..t.len], unhex(str_of(case, "reply"))[..], "{name}");
            }
            // No PING of this core is in flight: a PONG is recognised as one, and not
            // handed to the game.
            "pong" => {
                assert!(matches!(got, Incoming::Dropped(_)), "{name}: {got:?}");
                let Ok(Some(Frame::Pong {
                    id,
                    receive_ns,
                    send_ns,
                })) = frames::parse(&datagram, &magic)
                else {
                    panic!("{name}")
                };
                assert_eq!(id, array::<8>(str_of(case, "id")));
                assert_eq!(receive_ns.to_string(), str_of(case, "receiveNs"));
                assert_eq!(send_ns.to_string(), str_of(case, "sendNs"));
            }
            other => panic!("unknown class {other}"),
        }
    }
}

#[test]
fn proxy_v2_examples_are_what_an_independent_parser_reads() {
    use ppp::v2::{Addresses, Command, Header, Protocol};
    let v = vectors();
    for case in v["proxyV2"].as_array().unwrap() {
        let name = &case["name"];
        let datagram = unhex(str_of(case, "datagram"));
        let header = unhex(str_of(case, "hex"));
        assert_eq!(datagram[header.len()..], unhex(str_of(case, "payload"))[..]);
        let h = Header::try_from(&datagram[..]).unwrap();
        assert_eq!(h.len(), header.len(), "{name}");
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.protocol, Protocol::Datagram);
        let client: SocketAddr = str_of(case, "client").parse().unwrap();
        let director: SocketAddr = str_of(case, "director").parse().unwrap();
        match h.addresses {
            Addresses::IPv4(a) => {
                assert_eq!(
                    (SocketAddr::from((a.source_address, a.source_port))),
                    client
                );
                assert_eq!(
                    SocketAddr::from((a.destination_address, a.destination_port)),
                    director
                );
            }
            Addresses::IPv6(a) => {
                assert_eq!(SocketAddr::from((a.source_address, a.source_port)), client);
                assert_eq!(
                    SocketAddr::from((a.destination_address, a.destination_port)),
                    director
                );
            }
            other => panic!("{name}: {other:?}"),
        }
        let ids: Vec<Vec<u8>> = h
            .tlvs()
            .filter_map(Result::ok)
            .filter(|t| t.kind == 0x05)
            .map(|t| t.value.to_vec())
            .collect();
        let want: Vec<Vec<u8>> = case["playerId"]
            .as_str()
            .map(|p| p.as_bytes().to_vec())
            .into_iter()
            .collect();
        assert_eq!(ids, want, "{name}");
    }
}
