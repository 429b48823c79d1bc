//! Agones allocation end to end (SPEC §4): queries on an `allocate:` mapping create
//! `GameServerAllocation`s through the real kube client against the fake API server, whose
//! allocator has Agones' semantics (state, label and list selectors, `Packed`/`Distributed`,
//! one lock for every allocation). Sessions then run over UDP to loopback backends standing in
//! for the allocated servers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use common::fake_kube::{Env, FakeKube, start};
use common::*;
use serde_json::{Value, json};

const AGONES: &str = "agones.dev/v1";
const NS: &str = "game-servers";

/// A GameServer with a players list of `capacity` (none when 0) on `127.0.0.1:port`.
fn gameserver(name: &str, state: &str, port: u16, capacity: u64) -> Value {
    let mut gs = json!({"apiVersion": AGONES, "kind": "GameServer",
        "metadata": {"name": name, "namespace": NS, "labels": {"agones.dev/fleet": "f1"}},
        "status": {"state": state, "address": "127.0.0.1", "nodeName": "node-a",
            "ports": [{"name": "default", "port": port}]}});
    if capacity > 0 {
        gs["status"]["lists"] = json!({"players": {"capacity": capacity, "values": []}});
    }
    gs
}

/// A fake API server holding `n` Ready GameServers `gs-000`, `gs-001`, … on ports 7000 + i.
async fn fleet(n: u16, capacity: u64) -> Arc<FakeKube> {
    let fake = FakeKube::start().await;
    for i in 0..n {
        fake.apply(
            "gameservers",
            gameserver(&format!("gs-{i:03}"), "Ready", 7000 + i, capacity),
        );
    }
    fake
}

/// Asserts `elapsed` stayed under `bound` (a failure answered at once, not at a timeout).
fn within(elapsed: Duration, bound: Duration) {
    assert!(elapsed < bound, "{elapsed:?}");
}

/// `udp_director_allocations_total{result}` on the director's admin port.
fn allocations(admin: std::net::SocketAddr, result: &str) -> f64 {
    metric(
        admin,
        &format!("udp_director_allocations_total{{result=\"{result}\"}}"),
    )
}

/// A director whose mapping `gs` allocates with `allocate` (a YAML flow mapping), plus a
/// cache-picking mapping `cached` over the same GameServers.
async fn director(fake: &Arc<FakeKube>, allocate: &str) -> Env {
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\n\
         limits: {{queryRatePerSecond: 100000, queryBurst: 100000, maxQueryConnectionsPerIp: 1000}}\n\
         resourceQueryMapping:\n  gs:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    \
         namespace: {NS}\n    labelSelector: {{agones.dev/fleet: f1}}\n    addressPath: status.address\n    \
         portName: default\n    exposeTargetAddress: true\n    auth: none\n    allocate: {allocate}\n  \
         cached:\n    group: agones.dev\n    version: v1\n    resource: gameservers\n    namespace: {NS}\n    \
         addressPath: status.address\n    portName: default\n"
    );
    let env = start(&yaml, Arc::clone(fake)).await;
    let admin = env.director.admin_addr;
    assert!(
        common::fake_kube::wait(Duration::from_secs(10), || http_get(admin, "/readyz").0
            == 200)
        .await,
        "director ready"
    );
    env
}

fn allocation_query(player: Option<&str>) -> String {
    match player {
        Some(p) => json!({"resourceType": "gs", "playerId": p}).to_string(),
        None => json!({"resourceType": "gs"}).to_string(),
    }
}

/// `queries` queries at once, each on its own connection; the answers in order.
async fn concurrently(addr: std::net::SocketAddr, queries: Vec<String>) -> Vec<(Value, Duration)> {
    let handles: Vec<_> = queries
        .into_iter()
        .map(|q| {
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let answer = query(addr, &q);
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("ok")
}

fn players_of(fake: &FakeKube, name: &str) -> Vec<String> {
    let gs = fake.get(AGONES, "gameservers", NS, name).unwrap();
    gs["status"]["lists"]["players"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn state_of(fake: &FakeKube, name: &str) -> String {
    let gs = fake.get(AGONES, "gameservers", NS, name).unwrap();
    gs["status"]["state"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_never_get_one_slot_twice() {
    // 16 servers × 4 player slots = 64 slots for 80 players asking at once.
    let fake = fleet(16, 4).await;
    // Room for all 80 in flight at once (the default limit, 64, would turn some away).
    let env = director(
        &fake,
        "{preferAllocated: true, playersList: players, maxInFlight: 100, ratePerSecond: 1000, burst: 1000}",
    )
    .await;
    let players: Vec<String> = (0..80).map(|i| format!("player-{i}")).collect();
    let answers = concurrently(
        env.director.query_addr,
        players.iter().map(|p| allocation_query(Some(p))).collect(),
    )
    .await;
    let mut given: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut refused = 0;
    for ((answer, _), player) in answers.iter().zip(&players) {
        match code(answer) {
            "ok" => {
                let name = answer["target"]["name"].as_str().unwrap().to_string();
                assert!(given.entry(name).or_default().insert(player.clone()));
            }
            "no_match" => refused += 1,
            other => panic!("unexpected answer {other}: {answer}"),
        }
    }
    assert_eq!(refused, 16, "64 slots, 80 players: {given:?}");
    assert_eq!(given.len(), 16, "every server was used: {given:?}");
    for (name, got) in &given {
        assert!(got.len() <= 4, "{name} got {} players", got.len());
        // Agones' list holds exactly the players the director sent there.
        let listed: BTreeSet<String> = players_of(&fake, name).into_iter().collect();
        assert_eq!(&listed, got, "{name}");
        assert_eq!(state_of(&fake, name), "Allocated");
    }
    assert_eq!(allocations(env.director.admin_addr, "allocated"), 64.0);
    assert_eq!(allocations(env.director.admin_addr, "unallocated"), 16.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_fleet_answers_no_match_and_the_watch_sees_allocated_servers() {
    let fake = FakeKube::start().await;
    let backends = [Backend::new(), Backend::new()];
    for (i, b) in backends.iter().enumerate() {
        fake.apply(
            "gameservers",
            gameserver(&format!("gs-{i}"), "Ready", b.addr.port(), 0),
        );
    }
    // A server of another fleet and one already allocated are never handed out.
    let mut other = gameserver("other", "Ready", 9, 0);
    other["metadata"]["labels"]["agones.dev/fleet"] = json!("f2");
    fake.apply("gameservers", other);
    fake.apply("gameservers", gameserver("taken", "Allocated", 9, 0));
    let env = director(
        &fake,
        "{scheduling: Distributed, metadata: {labels: {director: eu-1}, annotations: {why: test}}}",
    )
    .await;
    let addr = env.director.query_addr;
    let mut names = BTreeSet::new();
    for _ in 0..2 {
        let answer = query(addr, &allocation_query(None));
        assert_eq!(code(&answer), "ok", "{answer}");
        let name = answer["target"]["name"].as_str().unwrap().to_string();
        let backend = &backends[if name == "gs-0" { 0 } else { 1 }];
        assert_eq!(answer["target"]["port"], backend.addr.port());
        // The token opens a session to the allocated server.
        let client = Client::new(env.director.data_addr);
        establish(&client, answer["token"].as_str().unwrap(), backend);
        names.insert(name);
    }
    assert_eq!(
        names,
        BTreeSet::from(["gs-0".to_string(), "gs-1".to_string()])
    );
    let answer = query(addr, &allocation_query(None));
    assert_eq!(code(&answer), "no_match", "{answer}");
    for name in &names {
        let gs = fake.get(AGONES, "gameservers", NS, name).unwrap();
        assert_eq!(gs["status"]["state"], "Allocated");
        assert_eq!(gs["metadata"]["labels"]["director"], "eu-1");
        assert_eq!(gs["metadata"]["annotations"]["why"], "test");
    }
    assert_eq!(state_of(&fake, "other"), "Ready");
    // The allocations' MODIFIED events reach the watch caches of other mappings.
    let allocated = r#"{"resourceType":"cached","labelSelector":{"director":"eu-1"},"statusQuery":{"jsonPath":"status.state","expectedValue":"Allocated"}}"#;
    assert!(
        common::fake_kube::wait(Duration::from_secs(10), || code(&query(addr, allocated))
            == "ok")
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_players_list_fills_to_capacity_then_the_next_server_is_used() {
    let fake = FakeKube::start().await;
    fake.apply("gameservers", gameserver("gs-a", "Ready", 7001, 2));
    fake.apply("gameservers", gameserver("gs-b", "Ready", 7002, 2));
    let env = director(&fake, "{preferAllocated: true, playersList: players}").await;
    let addr = env.director.query_addr;
    let mut placed = Vec::new();
    for p in ["p1", "p2", "p3", "p4", "p5"] {
        let answer = query(addr, &allocation_query(Some(p)));
        placed.push(match code(&answer) {
            "ok" => answer["target"]["name"].as_str().unwrap().to_string(),
            other => other.to_string(),
        });
    }
    // Packed + preferAllocated: fill the allocated server before taking a Ready one.
    assert_eq!(placed, ["gs-a", "gs-a", "gs-b", "gs-b", "no_match"]);
    assert_eq!(players_of(&fake, "gs-a"), ["p1", "p2"]);
    assert_eq!(players_of(&fake, "gs-b"), ["p3", "p4"]);
    // A playerId Agones could not take is refused before any allocation.
    let allocations = fake.allocations();
    let answer = query(addr, &allocation_query(Some("not a valid id!")));
    assert_eq!(code(&answer), "bad_request", "{answer}");
    let answer = query(
        addr,
        r#"{"resourceType":"gs","annotationSelector":{"a":"b"}}"#,
    );
    assert_eq!(code(&answer), "bad_request", "{answer}");
    assert_eq!(fake.allocations(), allocations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_outage_answers_unavailable_fast_and_slowness_within_the_timeout() {
    let fake = fleet(4, 0).await;
    let env = director(&fake, "{maxInFlight: 1}").await;
    let addr = env.director.query_addr;
    let admin = env.director.admin_addr;
    let result = |r: &str| allocations(admin, r);
    // The API answers errors (RBAC denied, allocator broken): unavailable at once.
    for code_ in [403, 500] {
        fake.set_allocation_failure(Some(code_));
        let started = Instant::now();
        let answer = query(addr, &allocation_query(None));
        assert_eq!(code(&answer), "unavailable", "{answer}");
        within(started.elapsed(), Duration::from_secs(2));
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&code_.to_string()),
            "{answer}"
        );
    }
    assert_eq!(result("error"), 2.0);
    // "Retry later" answers (503) are retried by the kube client, within the 2 s budget.
    fake.set_allocation_failure(Some(503));
    let started = Instant::now();
    let answer = query(addr, &allocation_query(None));
    assert_eq!(code(&answer), "unavailable", "{answer}");
    within(started.elapsed(), Duration::from_secs(3));
    assert!(fake.allocations() > 3, "retried");
    assert_eq!(result("timeout"), 1.0);
    fake.set_allocation_failure(None);
    // The API server is gone: unavailable at once, not after the timeout.
    fake.stop().await;
    let started = Instant::now();
    let answer = query(addr, &allocation_query(None));
    assert_eq!(code(&answer), "unavailable", "{answer}");
    within(started.elapsed(), Duration::from_secs(2));
    assert_eq!(result("error"), 3.0);
    fake.restart().await;
    // A black-holed allocation ends at the 2 s timeout; meanwhile the in-flight limit (1)
    // turns a second query away.
    fake.set_allocation_delay(Duration::from_secs(4));
    let before = fake.allocations();
    let slow = tokio::spawn(concurrently(addr, vec![allocation_query(None)]));
    assert!(
        common::fake_kube::wait(Duration::from_secs(10), || fake.allocations() > before).await,
        "the first allocation is in flight"
    );
    let answer = query(addr, &allocation_query(None));
    assert_eq!(code(&answer), "unavailable", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in flight"),
        "{answer}"
    );
    assert_eq!(result("overloaded"), 1.0);
    let answers = slow.await.unwrap();
    let (answer, took) = &answers[0];
    assert_eq!(code(answer), "unavailable", "{answer}");
    assert!(*took >= Duration::from_millis(1900), "{took:?}");
    assert!(*took < Duration::from_secs(4), "{took:?}");
    assert_eq!(result("timeout"), 2.0);
    // Back to normal: allocations succeed again.
    fake.set_allocation_delay(Duration::ZERO);
    let answer = query(addr, &allocation_query(None));
    assert_eq!(code(&answer), "ok", "{answer}");
    assert_eq!(result("allocated"), 1.0);
    let histogram = http_get(admin, "/metrics").1;
    assert!(
        histogram.contains("udp_director_allocation_duration_seconds_count 6"),
        "{histogram}"
    );
}

/// The figure of the issue: allocation latency through the fake API server at 64 concurrent
/// queries (5 rounds of 64 on 320 servers). Printed, not asserted; the assertions are that
/// every query got its own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocation_latency_at_64_concurrent_queries() {
    let fake = fleet(320, 0).await;
    let env = director(&fake, "{maxInFlight: 64, ratePerSecond: 1000, burst: 1000}").await;
    let mut latencies = Vec::new();
    let mut names = BTreeSet::new();
    for _ in 0..5 {
        for (answer, took) in
            concurrently(env.director.query_addr, vec![allocation_query(None); 64]).await
        {
            assert_eq!(code(&answer), "ok", "{answer}");
            assert!(names.insert(answer["target"]["name"].as_str().unwrap().to_string()));
            latencies.push(took);
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "allocation latency at 64 concurrent queries ({} queries): p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    assert_eq!(names.len(), 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_player_asking_a_hundred_times_is_allocated_once() {
    let fake = fleet(4, 4).await;
    let env = director(&fake, "{preferAllocated: true, playersList: players}").await;
    let addr = env.director.query_addr;
    let admin = env.director.admin_addr;
    let mut names = BTreeSet::new();
    for _ in 0..100 {
        let answer = query(addr, &allocation_query(Some("p1")));
        assert_eq!(code(&answer), "ok", "{answer}");
        assert!(answer["token"].as_str().is_some_and(|t| !t.is_empty()));
        names.insert(answer["target"]["name"].as_str().unwrap().to_string());
    }
    // One GameServerAllocation POST, one server, the player listed once.
    assert_eq!(fake.allocations(), 1);
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names.into_iter().next().unwrap();
    assert_eq!(players_of(&fake, &name), ["p1"]);
    assert_eq!(allocations(admin, "allocated"), 1.0);
    assert_eq!(allocations(admin, "reused"), 99.0);
    // Another player, or the same player asking for other labels, is another allocation.
    let answer = query(addr, &allocation_query(Some("p2")));
    assert_eq!(code(&answer), "ok", "{answer}");
    let answer = query(
        addr,
        &json!({"resourceType": "gs", "playerId": "p1", "labelSelector": {"agones.dev/fleet": "f1"}})
            .to_string(),
    );
    assert_eq!(code(&answer), "ok", "{answer}");
    assert_eq!(fake.allocations(), 3);
    // Queries without a player id are never handed an earlier allocation.
    for _ in 0..2 {
        assert_eq!(code(&query(addr, &allocation_query(None))), "ok");
    }
    assert_eq!(fake.allocations(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_plus_one_is_rate_limited_without_a_post() {
    let fake = fleet(8, 0).await;
    let env = director(&fake, "{ratePerSecond: 1, burst: 3}").await;
    let addr = env.director.query_addr;
    let admin = env.director.admin_addr;
    let started = Instant::now();
    for i in 0..3 {
        let answer = query(addr, &allocation_query(Some(&format!("p{i}"))));
        assert_eq!(code(&answer), "ok", "{answer}");
    }
    let answer = query(addr, &allocation_query(Some("p3")));
    // The bucket refills one a second: the four queries ran well within that.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code(&answer), "rate_limited", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("burst 3"),
        "{answer}"
    );
    assert_eq!(fake.allocations(), 3, "no POST for the refused query");
    assert_eq!(allocations(admin, "rate_limited"), 1.0);
    assert_eq!(
        metric(admin, "udp_director_queries_total{result=\"rate_limited\"}"),
        1.0
    );
    // A player already allocated is still served from the budget's memory, bucket or not.
    let answer = query(addr, &allocation_query(Some("p0")));
    assert_eq!(code(&answer), "ok", "{answer}");
    assert_eq!(fake.allocations(), 3);
    // A second later the bucket holds a token again.
    assert!(
        common::fake_kube::wait(Duration::from_secs(5), || code(&query(
            addr,
            &allocation_query(Some("p4"))
        )) == "ok")
        .await
    );
    assert_eq!(fake.allocations(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_players_concurrent_queries_share_one_allocation() {
    let fake = fleet(4, 4).await;
    let env = director(&fake, "{playersList: players}").await;
    // Slow enough that all the queries arrive while the first allocation runs.
    fake.set_allocation_delay(Duration::from_millis(400));
    let answers = concurrently(
        env.director.query_addr,
        vec![allocation_query(Some("p-busy")); 12],
    )
    .await;
    let names: BTreeSet<String> = answers
        .iter()
        .map(|(a, _)| {
            assert_eq!(code(a), "ok", "{a}");
            a["target"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(fake.allocations(), 1, "one POST for one player's queries");
    let admin = env.director.admin_addr;
    assert_eq!(allocations(admin, "allocated"), 1.0);
    assert_eq!(allocations(admin, "reused"), 11.0);
}
