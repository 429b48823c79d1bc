//! The pure-GDScript client (`clients/godot/udp_director.gd`) run headless by Godot 3
//! (Debian's `godot3-server`, installed by `make test-deps`): the whole client path against a
//! real director (asserting what each game server saw), and the conformance vectors'
//! challenge. Godot exits 0 after a script error too, so success is its exit code and the
//! word "done".

mod common;

use std::process::Command;
use std::time::Duration;

use testkit::TempDir;

use common::{assert_script_seen, challenge_vector, director, root, run_within, GameServer};

/// Godot run on copies of the scripts in a temporary folder: it treats its working folder
/// as the project and writes `logs/` there, which must not land in the repository.
fn godot(dir: &TempDir, args: &[String]) -> Command {
    for file in ["udp_director.gd", "play.gd"] {
        std::fs::copy(root().join("clients/godot").join(file), dir.path.join(file)).unwrap();
    }
    let mut cmd = Command::new("godot3-server");
    cmd.current_dir(&dir.path)
        .args(["--no-window", "-s", "play.gd"])
        .args(args);
    cmd
}

fn succeeded(out: &std::process::Output) -> bool {
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "done")
}

#[test]
fn a_gdscript_client_queries_plays_resets_and_resumes_through_the_director() {
    let (a, b) = (GameServer::start("a:"), GameServer::start("b:"));
    let d = director(&a, &b, "godot-play");
    let args = [
        "play".to_string(),
        d.query.ip().to_string(),
        d.query.port().to_string(),
        d.data.ip().to_string(),
        d.data.port().to_string(),
    ];
    let dir = TempDir::new("godot-play").unwrap();
    let out = run_within(&mut godot(&dir, &args), Duration::from_secs(60));
    assert!(succeeded(&out), "the GDScript client failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused unknown_resource_type"), "{stdout}");
    assert!(stdout.contains("reply b:gd:after-resume"), "{stdout}");
    assert_script_seen(&a, &b, "gd:");
}

#[test]
fn the_gdscript_client_answers_the_vectors_challenge() {
    let [magic, token, challenge, reply] = challenge_vector();
    let ok = [
        "vectors".to_string(),
        magic,
        token,
        challenge.clone(),
        reply,
    ];
    let dir = TempDir::new("godot-vectors").unwrap();
    assert!(succeeded(&run_within(
        &mut godot(&dir, &ok),
        Duration::from_secs(60)
    )));
    // A wrong expectation fails: the script really compares.
    let mut wrong = ok.clone();
    wrong[4] = challenge;
    assert!(!succeeded(&run_within(
        &mut godot(&dir, &wrong),
        Duration::from_secs(60)
    )));
}
