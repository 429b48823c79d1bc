//! The load tool (`loadgen`): measures the director against a straight path to the same
//! backend, in one run, on loopback only.
//!
//! It starts a UDP echo backend in this process and the director binary (`--director`,
//! default: `udp-director` beside this executable) as a child process on a generated static
//! config, then drives N client sockets:
//! - closed loop: each client keeps one datagram in flight; reports round trips per second
//!   and RTT percentiles, through the director, straight to the backend, optionally through
//!   another proxy (`--raw-proxy`, e.g. nginx) and another director build
//!   (`--also-director`, e.g. the previous commit's), in interleaved rounds whose order of
//!   proxied paths rotates (each path takes every place in a round once over as many rounds);
//! - fixed rate (`--rate`): datagrams are sent on a schedule regardless of replies; reports
//!   RTT percentiles, i.e. the latency the director adds at that load;
//! - `--idle-sessions N`: opens N sessions, lets them idle and reports the director's
//!   resident memory per session;
//! - `--scale-sessions N --targets M`: opens N concurrent sessions spread over M targets from
//!   many loopback source addresses, and reports sessions, upstream sockets and fds;
//! - `--guess-tokens N`: sends N forged tokens and control datagrams and reports how fast they
//!   are refused (and that none created a session);
//! - `--soak-sessions N --wave W`: opens and reaps N sessions in waves of W and reports the
//!   director's descriptors and RSS before (after one warm-up session) and after.
//!
//! Every loop is bounded by a count and a deadline and stops by itself. Traffic goes only to
//! 127.0.0.0/8 (and [`drive`], called by the namespace benchmark `nsbench`, to namespaces
//! the harness made).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use tokio::time::Instant;

use crate::child::{ChildDirector, TempDir};
use crate::client::query_token;
use crate::echo::EchoServer;
use crate::rng::Rng;
use crate::wait::{eventually, pause};
use crate::yaml;
use udp_director_client::{Queries, Query};

/// `loadgen` arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "loadgen",
    about = "Measure udp-director on loopback (see Docs/Benchmarks.md)"
)]
pub struct LoadgenArgs {
    /// The director binary (default: `udp-director` beside this executable; build it with
    /// `cargo build --release`).
    #[arg(long)]
    pub director: Option<PathBuf>,
    /// A second director binary measured in the same interleaved rounds (before/after).
    #[arg(long)]
    pub also_director: Option<PathBuf>,
    /// Concurrent client sockets.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Datagram payload size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Total datagrams per second across clients (open loop); 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Director data-plane threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Also measure another UDP proxy (e.g. nginx) already forwarding to `--backend-port`.
    #[arg(long)]
    pub raw_proxy: Option<SocketAddr>,
    /// Port for the echo backend (0 = any); fixed when a `--raw-proxy` must point at it.
    #[arg(long, default_value_t = 0)]
    pub backend_port: u16,
    /// Instead of throughput: open this many idle sessions and report memory per session.
    #[arg(long)]
    pub idle_sessions: Option<usize>,
    /// Instead of datagram throughput: queries answered per second from the cache over
    /// `--query-connections` connections (pipelined), for this many seconds per director.
    #[arg(long)]
    pub query_seconds: Option<f64>,
    #[arg(long, default_value_t = 64)]
    pub query_connections: usize,
    /// Instead of throughput: open this many concurrent sessions over `--targets` targets.
    #[arg(long)]
    pub scale_sessions: Option<usize>,
    /// The director's `busyPollMicros` (0 = off); the director's default when not given.
    #[arg(long)]
    pub busy_poll_micros: Option<u64>,
    /// Rounds of (direct, director[, raw-proxy]) phases, interleaved; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Number of targets for `--idle-sessions`, `--scale-sessions` and `--soak-sessions`.
    #[arg(long, default_value_t = 1)]
    pub targets: usize,
    /// Instead of throughput: send this many forged tokens / control datagrams.
    #[arg(long)]
    pub guess_tokens: Option<usize>,
    /// Instead of throughput: open and reap this many sessions in waves of `--wave`.
    #[arg(long)]
    pub soak_sessions: Option<usize>,
    /// Sessions per soak wave (this process holds one socket per session of a wave).
    #[arg(long, default_value_t = 10_000)]
    pub wave: usize,
    /// Extra YAML for the measured directors' config, e.g.
    /// `$'tokenFormat: sealed\ntokenKeysFile: /tmp/keys'` (a literal `\n` also separates lines).
    #[arg(long, default_value = "")]
    pub director_yaml: String,
    /// Throughput: the director under test sends PROXY v2 headers to its target
    /// (`proxyProtocol: v2`), the `--also-director` does not, and the echo backend reads the
    /// header off before echoing: the cost of the header, same run.
    #[arg(long)]
    pub proxy_protocol: bool,
}

/// Results of one measured phase.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub name: String,
    pub replies: u64,
    pub lost: u64,
    pub elapsed: Duration,
    pub rtts_ns: Vec<u64>,
    /// Busy CPU time of the whole machine during the timed part ([`crate::cpu`]); `None`
    /// where `/proc/stat` cannot be read.
    pub machine_busy: Option<Duration>,
}

impl PhaseResult {
    pub fn per_second(&self) -> f64 {
        self.replies as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Percentile `p` in 0..=100 of the round-trip times, in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        percentile(&self.rtts_ns, p) as f64 / 1000.0
    }
}

/// Nearest-rank percentile of unsorted samples (sorts a copy).
pub fn percentile(samples: &[u64], p: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Starts the director `exe` on a static config listing `targets` (named `t00000`...,
/// labelled `target: t00000`...) with the load tool's limits.
pub fn spawn_director(
    exe: &Path,
    targets: &[SocketAddr],
    args: &LoadgenArgs,
    max_sessions: usize,
) -> io::Result<ChildDirector> {
    spawn_director_with(exe, targets, args, max_sessions, false)
}

/// [`spawn_director`], with `proxyProtocol: v2` on the mapping when `proxy` is set.
pub fn spawn_director_with(
    exe: &Path,
    targets: &[SocketAddr],
    args: &LoadgenArgs,
    max_sessions: usize,
    proxy: bool,
) -> io::Result<ChildDirector> {
    let mut mapping = format!(
        "  echo:\n{}    loadBalancing: {{type: leastSessions}}\n    static:\n",
        if proxy { "    proxyProtocol: v2\n" } else { "" }
    );
    for (i, t) in targets.iter().enumerate() {
        mapping.push_str(&format!(
            "      - {{name: t{i:05}, address: \"{}\", port: {}, labels: {{target: t{i:05}}}}}\n",
            t.ip(),
            t.port()
        ));
    }
    let busy_poll = args
        .busy_poll_micros
        .map(|micros| format!("busyPollMicros: {micros}\n"))
        .unwrap_or_default();
    let extra = format!(
        "dataWorkers: {}\n{busy_poll}maxSessions: {max_sessions}\nlimits: {{queryRatePerSecond: 100000, queryBurst: 100000, maxQueryConnectionsPerIp: 100000, maxTokens: {}}}\n",
        args.workers,
        max_sessions.max(1_000_000)
    );
    // Load clients come from 127.0.0.1 (and, for scale, from 127.0.0.2.., each host asking
    // for its tokens itself, so every token opens at once from its bound IP without a proof
    // of address): lift the per-IP cap; the memory runs hold sessions to targets that never
    // reply: no unanswered timeout. A director built before those keys existed refuses
    // them, so it is tried without them too (`--also-director`).
    let with_cap = format!(
        "{extra}maxSessionsPerClientIp: {max_sessions}\nunansweredTimeoutSeconds: 86400\n{}\n",
        args.director_yaml.replace("\\n", "\n")
    );
    ChildDirector::spawn_yaml(
        exe,
        TempDir::new("loadgen")?,
        &yaml::director(&with_cap, &[mapping.clone()]),
        &[],
    )
    .or_else(|_| {
        ChildDirector::spawn_yaml(
            exe,
            TempDir::new("loadgen")?,
            &yaml::director(&extra, &[mapping]),
            &[],
        )
    })
}

/// The director binary to measure: `--director`, else `udp-director` beside this executable.
pub fn director_binary(args: &LoadgenArgs) -> io::Result<PathBuf> {
    let exe = match &args.director {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("udp-director"),
    };
    if exe.is_file() {
        Ok(exe)
    } else {
        Err(io::Error::other(format!(
            "no director binary at {} (build it with `cargo build --release`, or pass --director)",
            exe.display()
        )))
    }
}

/// Payload header: client index, sequence, send time in ns since the phase started.
const HEADER: usize = 16;

/// Drives `clients` sockets at `dest` for `seconds`. Each socket first sends `hello` (a
/// token) if given. Closed loop when `rate == 0`, otherwise a fixed total rate. The sockets
/// are bound to 127.0.0.1 for a loopback `dest`, else to any address of the calling thread's
/// network namespace (a client namespace of [`crate::netns`]).
pub fn drive(
    name: &str,
    dest: SocketAddr,
    hello: Option<&[String]>,
    clients: usize,
    size: usize,
    seconds: f64,
    rate: u64,
) -> io::Result<PhaseResult> {
    let size = size.max(HEADER);
    let clients = clients.max(1);
    let mut poll = Poll::new()?;
    let mut senders = Vec::with_capacity(clients);
    let mut receivers = Vec::with_capacity(clients);
    let bind = if dest.ip().is_loopback() {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    for i in 0..clients {
        let socket = UdpSocket::bind((bind, 0))?;
        socket.set_nonblocking(true)?;
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(1 << 20);
        let mut receiver = mio::net::UdpSocket::from_std(socket.try_clone()?);
        poll.registry()
            .register(&mut receiver, Token(i), Interest::READABLE)?;
        // Client i sends token i (a token holds one session).
        if let Some(h) = hello.and_then(|h| h.get(i % h.len().max(1))) {
            socket.send_to(h.as_bytes(), dest)?;
        }
        senders.push(socket);
        receivers.push(receiver);
    }
    // Let the hellos (tokens) land before timing starts: a first round trip per client
    // proves its session (bounded: 2 s per client at most, losses are re-sent later).
    if hello.is_some() {
        settle(&senders, dest)?;
    }
    let total = Duration::from_secs_f64(seconds);
    let busy_before = crate::cpu::machine_busy();
    let start = Instant::now();
    let mut result = if rate == 0 {
        closed_loop(&mut poll, &senders, &receivers, dest, size, start, total)?
    } else {
        fixed_rate(poll, &senders, receivers, dest, size, start, total, rate)?
    };
    result.machine_busy = crate::cpu::machine_busy()
        .zip(busy_before)
        .map(|(after, before)| after.saturating_sub(before));
    result.name = name.to_string();
    Ok(result)
}

/// One round trip per client socket, so every session exists before the clock starts.
fn settle(senders: &[UdpSocket], dest: SocketAddr) -> io::Result<()> {
    let mut buf = [0u8; 64];
    for s in senders {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        for _ in 0..4 {
            s.send_to(b"settle", dest)?;
            if s.recv_from(&mut buf).is_ok() {
                break;
            }
        }
        s.set_nonblocking(true)?;
    }
    Ok(())
}

/// Payload: client index, sequence number, send time in ns since `start`, then padding.
fn stamp(payload: &mut [u8], client: usize, seq: u32, start: Instant) {
    payload[0..4].copy_from_slice(&(client as u32).to_le_bytes());
    payload[4..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
}

/// Reads one reply's client index and round-trip time.
fn unstamp(reply: &[u8], start: Instant) -> Option<(usize, u64)> {
    let idx = u32::from_le_bytes(reply.get(0..4)?.try_into().ok()?) as usize;
    let sent = u64::from_le_bytes(reply.get(8..16)?.try_into().ok()?);
    Some((
        idx,
        (start.elapsed().as_nanos() as u64).saturating_sub(sent),
    ))
}

/// Every client keeps one datagram in flight; a reply triggers the next send.
fn closed_loop(
    poll: &mut Poll,
    senders: &[UdpSocket],
    receivers: &[mio::net::UdpSocket],
    dest: SocketAddr,
    size: usize,
    start: Instant,
    total: Duration,
) -> io::Result<PhaseResult> {
    let clients = senders.len();
    let mut payload = vec![0u8; size];
    let mut buf = vec![0u8; 65_536];
    let mut rtts: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut last_sent = vec![Duration::ZERO; clients];
    let mut seq = 0u32;
    let (mut replies, mut lost) = (0u64, 0u64);
    let mut send = |i: usize, last_sent: &mut [Duration]| {
        seq = seq.wrapping_add(1);
        stamp(&mut payload, i, seq, start);
        let _ = senders[i].send_to(&payload, dest);
        last_sent[i] = start.elapsed();
    };
    for i in 0..clients {
        send(i, &mut last_sent);
    }
    let mut events = Events::with_capacity(4096);
    let mut next_check = Duration::from_millis(50);
    // Bounded by count as well as time.
    let max_sends: u64 = 50_000_000;
    let mut sends: u64 = clients as u64;
    while start.elapsed() < total && sends < max_sends {
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            while let Ok((n, _)) = receivers[i].recv_from(&mut buf) {
                let Some((idx, rtt)) = unstamp(&buf[..n], start) else {
                    continue;
                };
                rtts.push(rtt);
                replies += 1;
                if idx == i && start.elapsed() < total {
                    send(i, &mut last_sent);
                    sends += 1;
                }
            }
        }
        let now = start.elapsed();
        if now >= next_check {
            // A datagram unanswered for 200 ms is lost; send a fresh one.
            for i in 0..clients {
                if now.saturating_sub(last_sent[i]) > Duration::from_millis(200) {
                    lost += 1;
                    send(i, &mut last_sent);
                    sends += 1;
                }
            }
            next_check = now + Duration::from_millis(50);
        }
    }
    Ok(PhaseResult {
        name: String::new(),
        replies,
        lost,
        elapsed: start.elapsed().min(total),
        rtts_ns: rtts,
        machine_busy: None,
    })
}

/// Sends on a fixed schedule from this thread while a receiver thread timestamps replies the
/// moment they arrive, so the sender's pacing sleeps never inflate the measured RTT.
#[allow(clippy::too_many_arguments)]
fn fixed_rate(
    mut poll: Poll,
    senders: &[UdpSocket],
    receivers: Vec<mio::net::UdpSocket>,
    dest: SocketAddr,
    size: usize,
    start: Instant,
    total: Duration,
    rate: u64,
) -> io::Result<PhaseResult> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_rx = std::sync::Arc::clone(&stop);
    let receiver = std::thread::spawn(move || -> io::Result<Vec<u64>> {
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; 65_536];
        let mut rtts = Vec::with_capacity(1 << 20);
        while !stop_rx.load(std::sync::atomic::Ordering::Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(10)))?;
            for ev in events.iter() {
                while let Ok((n, _)) = receivers[ev.token().0].recv_from(&mut buf) {
                    if let Some((_, rtt)) = unstamp(&buf[..n], start) {
                        rtts.push(rtt);
                    }
                }
            }
        }
        Ok(rtts)
    });
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut payload = vec![0u8; size];
    let mut next = Duration::ZERO;
    let mut sends: u64 = 0;
    let max_sends = rate.saturating_mul(total.as_secs() + 1).min(50_000_000);
    while next < total && sends < max_sends {
        let now = start.elapsed();
        if next > now {
            precise_sleep(next - now);
        }
        let i = (sends % senders.len() as u64) as usize;
        stamp(&mut payload, i, sends as u32, start);
        let _ = senders[i].send_to(&payload, dest);
        sends += 1;
        next += interval;
    }
    // Give the last replies time to arrive (an RTT is far below this), then stop the receiver.
    pause(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rtts = receiver
        .join()
        .map_err(|_| io::Error::other("receiver thread panicked"))??;
    Ok(PhaseResult {
        name: String::new(),
        replies: rtts.len() as u64,
        lost: sends.saturating_sub(rtts.len() as u64),
        elapsed: total,
        rtts_ns: rtts,
        machine_busy: None,
    })
}

/// Runs the load tool; prints a report on stdout.
pub fn run(args: &LoadgenArgs) -> io::Result<()> {
    let exe = director_binary(args)?;
    let exe = exe.as_path();
    if let Some(n) = args.guess_tokens {
        return guess_tokens(args, exe, n);
    }
    if let Some(n) = args.soak_sessions {
        return soak(args, exe, n);
    }
    if let Some(n) = args.scale_sessions {
        return scale(args, exe, n);
    }
    if let Some(n) = args.idle_sessions {
        return idle_memory(args, exe, n);
    }
    if let Some(seconds) = args.query_seconds {
        return query_throughput(args, exe, seconds);
    }
    if let Some(raw) = args.raw_proxy
        && !raw.ip().is_loopback()
    {
        return Err(io::Error::other("--raw-proxy must be a loopback address"));
    }
    let backend = EchoServer::start_with(
        SocketAddr::from((Ipv4Addr::LOCALHOST, args.backend_port)),
        b"",
        args.proxy_protocol,
    )?;
    // Every round opens fresh client sockets, so earlier rounds' sessions are still live.
    let mut directors = vec![(
        "director",
        spawn_director_with(exe, &[backend.addr], args, 1_000_000, args.proxy_protocol)?,
    )];
    if let Some(other) = &args.also_director {
        directors.push((
            "also",
            spawn_director(other, &[backend.addr], args, 1_000_000)?,
        ));
    }
    // A token per client per round (a token holds one session), pipelined on one connection.
    let rounds_needed = args.repeat.max(1);
    let mut tokens = Vec::new();
    for (_, d) in &directors {
        let mut conn = Queries::connect(d.query)?;
        let grants = conn.ask_many(&Query::new("echo"), args.clients * rounds_needed)?;
        tokens.push(grants.into_iter().map(|g| g.token).collect::<Vec<_>>());
    }
    let mode = if args.rate > 0 {
        format!("fixed rate {} datagrams/s", args.rate)
    } else {
        "closed loop, one datagram in flight per client".to_string()
    };
    println!(
        "loadgen: {} clients, {} B, {}s per phase, {mode}; backend {}, director {} (pid {}){}",
        args.clients,
        args.size,
        args.seconds,
        backend.addr,
        exe.display(),
        directors[0].1.pid(),
        args.also_director
            .as_ref()
            .map(|p| format!(", also {}", p.display()))
            .unwrap_or_default()
    );
    let phase = |name: &str, dest: SocketAddr, hello: Option<&[String]>| {
        drive(
            name,
            dest,
            hello,
            args.clients,
            args.size,
            args.seconds,
            args.rate,
        )
    };
    // The proxied paths run in an order that rotates every round: a path measured later in
    // a round gains a few per cent on this machine, so with as many rounds as paths each
    // path takes every place once. Results keep the listed order.
    let proxied = directors.len() + usize::from(args.raw_proxy.is_some());
    let mut rounds: Vec<Vec<PhaseResult>> = Vec::new();
    for r in 0..rounds_needed {
        let mut round = vec![phase("direct", backend.addr, None)?];
        let mine = r * args.clients..(r + 1) * args.clients;
        let mut got: Vec<Option<PhaseResult>> = (0..proxied).map(|_| None).collect();
        for k in 0..proxied {
            let p = (k + r) % proxied;
            got[p] = Some(match (directors.get(p), args.raw_proxy) {
                (Some((name, d)), _) => phase(name, d.data, Some(&tokens[p][mine.clone()]))?,
                (None, Some(raw)) => phase("raw-proxy", raw, None)?,
                (None, None) => continue,
            });
        }
        round.extend(got.into_iter().flatten());
        rounds.push(round);
    }
    let results = median_round(&rounds);
    if rounds.len() > 1 {
        println!(
            "median of {} interleaved rounds (by throughput per path)",
            rounds.len()
        );
    }
    println!(
        "{:<10} {:>12} {:>8} {:>9} {:>9} {:>9}",
        "path", "round-trips/s", "lost", "p50 µs", "p99 µs", "p999 µs"
    );
    for r in &results {
        println!(
            "{:<10} {:>12.0} {:>8} {:>9.1} {:>9.1} {:>9.1}",
            r.name,
            r.per_second(),
            r.lost,
            r.percentile_us(50.0),
            r.percentile_us(99.0),
            r.percentile_us(99.9)
        );
    }
    let direct = &results[0];
    for r in &results[1..] {
        if r.per_second() == 0.0 || direct.per_second() == 0.0 {
            println!("{} vs direct: no ratio (a path answered nothing)", r.name);
            continue;
        }
        println!(
            "{} vs direct: throughput x{:.2}, added p50 {:+.1} µs, added p99 {:+.1} µs",
            r.name,
            r.per_second() / direct.per_second(),
            r.percentile_us(50.0) - direct.percentile_us(50.0),
            r.percentile_us(99.0) - direct.percentile_us(99.0)
        );
    }
    let find = |name: &str| results.iter().find(|r| r.name == name);
    if let Some(director) = find("director") {
        for other in ["also", "raw-proxy"] {
            match find(other) {
                Some(o) if o.per_second() > 0.0 => println!(
                    "director vs {other}: throughput x{:.2}",
                    director.per_second() / o.per_second()
                ),
                // e.g. an nginx that already stopped: say so rather than print a huge ratio.
                Some(_) => println!("director vs {other}: no ratio ({other} answered nothing)"),
                None => {}
            }
        }
    }
    for (name, d) in &directors {
        let m = d.scrape();
        println!(
            "{name}: {} sessions created, datagrams dropped: {}",
            m.value("udp_director_sessions_created_total"),
            m.sum("udp_director_datagrams_dropped_total")
        );
    }
    Ok(())
}

/// Per path, the round with the median throughput (its percentiles come along with it).
fn median_round(rounds: &[Vec<PhaseResult>]) -> Vec<PhaseResult> {
    let paths = rounds.first().map_or(0, Vec::len);
    (0..paths)
        .map(|p| {
            let mut runs: Vec<&PhaseResult> = rounds.iter().filter_map(|r| r.get(p)).collect();
            runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
            runs[runs.len() / 2].clone()
        })
        .collect()
}

fn dropped_total(director: &ChildDirector) -> f64 {
    director
        .scrape()
        .sum("udp_director_datagrams_dropped_total")
}

/// `n` tokens spread round-robin over the `targets` targets (token `j` for target
/// `j % targets`), queried on one pipelined connection.
fn tokens_spread(director: &ChildDirector, targets: usize, n: usize) -> io::Result<Vec<String>> {
    tokens_spread_from(director, Ipv4Addr::LOCALHOST, targets, n)
}

/// [`tokens_spread`], asked from `from` (the tokens redeem from that IP without a proof).
fn tokens_spread_from(
    director: &ChildDirector,
    from: Ipv4Addr,
    targets: usize,
    n: usize,
) -> io::Result<Vec<String>> {
    let targets = targets.max(1);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&director.query.into(), Duration::from_secs(5))?;
    let mut conn = Queries::from_stream(socket.into())?;
    let mut per_target = Vec::with_capacity(targets);
    for i in 0..targets {
        let q = Query::new("echo").label("target", &format!("t{i:05}"));
        let grants = conn.ask_many(&q, n.div_ceil(targets))?;
        per_target.push(grants.into_iter().map(|g| g.token).collect::<Vec<_>>());
    }
    Ok((0..n)
        .map(|j| per_target[j % targets][j / targets].clone())
        .collect())
}

/// Sink targets: bound sockets nobody reads (sessions need no traffic to exist).
fn sink_targets(n: usize) -> io::Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect()
}

/// Opens `n` sessions from sockets that stay open and idle, then reports the director's RSS
/// growth per session.
fn idle_memory(args: &LoadgenArgs, exe: &Path, n: usize) -> io::Result<()> {
    let targets = sink_targets(args.targets.max(1))?;
    let addrs: Vec<SocketAddr> = targets
        .iter()
        .map(|t| t.local_addr())
        .collect::<Result<_, _>>()?;
    let director = spawn_director(exe, &addrs, args, n + 100)?;
    let before = director.rss_kib();
    // One query per session, as clients do: outstanding tokens are part of the cost.
    let tokens = tokens_spread(&director, addrs.len(), n)?;
    pause(Duration::from_millis(300));
    let fds_before = director.open_fds();
    let mut clients = Vec::with_capacity(n);
    for (i, token) in tokens.iter().enumerate() {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        s.send_to(token.as_bytes(), director.data)?;
        clients.push(s);
        if i % 500 == 499 {
            pause(Duration::from_millis(5));
        }
    }
    let ok = eventually(Duration::from_secs(20), || {
        director.metric("udp_director_sessions_active") as usize >= n
    });
    pause(Duration::from_millis(500));
    let after = director.rss_kib();
    let sessions = director.metric("udp_director_sessions_active");
    let sockets = director.metric("udp_director_upstream_sockets");
    println!(
        "idle sessions: {sessions} of {n} ({}), {} targets, upstream sockets {sockets}, fds {} -> {}",
        if ok { "all" } else { "NOT all" },
        addrs.len(),
        fds_before,
        director.open_fds()
    );
    println!(
        "director RSS {before} KiB -> {after} KiB: {:.0} B per idle session (user-space memory; kernel socket memory not included)",
        (after.saturating_sub(before) as f64 * 1024.0) / sessions.max(1.0)
    );
    drop(clients);
    Ok(())
}

/// Opens `n` concurrent sessions over `--targets` targets from many loopback source
/// addresses (127.0.0.2, 127.0.0.3, ...), each source socket closed after its token is sent
/// so the load tool itself stays under the fd limit; then checks a sample still works.
fn scale(args: &LoadgenArgs, exe: &Path, n: usize) -> io::Result<()> {
    let echo: Vec<EchoServer> = (0..args.targets.max(1))
        .map(|_| EchoServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), b""))
        .collect::<Result<_, _>>()?;
    let addrs: Vec<SocketAddr> = echo.iter().map(|e| e.addr).collect();
    let director = spawn_director(exe, &addrs, args, n + 1000)?;
    let rss_before = director.rss_kib();
    // Each source host asks for its own tokens (a token opens at once from its bound IP);
    // the probes' tokens come from 127.0.0.1.
    const PER_HOST: usize = 40_001;
    let probes = tokens_spread(&director, addrs.len(), addrs.len())?;
    let mut host_tokens: Vec<String> = Vec::new();
    let started = Instant::now();
    let (mut sent, mut host, mut port) = (0usize, 2u8, 20_000u16);
    let (mut used, mut asked_for) = (0usize, 0u8);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent < n && Instant::now() < deadline {
        let ip = Ipv4Addr::new(127, 0, 0, host);
        if asked_for != host || used == host_tokens.len() {
            let want = PER_HOST.min(n - sent);
            host_tokens = tokens_spread_from(&director, ip, addrs.len(), want)?;
            (asked_for, used) = (host, 0);
        }
        let src = SocketAddr::new(IpAddr::V4(ip), port);
        if let Ok(s) = UdpSocket::bind(src) {
            let _ = s.send_to(host_tokens[used].as_bytes(), director.data);
            used += 1;
            sent += 1;
            if sent % 2000 == 0 {
                // Pace so the director's receive buffer never overflows.
                pause(Duration::from_millis(20));
            }
        }
        port = port.wrapping_add(1);
        if port == 0 || port > 60_000 {
            port = 20_000;
            host = host
                .checked_add(1)
                .ok_or_else(|| io::Error::other("ran out of loopback sources"))?;
        }
    }
    eventually(Duration::from_secs(30), || {
        director.metric("udp_director_sessions_active") as usize >= sent
    });
    let sessions = director.metric("udp_director_sessions_active");
    let sockets = director.metric("udp_director_upstream_sockets");
    let fds = director.open_fds();
    // A sample of fresh clients still gets round trips through every target.
    let mut ok = 0usize;
    for (i, token) in probes.iter().enumerate() {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send_to(token.as_bytes(), director.data)?;
        s.send_to(format!("probe {i}").as_bytes(), director.data)?;
        let mut buf = [0u8; 64];
        if s.recv_from(&mut buf).is_ok() {
            ok += 1;
        }
    }
    println!(
        "scale: {sent} token datagrams from distinct sources in {:.1}s; sessions active {sessions}; {} targets",
        started.elapsed().as_secs_f64(),
        addrs.len()
    );
    println!(
        "upstream sockets {sockets} (≈ sessions per target), director fds {fds}, RSS {rss_before} -> {} KiB; probes answered {ok}/{}",
        director.rss_kib(),
        addrs.len()
    );
    Ok(())
}

/// Sends `n` forged tokens (bare, as control datagrams, and malformed) from 256 sockets and
/// reports how fast they are refused. Fails if any created a session.
fn guess_tokens(args: &LoadgenArgs, exe: &Path, n: usize) -> io::Result<()> {
    let echo = EchoServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), b"")?;
    let director = spawn_director(exe, &[echo.addr], args, 1_000)?;
    let senders: Vec<UdpSocket> = (0..256)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()?;
    let magic = b"\xff\xff\xff\xffRESET";
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    const BURST: usize = 4_000;
    let mut sent = 0usize;
    while sent < n && Instant::now() < deadline {
        for _ in 0..BURST.min(n - sent) {
            let mut token = rng.uuid().into_bytes();
            let datagram = match sent % 10 {
                0 | 1 => {
                    token[7] = b'z'; // malformed
                    token
                }
                2..=5 => token,
                _ => [&magic[..], &token].concat(),
            };
            let _ = senders[sent % senders.len()].send_to(&datagram, director.data);
            sent += 1;
        }
        // Pace on the director's own count so its socket buffer never overflows.
        let target = sent as f64;
        eventually(Duration::from_secs(5), || {
            dropped_total(&director) >= target
        });
    }
    let elapsed = started.elapsed();
    let rejected = director.scrape().sum("udp_director_tokens_rejected_total");
    let created = director.metric("udp_director_sessions_created_total");
    let dropped = dropped_total(&director);
    // A real token still works afterwards.
    let token = query_token(director.query, r#"{"resourceType":"echo"}"#)?.token;
    let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    probe.set_read_timeout(Some(Duration::from_secs(1)))?;
    probe.send_to(token.as_bytes(), director.data)?;
    probe.send_to(b"probe", director.data)?;
    let mut buf = [0u8; 16];
    let works = probe.recv_from(&mut buf).is_ok();
    println!(
        "guess-tokens: {sent} attempts in {:.1}s ({:.0}/s incl. pacing), {rejected} rejected as tokens, {dropped} dropped in all, {created} sessions created; real token afterwards: {}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64().max(1e-9),
        if works { "works" } else { "FAILED" }
    );
    println!(
        "director RSS {} KiB, fds {}",
        director.rss_kib(),
        director.open_fds()
    );
    if created > 0.0 || !works {
        return Err(io::Error::other("a guessed token created a session"));
    }
    Ok(())
}

/// Opens and reaps `n` sessions in waves; reports descriptors and RSS before and after, and
/// fails if either ends more than 5 % off its before-figure.
///
/// "Before" is the director after it has served one session end to end (query, token, a
/// datagram each way, reaped): the code those paths run is paged in and lazy statics exist,
/// which no amount of sessions repeats. The cold figure, straight after start-up, is printed
/// beside it. "After" is read once the last wave is reaped and the director has had the
/// chance to hand freed memory back (`udp_director_memory_trims_total` moves, or 8 s pass).
fn soak(args: &LoadgenArgs, exe: &Path, n: usize) -> io::Result<()> {
    let wave = args.wave.clamp(1, 15_000);
    let echo: Vec<EchoServer> = (0..args.targets.max(1))
        .map(|_| EchoServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), b""))
        .collect::<Result<_, _>>()?;
    let mut yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\ndataPort: 0\nadminPort: 0\ndataWorkers: {}\nsessionTimeoutSeconds: 1\nmaxSessions: {}\nlimits: {{queryRatePerSecond: 100000, queryBurst: 100000, maxQueryConnectionsPerIp: 100000}}\nresourceQueryMapping:\n  echo:\n    static:\n",
        args.workers,
        wave + 100
    );
    for (i, e) in echo.iter().enumerate() {
        yaml.push_str(&format!(
            "      - {{name: t{i}, address: 127.0.0.1, port: {}}}\n",
            e.addr.port()
        ));
    }
    let director = ChildDirector::spawn_yaml(exe, TempDir::new("soak")?, &yaml, &[])?;
    let reading = |d: &ChildDirector| (d.open_fds(), d.rss_kib(), d.rss_anon_kib());
    pause(Duration::from_millis(300));
    let cold = reading(&director);
    let reaped = |target: f64| {
        eventually(Duration::from_secs(30), || {
            director.metric("udp_director_sessions_created_total") >= target
                && director.metric("udp_director_sessions_active") == 0.0
                && director.metric("udp_director_upstream_sockets") == 0.0
        })
    };

    // Warm-up: one session end to end.
    let token = query_token(director.query, r#"{"resourceType":"echo"}"#)?.token;
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    client.send_to(token.as_bytes(), director.data)?;
    client.send_to(b"warm-up", director.data)?;
    let mut buf = [0u8; 64];
    client.recv_from(&mut buf)?;
    drop(client);
    if !reaped(1.0) {
        return Err(io::Error::other("the warm-up session was not reaped"));
    }
    let before = reading(&director);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(3_600);
    let (mut opened, mut waves) = (0usize, 0usize);
    let mut trims = 0.0;
    while opened < n && Instant::now() < deadline {
        let size = wave.min(n - opened);
        let tokens: Vec<String> = Queries::connect(director.query)?
            .ask_many(&Query::new("echo"), size)?
            .into_iter()
            .map(|g| g.token)
            .collect();
        let mut clients = Vec::with_capacity(size);
        for (i, token) in tokens.iter().enumerate() {
            let s = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2 + (waves % 200) as u8), 0))?;
            s.send_to(token.as_bytes(), director.data)?;
            s.send_to(b"x", director.data)?;
            clients.push(s);
            if i % 2_000 == 1_999 {
                pause(Duration::from_millis(10));
            }
        }
        let created_target = (1 + opened + size) as f64;
        let all = eventually(Duration::from_secs(30), || {
            director.metric("udp_director_sessions_created_total") >= created_target
        });
        trims = director.metric("udp_director_memory_trims_total");
        drop(clients);
        let gone = reaped(created_target);
        opened += size;
        waves += 1;
        if !all || !gone {
            return Err(io::Error::other(format!(
                "wave {waves}: sessions created {all}, reaped {gone}"
            )));
        }
        if waves % 10 == 0 || opened >= n {
            println!(
                "soak: {opened} sessions opened and reaped in {waves} waves ({:.0}s); fds {}, RSS {} KiB (anonymous {} KiB)",
                started.elapsed().as_secs_f64(),
                director.open_fds(),
                director.rss_kib(),
                director.rss_anon_kib()
            );
        }
    }
    // The trim that follows the last wave's reaping (it may already have happened).
    let trimmed = eventually(Duration::from_secs(8), || {
        director.metric("udp_director_memory_trims_total") > trims
    });
    let after = reading(&director);
    let off = |a: u64, b: u64| (a as f64 - b as f64) / (b as f64).max(1.0) * 100.0;
    let fd_off = off(after.0 as u64, before.0 as u64);
    let rss_off = off(after.1, before.1);
    let anon_off = off(after.2, before.2);
    println!(
        "soak: {opened} sessions in {waves} waves of {wave} in {:.0}s; memory handed back after the last wave: {}\n  fds: cold {} / before {} / after {} ({fd_off:+.1} %)\n  RSS KiB: cold {} / before {} / after {} ({rss_off:+.1} %)\n  anonymous RSS KiB (heap, stacks, buffers): cold {} / before {} / after {} ({anon_off:+.1} %)",
        started.elapsed().as_secs_f64(),
        if trimmed { "yes" } else { "no" },
        cold.0,
        before.0,
        after.0,
        cold.1,
        before.1,
        after.1,
        cold.2,
        before.2,
        after.2
    );
    if opened < n {
        return Err(io::Error::other(
            "soak deadline reached before all sessions",
        ));
    }
    // One descriptor either way is noise on a base of ~20 (a lazily opened runtime fd).
    let fd_moved = after.0.abs_diff(before.0) > 1;
    if (fd_off.abs() > 5.0 && fd_moved) || rss_off.abs() > 5.0 {
        return Err(io::Error::other(
            "descriptors or RSS did not return to before ±5 %",
        ));
    }
    Ok(())
}

/// A sub-millisecond sleep for the fixed-rate sender (nanosleep; ~50 µs timer slack).
fn precise_sleep(d: Duration) {
    pause(d);
}

/// Queries answered per second by each director (`--director`, `--also-director`), in
/// interleaved rounds: `--query-connections` connections, each keeping 32 queries in flight.
fn query_throughput(args: &LoadgenArgs, exe: &Path, seconds: f64) -> io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let backend = EchoServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), b"")?;
    let mut directors = vec![(
        "director",
        spawn_director(exe, &[backend.addr], args, 1_000)?,
    )];
    if let Some(other) = &args.also_director {
        directors.push(("also", spawn_director(other, &[backend.addr], args, 1_000)?));
    }
    let line = format!("{}\n", Query::new("echo").to_line()).repeat(32);
    let mut results: Vec<(String, Vec<f64>)> = directors
        .iter()
        .map(|(n, _)| (n.to_string(), Vec::new()))
        .collect();
    for _ in 0..args.repeat.max(1) {
        for (i, (_, d)) in directors.iter().enumerate() {
            let until = Instant::now() + Duration::from_secs_f64(seconds);
            let threads: Vec<_> = (0..args.query_connections.max(1))
                .map(|_| {
                    let (addr, line) = (d.query, line.clone());
                    std::thread::spawn(move || -> io::Result<u64> {
                        let stream = std::net::TcpStream::connect(addr)?;
                        stream.set_nodelay(true)?;
                        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                        let mut writer = stream.try_clone()?;
                        let mut reader = BufReader::new(stream);
                        let (mut ok, mut answer) = (0u64, String::new());
                        while Instant::now() < until {
                            writer.write_all(line.as_bytes())?;
                            for _ in 0..32 {
                                answer.clear();
                                reader.read_line(&mut answer)?;
                                ok += u64::from(answer.starts_with("{\"token\""));
                            }
                        }
                        Ok(ok)
                    })
                })
                .collect();
            let mut ok = 0u64;
            for t in threads {
                ok += t
                    .join()
                    .map_err(|_| io::Error::other("a query thread panicked"))??;
            }
            results[i].1.push(ok as f64 / seconds);
        }
    }
    println!(
        "queries answered from the cache: {} connections x 32 in flight, {seconds}s per round, {} rounds (median)",
        args.query_connections,
        args.repeat.max(1)
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<(String, f64)> = results
        .iter_mut()
        .map(|(n, v)| (n.clone(), median(v)))
        .collect();
    for (name, qps) in &medians {
        println!("{name:<10} {qps:>10.0} queries/s");
    }
    if let [(_, a), (_, b)] = medians.as_slice() {
        println!("director vs also: x{:.2}", a / b.max(1e-9));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn drive_measures_round_trips_against_an_echo() {
        let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
        let r = drive("direct", echo.addr, None, 4, 64, 0.3, 0).unwrap();
        assert!(r.replies > 10, "{r:?}");
        assert!(r.percentile_us(50.0) > 0.0);
        let r = drive("fixed", echo.addr, None, 2, 64, 0.3, 1000).unwrap();
        assert!(r.replies > 100 && r.replies <= 400, "{}", r.replies);
    }
}
