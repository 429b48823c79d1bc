use std::time::Duration;

use super::*;

const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

fn target() -> Arc<Target> {
    Arc::new(Target::new(
        "echo",
        "default",
        "a",
        "127.0.0.1:9001".parse().unwrap(),
    ))
}

fn policy(ttl: u64, single_use: bool) -> Policy {
    Policy {
        ttl: Duration::from_secs(ttl),
        resume: Duration::from_secs(600),
        single_use,
        binding: ClientBinding::Ip,
    }
}

#[test]
fn redeemable_until_expiry_then_rejected() {
    let store = TokenStore::new(100);
    let t0 = Instant::now();
    let id = store.issue(target(), HERE, t0, policy(30, false));
    assert!(store.redeem(id, HERE, t0).is_ok());
    assert!(store.redeem(id, HERE, t0 + Duration::from_secs(29)).is_ok());
    assert_eq!(
        store
            .redeem(id, HERE, t0 + Duration::from_secs(30))
            .unwrap_err(),
        Rejection::Expired
    );
}

#[test]
fn single_use_tokens_redeem_once() {
    let store = TokenStore::new(100);
    let now = Instant::now();
    let id = store.issue(target(), HERE, now, policy(30, true));
    assert!(store.redeem(id, HERE, now).is_ok());
    assert_eq!(store.redeem(id, HERE, now).unwrap_err(), Rejection::Invalid);
}

#[test]
fn each_token_keeps_the_ttl_and_rule_it_was_issued_under() {
    let store = TokenStore::new(100);
    let t0 = Instant::now();
    let old = store.issue(target(), HERE, t0, policy(30, false));
    let new = store.issue(target(), HERE, t0, policy(5, true));
    let later = t0 + Duration::from_secs(10);
    assert_eq!(
        store.redeem(new, HERE, later).unwrap_err(),
        Rejection::Expired
    );
    assert!(store.redeem(old, HERE, later).is_ok(), "issued under 30 s");
    assert!(store.redeem(old, HERE, later).is_ok(), "not single-use");
    let once = store.issue(target(), HERE, t0, policy(5, true));
    assert!(store.redeem(once, HERE, t0).is_ok());
    assert_eq!(
        store.redeem(once, HERE, t0).unwrap_err(),
        Rejection::Invalid
    );
}

#[test]
fn a_bound_token_redeems_only_from_its_clients_address() {
    let store = TokenStore::new(100);
    let now = Instant::now();
    let id = store.issue(target(), HERE, now, policy(30, false));
    let other: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(
        store.redeem(id, other, now).unwrap_err(),
        Rejection::WrongClient
    );
    assert!(store.redeem(id, HERE, now).is_ok());
    let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap();
    let id = store.issue(target(), v6, now, policy(30, false));
    let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let other_64: IpAddr = "2001:db8:1:3::7".parse().unwrap();
    assert!(
        store.redeem(id, same_64, now).is_ok(),
        "the /64 is the client"
    );
    assert_eq!(
        store.redeem(id, other_64, now).unwrap_err(),
        Rejection::WrongClient
    );
    let free = store.issue(
        target(),
        HERE,
        now,
        Policy {
            binding: ClientBinding::None,
            ..policy(30, false)
        },
    );
    assert!(store.redeem(free, other, now).is_ok(), "binding none");
}

#[test]
fn tokens_for_one_target_share_one_target() {
    let store = TokenStore::new(100);
    let now = Instant::now();
    // The resolver hands out a fresh Arc per query.
    let a = store.issue(target(), HERE, now, policy(30, false));
    let b = store.issue(target(), HERE, now, policy(30, false));
    let (ga, gb) = (
        store.redeem(a, HERE, now).unwrap(),
        store.redeem(b, HERE, now).unwrap(),
    );
    assert!(Arc::ptr_eq(&ga.target, &gb.target));
    let renamed = Arc::new(Target::new(
        "echo",
        "default",
        "z",
        "127.0.0.1:9001".parse().unwrap(),
    ));
    let c = store.issue(renamed, HERE, now, policy(30, false));
    assert_eq!(
        store.redeem(c, HERE, now).unwrap().target.name,
        "z",
        "names are never mixed up"
    );
}

#[test]
fn a_grant_stays_packed() {
    assert_eq!(std::mem::size_of::<Entry>(), 32);
    assert!(std::mem::size_of::<(u128, Entry)>() <= 48);
}

#[test]
fn unknown_tokens_are_rejected() {
    let store = TokenStore::new(100);
    assert_eq!(
        store.redeem(TokenId(42), HERE, Instant::now()).unwrap_err(),
        Rejection::Invalid
    );
}

#[test]
fn capacity_is_bounded_and_the_oldest_go_first() {
    let store = TokenStore::new(50);
    let now = Instant::now();
    let first = store.issue(target(), HERE, now, policy(30, false));
    let mut last = first;
    for _ in 0..500 {
        last = store.issue(target(), HERE, now, policy(30, false));
    }
    assert_eq!(store.len(), 50);
    assert_eq!(
        store.redeem(first, HERE, now).unwrap_err(),
        Rejection::Invalid
    );
    assert!(store.redeem(last, HERE, now).is_ok());
}

#[test]
fn expired_grants_are_reclaimed() {
    let store = TokenStore::new(1_000);
    let t0 = Instant::now();
    for _ in 0..100 {
        store.issue(target(), HERE, t0, policy(5, false));
    }
    let long = store.issue(target(), HERE, t0, policy(60, false));
    assert_eq!(store.len(), 101);
    store.sweep(t0 + Duration::from_secs(6));
    assert_eq!(store.len(), 1);
    assert!(
        store
            .redeem(long, HERE, t0 + Duration::from_secs(6))
            .is_ok()
    );
    // Issuing reclaims expired grants at the front on its own.
    store.issue(
        target(),
        HERE,
        t0 + Duration::from_secs(61),
        policy(5, false),
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn wire_form_round_trips_through_the_codec() {
    let id = TokenId::new_random();
    let wire = id.to_wire();
    assert_eq!(wire.len(), 36);
    assert_eq!(
        crate::protocol::datagram::token_of(crate::model::TokenFormat::Uuid, wire.as_bytes())
            .and_then(TokenId::from_wire),
        Some(id)
    );
}
