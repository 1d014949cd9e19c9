//! The fuzz targets' logic without nightly or libFuzzer: the frame-path
//! scenarios and the policy-loading input of `fuzz/`, run over the seed
//! corpus and over bounded random inputs (proptest).
//!
//! `WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_smoke seed_corpus` rewrites
//! the seed corpus in `fuzz/seeds/frames` and `fuzz/seeds/policy`.

#[path = "../fuzz/src/policy_input.rs"]
mod policy_input;
#[path = "../fuzz/src/scenario.rs"]
mod scenario;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use scenario::{run, seeds, Scenario};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every policy text the repository ships or tests with: the policy seeds.
fn policy_texts() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                let t = std::fs::read_to_string(&p).expect("policy text");
                out.push((p, t));
            }
        }
    }
    let mut v = Vec::new();
    for d in ["policies", "tests/policies", "tests/fixtures"] {
        walk(&repo().join(d), &mut v);
    }
    assert!(v.len() >= 8, "policy seeds found: {}", v.len());
    v
}

/// Seeds for the policy target: each file alone, and each policy with the
/// endpoints document of its directory.
fn policy_seeds() -> Vec<(String, Vec<u8>)> {
    let texts = policy_texts();
    let mut v = Vec::new();
    for (p, t) in &texts {
        let name = p
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .replace('/', "_");
        v.push((name.clone(), policy_input::encode(&[t])));
        let eps = p.with_file_name("endpoints.yaml");
        if p.file_name() != eps.file_name() {
            if let Some((_, e)) = texts.iter().find(|(q, _)| *q == eps) {
                // Position 0 is a .yaml name, 1 a .json one: the JSON
                // policies go second so their own path is taken.
                let pair = if p.extension().is_some_and(|x| x == "json") {
                    policy_input::encode(&[e, t])
                } else {
                    policy_input::encode(&[t, "", e])
                };
                v.push((format!("{name}+endpoints"), pair));
            }
        }
    }
    v
}

#[test]
fn seed_scenarios_round_trip_and_reach_l7() {
    let mut emitted = 0;
    for (name, s) in seeds() {
        let bytes = s.encode();
        assert_eq!(
            Scenario::decode(&bytes),
            s,
            "{name}: decode(encode(s)) != s"
        );
        let st = run(&s);
        assert!(st.frames >= 3, "{name}: {st:?}");
        assert!(st.forwarded > 0, "{name}: nothing forwarded: {st:?}");
        emitted += st.emitted;
    }
    // The denied requests are answered by the enforcer itself.
    assert!(emitted > 0, "no seed scenario made the engine emit a frame");
}

/// The harness's own checksum check, which guards every frame the engine
/// forwards or emits, tells good from bad.
#[test]
fn harness_checksum_check_is_live() {
    for (src, dst) in [("10.66.0.11", "10.66.0.2"), ("fd66::11", "fd66::2")] {
        let f = scenario::tcp_frame(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            40000,
            80,
            1,
            2,
            scenario::ACK | scenario::PSH,
            64,
            0,
            b"GET / HTTP/1.1\r\n",
        );
        assert_eq!(scenario::tcp_checksums_ok(&f), Some(true), "{src}");
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(scenario::tcp_checksums_ok(&bad), Some(false), "{src}");
        if src.contains('.') {
            let mut bad_ip = f.clone();
            bad_ip[14 + 8] ^= 1; // TTL: only the IP header checksum covers it
            assert_eq!(scenario::tcp_checksums_ok(&bad_ip), Some(false));
        }
    }
}

#[test]
fn policy_seeds_load_and_run() {
    let seeds = policy_seeds();
    for (name, data) in &seeds {
        let src = policy_input::sources(data);
        assert!(!src.is_empty(), "{name}");
        policy_input::check(data);
    }
    // The seed scenarios' policy set loads (the target's Ok branch is taken).
    let set: Vec<(String, String)> = [
        "endpoints.yaml",
        "memcd-sw-security-policy.yaml",
        "sw-deathstar-http.yaml",
    ]
    .iter()
    .map(|n| {
        let p = repo().join("policies").join(n);
        (n.to_string(), std::fs::read_to_string(&p).expect("policy"))
    })
    .collect();
    let texts: Vec<&str> = set.iter().map(|(_, t)| t.as_str()).collect();
    let p = enforcer::policy::Policy::from_sources(&set).expect("shipped policies load");
    assert!(!p.model().rules.is_empty());
    policy_input::check(&policy_input::encode(&texts));
}

/// The committed corpus is what `seeds()` and the policy files give:
/// the frames seeds byte for byte, and every committed policy seed runs
/// through the target's checks. `WRITE_FUZZ_SEEDS=1` rewrites both.
#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("WRITE_FUZZ_SEEDS").is_some();
    let frames = repo().join("fuzz/seeds/frames");
    let policy = repo().join("fuzz/seeds/policy");
    if write {
        std::fs::create_dir_all(&frames).unwrap();
        std::fs::create_dir_all(&policy).unwrap();
        for (name, data) in policy_seeds() {
            std::fs::write(policy.join(name), data).unwrap();
        }
    }
    for (name, s) in seeds() {
        let path = frames.join(name);
        if write {
            std::fs::write(&path, s.encode()).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == s.encode(),
            "{} is stale: WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_smoke seed_corpus",
            path.display()
        );
    }
    let mut n = 0;
    for e in std::fs::read_dir(&policy).expect("fuzz/seeds/policy") {
        policy_input::check(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 8, "{n} policy seeds");
}

/// A seed with a few bytes changed: what libFuzzer's first mutations do.
fn mutated(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(at, val, op) in edits {
        if v.is_empty() {
            v.push(val);
            continue;
        }
        let i = at % v.len();
        match op % 3 {
            0 => v[i] = val,
            1 => v.insert(i, val),
            _ => {
                v.remove(i);
            }
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_scenarios(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        run(&Scenario::decode(&data));
    }

    #[test]
    fn mutated_seed_scenarios(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12),
    ) {
        let s = seeds();
        let seed = s[which % s.len()].1.encode();
        run(&Scenario::decode(&mutated(&seed, &edits)));
    }

    #[test]
    fn mutated_policies(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let s = policy_seeds();
        policy_input::check(&mutated(&s[which % s.len()].1, &edits));
    }
}
