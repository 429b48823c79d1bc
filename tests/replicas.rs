//! Several director processes behind one address (SPEC §7): the real binary, `reusePort: true`
//! standing in for an L4 load balancer (the kernel hashes each TCP connection and UDP flow
//! to one process of the SO_REUSEPORT group), sealed tokens from one key file, and clients on
//! the client library (`udp-director-client`) with its resume rule.
//!
//! - a token issued by one process opens a session on another; a `kill -9` of a process
//!   under traffic leaves every client hearing its server again (resumed on the survivors);
//! - key rotation both steps through a kubelet-style symlink swap; an invalid key file is
//!   rejected whole; a flipped byte, another key and an expired token are each refused and
//!   counted; a token bound to another IP opens only after its address answers a challenge;
//! - a sealed config without keys, or with a bad key file, does not start.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use testkit::{ChildDirector, EchoServer, TempDir, eventually, yaml};
use tokio::time::Instant;
use udp_director_client::{Grant, Queries, Query, Session};

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");
const MAGIC: &[u8] = b"\xff\xff\xff\xffRESET";

fn key_line(id: &str, byte: u8) -> String {
    format!(
        "{id} {}\n",
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    )
}

/// A key file the way the kubelet mounts a Secret: `dir/token-keys` → `..data/token-keys`,
/// `..data` → a versioned directory, swapped by renaming a new `..data` link over it.
struct MountedKeys {
    dir: TempDir,
    version: u32,
}

impl MountedKeys {
    fn new(text: &str) -> Self {
        let dir = TempDir::new("keys").unwrap();
        let mut keys = Self { dir, version: 0 };
        keys.swap(text);
        std::os::unix::fs::symlink("..data/token-keys", keys.path()).unwrap();
        keys
    }

    fn path(&self) -> PathBuf {
        self.dir.path.join("token-keys")
    }

    /// Publishes `text` as the kubelet does: a new version directory, then one atomic rename.
    fn swap(&mut self, text: &str) {
        self.version += 1;
        let version = self.dir.path.join(format!("..v{}", self.version));
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("token-keys"), text).unwrap();
        let tmp = self.dir.path.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path.join("..data")).unwrap();
    }
}

fn sealed_yaml(keys: &Path, extra: &str, echoes: &[SocketAddr]) -> String {
    yaml::director(
        &format!(
            "reusePort: true\ntokenFormat: sealed\ntokenKeysFile: \"{}\"\n{extra}",
            keys.display()
        ),
        &[yaml::echo_mapping(echoes)],
    )
}

/// `n` processes on one config sharing the first one's query and data ports.
fn replicas(yaml: &str, n: usize) -> Vec<ChildDirector> {
    let first =
        ChildDirector::spawn_yaml(Path::new(BIN), TempDir::new("r0").unwrap(), yaml, &[]).unwrap();
    let mut all = vec![first];
    for i in 1..n {
        all.push(join(yaml, &all[0], i));
    }
    all
}

/// One more process joining `first`'s ports.
fn join(yaml: &str, first: &ChildDirector, i: usize) -> ChildDirector {
    let (q, d) = (
        first.query.port().to_string(),
        first.data.port().to_string(),
    );
    ChildDirector::spawn_yaml(
        Path::new(BIN),
        TempDir::new(&format!("r{i}")).unwrap(),
        yaml,
        &[
            "--query-port".as_ref(),
            q.as_ref(),
            "--data-port".as_ref(),
            d.as_ref(),
        ],
    )
    .unwrap()
}

fn sum(procs: &[&ChildDirector], series: &str) -> f64 {
    procs.iter().map(|p| p.metric(series)).sum()
}

/// One game client: a thread sending every 20 ms, reading replies and applying the resume
/// rule, recording when each reply arrived.
struct Player {
    heard: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Player {
    fn start(data: SocketAddr, grant: Grant) -> Self {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (heard, stop) = (Arc::clone(&heard), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut session = Session::open(data, &grant).unwrap();
                let mut buf = [0u8; 256];
                // Bounded: stops when told, or after two minutes whatever happens.
                let until = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let _ = session.send(b"frame");
                    if let Ok(Some(_)) = session.recv_timeout(&mut buf, Duration::from_millis(20)) {
                        heard.lock().unwrap().push(Instant::now());
                    }
                    let _ = session.tick();
                }
                session.resumes()
            })
        };
        Self {
            heard,
            stop,
            thread: Some(thread),
        }
    }

    fn last_heard(&self) -> Option<Instant> {
        self.heard.lock().unwrap().last().copied()
    }

    /// The first reply at or after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.heard.lock().unwrap().iter().copied().find(|h| *h >= t)
    }

    /// The longest silence between replies after `t`.
    fn longest_gap_after(&self, t: Instant) -> Duration {
        let heard = self.heard.lock().unwrap();
        let mut prev = t;
        let mut gap = Duration::ZERO;
        for h in heard.iter().copied().filter(|h| *h >= t) {
            gap = gap.max(h - prev);
            prev = h;
        }
        gap
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

#[test]
fn replicas_redeem_each_others_tokens_and_clients_resume_after_a_kill_9() {
    let echoes: Vec<EchoServer> = (0..4)
        .map(|_| EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let keys = MountedKeys::new(&key_line("k1", 7));
    let yaml = sealed_yaml(&keys.path(), "", &addrs);
    // Every token is issued by the first process: it is alone on the query port when the
    // clients ask. The others join before the first datagram, so the kernel spreads the
    // clients' flows over all three and most sessions open on a process that never saw the
    // query.
    let mut procs = replicas(&yaml, 1);
    let players = 24;
    let grants: Vec<Grant> = {
        let mut q = Queries::connect(procs[0].query).unwrap();
        (0..players)
            .map(|i| {
                q.ask(&Query::new("echo").label("zone", &format!("z{}", i % 4)))
                    .unwrap()
            })
            .collect()
    };
    assert!(
        grants
            .iter()
            .all(|g| g.resume_seconds == Some(600) && g.token.len() <= 128)
    );
    procs.push(join(&yaml, &procs[0], 1));
    procs.push(join(&yaml, &procs[0], 2));
    let data = procs[0].data;
    let clients: Vec<Player> = grants.into_iter().map(|g| Player::start(data, g)).collect();
    assert!(
        eventually(Duration::from_secs(10), || clients
            .iter()
            .all(|c| c.last_heard().is_some())),
        "every client hears its server"
    );
    let all: Vec<&ChildDirector> = procs.iter().collect();
    // Workers publish their counters every 100 ms.
    assert!(eventually(Duration::from_secs(5), || sum(
        &all,
        "udp_director_sessions_active"
    ) == players as f64
        && sum(&all, "udp_director_sessions_created_total")
            >= players as f64));
    let issued: Vec<f64> = all
        .iter()
        .map(|p| p.metric("udp_director_tokens_issued_total"))
        .collect();
    let created: Vec<f64> = all
        .iter()
        .map(|p| p.metric("udp_director_sessions_created_total"))
        .collect();
    println!("before the kill: tokens issued per process {issued:?}, sessions created {created:?}");
    assert_eq!(issued, [players as f64, 0.0, 0.0]);
    assert!(
        created[1] + created[2] >= 1.0,
        "sessions opened on processes that did not issue their tokens: {created:?}"
    );

    // kill -9 the process holding the most sessions, under traffic.
    let active: Vec<f64> = all
        .iter()
        .map(|p| p.metric("udp_director_sessions_active"))
        .collect();
    let victim = (0..3)
        .max_by(|a, b| active[*a].total_cmp(&active[*b]))
        .unwrap();
    let killed = Instant::now();
    procs[victim].kill_9().unwrap();
    let survivors: Vec<&ChildDirector> = procs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p)
        .collect();
    assert!(
        eventually(Duration::from_secs(15), || clients.iter().all(|c| c
            .last_heard()
            .is_some_and(|h| h > killed + Duration::from_millis(50)))),
        "every client hears its server again after the kill"
    );
    // Clients silenced by the kill (their session died with the process, or the kernel
    // rehashed their flow to another survivor): how long until they heard their server again.
    let mut recovered: Vec<Duration> = clients
        .iter()
        .filter(|c| c.longest_gap_after(killed) >= Duration::from_millis(200))
        .filter_map(|c| c.first_after(killed).map(|_| c.longest_gap_after(killed)))
        .collect();
    recovered.sort();
    let created_before: f64 = created
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, c)| c)
        .sum();
    let reopened = || sum(&survivors, "udp_director_sessions_created_total") - created_before;
    // Workers publish their counters every 100 ms.
    eventually(Duration::from_secs(3), || reopened() >= active[victim]);
    let resumed_sessions = reopened();
    let resumes: Vec<u64> = clients.into_iter().map(Player::finish).collect();
    println!(
        "kill -9 of process {victim} ({} of {players} sessions): {} clients went silent and all heard their server again; silence median {:?}, max {:?}; {resumed_sessions} sessions re-opened on the survivors; resume datagrams sent {}",
        active[victim],
        recovered.len(),
        recovered.get(recovered.len() / 2),
        recovered.last(),
        resumes.iter().sum::<u64>()
    );
    assert!(
        recovered.len() as f64 >= active[victim],
        "at least the killed process's clients were silenced and recovered"
    );
    assert!(
        resumed_sessions >= active[victim],
        "their sessions re-opened on the survivors"
    );
    assert!(
        recovered
            .last()
            .is_some_and(|m| *m < Duration::from_secs(5)),
        "resumed within seconds: {recovered:?}"
    );
    drop(echoes);
}

/// Sends `first` (a token datagram) from `socket`, then pings through; true once an echo
/// comes back within `within`.
fn opens_from(socket: &UdpSocket, data: SocketAddr, first: &[u8], within: Duration) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 64];
    let token = first.strip_prefix(MAGIC).unwrap_or(first);
    while Instant::now() < deadline {
        socket.send_to(first, data).unwrap();
        socket.send_to(b"ping", data).unwrap();
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            let got = &buf[..n];
            if got == b"ping" {
                return true;
            }
            // Proof of address: a token holding a session elsewhere is challenged first.
            if let Some(nonce) = testkit::client::challenge_nonce(got) {
                let answer = testkit::client::response(&nonce, token);
                socket.send_to(&answer, data).unwrap();
                socket.send_to(b"ping", data).unwrap();
            }
        }
    }
    false
}

fn opens(data: SocketAddr, first: &[u8], within: Duration) -> bool {
    opens_from(
        &UdpSocket::bind("127.0.0.1:0").unwrap(),
        data,
        first,
        within,
    )
}

fn resume(token: &str) -> Vec<u8> {
    [MAGIC, token.as_bytes()].concat()
}

#[test]
fn keys_rotate_in_two_steps_and_every_bad_token_is_refused_and_counted() {
    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let mut keys = MountedKeys::new(&key_line("k1", 1));
    // Bare tokens open for 1 s, [magic][token] re-opens for 10 min.
    let yaml = sealed_yaml(
        &keys.path(),
        "tokenTTLSeconds: 1\ntokenResumeSeconds: 600\n",
        &[echo.addr],
    );
    let procs = replicas(&yaml, 2);
    let all: Vec<&ChildDirector> = procs.iter().collect();
    let (query, data) = (procs[0].query, procs[0].data);
    let ask = || Query::new("echo").send(query).unwrap().token;
    let old = ask();
    assert!(opens(data, old.as_bytes(), Duration::from_secs(3)));

    // Step 1: the new key first, the old one kept.
    keys.swap(&format!("{}{}", key_line("k2", 2), key_line("k1", 1)));
    let applied = |n: f64| {
        eventually(Duration::from_secs(5), || {
            all.iter()
                .all(|p| p.metric("udp_director_token_key_reloads_total{result=\"applied\"}") >= n)
        })
    };
    assert!(
        applied(1.0),
        "both processes re-read the key file within 2 s"
    );
    let new = ask();
    assert!(
        opens(data, &resume(&old), Duration::from_secs(3)),
        "old tokens still open"
    );
    assert!(opens(data, &resume(&new), Duration::from_secs(3)));

    // Step 2: the old key removed. Tokens sealed with it are refused as an unknown key.
    keys.swap(&key_line("k2", 2));
    assert!(applied(2.0));
    assert!(
        opens(data, &resume(&new), Duration::from_secs(3)),
        "new tokens were sealed with k2"
    );
    assert!(!opens(data, &resume(&old), Duration::from_millis(600)));
    assert!(eventually(Duration::from_secs(3), || sum(
        &all,
        "udp_director_tokens_rejected_total{reason=\"unknown_key\"}"
    ) >= 1.0));

    // An invalid key file is rejected whole; the keys in force stay.
    keys.swap("k3 not-base64\n");
    assert!(eventually(Duration::from_secs(5), || all.iter().all(|p| p
        .metric(
            "udp_director_token_key_reloads_total{result=\"rejected\"}"
        )
        >= 1.0)));
    assert!(opens(data, &resume(&new), Duration::from_secs(3)));

    // A flipped byte: refused like an unknown token.
    let mut flipped = ask().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    assert!(!opens(data, &flipped, Duration::from_millis(600)));
    // A token from a director holding another key.
    let stranger_keys = MountedKeys::new(&key_line("k2-other", 9));
    let stranger = ChildDirector::spawn_yaml(
        Path::new(BIN),
        TempDir::new("stranger").unwrap(),
        &sealed_yaml(&stranger_keys.path(), "", &[echo.addr]),
        &[],
    )
    .unwrap();
    let foreign = Query::new("echo").send(stranger.query).unwrap().token;
    assert!(opens(
        stranger.data,
        foreign.as_bytes(),
        Duration::from_secs(3)
    ));
    assert!(!opens(data, foreign.as_bytes(), Duration::from_millis(600)));
    // A token bound to 127.0.0.1 sent from 127.0.0.2: a handover. It is challenged, opens
    // nothing while unanswered (a forger), and opens once the address answers.
    let bound = ask();
    let elsewhere = UdpSocket::bind("127.0.0.2:0").unwrap();
    elsewhere
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    elsewhere.send_to(bound.as_bytes(), data).unwrap();
    let mut buf = [0u8; 64];
    let n = elsewhere.recv(&mut buf).expect("a challenge");
    assert!(
        testkit::client::challenge_nonce(&buf[..n]).is_some(),
        "a challenge"
    );
    elsewhere.send_to(b"ping", data).unwrap();
    assert!(
        elsewhere.recv(&mut buf).is_err(),
        "no session before the proof"
    );
    assert!(opens_from(
        &elsewhere,
        data,
        bound.as_bytes(),
        Duration::from_secs(3)
    ));
    // A bare token past its 1 s TTL (its resume window is still open: [magic][token] works).
    let expiring = ask();
    assert!(
        eventually(Duration::from_secs(5), || {
            // From a fresh address each time: on a live session a bare token that does not
            // redeem is game traffic.
            let late = UdpSocket::bind("127.0.0.1:0").unwrap();
            late.send_to(expiring.as_bytes(), data).unwrap();
            sum(
                &all,
                "udp_director_tokens_rejected_total{reason=\"expired_token\"}",
            ) >= 1.0
        }),
        "an expired bare token is refused"
    );
    assert!(opens(data, &resume(&expiring), Duration::from_secs(3)));

    let rejected = |reason: &str| {
        sum(
            &all,
            &format!("udp_director_tokens_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(eventually(Duration::from_secs(3), || {
        rejected("invalid_token") >= 1.0
            && rejected("unknown_key") >= 2.0
            && rejected("expired_token") >= 1.0
            && sum(
                &all,
                "udp_director_path_challenges_total{outcome=\"proved\"}",
            ) >= 1.0
    }));
    println!(
        "refused: invalid_token {} (flipped byte), unknown_key {} (removed key, another key), expired {}",
        rejected("invalid_token"),
        rejected("unknown_key"),
        rejected("expired_token")
    );
    assert_eq!(
        stranger.metric("udp_director_tokens_rejected_total{reason=\"invalid_token\"}"),
        0.0
    );
}

#[test]
fn a_sealed_config_without_usable_keys_does_not_start() {
    let dir = TempDir::new("nokeys").unwrap();
    let run = |yaml: &str| {
        let path = dir.path.join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mapping = yaml::static_mapping("echo", "127.0.0.1:9".parse().unwrap());
    let (code, err) = run(&yaml::director(
        "tokenFormat: sealed\n",
        std::slice::from_ref(&mapping),
    ));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("tokenFormat") && err.contains("tokenKeysFile"),
        "{err}"
    );

    let bad = dir.path.join("bad-keys");
    std::fs::write(&bad, "k1 c2hvcnQ=\n").unwrap();
    let (code, err) = run(&yaml::director(
        &format!(
            "tokenFormat: sealed\ntokenKeysFile: \"{}\"\n",
            bad.display()
        ),
        std::slice::from_ref(&mapping),
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("token keys") && err.contains("line 1"),
        "{err}"
    );

    let (code, err) = run(&yaml::director(
        &format!(
            "tokenFormat: sealed\ntokenKeysFile: \"{}\"\n",
            dir.path.join("missing").display()
        ),
        &[mapping],
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("token keys"), "{err}");
}

#[test]
fn without_reuse_port_a_second_process_on_the_data_port_does_not_start() {
    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let yaml = yaml::director("", &[yaml::echo_mapping(&[echo.addr])]);
    let first =
        ChildDirector::spawn_yaml(Path::new(BIN), TempDir::new("alone").unwrap(), &yaml, &[])
            .unwrap();
    let dir = TempDir::new("second").unwrap();
    let config = dir.path.join("config.yaml");
    std::fs::write(&config, &yaml).unwrap();
    // Bounded by `timeout` in case it wrongly starts and keeps running.
    let out = std::process::Command::new("timeout")
        .arg("10")
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--data-port")
        .arg(first.data.port().to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("data") && err.contains("reusePort"), "{err}");
    // The first one is untouched.
    assert!(opens(
        first.data,
        Query::new("echo")
            .send(first.query)
            .unwrap()
            .token
            .as_bytes(),
        Duration::from_secs(3)
    ));
}
