//! `tcpbench`: TCP data ports measured (Docs/Benchmarks.md). Loopback only, bounded in time.
//!
//! A sink backend on `127.0.0.1:--backend-port` counts what arrives (and answers the first
//! byte of each connection with `!`). Three paths to it, interleaved round by round: direct,
//! through the director's TCP data port (a child process started from `--director`, the token
//! line first), and through `--raw-proxy` (nginx's stream proxy started with
//! `testkit/bench/nginx-tcp.sh`). Throughput: N connections writing 64 KiB chunks for
//! `--seconds`; setup rate: connect, one byte there and back, close; memory: the director's
//! RSS with `--idle` relayed connections held open, per connection.
//!
//!     cargo build --release
//!     bash testkit/bench/nginx-tcp.sh 19996 127.0.0.1:19997 600 &
//!     target/release/tcpbench --director target/release/udp-director --backend-port 19997 \
//!         --raw-proxy 127.0.0.1:19996

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use clap::Parser;
use testkit::{ChildDirector, TempDir, eventually};
use udp_director_client::{Grant, Queries, Query, open_tcp};

#[derive(Parser)]
struct Args {
    /// The director binary.
    #[arg(long)]
    director: std::path::PathBuf,
    #[arg(long, default_value_t = 19997)]
    backend_port: u16,
    /// A reference TCP proxy in front of the backend (nginx-tcp.sh).
    #[arg(long)]
    raw_proxy: Option<SocketAddr>,
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    connections: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Connections per setup-rate round (over 4 threads).
    #[arg(long, default_value_t = 2000)]
    setup: usize,
    /// Idle relayed connections for the memory figure (each is 2 descriptors in the director).
    #[arg(long, default_value_t = 9000)]
    idle: usize,
}

const CHUNK: usize = 64 * 1024;

/// The sink: counts bytes, answers each connection's first read with one `!`.
fn sink(port: u16, bytes: Arc<AtomicU64>, accepted: Arc<AtomicU64>) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            accepted.fetch_add(1, Ordering::Relaxed);
            let bytes = Arc::clone(&bytes);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 256 * 1024];
                let mut first = true;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if first {
                        first = false;
                        let _ = stream.write_all(b"!");
                    }
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Director,
    Nginx,
}

/// Where each path connects.
#[derive(Clone, Copy)]
struct Dest {
    backend: SocketAddr,
    tcp: SocketAddr,
    raw: Option<SocketAddr>,
}

impl Dest {
    fn connect(self, path: Path, grant: Option<&Grant>) -> std::io::Result<TcpStream> {
        let s = match (path, grant, self.raw) {
            (Path::Director, Some(g), _) => open_tcp(self.tcp, g, Duration::from_secs(5))?,
            (Path::Nginx, _, Some(raw)) => TcpStream::connect(raw)?,
            _ => TcpStream::connect(self.backend)?,
        };
        s.set_nodelay(true)?;
        Ok(s)
    }
}

struct Bench {
    args: Args,
    backend: SocketAddr,
    director: ChildDirector,
    tcp: SocketAddr,
    bytes: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Bench {
    fn grants(&self, n: usize) -> std::io::Result<Vec<Grant>> {
        let mut q = Queries::connect(self.director.query)?;
        Ok(q.ask_many(&Query::new("sink"), n)?)
    }

    fn connect(&self, path: Path, grant: Option<&Grant>) -> std::io::Result<TcpStream> {
        self.dest().connect(path, grant)
    }

    fn dest(&self) -> Dest {
        Dest {
            backend: self.backend,
            tcp: self.tcp,
            raw: self.args.raw_proxy,
        }
    }

    /// MB/s arriving at the backend with `n` connections writing 64 KiB chunks.
    fn throughput(&self, path: Path, n: usize) -> std::io::Result<f64> {
        let grants = if path == Path::Director {
            self.grants(n)?
        } else {
            Vec::new()
        };
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            streams.push(self.connect(path, grants.get(i))?);
        }
        let chunk = Arc::new(vec![0x5au8; CHUNK]);
        let before = self.bytes.load(Ordering::Relaxed);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.args.seconds);
        let threads: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let chunk = Arc::clone(&chunk);
                std::thread::spawn(move || {
                    while Instant::now() < deadline {
                        if s.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let moved = self.bytes.load(Ordering::Relaxed) - before;
        Ok(moved as f64 / started.elapsed().as_secs_f64() / 1e6)
    }

    /// Connections per second: connect, one byte each way, close (4 threads).
    fn setup(&self, path: Path) -> std::io::Result<f64> {
        let grants = if path == Path::Director {
            self.grants(4)?
        } else {
            Vec::new()
        };
        let per = self.args.setup / 4;
        let dest = self.dest();
        let started = Instant::now();
        std::thread::scope(|scope| -> std::io::Result<()> {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let grant = grants.get(t);
                    scope.spawn(move || -> std::io::Result<()> {
                        for _ in 0..per {
                            let mut s = dest.connect(path, grant)?;
                            s.write_all(b"?")?;
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| std::io::Error::other("setup thread"))??;
            }
            Ok(())
        })?;
        Ok((per * 4) as f64 / started.elapsed().as_secs_f64())
    }

    /// The director's RSS growth per idle relayed connection, in bytes.
    fn idle_memory(&self) -> std::io::Result<(usize, f64)> {
        let n = self.args.idle;
        let grants = self.grants(n)?;
        let accepted = self.accepted.load(Ordering::Relaxed);
        let before = self.director.rss_kib();
        let mut held = Vec::with_capacity(n);
        for g in &grants {
            held.push(self.connect(Path::Director, Some(g))?);
        }
        let tcp_open = || {
            self.director
                .metric("udp_director_sessions_by_protocol{protocol=\"tcp\"}")
        };
        eventually(Duration::from_secs(60), || {
            self.accepted.load(Ordering::Relaxed) >= accepted + n as u64 && tcp_open() >= n as f64
        });
        let after = self.director.rss_kib();
        let open = tcp_open();
        let scrape = self.director.scrape();
        for reason in [
            "target_refused",
            "target_timeout",
            "late_token",
            "bad_line",
            "invalid_token",
            "session_cap",
            "client_ip_cap",
        ] {
            let v = scrape.value(&format!(
                "udp_director_tcp_refused_total{{reason=\"{reason}\"}}"
            ));
            if v > 0.0 {
                eprintln!("refused {reason}: {v}");
            }
        }
        drop(held);
        Ok((
            open as usize,
            (after.saturating_sub(before) * 1024) as f64 / n as f64,
        ))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let bytes = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    sink(args.backend_port, Arc::clone(&bytes), Arc::clone(&accepted))?;
    let backend: SocketAddr = ([127, 0, 0, 1], args.backend_port).into();
    let yaml = format!(
        "bindAddress: 127.0.0.1\nqueryPort: 0\nadminPort: 0\nmaxSessionsPerClientIp: 20000\n\
         limits: {{queryRatePerSecond: 1000000, queryBurst: 1000000}}\naccessLog: false\n\
         dataPorts:\n  - {{port: 0}}\n  - {{port: 0, protocol: TCP, targetPort: {}}}\n\
         resourceQueryMapping:\n  sink:\n    static: [{{name: sink, address: 127.0.0.1, port: {}}}]\n",
        args.backend_port, args.backend_port
    );
    let director =
        ChildDirector::spawn_yaml(&args.director, TempDir::new("tcpbench")?, &yaml, &[])?;
    let tcp = *director
        .data_ports
        .get(1)
        .ok_or_else(|| std::io::Error::other("no TCP data port in the start-up line"))?;
    let bench = Bench {
        args,
        backend,
        director,
        tcp,
        bytes,
        accepted,
    };
    let mut paths = vec![(Path::Direct, "direct"), (Path::Director, "director")];
    if bench.args.raw_proxy.is_some() {
        paths.push((Path::Nginx, "nginx"));
    }
    for &n in &bench.args.connections {
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for _ in 0..bench.args.repeat {
            for (i, (p, _)) in paths.iter().enumerate() {
                results[i].push(bench.throughput(*p, n)?);
            }
        }
        let line: Vec<String> = paths
            .iter()
            .zip(results)
            .map(|((_, name), r)| format!("{name} {:.0} MB/s", median(r)))
            .collect();
        println!(
            "throughput, {n} connection(s), 64 KiB writes: {}",
            line.join(", ")
        );
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..bench.args.repeat {
        for (i, (p, _)) in paths.iter().enumerate() {
            results[i].push(bench.setup(*p)?);
        }
    }
    let line: Vec<String> = paths
        .iter()
        .zip(results)
        .map(|((_, name), r)| format!("{name} {:.0}/s", median(r)))
        .collect();
    println!(
        "connection setup (connect, 1 byte each way, close; 4 threads): {}",
        line.join(", ")
    );
    if bench.args.idle > 0 {
        let (open, per) = bench.idle_memory()?;
        println!(
            "director RSS per idle relayed TCP connection: {per:.0} B ({} held, {open} open in the director)",
            bench.args.idle
        );
    }
    Ok(())
}
