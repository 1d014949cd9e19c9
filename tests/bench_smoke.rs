//! The lab benchmark runner (`bench/run.sh`) still runs end to end: in its
//! smoke mode every configuration and load runs for a second into a
//! temporary directory, and the report has every row and every plot. Its
//! figures mean nothing and are not looked at beyond "the load ran". Needs
//! root (namespaces, AF_XDP); under CI=true a missing root fails.

mod kit;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The files a smoke run must not touch, with their contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// The rows (first cells) of the markdown table under `heading`.
fn rows(md: &str, heading: &str) -> Vec<String> {
    let at = md
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{md}"));
    md[at..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and rule
        .map(|l| l.split('|').nth(1).unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn bench_runner_smoke_writes_every_row_and_plot() {
    if !kit::lab::gate(kit::lab::root()) {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let before = snapshot(&repo.join("bench/results"));
    let readme = std::fs::read(repo.join("README.md")).unwrap();
    let out = tempfile::tempdir().unwrap();
    // This test's own builds (its profile's), so that CI builds nothing
    // more than the load generator example.
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE")
        .to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(repo)
        .args(["build", "-q", "--example", "loadgen"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().expect("cargo").success(),
        "cargo build --example loadgen"
    );
    let run = Command::new("bash")
        .arg(repo.join("bench/run.sh"))
        .arg("--smoke")
        .arg(out.path())
        .env("BENCH_PREFIX", "bsmk")
        // The whole-machine profile and its summary (bench/profile.py) too.
        .env("PROFILE", "1")
        .env("ENFORCER_BIN", env!("CARGO_BIN_EXE_enforcer"))
        .env("PKTGEN_BIN", env!("CARGO_BIN_EXE_enforcer-pktgen"))
        .env("LOADGEN_BIN", profile_dir.join("examples/loadgen"))
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench/run.sh --smoke failed:\n{stderr}"
    );

    let md = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    let mut every = vec!["bridge".to_string()];
    let mut first = Vec::new();
    for w in [1, 2] {
        for poll in ["adaptive", "busy"] {
            for mb in ["forwarder", "enforcer"] {
                every.push(format!("{mb}-w{w}-{poll}"));
            }
        }
    }
    first.extend(["bridge", "forwarder-w1-adaptive", "enforcer-w1-adaptive"].map(String::from));
    assert_eq!(rows(&md, "### 64-byte UDP"), every, "{md}");
    assert_eq!(rows(&md, "### TCP"), first, "{md}");
    let mut http = every.clone();
    http.insert(1, "haproxy".into());
    assert_eq!(rows(&md, "### HTTP"), http, "{md}");

    // Each load ran: it moved something (how much is not the point here).
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.path().join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let of = |test: &'static str| lines.iter().filter(move |l| l["test"] == test);
    for l in of("http") {
        assert!(l["rps"].as_f64() > Some(0.0), "{l}");
    }
    for l in of("mc_loadgen").chain(of("mc_memaslap")) {
        assert!(l["ops"].as_f64() > Some(0.0), "{l}");
    }
    for l in of("udp64") {
        assert!(l["sink"]["received"].as_u64() > Some(0), "{l}");
    }
    for l in of("bulk") {
        assert_eq!(l["sha_match"], true, "{l}");
    }
    assert_eq!(of("bulk").count(), 2, "bridge, first enforcer");
    // Every enforcer run left its counters (it stopped cleanly).
    assert_eq!(
        of("counters").count(),
        4 + 4 + 1,
        "forwarder, enforcer, any-key"
    );

    // The profile has every load, and splits the middlebox's time: the
    // enforcer's sends ran the far end's receive (a veth copy-mode sendto).
    let prof: Vec<serde_json::Value> = std::fs::read_to_string(out.path().join("profile.jsonl"))
        .expect("profile.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let loads = lines.iter().filter(|l| l.get("prof").is_some()).count();
    assert!(loads >= 30, "{loads} profiled loads");
    assert_eq!(prof.len(), loads, "a summary per profiled load");
    let http = prof
        .iter()
        .find(|p| p["cfg"] == "enforcer-w1-adaptive" && p["load"] == "http")
        .expect("the enforcer's HTTP profile");
    assert!(http["who_us"]["middlebox"].as_f64() > Some(0.0), "{http}");
    assert!(
        http["middlebox_us"]["kernel: far end's receive in our send"].as_f64() > Some(0.0),
        "{http}"
    );
    let pmd = std::fs::read_to_string(out.path().join("profile.md")).expect("profile.md");
    assert!(
        rows(&pmd, "### http").contains(&"haproxy".to_string()),
        "{pmd}"
    );

    for png in ["loss.png", "throughput.png", "latency.png"] {
        let b = std::fs::read(out.path().join(png)).unwrap_or_default();
        assert!(b.starts_with(b"\x89PNG"), "{png} is not a PNG plot");
    }
    assert_eq!(
        snapshot(&repo.join("bench/results")),
        before,
        "bench/results untouched"
    );
    assert_eq!(std::fs::read(repo.join("README.md")).unwrap(), readme);
}
