//! End to end on loopback: query → token → UDP session → reset → reap, through the real
//! listeners with OS-assigned ports.

mod common;

use std::time::Duration;

use common::*;

const Q: &str = r#"{"resourceType":"echo","labelSelector":{"zone":"z0"}}"#;
const Q1: &str = r#"{"resourceType":"echo","labelSelector":{"zone":"z1"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_establishes_a_session_and_proxies_both_ways() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let c = Client::new(d.data_addr);
    let token = token_for(d.query_addr, Q);
    let seen_as = establish(&c, &token, &b);
    assert_ne!(
        seen_as,
        c.local_addr(),
        "the backend sees the director's upstream socket"
    );
    // More traffic both ways.
    for i in 0..20u8 {
        c.send(&[i; 100]);
        let (got, from) = b.recv().unwrap();
        assert_eq!((got, from), (vec![i; 100], seen_as));
        b.socket.send_to(&[i; 7], from).unwrap();
        assert_eq!(c.recv().unwrap(), vec![i; 7]);
    }
    // Token with whitespace and a resend of the token are not forwarded either.
    c.send(format!(" {token}\n").as_bytes());
    c.send(b"after");
    assert_eq!(b.recv().unwrap().0, b"after");
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_tokens_redeemed_total"
    ) >= 2.0));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_packet_establishes_like_a_token() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let c = Client::new(d.data_addr);
    let token = token_for(d.query_addr, Q);
    c.send(&[MAGIC, token.as_bytes()].concat());
    c.send(b"x");
    assert_eq!(b.recv().unwrap().0, b"x");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_moves_the_session_and_silences_the_old_target() {
    let (a, b) = (Backend::new(), Backend::new());
    let d = start(config_for(&[&a, &b], "")).await;
    let c = Client::new(d.data_addr);
    let old_peer = establish(&c, &token_for(d.query_addr, Q), &a);
    let token_b = token_for(d.query_addr, Q1);
    c.send(&[MAGIC, token_b.as_bytes()].concat());
    c.send(b"to-b");
    let (got, new_peer) = b.recv().expect("new target receives after the reset");
    assert_eq!(got, b"to-b");
    a.expect_silence(Duration::from_millis(200));
    // The old target can no longer reach the client through its old binding.
    a.socket.send_to(b"stale", old_peer).unwrap();
    b.socket.send_to(b"fresh", new_peer).unwrap();
    assert_eq!(c.recv().unwrap(), b"fresh");
    c.expect_silence(Duration::from_millis(200));
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_session_resets_total"
    ) == 1.0));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_malformed_control_changes_nothing_and_is_not_forwarded() {
    let (a, b) = (Backend::new(), Backend::new());
    let d = start(config_for(&[&a, &b], "")).await;
    let c = Client::new(d.data_addr);
    establish(&c, &token_for(d.query_addr, Q), &a);
    c.send(&[MAGIC, b"00000000-0000-4000-8000-000000000000"].concat());
    c.send(&[MAGIC, b"garbage"].concat());
    c.send(b"still-a");
    assert_eq!(a.recv().unwrap().0, b"still-a");
    b.expect_silence(Duration::from_millis(200));
    assert!(eventually(Duration::from_secs(2), || {
        metric(
            d.admin_addr,
            "udp_director_datagrams_dropped_total{reason=\"invalid_token\"}",
        ) == 1.0
            && metric(
                d.admin_addr,
                "udp_director_datagrams_dropped_total{reason=\"malformed_control\"}",
            ) == 1.0
    }));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_one_nat_are_separate_sessions_with_their_own_source_ports() {
    let (a, b) = (Backend::new(), Backend::new());
    let d = start(config_for(&[&a, &b], "dataWorkers: 1\n")).await;
    let (c1, c2) = (Client::new(d.data_addr), Client::new(d.data_addr));
    // One token per client: a token holds one session (SPEC §3).
    let p1 = establish(&c1, &token_for(d.query_addr, Q), &a);
    let p2 = establish(&c2, &token_for(d.query_addr, Q), &a);
    assert_ne!(
        p1, p2,
        "two sessions to one target never share a source port"
    );
    // A third client bound for a *different* target reuses the first upstream socket.
    let c3 = Client::new(d.data_addr);
    let p3 = establish(&c3, &token_for(d.query_addr, Q1), &b);
    assert_eq!(
        p3, p1,
        "sessions to different targets share upstream sockets"
    );
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_upstream_sockets"
    ) == 2.0));
    // Replies go to the right client.
    a.socket.send_to(b"for-2", p2).unwrap();
    assert_eq!(c2.recv().unwrap(), b"for-2");
    c1.expect_silence(Duration::from_millis(100));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_senders_get_nothing_back_and_reach_nobody() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let stranger = Client::new(d.data_addr);
    stranger.send(b"hello?");
    stranger.send(b"550e8400-e29b-41d4-a716-446655440000");
    stranger.send(&[MAGIC, b"550e8400-e29b-41d4-a716-446655440000"].concat());
    stranger.send(&[MAGIC, b"x"].concat());
    stranger.expect_silence(Duration::from_millis(300));
    b.expect_silence(Duration::from_millis(50));
    let ok = eventually(Duration::from_secs(2), || {
        metric(
            d.admin_addr,
            "udp_director_datagrams_dropped_total{reason=\"no_session\"}",
        ) == 1.0
    });
    assert!(ok, "{}", http_get(d.admin_addr, "/metrics").1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_endpoint_takes_tokenless_clients_and_forwards_their_first_datagram() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "defaultEndpoint: {resourceType: echo}\n")).await;
    let c = Client::new(d.data_addr);
    c.send(b"first");
    let (got, from) = b.recv().expect("forwarded to the default endpoint");
    assert_eq!(got, b"first");
    b.socket.send_to(b"hi", from).unwrap();
    assert_eq!(c.recv().unwrap(), b"hi");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_token_was_lost_and_sent_again_is_no_longer_limited() {
    // Its token datagram was lost; its game data opened a default-endpoint session (replies
    // limited to 3 × what it sent); then it sent its token again (SPEC §3).
    let b = Backend::new();
    let d = start(config_for(&[&b], "defaultEndpoint: {resourceType: echo}\n")).await;
    let c = Client::new(d.data_addr);
    c.send(b"hi");
    let (_, from) = b.recv().expect("forwarded to the default endpoint");
    let big = [b'r'; 600];
    b.socket.send_to(&big, from).unwrap();
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_datagrams_dropped_total{reason=\"amplification_limit\"}"
    ) == 1.0));
    c.send(token_for(d.query_addr, Q).as_bytes());
    // Its token session now: 600 bytes back for the 2 it sent next.
    c.send(b"go");
    let (got, from) = b.recv().expect("still the same target");
    assert_eq!(got, b"go");
    b.socket.send_to(&big, from).unwrap();
    assert_eq!(c.recv().expect("a token session is not limited"), big);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cap_refuses_newcomers_and_keeps_existing_sessions() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "maxSessions: 2\n")).await;
    let (c1, c2, c3) = (
        Client::new(d.data_addr),
        Client::new(d.data_addr),
        Client::new(d.data_addr),
    );
    // Answered token sessions never yield their place.
    establish(&c1, &token_for(d.query_addr, Q), &b);
    establish(&c2, &token_for(d.query_addr, Q), &b);
    c3.send(token_for(d.query_addr, Q).as_bytes());
    c3.send(b"refused");
    b.expect_silence(Duration::from_millis(200));
    c1.send(b"still-here");
    assert_eq!(b.recv().unwrap().0, b"still-here");
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_datagrams_dropped_total{reason=\"session_cap\"}"
    ) == 1.0));
    assert_eq!(metric(d.admin_addr, "udp_director_sessions_active"), 2.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_datagrams_pass_intact_and_empty_ones_are_dropped() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let c = Client::new(d.data_addr);
    let from = establish(&c, &token_for(d.query_addr, Q), &b);
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
    c.send(&big);
    assert_eq!(b.recv().unwrap().0, big);
    b.socket.send_to(&big, from).unwrap();
    assert_eq!(c.recv().unwrap(), big);
    c.send(b"");
    c.send(b"after-empty");
    assert_eq!(b.recv().unwrap().0, b"after-empty");
    assert!(eventually(Duration::from_secs(2), || metric(
        d.admin_addr,
        "udp_director_datagrams_dropped_total{reason=\"empty\"}"
    ) == 1.0));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_reaped_within_a_second_of_the_timeout() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "sessionTimeoutSeconds: 1\n")).await;
    let c = Client::new(d.data_addr);
    let started = tokio::time::Instant::now();
    establish(&c, &token_for(d.query_addr, Q), &b);
    assert!(eventually(Duration::from_secs(3), || {
        metric(
            d.admin_addr,
            "udp_director_sessions_closed_total{reason=\"idle\"}",
        ) == 1.0
    }));
    assert!(
        started.elapsed() < Duration::from_millis(2100),
        "reaped late: {:?}",
        started.elapsed()
    );
    assert_eq!(metric(d.admin_addr, "udp_director_sessions_active"), 0.0);
    assert_eq!(metric(d.admin_addr, "udp_director_upstream_sockets"), 0.0);
    // The client's address no longer has a session: plain data is dropped.
    c.send(b"late");
    b.expect_silence(Duration::from_millis(200));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_tokens_redeem_once() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "singleUseTokens: true\n")).await;
    let token = token_for(d.query_addr, Q);
    let (c1, c2) = (Client::new(d.data_addr), Client::new(d.data_addr));
    establish(&c1, &token, &b);
    c2.send(token.as_bytes());
    c2.send(b"second");
    // The second redeem is refused as an unknown token (it was used up), and the data that
    // followed it had no session: both counted, nothing reached the game server.
    assert!(eventually(Duration::from_secs(2), || {
        metric(
            d.admin_addr,
            "udp_director_tokens_rejected_total{reason=\"invalid_token\"}",
        ) == 1.0
            && metric(
                d.admin_addr,
                "udp_director_datagrams_dropped_total{reason=\"no_session\"}",
            ) == 1.0
    }));
    b.expect_silence(Duration::from_millis(200));
    assert_eq!(
        metric(d.admin_addr, "udp_director_sessions_created_total"),
        1.0
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_sessions_and_queries_but_keeps_live_ones() {
    let b = Backend::new();
    let d = start(config_for(&[&b], "")).await;
    let c = Client::new(d.data_addr);
    let token = token_for(d.query_addr, Q);
    let peer = establish(&c, &token, &b);
    assert_eq!(http_get(d.admin_addr, "/readyz").0, 200);
    d.begin_drain();
    assert_eq!(http_get(d.admin_addr, "/readyz").0, 503);
    assert_eq!(http_get(d.admin_addr, "/healthz").0, 200);
    assert_eq!(query(d.query_addr, Q)["error"]["code"], "unavailable");
    let newcomer = Client::new(d.data_addr);
    newcomer.send(token.as_bytes());
    newcomer.send(b"new");
    c.send(b"old");
    assert_eq!(b.recv().unwrap().0, b"old");
    b.socket.send_to(b"reply", peer).unwrap();
    assert_eq!(c.recv().unwrap(), b"reply");
    // The newcomer's token and its data were refused as draining, and counted.
    assert!(eventually(Duration::from_secs(2), || {
        metric(
            d.admin_addr,
            "udp_director_sessions_refused_total{reason=\"draining\"}",
        ) == 2.0
            && metric(
                d.admin_addr,
                "udp_director_datagrams_dropped_total{reason=\"draining\"}",
            ) == 2.0
    }));
    b.expect_silence(Duration::from_millis(200));
    assert_eq!(metric(d.admin_addr, "udp_director_sessions_active"), 1.0);
    d.stop().await;
}
