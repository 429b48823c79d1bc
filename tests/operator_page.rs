//! The operator page (`/` on the admin port) in a real browser: the real binary on loopback
//! with OS-assigned ports, a UDP session the test opens through it, then Debian's headless
//! `chromium` loads the page (`--dump-dom`: the DOM after the page has loaded) and must show
//! that session, its target with one live session, the mapping's cache and the states; a
//! screenshot is kept at `target/test-artifacts/operator-page.png`.
//!
//! Chromium is installed with apt when missing (as `make test-deps` does); if it cannot be,
//! the test fails and says so: it never passes without a browser.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{ChildDirector, EchoServer, TempDir, eventually, yaml};

const BIN: &str = env!("CARGO_BIN_EXE_udp-director");
/// How long one browser run may take (a cold start on a busy 2-core machine included).
const BROWSER_WITHIN: Duration = Duration::from_secs(90);

/// The `chromium` executable, installed with apt (Debian's `chromium` package) when missing.
fn chromium() -> PathBuf {
    let found = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
    };
    if let Some(path) = found() {
        return path;
    }
    let install = Command::new("sh")
        .args([
            "-c",
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
             --no-install-recommends chromium",
        ])
        .stdout(Stdio::null())
        .output();
    let why = match &install {
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    found().unwrap_or_else(|| {
        panic!(
            "the operator page test needs a headless browser: Debian's `chromium` package is \
             not installed and `apt-get install chromium` failed (run `make test-deps` as \
             root, or install it by hand): {why}"
        )
    })
}

/// Runs chromium headless on `url` with `args`; its stdout, or a panic naming what went wrong.
fn browse(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let mut status = None;
    eventually(BROWSER_WITHIN, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium did not finish within {BROWSER_WITHIN:?}: {args:?}");
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "chromium {args:?} failed ({status}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text between `<table id="{id}"` and its `</table>`.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id} in\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</table>").unwrap()]
}

#[test]
fn the_operator_page_shows_a_live_session_in_a_real_browser() {
    let chromium = chromium();
    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), b"").unwrap();
    let dir = TempDir::new("operator-page").unwrap();
    let profile = TempDir::new("operator-page-browser").unwrap();
    let d = ChildDirector::spawn_yaml(
        Path::new(BIN),
        dir,
        &yaml::director("", &[yaml::static_mapping("arena", echo.addr)]),
        &[],
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        testkit::http_get(d.admin, "/readyz").is_ok_and(|(status, _)| status == 200)
    }));

    // A real session: the query's token, then one datagram echoed back through the director.
    let token = testkit::query_token(
        d.query,
        r#"{"resourceType":"arena","playerId":"player-42"}"#,
    )
    .unwrap()
    .token;
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    client.send_to(token.as_bytes(), d.data).unwrap();
    client.send_to(b"hello", d.data).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).expect("the echo through the session");
    assert_eq!(&buf[..n], b"hello");
    let me = client.local_addr().unwrap().to_string();

    let url = format!("http://{}/", d.admin);
    let (status, html) = testkit::http_get(d.admin, "/").unwrap();
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&me), "the page names the session: {html}");

    let dom = browse(&chromium, &profile.path, &url, &["--dump-dom"]);
    assert!(dom.contains("<title>udp-director</title>"), "{dom}");
    let sessions = table(&dom, "sessions");
    let row = sessions
        .split("<tr")
        .find(|r| r.contains(&me))
        .unwrap_or_else(|| panic!("the live session {me} is not on the page:\n{sessions}"));
    for cell in [
        "<td>arena</td>",
        "<td>default/arena-0</td>",
        &format!("<td>{}</td>", echo.addr),
        "<td>player-42</td>",
    ] {
        assert!(row.contains(cell), "{cell} not in the session's row: {row}");
    }
    let targets = table(&dom, "targets");
    assert!(
        targets.contains(&format!(
            "<td>arena/default/arena-0</td><td>{}</td><td class=\"n\">1</td>",
            echo.addr
        )),
        "the target with its one live session: {targets}"
    );
    let mappings = table(&dom, "mappings");
    assert!(
        mappings.contains("<td>arena</td><td>static</td><td>leastSessions</td><td class=\"n\">1</td><td><span class=\"ok\">synced</span>"),
        "{mappings}"
    );
    let state = table(&dom, "state");
    for needle in [
        "<span class=\"ok\">ready</span>",
        "accepting new sessions",
        "<span id=\"protocol-udp\">udp: 1</span>",
        "<span id=\"protocol-tcp\">tcp: 0</span>",
        "format uuid",
    ] {
        assert!(state.contains(needle), "{needle} not in {state}");
    }
    assert!(
        state.contains("<td id=\"sessions-active\">1 of maxSessions"),
        "{state}"
    );

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("operator-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &chromium,
        &profile.path,
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot {shot:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
}
