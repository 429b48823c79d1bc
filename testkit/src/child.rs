//! The director binary as a child process: started on a config in a temporary directory,
//! its bound addresses read from the JSON start-up line, its later log lines kept, its RSS
//! and descriptors read from `/proc`, killed and reaped when dropped (panics included).

use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;

use crate::scrape::Scrape;
use crate::wait::eventually;

/// How long a director may take to print `udp-director listening`.
const START_WITHIN: Duration = Duration::from_secs(20);

/// The director as a child process.
pub struct ChildDirector {
    child: Child,
    pub query: SocketAddr,
    pub data: SocketAddr,
    /// Every data port (UDP and TCP) in `dataPorts` order.
    pub data_ports: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// JSON log lines printed after the start-up line.
    pub logs: mpsc::Receiver<String>,
    /// The lines it printed before it said it was listening (read while starting it).
    pub startup: Vec<String>,
    _dir: TempDir,
}

impl ChildDirector {
    /// Starts `exe` on the config `yaml` (written into `dir`) with `extra` arguments, and waits
    /// for its start-up line.
    pub fn spawn_yaml(
        exe: &Path,
        dir: TempDir,
        yaml: &str,
        extra: &[&std::ffi::OsStr],
    ) -> io::Result<Self> {
        let config = dir.path.join("config.yaml");
        std::fs::write(&config, yaml)?;
        let mut args = vec![std::ffi::OsStr::new("--config"), config.as_os_str()];
        args.extend_from_slice(extra);
        Self::spawn_args(exe, dir, &args)
    }

    /// Starts `exe` with `args` (plus JSON logs) and waits for its start-up line; `dir` is
    /// removed when the child is dropped.
    pub fn spawn_args(exe: &Path, dir: TempDir, args: &[&std::ffi::OsStr]) -> io::Result<Self> {
        Self::spawn_env(exe, dir, args, &[])
    }

    /// [`ChildDirector::spawn_args`] with its own `RUST_LOG` filter.
    pub fn spawn_logging(
        exe: &Path,
        dir: TempDir,
        args: &[&std::ffi::OsStr],
        rust_log: &str,
    ) -> io::Result<Self> {
        Self::spawn_env(exe, dir, args, &[("RUST_LOG", rust_log)])
    }

    /// Starts `exe` with `args` (plus JSON logs) and `envs` (`RUST_LOG` defaults to
    /// start-up lines only), and waits for its start-up line.
    pub fn spawn_env(
        exe: &Path,
        dir: TempDir,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &str)],
    ) -> io::Result<Self> {
        Self::spawn_command(Command::new(exe), dir, args, envs)
    }

    /// Starts the director on the config `yaml` (written into `dir`) as `cmd`, a command
    /// whose last word so far is the director binary: e.g. one that runs it in a network
    /// namespace (`netns::Topology::command_in`). Waits for its start-up line.
    pub fn spawn_command_yaml(cmd: Command, dir: TempDir, yaml: &str) -> io::Result<Self> {
        let config = dir.path.join("config.yaml");
        std::fs::write(&config, yaml)?;
        let args = [std::ffi::OsStr::new("--config"), config.as_os_str()];
        Self::spawn_command(cmd, dir, &args, &[])
    }

    /// [`ChildDirector::spawn_env`] for a prepared command (see
    /// [`ChildDirector::spawn_command_yaml`]).
    pub fn spawn_command(
        mut cmd: Command,
        dir: TempDir,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &str)],
    ) -> io::Result<Self> {
        let child = cmd
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "warn,udp_director::app=info")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        // Owned by `Self` from here on, so every early return below kills and reaps it.
        let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let (tx, rx) = mpsc::channel();
        let mut this = Self {
            child,
            query: unbound,
            data: unbound,
            data_ports: Vec::new(),
            admin: unbound,
            logs: rx,
            startup: Vec::new(),
            _dir: dir,
        };
        let stdout = this
            .child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = this.logs.recv_timeout(left).map_err(|_| {
                io::Error::other("director did not print its start-up line in time")
            })?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                this.startup.push(line);
                continue;
            };
            if v["message"] != "udp-director listening" {
                this.startup.push(line);
            } else {
                let addr = |k: &str| -> io::Result<SocketAddr> {
                    v[k].as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| io::Error::other(format!("no {k} address in {line}")))
                };
                this.query = addr("query")?;
                this.data = addr("data")?;
                this.data_ports = v["data_ports"]
                    .as_str()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|a| a.parse().ok())
                    .collect();
                this.admin = addr("admin")?;
                return Ok(this);
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (Linux /proc).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Anonymous resident memory in KiB (heap and stacks; excludes the executable's code pages,
    /// which become resident as more code paths run and are not growth of the director's state).
    pub fn rss_anon_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "RssAnon:")
    }

    /// Open file descriptors (Linux /proc).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A scrape of its `/metrics` (empty if it does not answer).
    pub fn scrape(&self) -> Scrape {
        Scrape::fetch_or_empty(self.admin)
    }

    /// One series' value from `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        self.scrape().value(series)
    }

    /// Sends SIGTERM (the shutdown a kubelet starts with).
    pub fn terminate(&self) -> io::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -TERM failed: {status}")))
        }
    }

    /// SIGKILL (a crash, an OOM kill, a node lost): no drain, nothing flushed. Reaps it.
    pub fn kill_9(&mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    /// Its exit status once it has exited within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        eventually(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for ChildDirector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "udp-director-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
