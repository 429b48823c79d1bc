//! Shared by the tests that run other languages' clients (C, C#, Node) against the real
//! director: the built C library, a director on loopback with two game servers, and game
//! servers that record what they saw.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use testkit::{director_exe, yaml, ChildDirector, TempDir};

/// The workspace root.
pub fn root() -> PathBuf {
    testkit::exe::workspace_root()
}

/// The folder holding a fresh `libudp_director.so` of the running test's profile.
pub fn library_dir() -> PathBuf {
    let root = root();
    let dir = testkit::exe::profile_dir().unwrap();
    testkit::exe::fresh_artifact(
        &dir.join("libudp_director.so"),
        &[
            root.join("capi/src"),
            root.join("capi/Cargo.toml"),
            root.join("client/src"),
            root.join("client/Cargo.toml"),
            root.join("Cargo.lock"),
        ],
        &["-p", "udp-director-capi", "--lib"],
    )
    .unwrap();
    dir
}

/// A game server: echoes `prefix ++ payload` and records every payload it received.
pub struct GameServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GameServer {
    pub fn start(prefix: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2, prefix) = (Arc::clone(&seen), Arc::clone(&stop), prefix.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&[prefix.as_bytes(), &buf[..n]].concat(), from);
                    seen2.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every payload so far, as text.
    pub fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

impl Drop for GameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A director whose mapping `echo` has `a` (zone z0) and `b` (zone z1).
pub fn director(a: &GameServer, b: &GameServer, tag: &str) -> ChildDirector {
    director_with("", a, b, tag)
}

/// [`director`] with `extra` top-level config keys.
pub fn director_with(extra: &str, a: &GameServer, b: &GameServer, tag: &str) -> ChildDirector {
    let yaml = yaml::director(extra, &[yaml::echo_mapping(&[a.addr, b.addr])]);
    ChildDirector::spawn_yaml(
        &director_exe().unwrap(),
        TempDir::new(tag).unwrap(),
        &yaml,
        &[],
    )
    .unwrap()
}

/// What the game servers must have seen from a client that played the common script:
/// `hello-a` on a; `hello-b` then `after-resume` on b (each possibly repeated while the
/// client waited for its reply); never a token or a control frame.
pub fn assert_script_seen(a: &GameServer, b: &GameServer, prefix: &str) {
    let dedup = |v: Vec<String>| {
        let mut v = v;
        v.dedup();
        v
    };
    assert_eq!(dedup(a.seen()), vec![format!("{prefix}hello-a")]);
    assert_eq!(
        dedup(b.seen()),
        vec![format!("{prefix}hello-b"), format!("{prefix}after-resume")]
    );
}

/// Runs `cmd`, printing its output, and returns it.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The conformance vectors.
pub fn vectors() -> serde_json::Value {
    let path = root().join("conformance/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The challenge case of the vectors: (magic hex, token, challenge hex, reply hex).
pub fn challenge_vector() -> [String; 4] {
    let v = vectors();
    let inbound = &v["inbound"];
    let case = inbound["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "challenge")
        .unwrap();
    [
        inbound["magic"].as_str().unwrap().to_string(),
        inbound["token"].as_str().unwrap().to_string(),
        case["hex"].as_str().unwrap().to_string(),
        case["reply"].as_str().unwrap().to_string(),
    ]
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `cmd` like [`run`], killing it after `within` (a GDScript error leaves Godot running).
pub fn run_within(cmd: &mut Command, within: Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = testkit::eventually(within, || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(exited, "did not exit within {within:?}");
    out
}
