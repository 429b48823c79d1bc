//! The namespace benchmark behind `nsbench` (bench/fastpath/run.sh, Docs/Benchmarks.md):
//! the paths a datagram can take through a pod, measured in one run on the topology of
//! [`crate::netns`]:
//!
//! - `direct`: the client straight to the echo in the target namespace (through the router);
//! - `forwarder`: a hand-tuned user-space forwarder (`refproxy`) in the pod;
//! - `director`: udp-director in the pod, everything in user space;
//! - `fast-path`: udp-director in the pod with `fastPath.enabled: true` on `eth0`, when the
//!   given build starts with it and reports `udp_director_fast_path_enabled 1`; otherwise
//!   the column says "not available" and why, never a figure from another path.
//!
//! Closed loop (one datagram in flight per client) at each `--clients` count, `--reps`
//! interleaved rounds of every path, each cell `--seconds` long with fresh sockets, fresh
//! tokens and a fresh proxy process. Reported per cell: round trips per second, datagrams
//! lost, and machine busy CPU per round trip (`/proc/stat`, all cores) minus the direct
//! path's in the same round at the same client count: the CPU the path adds to a round
//! trip, which is what forwarding its datagrams (one each way) costs the node: the process,
//! softirqs, the pod's extra veth and routing pass. Issue 26 calls this figure "CPU per
//! forwarded datagram". Tables give min / median / max over the rounds.
//!
//! Bounded: every cell stops after `--seconds` (and at most 50 000 000 sends); every child
//! is killed when its cell ends; the topology is deleted at exit.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;
use udp_director_client::{Queries, Query};

use crate::child::ChildDirector;
use crate::echo::EchoServer;
use crate::load::{PhaseResult, drive};
use crate::netns::{Ns, Topology};
use crate::wait::{eventually, pause};
use crate::yaml;

/// `nsbench` arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "nsbench",
    about = "Direct, a forwarder and udp-director with and without the kernel fast path, in network namespaces (see Docs/Benchmarks.md)"
)]
pub struct NsbenchArgs {
    /// The director built without the fast path.
    #[arg(long)]
    pub director: PathBuf,
    /// The director built with `--features fast-path` (absent: that column is "not
    /// available").
    #[arg(long)]
    pub fast_path_director: Option<PathBuf>,
    /// Why there is no fast-path build, when there is none (printed in its column).
    #[arg(long, default_value = "no build with the fast-path feature was given")]
    pub fast_path_missing: String,
    /// The hand-tuned forwarder (`refproxy`, ../shared/bench/refproxy.sh's build).
    #[arg(long)]
    pub refproxy: PathBuf,
    /// Closed-loop client counts, each measured on every path.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub clients: Vec<usize>,
    /// Payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds per cell.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Interleaved rounds of every path.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

/// The measured paths, in the order each round runs them (direct first: the others are
/// charged against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Forwarder,
    Director,
    FastPath,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Direct,
        Route::Forwarder,
        Route::Director,
        Route::FastPath,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Forwarder => "forwarder",
            Route::Director => "director",
            Route::FastPath => "fast-path",
        }
    }
}

/// The forwarder's port in the pod.
const FORWARDER_PORT: u16 = 17_777;
/// How long a child may take to say it is listening.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Cell {
    pub path: Route,
    pub clients: usize,
    pub round: usize,
    pub result: PhaseResult,
    /// CPU of the processes on the path (this one: clients and echo; the proxy) and of the
    /// `ksoftirqd` threads over the cell ([`crate::cpu::processes`]).
    pub own_cpu: Duration,
    /// Datagrams the kernel fast path carried in this cell (fast-path cells only).
    pub kernel_datagrams: Option<f64>,
}

/// Which CPU reading a figure is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The whole machine's busy time (`/proc/stat`): issue 26's definition.
    Machine,
    /// The path's processes and the softirq threads: blind to neighbours' load.
    Own,
}

impl Cell {
    /// CPU per round trip in µs, by `reading`.
    pub fn cpu_per_round_trip_us(&self, reading: Reading) -> Option<f64> {
        let cpu = match reading {
            Reading::Machine => self.result.machine_busy?,
            Reading::Own => self.own_cpu,
        };
        (self.result.replies > 0).then(|| cpu.as_secs_f64() * 1e6 / self.result.replies as f64)
    }
}

/// Runs the benchmark; prints progress on stderr and the report on stdout.
pub fn run(args: &NsbenchArgs) -> io::Result<()> {
    for (what, p) in [
        ("--director", &args.director),
        ("--refproxy", &args.refproxy),
    ] {
        if !p.is_file() {
            return Err(io::Error::other(format!(
                "{what}: no file at {}",
                p.display()
            )));
        }
    }
    let topo = Topology::new()?;
    let target = SocketAddr::from((topo.addr(Ns::Target), 0));
    let echo = topo.run_in(Ns::Target, || EchoServer::start(target, b""))??;
    eprintln!(
        "nsbench: topology {} (client {}, pod {}, target echo {}); {} B closed loop, clients {:?}, {} rounds of {}s cells",
        topo.name(Ns::Pod),
        topo.addr(Ns::Client),
        topo.addr(Ns::Pod),
        echo.addr,
        args.size,
        args.clients,
        args.reps,
        args.seconds
    );
    let fast_path = fast_path_status(&topo, &echo, args);
    match &fast_path {
        Ok(exe) => eprintln!("nsbench: fast path available ({})", exe.display()),
        Err(why) => eprintln!("nsbench: fast path not available: {why}"),
    }
    let background = background_busy()?;
    eprintln!(
        "nsbench: background load before the run: {:.2} cores busy (other processes; adds noise to CPU figures)",
        background
    );

    let bench = Bench {
        topo: &topo,
        echo: &echo,
        args,
        softirqd: crate::cpu::ksoftirqd_pids(),
    };
    let mut cells = Vec::new();
    for round in 0..args.reps.max(1) {
        for &clients in &args.clients {
            for path in Route::ALL {
                let exe = match path {
                    Route::FastPath => match &fast_path {
                        Ok(exe) => exe.as_path(),
                        Err(_) => continue,
                    },
                    _ => args.director.as_path(),
                };
                let cell = bench.measure(path, exe, clients, round)?;
                let us = |r| cell.cpu_per_round_trip_us(r).unwrap_or(f64::NAN);
                eprintln!(
                    "  round {} {:>3} clients {:<10} {:>9.0} rt/s, lost {}, CPU µs per round trip: machine {:.1}, own {:.1}",
                    round + 1,
                    clients,
                    path.label(),
                    cell.result.per_second(),
                    cell.result.lost,
                    us(Reading::Machine),
                    us(Reading::Own)
                );
                cells.push(cell);
            }
        }
    }
    print!(
        "{}",
        report(&cells, args, fast_path.as_ref().err().map(String::as_str))
    );
    Ok(())
}

/// The fast-path build to measure, or why there is none: it must start on a config with
/// `fastPath.enabled: true` and then report `udp_director_fast_path_enabled 1`.
fn fast_path_status(
    topo: &Topology,
    echo: &EchoServer,
    args: &NsbenchArgs,
) -> Result<PathBuf, String> {
    let Some(exe) = &args.fast_path_director else {
        return Err(args.fast_path_missing.clone());
    };
    if !exe.is_file() {
        return Err(format!("no file at {}", exe.display()));
    }
    let director = start_director(topo, echo, exe, true).map_err(|e| {
        format!(
            "{} refused `fastPath.enabled: true` or did not start ({e}; its own message is above)",
            exe.display()
        )
    })?;
    let m = topo
        .scrape(Ns::Pod, director.admin)
        .map_err(|e| format!("no /metrics from the fast-path director: {e}"))?;
    let enabled = m.value("udp_director_fast_path_enabled");
    if enabled == 1.0 {
        Ok(exe.clone())
    } else {
        let failures: Vec<&str> = m
            .text()
            .lines()
            .filter(|l| {
                l.starts_with("udp_director_fast_path_failures_total") && !l.ends_with(" 0")
            })
            .collect();
        Err(format!(
            "the director started but udp_director_fast_path_enabled is {enabled} (it runs everything in user space){}",
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {}", failures.join(", "))
            }
        ))
    }
}

/// The director `exe` in the pod over the echo, with the fast path on `eth0` if `fast_path`.
fn start_director(
    topo: &Topology,
    echo: &EchoServer,
    exe: &Path,
    fast_path: bool,
) -> io::Result<ChildDirector> {
    let mut extra = String::from(
        "accessLog: false\nmaxSessions: 100000\nmaxSessionsPerClientIp: 100000\n\
         limits: {queryRatePerSecond: 100000, queryBurst: 100000, maxQueryConnectionsPerIp: 100000}\n",
    );
    if fast_path {
        extra.push_str("fastPath: {enabled: true, interfaces: [eth0]}\n");
    }
    let yaml = topo.director_yaml(&extra, &[yaml::static_mapping("echo", echo.addr)]);
    topo.spawn_director(exe, &yaml)
}

/// What every cell needs.
struct Bench<'a> {
    topo: &'a Topology,
    echo: &'a EchoServer,
    args: &'a NsbenchArgs,
    /// Charged to every path (see [`crate::cpu`]).
    softirqd: Vec<u32>,
}

impl Bench<'_> {
    /// One cell: a fresh proxy (if any), fresh client sockets in the client namespace,
    /// closed loop for `--seconds`.
    fn measure(&self, path: Route, exe: &Path, clients: usize, round: usize) -> io::Result<Cell> {
        let (topo, echo, args) = (self.topo, self.echo, self.args);
        // The proxy's, this process's and the softirq threads' CPU around the drive (its
        // set-up is a few ms of a cell of seconds).
        let drive_at = |dest: SocketAddr, hello: Option<&[String]>, proxy: Option<u32>| {
            let pids: Vec<u32> = proxy.into_iter().collect();
            let before = crate::cpu::processes(&pids, &self.softirqd);
            let result = topo.run_in(Ns::Client, || {
                drive(
                    path.label(),
                    dest,
                    hello,
                    clients,
                    args.size,
                    args.seconds,
                    0,
                )
            })??;
            let own = crate::cpu::processes(&pids, &self.softirqd).saturating_sub(before);
            Ok::<_, io::Error>((result, own))
        };
        let mut kernel_datagrams = None;
        let (result, own_cpu) = match path {
            Route::Direct => drive_at(echo.addr, None, None)?,
            Route::Forwarder => {
                let listen = SocketAddr::from((topo.addr(Ns::Pod), FORWARDER_PORT));
                let forwarder = Forwarder::start(topo, &args.refproxy, listen, echo.addr, args)?;
                drive_at(listen, None, Some(forwarder.child.id()))?
            }
            Route::Director | Route::FastPath => {
                let director = start_director(topo, echo, exe, path == Route::FastPath)?;
                let query = director.query;
                let tokens: Vec<String> = topo
                    .run_in(Ns::Client, || {
                        Queries::connect(query)?.ask_many(&Query::new("echo"), clients)
                    })??
                    .into_iter()
                    .map(|g| g.token)
                    .collect();
                let measured = drive_at(director.data, Some(&tokens), Some(director.pid()))?;
                if path == Route::FastPath {
                    // The kernel's counts reach /metrics in batches: wait (bounded) until
                    // they cover the cell's round trips, then report what they say.
                    let carried = || {
                        topo.scrape(Ns::Pod, director.admin)
                            .map(|m| m.sum("udp_director_fast_path_datagrams_total"))
                            .unwrap_or(0.0)
                    };
                    let expected = 2.0 * measured.0.replies as f64;
                    eventually(Duration::from_secs(3), || carried() >= expected);
                    kernel_datagrams = Some(carried());
                }
                measured
            }
        };
        Ok(Cell {
            path,
            clients,
            round,
            result,
            own_cpu,
            kernel_datagrams,
        })
    }
}

/// The forwarder in the pod, killed when dropped.
struct Forwarder {
    child: Child,
}

impl Forwarder {
    fn start(
        topo: &Topology,
        exe: &Path,
        listen: SocketAddr,
        backend: SocketAddr,
        args: &NsbenchArgs,
    ) -> io::Result<Self> {
        // It stops by itself a little after its cell would have ended.
        let duration = format!("{:.0}", args.seconds + 30.0);
        let mut cmd = topo.command_in(Ns::Pod, exe);
        cmd.args(["--listen", &listen.to_string()])
            .args(["--backend", &backend.to_string()])
            .args(["--threads", "2", "--duration", &duration])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut this = Self {
            child: cmd.spawn()?,
        };
        let stdout = this
            .child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("refproxy: no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).map_err(|_| {
                io::Error::other("refproxy did not print refproxy_listening in time")
            })?;
            if line.contains("refproxy_listening") {
                return Ok(this);
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cores busy (machine-wide) over one idle second before the run.
fn background_busy() -> io::Result<f64> {
    let no_stat = || io::Error::other("cannot read /proc/stat");
    let before = crate::cpu::machine_busy().ok_or_else(no_stat)?;
    let started = Instant::now();
    pause(Duration::from_secs(1));
    let after = crate::cpu::machine_busy().ok_or_else(no_stat)?;
    Ok(after.saturating_sub(before).as_secs_f64() / started.elapsed().as_secs_f64())
}

/// `(min, median, max)` of `v` (the lower median of an even count); `None` when empty.
pub fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    Some((*v.first()?, v[(v.len() - 1) / 2], *v.last()?))
}

/// The CPU a path's cell adds per round trip, by `reading`: its CPU per round trip minus
/// the direct path's in the same round at the same client count.
pub fn added_cpu_us(cells: &[Cell], cell: &Cell, reading: Reading) -> Option<f64> {
    let direct = cells
        .iter()
        .find(|c| c.path == Route::Direct && c.round == cell.round && c.clients == cell.clients)?;
    Some(cell.cpu_per_round_trip_us(reading)? - direct.cpu_per_round_trip_us(reading)?)
}

/// The report: one Markdown table per client count, then the ratios the fast path is held
/// to (issue 26: ≥ 1.4 × the forwarder's round trips/s, ≥ 2 × less CPU added per round
/// trip).
pub fn report(cells: &[Cell], args: &NsbenchArgs, fast_path_missing: Option<&str>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nclosed loop, {} B, {} rounds of {}s per cell; min / **median** / max over the rounds.\n\
         CPU µs per round trip: machine = /proc/stat busy time, own = the path's processes and ksoftirqd;\n\
         added = minus the direct path's in the same round (one datagram forwarded each way).",
        args.size,
        args.reps.max(1),
        args.seconds
    );
    let fmt3 = |s: Option<(f64, f64, f64)>, digits: usize| match s {
        Some((lo, mid, hi)) => format!("{lo:.digits$} / **{mid:.digits$}** / {hi:.digits$}"),
        None => "n/a".to_string(),
    };
    for &clients in &args.clients {
        let _ = writeln!(
            out,
            "\n{clients} client(s)\n\n\
             | path | round trips/s | CPU/rt machine | added, machine | CPU/rt own | added, own | lost |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for path in Route::ALL {
            let mine: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.path == path && c.clients == clients)
                .collect();
            if mine.is_empty() {
                let why = match (path, fast_path_missing) {
                    (Route::FastPath, Some(why)) => why,
                    _ => "not measured",
                };
                let _ = writeln!(out, "| {} | not available: {why} | | | | | |", path.label());
                continue;
            }
            let rts = spread(mine.iter().map(|c| c.result.per_second()).collect());
            let per_rt = |r: Reading| {
                fmt3(
                    spread(
                        mine.iter()
                            .filter_map(|c| c.cpu_per_round_trip_us(r))
                            .collect(),
                    ),
                    1,
                )
            };
            let added = |r: Reading| {
                if path == Route::Direct {
                    "(baseline)".to_string()
                } else {
                    fmt3(
                        spread(
                            mine.iter()
                                .filter_map(|c| added_cpu_us(cells, c, r))
                                .collect(),
                        ),
                        1,
                    )
                }
            };
            let lost: u64 = mine.iter().map(|c| c.result.lost).sum();
            let replies: u64 = mine.iter().map(|c| c.result.replies).sum();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {lost} of {} |",
                path.label(),
                fmt3(rts, 0),
                per_rt(Reading::Machine),
                added(Reading::Machine),
                per_rt(Reading::Own),
                added(Reading::Own),
                replies + lost
            );
        }
        for c in cells
            .iter()
            .filter(|c| c.clients == clients && c.path == Route::FastPath)
        {
            if let Some(k) = c.kernel_datagrams {
                let _ = writeln!(
                    out,
                    "\nround {}: the kernel carried {k:.0} of {} datagrams",
                    c.round + 1,
                    2 * c.result.replies
                );
            }
        }
        let median = |path: Route, f: &dyn Fn(&Cell) -> Option<f64>| {
            spread(
                cells
                    .iter()
                    .filter(|c| c.path == path && c.clients == clients)
                    .filter_map(f)
                    .collect(),
            )
            .map(|(_, m, _)| m)
        };
        let rate = |c: &Cell| Some(c.result.per_second());
        let machine = |c: &Cell| added_cpu_us(cells, c, Reading::Machine);
        let own = |c: &Cell| added_cpu_us(cells, c, Reading::Own);
        for path in [Route::Director, Route::FastPath] {
            let ratio = |f: &dyn Fn(&Cell) -> Option<f64>, invert: bool| match (
                median(Route::Forwarder, f),
                median(path, f),
            ) {
                (Some(fwd), Some(p)) if invert => format!("{:.2}", fwd / p),
                (Some(fwd), Some(p)) => format!("{:.2}", p / fwd),
                _ => "n/a".to_string(),
            };
            if median(path, &rate).is_some() {
                let _ = writeln!(
                    out,
                    "\n{} vs forwarder (medians): round trips/s × {}; CPU added per round trip ÷ {} (machine), ÷ {} (own)",
                    path.label(),
                    ratio(&rate, false),
                    ratio(&machine, true),
                    ratio(&own, true)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(path: Route, clients: usize, round: usize, replies: u64, busy_ms: u64) -> Cell {
        Cell {
            path,
            clients,
            round,
            result: PhaseResult {
                name: path.label().into(),
                replies,
                lost: 0,
                elapsed: Duration::from_secs(1),
                rtts_ns: Vec::new(),
                machine_busy: Some(Duration::from_millis(busy_ms)),
            },
            own_cpu: Duration::from_millis(busy_ms / 2),
            kernel_datagrams: None,
        }
    }

    #[test]
    fn spread_is_min_median_max_of_the_finite_values() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(spread(vec![4.0, f64::NAN, 1.0]), Some((1.0, 1.0, 4.0)));
        assert_eq!(spread(vec![]), None);
    }

    #[test]
    fn added_cpu_is_charged_against_direct_of_the_same_round_and_client_count() {
        let cells = vec![
            cell(Route::Direct, 64, 0, 100_000, 500), // 5 µs per round trip
            cell(Route::Direct, 64, 1, 100_000, 1_000), // 10 µs
            cell(Route::Director, 64, 1, 50_000, 1_000), // 20 µs
        ];
        assert_eq!(
            added_cpu_us(&cells, &cells[2], Reading::Machine),
            Some(10.0)
        );
        assert_eq!(added_cpu_us(&cells, &cells[2], Reading::Own), Some(5.0));
        let other_count = cell(Route::Director, 1, 1, 10, 1);
        assert_eq!(added_cpu_us(&cells, &other_count, Reading::Machine), None);
    }

    #[test]
    fn a_missing_fast_path_is_reported_as_not_available_with_its_reason() {
        let args = NsbenchArgs {
            director: "d".into(),
            fast_path_director: None,
            fast_path_missing: String::new(),
            refproxy: "r".into(),
            clients: vec![64],
            size: 64,
            seconds: 1.0,
            reps: 1,
        };
        let cells = vec![
            cell(Route::Direct, 64, 0, 100_000, 500),
            cell(Route::Forwarder, 64, 0, 60_000, 900),
            cell(Route::Director, 64, 0, 50_000, 1_000),
        ];
        let text = report(&cells, &args, Some("the build refused the config"));
        assert!(
            text.contains("| fast-path | not available: the build refused the config | | | | | |"),
            "{text}"
        );
        assert!(!text.contains("fast-path vs forwarder"), "{text}");
        // forwarder: 15 µs − 5 = 10 added; director: 20 − 5 = 15 added.
        assert!(
            text.contains("director vs forwarder (medians): round trips/s × 0.83; CPU added per round trip ÷ 0.67 (machine), ÷ 0.67 (own)"),
            "{text}"
        );
    }
}
