//! What ships besides the code: the image (Dockerfile, .dockerignore, the in-image config),
//! the release workflow, the license. None of it can run here (no container engine, no
//! GitHub), so each is checked for what it must do:
//! - the Dockerfile's dependency stage is replayed in a temp dir (its stub COPY and RUN steps,
//!   not its `cargo build`) and the workspace must load from it with `cargo metadata
//!   --offline --locked`, every target of every member present: a new member or target that
//!   the stubs miss fails here instead of silently rebuilding every dependency on each edit;
//! - the release workflow is parsed and must hold the jobs and steps it claims.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use udp_director::config::ValidConfig;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuation lines
/// joined and comment lines dropped.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push(Instruction {
            keyword: keyword.to_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    out
}

/// The build stage's instructions (first FROM up to the next) and the final stage's.
fn stages() -> (Vec<Instruction>, Vec<Instruction>) {
    let all = dockerfile();
    let froms: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].keyword == "FROM")
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    (all[froms[0]..froms[1]].to_vec(), all[froms[1]..].to_vec())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn metadata(dir: &Path) -> Result<Value, String> {
    let out = cargo()
        .args(["metadata", "--offline", "--locked", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Every target of every workspace member that a build needs (tests and examples aside:
/// cargo finds those by directory and the image build skips them), as "package kind name";
/// and every one whose file is missing under `dir`. Cargo silently drops a declared target
/// whose file is missing from `cargo metadata`, and `cargo build` then fails: both are
/// checked.
fn build_targets(meta: &Value, dir: &Path) -> (BTreeSet<String>, Vec<String>) {
    let ids: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut targets = BTreeSet::new();
    let mut missing = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        if !ids.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            let kind = t["kind"][0].as_str().unwrap();
            if kind == "test" || kind == "example" {
                continue;
            }
            let target = format!(
                "{} {kind} {}",
                p["name"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            );
            let src = PathBuf::from(t["src_path"].as_str().unwrap());
            if !src.exists() {
                missing.push(format!(
                    "{target}: {}",
                    src.strip_prefix(dir).unwrap_or(&src).display()
                ));
            }
            targets.insert(target);
        }
    }
    (targets, missing)
}

/// Replays the build stage up to `COPY . .` in a temp dir: the COPYs of single files and the
/// RUN steps made only of mkdir/echo/touch/printf (the stubs). Returns the dir.
fn replay_dependency_stage() -> testkit::TempDir {
    let (build, _) = stages();
    let dir = testkit::TempDir::new("docker-stub").unwrap();
    let end = build
        .iter()
        .position(|i| i.keyword == "COPY" && i.args == ". .")
        .expect("the build stage copies the sources after the dependency layer");
    let mut built = false;
    for i in &build[..end] {
        match i.keyword.as_str() {
            "COPY" => {
                let parts: Vec<&str> = i.args.split_whitespace().collect();
                let (dest, sources) = parts.split_last().unwrap();
                assert!(
                    !sources.is_empty() && !sources[0].starts_with("--"),
                    "{i:?}"
                );
                for src in sources {
                    let to = if dest.ends_with('/') {
                        dir.path
                            .join(dest)
                            .join(Path::new(src).file_name().unwrap())
                    } else {
                        dir.path.join(dest)
                    };
                    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                    std::fs::copy(root().join(src), &to).unwrap_or_else(|e| panic!("{src}: {e}"));
                }
            }
            "RUN" if i.args.contains("cargo build") => {
                assert!(i.args.contains("--locked"), "{i:?}");
                built = true;
            }
            // Only steps that write the stub layout run here; anything else (installing a
            // package, a toolchain component) would touch this machine and cannot make a stub.
            "RUN"
                if i.args.split("&&").all(|c| {
                    let c = c.trim_start();
                    ["mkdir ", "echo ", "touch ", "printf "]
                        .iter()
                        .any(|p| c.starts_with(p))
                }) =>
            {
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(&i.args)
                    .current_dir(&dir.path)
                    .status()
                    .unwrap();
                assert!(status.success(), "{i:?}");
            }
            _ => {}
        }
    }
    assert!(
        built,
        "the dependency layer builds before the sources arrive"
    );
    dir
}

#[test]
fn dockerfile_dependency_stage_loads_the_whole_workspace() {
    let text = read("Dockerfile");
    assert!(
        !text.contains("|| true"),
        "no failure of the dependency layer may be hidden"
    );
    let stub = replay_dependency_stage();
    // Only manifests and stubs: the real sources are not there.
    assert!(!stub.path.join("src/app.rs").exists());
    let meta = metadata(&stub.path).unwrap_or_else(|e| panic!("stub layout: {e}"));
    let (stub_targets, missing) = build_targets(&meta, &stub.path);
    assert!(missing.is_empty(), "{missing:?}");
    let real = metadata(&root()).unwrap();
    let (real_targets, _) = build_targets(&real, &root());
    assert_eq!(
        stub_targets, real_targets,
        "every member and target has its stub"
    );
    // The same locked dependency graph: the layer really caches what the build uses.
    let ids = |m: &Value| -> BTreeSet<String> {
        m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !p["source"].is_null())
            .map(|p| format!("{} {}", p["name"], p["version"]))
            .collect()
    };
    assert_eq!(ids(&meta), ids(&real));
}

#[test]
fn the_stub_check_notices_a_missing_member_or_target() {
    let stub = replay_dependency_stage();
    std::fs::remove_file(stub.path.join("benches/tokens.rs")).unwrap();
    let (targets, _) = build_targets(&metadata(&stub.path).unwrap(), &stub.path);
    let (real, _) = build_targets(&metadata(&root()).unwrap(), &root());
    assert_eq!(
        real.difference(&targets).collect::<Vec<_>>(),
        ["udp-director bench tokens"]
    );
    std::fs::remove_file(stub.path.join("client/Cargo.toml")).unwrap();
    assert!(metadata(&stub.path).is_err());
}

#[test]
fn image_runs_non_root_on_distroless_with_oci_labels_and_a_reachable_config() {
    let (build, run) = stages();
    assert!(build[0].args.starts_with("rust:"), "{:?}", build[0]);
    assert!(
        run[0].args.starts_with("gcr.io/distroless/") && run[0].args.ends_with(":nonroot"),
        "{:?}",
        run[0]
    );
    let has =
        |keyword: &str, args: &str| run.iter().any(|i| i.keyword == keyword && i.args == args);
    assert!(has("USER", "65532:65532"));
    assert!(has(
        "COPY",
        "docker/config.yaml /etc/udp-director/config.yaml"
    ));
    assert!(
        run.iter()
            .any(|i| i.keyword == "CMD" && i.args.contains("\"/etc/udp-director/config.yaml\""))
    );
    let labels: String = run
        .iter()
        .filter(|i| i.keyword == "LABEL")
        .map(|i| i.args.clone())
        .collect();
    for key in [
        "title",
        "description",
        "source",
        "licenses",
        "version",
        "revision",
    ] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "OCI label {key}: {labels}"
        );
    }
    assert!(labels.contains("org.opencontainers.image.licenses=\"Apache-2.0\""));
    // The built-in config is valid and listens on all addresses (a plain `docker run -p`
    // reaches it), on the ports the image exposes.
    let config = ValidConfig::load(&root().join("docker/config.yaml")).unwrap();
    for addr in [config.query_addr, config.data_addr, config.admin_addr] {
        assert!(addr.ip().is_unspecified(), "{addr}");
    }
    let expose = &run.iter().find(|i| i.keyword == "EXPOSE").unwrap().args;
    for (addr, proto) in [
        (config.query_addr, "tcp"),
        (config.data_addr, "udp"),
        (config.admin_addr, "tcp"),
    ] {
        assert!(
            expose.contains(&format!("{}/{proto}", addr.port())),
            "{expose}"
        );
    }
}

#[test]
fn dockerignore_keeps_what_the_build_copies_and_drops_the_rest() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    for dropped in [".git", "target", "fuzz"] {
        assert!(ignored.contains(dropped), "{dropped}");
    }
    // Every top-level path a COPY from the context names, and every source dir the build
    // compiles, reaches the daemon.
    let mut needed: BTreeSet<String> = ["src", "client", "testkit", "benches"]
        .map(String::from)
        .into();
    for i in dockerfile()
        .iter()
        .filter(|i| i.keyword == "COPY" && !i.args.starts_with("--from"))
    {
        let parts: Vec<&str> = i.args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            needed.insert(src.split('/').next().unwrap().to_string());
        }
    }
    needed.remove(".");
    for n in &needed {
        assert!(!ignored.contains(n), "{n} is copied but ignored");
        assert!(
            !ignored
                .iter()
                .any(|p| p.starts_with('*') && n.ends_with(&p[1..])),
            "{n} is matched by a wildcard"
        );
        assert!(root().join(n).exists(), "{n}");
    }
}

fn workflow(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every step of `job`, as (uses, run, with) strings.
fn steps(wf: &serde_yaml::Value, job: &str) -> Vec<(String, String, serde_yaml::Value)> {
    wf["jobs"][job]["steps"]
        .as_sequence()
        .unwrap_or_else(|| panic!("job {job}"))
        .iter()
        .map(|s| {
            (
                s["uses"].as_str().unwrap_or_default().to_string(),
                s["run"].as_str().unwrap_or_default().to_string(),
                s["with"].clone(),
            )
        })
        .collect()
}

fn needs(wf: &serde_yaml::Value, job: &str) -> Vec<String> {
    match &wf["jobs"][job]["needs"] {
        serde_yaml::Value::String(s) => vec![s.clone()],
        serde_yaml::Value::Sequence(v) => {
            v.iter().map(|s| s.as_str().unwrap().to_string()).collect()
        }
        _ => vec![],
    }
}

#[test]
fn release_workflow_publishes_the_image_the_chart_pulls_the_chart_and_the_clients() {
    let wf = workflow(".github/workflows/release.yml");
    let tags: Vec<&str> = wf["on"]["push"]["tags"]
        .as_sequence()
        .expect("triggered by tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, ["v*"]);
    assert!(wf["on"]["push"]["branches"].is_null(), "tags only");
    // Nothing is published before the CI checks pass on the tagged commit.
    let check = steps(&wf, "check");
    assert!(check.iter().any(|(_, run, _)| run.contains(".ci/run")));
    for job in ["image", "crate", "npm"] {
        assert_eq!(needs(&wf, job), ["check"], "{job}");
    }
    assert_eq!(needs(&wf, "chart"), ["image"]);

    // One version everywhere the release's check step compares with the tag.
    let version = env!("CARGO_PKG_VERSION");
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("k8s/helm/udp-director/Chart.yaml")).unwrap();
    assert_eq!(chart["appVersion"].as_str(), Some(version));
    assert_eq!(chart["version"].as_str(), Some(version));
    assert!(read("client/Cargo.toml").contains(&format!("\nversion = \"{version}\"\n")));
    let check_script: String = check.iter().map(|s| s.1.clone()).collect();
    for file in [
        "Cargo.toml",
        "client/Cargo.toml",
        "k8s/helm/udp-director/Chart.yaml",
        "clients/node/package.json",
    ] {
        assert!(
            check_script.contains(file),
            "the tag is checked against {file}"
        );
    }

    // The image: multi-arch, pushed to where the chart and k8s/ pull from.
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read("k8s/helm/udp-director/values.yaml")).unwrap();
    assert_eq!(wf["env"]["IMAGE"], values["image"]["repository"]);
    assert!(read("k8s/deployment.yaml").contains(&format!(
        "image: {}:{version}\n",
        values["image"]["repository"].as_str().unwrap()
    )));
    let image = steps(&wf, "image");
    let uses = |steps: &[(String, String, serde_yaml::Value)], action: &str| {
        steps
            .iter()
            .find(|(u, _, _)| u.split('@').next() == Some(action))
            .cloned()
    };
    assert!(uses(&image, "docker/setup-qemu-action").is_some());
    assert!(uses(&image, "docker/setup-buildx-action").is_some());
    assert!(uses(&image, "docker/login-action").is_some());
    let (_, _, with) = uses(&image, "docker/build-push-action").expect("build-push-action");
    let platforms: BTreeSet<&str> = with["platforms"].as_str().unwrap().split(',').collect();
    assert_eq!(platforms, BTreeSet::from(["linux/amd64", "linux/arm64"]));
    assert_eq!(with["push"], serde_yaml::Value::Bool(true));
    let args = with["build-args"].as_str().unwrap();
    assert!(
        args.contains("VERSION=") && args.contains("REVISION="),
        "{args}"
    );
    assert_eq!(
        wf["jobs"]["image"]["permissions"]["packages"].as_str(),
        Some("write")
    );

    // The chart, as an OCI artifact.
    let chart: String = steps(&wf, "chart").into_iter().map(|s| s.1).collect();
    assert!(
        chart.contains("helm package k8s/helm/udp-director"),
        "{chart}"
    );
    assert!(chart.contains("helm push"), "{chart}");
    assert!(
        wf["env"]["CHART_REPO"]
            .as_str()
            .unwrap()
            .starts_with("oci://")
    );

    // The client crate, and the Node client.
    let krate: String = steps(&wf, "crate").into_iter().map(|s| s.1).collect();
    assert!(
        krate.contains("cargo publish --locked -p udp-director-client"),
        "{krate}"
    );
    assert!(read("client/Cargo.toml").contains("name = \"udp-director-client\""));
    assert_eq!(
        wf["jobs"]["npm"]["defaults"]["run"]["working-directory"].as_str(),
        Some("clients/node")
    );
    let npm = steps(&wf, "npm");
    assert!(npm.iter().any(|(_, run, _)| run.starts_with("npm publish")));

    // Every action is pinned to a release.
    for (name, job) in wf["jobs"].as_mapping().unwrap() {
        for (u, _, _) in steps(&wf, name.as_str().unwrap()) {
            if !u.is_empty() {
                assert!(u.contains('@'), "{job:?}: {u}");
            }
        }
    }
}

#[test]
fn every_crate_is_apache_2_and_the_repo_carries_the_license_text() {
    let license = read("LICENSE");
    assert!(
        license.contains("Apache License\n                           Version 2.0, January 2004")
    );
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
    for manifest in ["Cargo.toml", "client/Cargo.toml", "testkit/Cargo.toml"] {
        assert!(
            read(manifest).contains("license = \"Apache-2.0\""),
            "{manifest}"
        );
    }
    assert!(read("SECURITY.md").contains("security/advisories/new"));
    assert!(read("CHANGELOG.md").contains("## [Unreleased]"));
    let deny: toml_like::Allow = toml_like::allow(&read("deny.toml"));
    assert!(deny.0.contains(&"Apache-2.0".to_string()));
    assert!(!deny.0.iter().any(|l| l.contains("GPL")), "{:?}", deny.0);
}

/// Just enough of deny.toml: the `allow = [...]` license list (no TOML crate in the tree).
mod toml_like {
    pub struct Allow(pub Vec<String>);

    pub fn allow(text: &str) -> Allow {
        let start = text.find("\nallow = [").expect("licenses.allow");
        let body = &text[start..];
        let end = body.find(']').unwrap();
        Allow(
            body[..end]
                .lines()
                .skip(1)
                .filter_map(|l| l.split('"').nth(1))
                .map(String::from)
                .collect(),
        )
    }
}
