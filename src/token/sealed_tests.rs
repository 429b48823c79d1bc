use std::time::Duration;

use proptest::prelude::*;

use super::super::keys::tests::line;
use super::*;
use crate::model::canonical;

fn keys(id: &str, byte: u8) -> KeySet {
    KeySet::parse(&line(id, byte)).unwrap()
}

fn contents(target: &str, client: Option<IpAddr>, names: (&str, &str, &str)) -> Contents {
    Contents {
        issued_ms: 1_800_000_000_123,
        ttl_ms: 30_000,
        resume_s: 600,
        single_use: false,
        target: target.parse().unwrap(),
        client: client.map(ClientNet::of),
        proxy: false,
        player: None,
        extra_ports: Vec::new(),
        mapping: names.0.into(),
        namespace: names.1.into(),
        name: names.2.into(),
    }
}

fn policy(binding: ClientBinding, single_use: bool) -> Policy {
    Policy {
        ttl: Duration::from_secs(30),
        resume: Duration::from_secs(600),
        single_use,
        binding,
    }
}

#[test]
fn round_trips_within_128_printable_bytes() {
    let k = keys("a", 7);
    let v4: IpAddr = "203.0.113.9".parse().unwrap();
    let v6: IpAddr = "2001:db8:1:2::9".parse().unwrap();
    for c in [
        contents(
            "10.1.2.3:7654",
            Some(v4),
            ("gameserver", "game-servers", "gs-7x2k"),
        ),
        contents("[fd00::1:2]:7654", Some(v6), ("gs", "ns", "n")),
        contents("10.1.2.3:1", None, ("", "", "")),
    ] {
        let wire = seal(&k, [9; NONCE_LEN], &c);
        assert!(
            wire.len() <= MAX_WIRE && wire.len() >= MIN_WIRE,
            "{}",
            wire.len()
        );
        assert!(wire.bytes().all(is_wire_byte), "{wire}");
        let (id, back) = open(&k, wire.as_bytes()).unwrap();
        assert_eq!(back, c);
        let mut want = [0u8; 16];
        want[..NONCE_LEN].copy_from_slice(&[9; NONCE_LEN]);
        assert_eq!(
            id,
            u128::from_be_bytes(want),
            "the nonce is the token's key"
        );
    }
}

#[test]
fn long_names_are_cut_to_fit_the_longest_first() {
    let k = keys("a", 7);
    let long = "n".repeat(253);
    let c = contents(
        "[fd00::1:2]:7654",
        Some("2001:db8::1".parse().unwrap()),
        ("gameserver", "game-servers", &long),
    );
    let wire = seal(&k, [1; NONCE_LEN], &c);
    assert!(wire.len() <= MAX_WIRE, "{}", wire.len());
    let (_, back) = open(&k, wire.as_bytes()).unwrap();
    assert_eq!(back.target, c.target);
    // 22 bytes of names with an IPv6 target and client: the longest are cut to even out.
    assert!(
        "gameserver".starts_with(&back.mapping) && back.mapping.len() >= 6,
        "{back:?}"
    );
    assert!("game-servers".starts_with(&back.namespace), "{back:?}");
    assert!(back.name.starts_with("nnnn"), "{}", back.name);
    assert_eq!(
        back.mapping.len() + back.namespace.len() + back.name.len(),
        22
    );
    // Multi-byte names are cut on a character boundary.
    let c = contents("10.0.0.1:1", None, ("m", "ns", &"é".repeat(100)));
    let (_, back) = open(&k, seal(&k, [1; NONCE_LEN], &c).as_bytes()).unwrap();
    assert!(back.name.chars().all(|ch| ch == 'é'));
}

#[test]
fn every_flipped_byte_and_another_key_are_refused() {
    let k = keys("a", 7);
    let c = contents(
        "10.1.2.3:7654",
        Some("10.0.0.1".parse().unwrap()),
        ("m", "ns", "gs"),
    );
    let wire = seal(&k, [3; NONCE_LEN], &c).into_bytes();
    for i in 0..wire.len() {
        for replacement in [b'A', b'z', b'-'] {
            let mut bad = wire.clone();
            if bad[i] == replacement {
                continue;
            }
            bad[i] = replacement;
            assert!(open(&k, &bad).is_err(), "byte {i} -> {replacement}");
        }
    }
    let other = keys("b", 8);
    assert_eq!(open(&other, &wire).unwrap_err(), Rejection::UnknownKey);
    // Same id, different key material: the fingerprint matches, authentication fails.
    let impostor = keys("a", 9);
    assert_eq!(open(&impostor, &wire).unwrap_err(), Rejection::Invalid);
    assert_eq!(open(&k, b"").unwrap_err(), Rejection::Invalid);
    assert_eq!(open(&k, &[b'A'; 200]).unwrap_err(), Rejection::Invalid);
}

#[test]
fn rotation_opens_with_any_listed_key_and_seals_with_the_first() {
    let old = keys("old", 1);
    let c = contents("10.1.2.3:7654", None, ("m", "ns", "gs"));
    let by_old = seal(&old, [5; NONCE_LEN], &c);
    let both = KeySet::parse(&format!("{}{}", line("new", 2), line("old", 1))).unwrap();
    assert!(
        open(&both, by_old.as_bytes()).is_ok(),
        "old tokens still open"
    );
    let by_new = seal(&both, [6; NONCE_LEN], &c);
    assert!(
        open(&keys("new", 2), by_new.as_bytes()).is_ok(),
        "sealed by the first"
    );
    let only_new = keys("new", 2);
    assert_eq!(
        open(&only_new, by_old.as_bytes()).unwrap_err(),
        Rejection::UnknownKey
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_resume_window_binding_and_single_use() {
    let t0 = Instant::now();
    let tokens = SealedTokens::new(keys("a", 7), WallClock::fixed(t0, 1_800_000_000_000), 100);
    let target = Target::new("m", "ns", "gs", "10.1.2.3:7654".parse().unwrap());
    let me: IpAddr = "10.0.0.1".parse().unwrap();
    let wire = tokens
        .issue(&target, me, t0, policy(ClientBinding::Ip, false))
        .unwrap();
    let w = wire.as_bytes();
    let g = tokens.open(w, me, Use::Open, t0).unwrap();
    assert_eq!(g.target.addr, target.addr);
    let at = |s| t0 + Duration::from_secs(s);
    assert!(tokens.open(w, me, Use::Open, at(29)).is_ok());
    assert_eq!(
        tokens.open(w, me, Use::Open, at(30)).unwrap_err(),
        Rejection::Expired
    );
    assert!(
        tokens.open(w, me, Use::Resume, at(599)).is_ok(),
        "resume window"
    );
    assert_eq!(
        tokens.open(w, me, Use::Resume, at(600)).unwrap_err(),
        Rejection::Expired
    );
    let other: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(
        tokens.open(w, other, Use::Open, t0).unwrap_err(),
        Rejection::WrongClient
    );
    let free = tokens
        .issue(&target, me, t0, policy(ClientBinding::None, false))
        .unwrap();
    assert!(tokens.open(free.as_bytes(), other, Use::Open, t0).is_ok());
    let once = tokens
        .issue(&target, me, t0, policy(ClientBinding::Ip, true))
        .unwrap();
    assert!(tokens.open(once.as_bytes(), me, Use::Open, t0).is_ok());
    assert_eq!(
        tokens.open(once.as_bytes(), me, Use::Open, t0).unwrap_err(),
        Rejection::Invalid
    );
    // The replay set is bounded (here by 100): full of live windows, it fails closed.
    let small = SealedTokens::new(keys("a", 7), WallClock::fixed(t0, 1_800_000_000_000), 2);
    let single = || {
        small
            .issue(&target, me, t0, policy(ClientBinding::Ip, true))
            .unwrap()
    };
    let (a, b, c) = (single(), single(), single());
    assert!(small.open(a.as_bytes(), me, Use::Open, t0).is_ok());
    assert!(small.open(b.as_bytes(), me, Use::Open, t0).is_ok());
    assert_eq!(
        small.open(c.as_bytes(), me, Use::Open, t0).unwrap_err(),
        Rejection::Invalid,
        "a full replay set refuses rather than forget a used token"
    );
    assert_eq!(
        small.open(a.as_bytes(), me, Use::Open, at(30)).unwrap_err(),
        Rejection::Expired
    );
    // Once their windows (the longer of TTL and resume) have ended, room is made again.
    let later = single_at(&small, &target, me, at(700));
    assert!(small.open(later.as_bytes(), me, Use::Open, at(700)).is_ok());
    assert_eq!(small.replay_len(), 1);
    // Two tokens for one target share one Target.
    let g2 = tokens.open(free.as_bytes(), me, Use::Open, t0).unwrap();
    assert!(Arc::ptr_eq(&g.target, &g2.target));
    assert_ne!(g.key, g2.key, "each token is its own key");
}

fn single_at(tokens: &SealedTokens, target: &Target, me: IpAddr, at: Instant) -> String {
    tokens
        .issue(target, me, at, policy(ClientBinding::Ip, true))
        .unwrap()
}

proptest! {
    #[test]
    fn any_contents_round_trip_or_fit(
        a in any::<[u8; 4]>(), port in any::<u16>(), v6 in any::<bool>(), b6 in any::<[u8; 16]>(),
        bound in any::<Option<bool>>(), issued in 0u64..(1 << 48), ttl in any::<u32>(), resume in any::<u32>(),
        mapping in "[a-z0-9-]{0,40}", ns in "[a-z0-9-]{0,63}", name in "[a-z0-9-]{0,80}",
        proxy in any::<bool>(), player in proptest::option::of("[A-Za-z0-9._:@-]{1,36}"),
        extra_ports in proptest::collection::vec(1u16.., 0..=3),
    ) {
        let k = keys("a", 7);
        let ip = if v6 { IpAddr::V6(Ipv6Addr::from(b6)) } else { IpAddr::V4(Ipv4Addr::from(a)) };
        let client = bound.map(|v6c| if v6c { IpAddr::V6(Ipv6Addr::from(b6)) } else { IpAddr::V4(Ipv4Addr::from(a)) });
        let c = Contents {
            issued_ms: issued, ttl_ms: ttl, resume_s: resume, single_use: port % 2 == 0,
            target: SocketAddr::new(ip, port), client: client.map(ClientNet::of),
            proxy, player: player.clone(), extra_ports: extra_ports.clone(),
            mapping: mapping.clone(), namespace: ns.clone(), name: name.clone(),
        };
        let room = player_room(c.target, c.client, c.extra_ports.len());
        prop_assume!(player.as_ref().is_none_or(|p| p.len() <= room));
        let wire = seal(&k, [4; NONCE_LEN], &c);
        prop_assert!(wire.len() <= MAX_WIRE);
        let (_, back) = open(&k, wire.as_bytes()).unwrap();
        prop_assert_eq!(back.target, canonical(c.target));
        prop_assert_eq!((back.issued_ms, back.ttl_ms, back.resume_s, back.client), (issued, ttl, resume, c.client));
        prop_assert!(mapping.starts_with(&back.mapping) && ns.starts_with(&back.namespace) && name.starts_with(&back.name));
        prop_assert_eq!((back.proxy, back.player), (proxy, player), "the player id is never cut");
        prop_assert_eq!(back.extra_ports, extra_ports);
    }
}

#[test]
fn a_player_id_rides_in_the_token_and_one_that_does_not_fit_is_refused() {
    let k = keys("a", 7);
    let me: IpAddr = "10.0.0.1".parse().unwrap();
    let t0 = Instant::now();
    let tokens = SealedTokens::new(k, WallClock::fixed(t0, 1_800_000_000_000), 1000);
    let uuid = "6f1c2a8e-5b7d-4c1e-9a3f-2d8e7b6c5a41";
    let target = Target::new(
        "gameserver",
        "game-servers",
        "gs-with-a-rather-long-name-x7k2p-abcde",
        "10.0.0.7:7654".parse().unwrap(),
    )
    .with_proxy(true)
    .with_player(Some(uuid));
    let wire = tokens
        .issue(&target, me, t0, policy(ClientBinding::Ip, false))
        .unwrap();
    assert!(wire.len() <= MAX_WIRE);
    let g = tokens.open(wire.as_bytes(), me, Use::Open, t0).unwrap();
    assert_eq!(g.target.player.as_deref(), Some(uuid));
    assert!(g.target.proxy);
    assert_eq!(
        player_room("10.0.0.7:1".parse().unwrap(), Some(ClientNet::of(me)), 0),
        37,
        "a UUID fits with IPv4"
    );
    // An IPv6 target and client leave less room than a UUID needs.
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let target =
        Target::new("m", "n", "x", "[2001:db8::7]:7654".parse().unwrap()).with_player(Some(uuid));
    let e = tokens
        .issue(&target, v6, t0, policy(ClientBinding::Ip, false))
        .unwrap_err();
    assert!(
        matches!(e, IssueError::PlayerIdTooLong { len: 36, max: 21 }),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_issued_key_is_the_key_the_data_plane_opens() {
    let t0 = Instant::now();
    let tokens = SealedTokens::new(keys("a", 7), WallClock::fixed(t0, 1_800_000_000_000), 100);
    let target = Target::new("m", "ns", "gs", "10.1.2.3:7654".parse().unwrap());
    let me: IpAddr = "10.0.0.1".parse().unwrap();
    let (wire, key) = tokens
        .issue_keyed(&target, me, t0, policy(ClientBinding::Ip, false))
        .unwrap();
    let g = tokens.open(wire.as_bytes(), me, Use::Open, t0).unwrap();
    assert_eq!(g.key, key, "the query's session_id is the session's");
}
