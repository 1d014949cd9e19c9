//! The replay runner: a capture written from frames, `enforcer replay` run
//! over it (the real binary), and what it wrote read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use enforcer::packet::view::parse;

use super::frames::{ip, read_pcap, rec, write_pcap, write_pcapng, Rec, FIN, RST, SYN};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped policies (`policies/`).
pub fn shipped() -> PathBuf {
    repo().join("policies")
}

/// What one replay wrote.
pub struct Run {
    pub ok: bool,
    pub stderr: String,
    /// Frames of the output pcap (none when the run failed).
    pub out: Vec<Vec<u8>>,
    /// Verdict log lines.
    pub log: Vec<serde_json::Value>,
}

impl Run {
    /// The counters of the summary line on stderr.
    pub fn counters(&self) -> serde_json::Value {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains("counters: "))
            .unwrap_or_else(|| {
                panic!("no summary in stderr: {}", self.stderr);
            });
        let json = &line[line.find("counters: ").unwrap() + "counters: ".len()..];
        serde_json::from_str(json).expect("counters are JSON")
    }

    pub fn drops(&self, reason: &str) -> u64 {
        self.counters()["drops"][reason].as_u64().unwrap_or(0)
    }
}

/// A scratch directory for captures, outputs and policies.
pub struct Replay {
    dir: tempfile::TempDir,
    /// Used by `frames` and `recs`.
    pub policy: PathBuf,
}

impl Replay {
    /// Replays under `policy` (a file or directory).
    pub fn new(policy: PathBuf) -> Replay {
        Replay {
            dir: tempfile::tempdir().expect("tempdir"),
            policy,
        }
    }

    /// Replays under the shipped endpoints plus the given policy files.
    pub fn with_policies(files: &[(&str, &str)]) -> Replay {
        let mut r = Replay::new(PathBuf::new());
        let pol = r.path("policies");
        std::fs::create_dir(&pol).unwrap();
        std::fs::copy(shipped().join("endpoints.yaml"), pol.join("endpoints.yaml")).unwrap();
        for (name, text) in files {
            std::fs::write(pol.join(name), text).unwrap();
        }
        r.policy = pol;
        r
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replay `input` under `policy`; the run may fail, but never panic.
    pub fn file(&self, policy: &Path, input: &Path, extra: &[&str]) -> Run {
        let out = self.path("out.pcap");
        let log = self.path("log.jsonl");
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&log);
        let o = Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .arg("replay")
            .arg("--policy")
            .arg(policy)
            .arg(input)
            .arg("-w")
            .arg(&out)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .output()
            .expect("run enforcer");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "enforcer panicked: {stderr}");
        let out = if out.exists() && o.status.success() {
            read_pcap(&out)
        } else {
            vec![]
        };
        let log = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect();
        Run {
            ok: o.status.success(),
            stderr,
            out,
            log,
        }
    }

    /// Replay `recs` as a plain pcap (sides inferred) or a pcapng (sides
    /// from the interfaces); the run must succeed.
    pub fn recs(&self, recs: &[Rec], pcapng: bool, extra: &[&str]) -> Run {
        let input = self.path(if pcapng { "in.pcapng" } else { "in.pcap" });
        if pcapng {
            write_pcapng(&input, recs);
        } else {
            write_pcap(&input, recs);
        }
        let r = self.file(&self.policy, &input, extra);
        assert!(r.ok, "replay failed: {}", r.stderr);
        r
    }

    /// Replay `frames` as a plain pcap, 1 ms apart.
    pub fn frames(&self, frames: &[Vec<u8>], extra: &[&str]) -> Run {
        let recs: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| rec(i as u64 * 1_000_000, 0, f.clone()))
            .collect();
        self.recs(&recs, false, extra)
    }
}

/// The TCP payloads a replay wrote towards `dst`, by seq.
pub struct Towards {
    /// Every copy of every payload, by seq.
    pub segments: Vec<(u32, Vec<u8>)>,
    /// Seq just past the FIN's payload, when one came.
    pub fin: Option<u32>,
    pub rst: bool,
}

pub fn towards(frames: &[Vec<u8>], dst: &str) -> Towards {
    let mut t = Towards {
        segments: Vec::new(),
        fin: None,
        rst: false,
    };
    for f in frames {
        let m = parse(f).expect("enforcer wrote an unparsable frame");
        if m.dst != ip(dst) || m.proto != 6 {
            continue;
        }
        let tcp = m.tcp().expect("tcp");
        if tcp.flags & RST != 0 {
            t.rst = true;
        }
        if tcp.flags & SYN != 0 {
            continue;
        }
        let p = m.payload(f);
        if tcp.flags & FIN != 0 {
            t.fin = Some(tcp.seq.wrapping_add(p.len() as u32));
        }
        if !p.is_empty() {
            t.segments.push((tcp.seq, p.to_vec()));
        }
    }
    t
}

impl Towards {
    /// The byte stream from seq `start`, as a receiver reads it; every copy
    /// of a byte must carry the same value and no byte may be missing.
    /// Also whether the FIN ends it exactly.
    pub fn exact(&self, start: u32) -> (Vec<u8>, bool) {
        let mut bytes: BTreeMap<u32, u8> = BTreeMap::new();
        for (seq, p) in &self.segments {
            for (i, b) in p.iter().enumerate() {
                let off = seq.wrapping_add(i as u32).wrapping_sub(start);
                if let Some(old) = bytes.insert(off, *b) {
                    assert_eq!(old, *b, "two different bytes at offset {off}");
                }
            }
        }
        let mut out = Vec::new();
        while let Some(b) = bytes.get(&(out.len() as u32)) {
            out.push(*b);
        }
        assert_eq!(out.len(), bytes.len(), "gap in the stream");
        let fin = self.fin.map(|f| f.wrapping_sub(start)) == Some(out.len() as u32);
        (out, fin)
    }

    /// The byte stream from the first payload's seq on, the first copy of
    /// each seq winning, up to the first gap (where a receiver would stop).
    pub fn first_copies(&self) -> Vec<u8> {
        let mut segs: BTreeMap<u32, &[u8]> = BTreeMap::new();
        for (seq, p) in &self.segments {
            segs.entry(*seq).or_insert(p);
        }
        let mut out = Vec::new();
        let Some((&first, _)) = segs.iter().next() else {
            return out;
        };
        let mut next = first;
        for (s, d) in segs {
            if s > next {
                break;
            }
            let skip = (next - s) as usize;
            if skip < d.len() {
                out.extend_from_slice(&d[skip..]);
                next = s + d.len() as u32;
            }
        }
        out
    }

    /// The seq of every payload, in the order written.
    pub fn starts(&self) -> Vec<u32> {
        self.segments.iter().map(|(s, _)| *s).collect()
    }
}
