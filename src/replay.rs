//! `enforcer replay`: the engine over a capture. Reads pcap or pcapng, writes
//! the frames that would leave the enforcer (pcap) and the verdict log.
//!
//! Each frame's side: in a pcapng with two or more interfaces, interface 0
//! is side 0 (clients) and interface 1 is side 1 (servers). Otherwise (plain
//! pcap, single-interface pcapng, other interface ids) the side is inferred
//! like a learning bridge, by host: the sender of the first frame between two
//! unknown hosts is on side 0 and its peer on side 1, a host first seen
//! talking to a known one is on the other side of it, and everything not IP
//! counts as side 0. Time is the capture's timestamps (pcapng: in the
//! interface's `if_tsresol` units); timers run as the
//! capture's clock advances.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, TsResolution};

use crate::engine::Engine;
use crate::policy::Policy;
use crate::verdict::{other, Output, Side, Verdict};

#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub policy: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub log: Option<PathBuf>,
    pub engine: crate::config::EngineConfig,
}

/// Timers run when the capture clock has advanced this much.
const TICK_NS: u64 = 1_000_000;
/// Hosts remembered for side inference; beyond this, unknown hosts are side 0.
const MAX_HOSTS: usize = 1 << 20;
/// Largest frame we write (pcap snap length).
const SNAPLEN: u32 = 262_144;

/// One frame from the capture.
struct Frame {
    ts_ns: u64,
    /// From the capture (pcapng interface), when it says.
    side: Option<Side>,
    data: Vec<u8>,
}

/// pcap or pcapng, frame by frame. Reader panics on hostile input are turned
/// into errors: a bad capture must never take the process down.
enum Input {
    Pcap(PcapReader<BufReader<File>>),
    PcapNg {
        r: PcapNgReader<BufReader<File>>,
        sides_known: bool,
    },
}

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| format!("{what}: malformed capture"))
}

impl Input {
    fn open(path: &Path) -> Result<Input, String> {
        let name = path.display();
        let mut file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic)
            .map_err(|_| format!("{name}: not a pcap or pcapng file (too short)"))?;
        let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let rd = BufReader::new(file);
        match u32::from_le_bytes(magic) {
            0x0a0d_0d0a => {
                let r = guarded(&name.to_string(), || PcapNgReader::new(rd))?
                    .map_err(|e| format!("{name}: bad pcapng header: {e}"))?;
                Ok(Input::PcapNg {
                    r,
                    sides_known: false,
                })
            }
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
                let r = guarded(&name.to_string(), || PcapReader::new(rd))?
                    .map_err(|e| format!("{name}: bad pcap header: {e}"))?;
                let dl = r.header().datalink;
                if dl != DataLink::ETHERNET {
                    return Err(format!("{name}: link type {dl:?} is not Ethernet"));
                }
                Ok(Input::Pcap(r))
            }
            _ => Err(format!("{name}: not a pcap or pcapng file")),
        }
    }

    fn next(&mut self) -> Result<Option<Frame>, String> {
        match self {
            // Raw records: the checked reader refuses captures taken with a
            // short snap length (orig_len > snaplen); their cut frames are
            // the engine's to count as malformed, not a reason to stop.
            Input::Pcap(r) => {
                let frac_ns = match r.header().ts_resolution {
                    TsResolution::MicroSecond => 1_000,
                    TsResolution::NanoSecond => 1,
                };
                match guarded("pcap", || {
                    r.next_raw_packet().map(|p| p.map(|p| p.into_owned()))
                })? {
                    None => Ok(None),
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(p)) => Ok(Some(Frame {
                        ts_ns: u64::from(p.ts_sec) * 1_000_000_000 + u64::from(p.ts_frac) * frac_ns,
                        side: None,
                        data: p.data.into_owned(),
                    })),
                }
            }
            Input::PcapNg { r, sides_known } => loop {
                let block = match guarded("pcapng", || {
                    r.next_block().map(|b| b.map(|b| b.into_owned()))
                })? {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(b)) => b,
                };
                match block {
                    Block::InterfaceDescription(idb) => {
                        if idb.linktype != DataLink::ETHERNET {
                            return Err(format!("link type {:?} is not Ethernet", idb.linktype));
                        }
                        *sides_known = r.interfaces().len() >= 2;
                    }
                    Block::EnhancedPacket(p) => {
                        let side = match p.interface_id {
                            0 | 1 if *sides_known => Some(p.interface_id as Side),
                            _ => None,
                        };
                        let per_sec = r.packet_interface(&p).map_or(1_000_000, ticks_per_second);
                        // The reader hands the raw tick count over as nanoseconds.
                        let ticks = p.timestamp.as_nanos();
                        let ns = ticks.saturating_mul(1_000_000_000) / u128::from(per_sec);
                        return Ok(Some(Frame {
                            ts_ns: u64::try_from(ns).unwrap_or(u64::MAX),
                            side,
                            data: p.data.into_owned(),
                        }));
                    }
                    Block::SimplePacket(p) => {
                        return Ok(Some(Frame {
                            ts_ns: 0,
                            side: None,
                            data: p.data.into_owned(),
                        }))
                    }
                    _ => {}
                }
            },
        }
    }
}

/// Timestamp units of a pcapng interface (`if_tsresol`; microseconds when absent).
fn ticks_per_second(idb: &InterfaceDescriptionBlock) -> u64 {
    let resol = idb.options.iter().find_map(|o| match o {
        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
        _ => None,
    });
    match resol.unwrap_or(6) {
        r if r & 0x80 != 0 => 1u64.checked_shl(u32::from(r & 0x7f)).unwrap_or(u64::MAX),
        r => 10u64.checked_pow(u32::from(r)).unwrap_or(u64::MAX),
    }
    .max(1)
}

/// Learns which side each host is on (see the module docs).
#[derive(Default)]
struct Sides {
    hosts: HashMap<IpAddr, Side>,
}

impl Sides {
    fn side_of(&mut self, frame: &[u8]) -> Side {
        let Ok(m) = crate::packet::parse(frame) else {
            return 0;
        };
        let (s, d) = (
            self.hosts.get(&m.src).copied(),
            self.hosts.get(&m.dst).copied(),
        );
        let (ps, pd) = match (s, d) {
            (Some(p), _) => (p, d.unwrap_or(other(p))),
            (None, Some(q)) => (other(q), q),
            (None, None) => (0, 1),
        };
        if self.hosts.len() + 2 <= MAX_HOSTS {
            self.hosts.entry(m.src).or_insert(ps);
            self.hosts.entry(m.dst).or_insert(pd);
        }
        ps
    }
}

struct Sink {
    pcap: PcapWriter<BufWriter<File>>,
    log: Option<BufWriter<File>>,
    written: u64,
}

impl Sink {
    fn frame(&mut self, ts_ns: u64, data: &[u8]) -> Result<(), String> {
        let p = PcapPacket::new(Duration::from_nanos(ts_ns), data.len() as u32, data);
        self.pcap
            .write_packet(&p)
            .map_err(|e| format!("writing output: {e}"))?;
        self.written += 1;
        Ok(())
    }

    fn drain(&mut self, ts_ns: u64, policy: &Policy, out: &mut Output) -> Result<(), String> {
        for e in &out.emits {
            self.frame(ts_ns, &e.frame)?;
        }
        if let Some(log) = self.log.as_mut() {
            for ev in &out.events {
                log.write_all(ev.to_json_line(policy).as_bytes())
                    .map_err(|e| format!("writing log: {e}"))?;
            }
        }
        out.clear();
        Ok(())
    }
}

/// A policy file or directory, its errors joined into one message.
pub fn load_policy(path: &Path) -> Result<Policy, String> {
    Policy::load(path).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Every frame of the capture at `input`, in order, with its timestamp
/// (ns) and side (see the module docs). Returns the number of frames read.
pub fn each_frame(
    input: &Path,
    mut f: impl FnMut(u64, Side, Vec<u8>) -> Result<(), String>,
) -> Result<u64, String> {
    let mut capture = Input::open(input)?;
    let mut sides = Sides::default();
    let mut frames = 0u64;
    loop {
        let fr = match capture.next() {
            Ok(Some(fr)) => fr,
            Ok(None) => return Ok(frames),
            Err(e) => {
                return Err(format!(
                    "{}: unreadable after {frames} frames: {e}",
                    input.display()
                ))
            }
        };
        frames += 1;
        let side = fr.side.unwrap_or_else(|| sides.side_of(&fr.data));
        f(fr.ts_ns, side, fr.data)?;
    }
}

/// Runs `engines` side by side over the capture at `input`, each on its own
/// copy of every frame, on the capture's clock (timers included). After each
/// step of engine `i`, `sink(i, ts_ns, forwarded, out)` gets the input frame
/// when that engine forwarded it (possibly rewritten) and its output, which
/// the sink must clear. Returns the number of frames read.
pub fn drive(
    input: &Path,
    engines: &mut [Engine],
    mut sink: impl FnMut(usize, u64, Option<&[u8]>, &mut Output) -> Result<(), String>,
) -> Result<u64, String> {
    let mut out = Output::default();
    let mut last_tick = None;
    let last = engines.len().saturating_sub(1);
    each_frame(input, |ts, side, mut data| {
        let tick = last_tick.is_none_or(|t: u64| ts >= t.saturating_add(TICK_NS));
        if tick {
            last_tick = Some(ts);
        }
        for (i, engine) in engines.iter_mut().enumerate() {
            if tick {
                engine.tick(ts, &mut out);
                sink(i, ts, None, &mut out)?;
            }
            // The last engine may rewrite the capture's own buffer.
            let mut copy;
            let frame = if i == last {
                &mut data
            } else {
                copy = data.clone();
                &mut copy
            };
            let v = engine.on_frame(side, frame, ts, &mut out);
            let fwd = matches!(v, Verdict::Forward(_)).then_some(&frame[..]);
            sink(i, ts, fwd, &mut out)?;
        }
        Ok(())
    })
}

/// The output capture: nanosecond pcap, Ethernet.
pub fn pcap_writer(path: &Path) -> Result<PcapWriter<BufWriter<File>>, String> {
    let out_file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        snaplen: SNAPLEN,
        ..Default::default()
    };
    PcapWriter::with_header(BufWriter::new(out_file), header)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(args: &ReplayArgs) -> Result<(), String> {
    // The capture first: a wrong file is the cheaper mistake to report.
    Input::open(&args.input)?;
    let policy = load_policy(&args.policy)?;
    let pcap = pcap_writer(&args.output)?;
    let log = match &args.log {
        Some(p) => Some(BufWriter::new(
            File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    let mut sink = Sink {
        pcap,
        log,
        written: 0,
    };
    let policy = Arc::new(policy);
    let mut engines = [Engine::new(policy.clone(), args.engine.clone(), 0)];
    let result = drive(&args.input, &mut engines, |_, ts, fwd, out| {
        if let Some(f) = fwd {
            sink.frame(ts, f)?;
        }
        sink.drain(ts, &policy, out)
    });

    sink.pcap
        .into_writer()
        .flush()
        .map_err(|e| format!("writing output: {e}"))?;
    if let Some(mut l) = sink.log.take() {
        l.flush().map_err(|e| format!("writing log: {e}"))?;
    }
    let c = engines[0].counters();
    let dropped: u64 = c.drops.iter().sum();
    eprintln!(
        "replay: {} frames in, {} out, {dropped} dropped, {} flows; counters: {}",
        result.as_ref().map_or(0, |n| *n),
        sink.written,
        c.flows_created,
        c.to_json()
    );
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], b: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&a);
        f.extend_from_slice(&b);
        f.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn sides_follow_hosts() {
        let (c1, c2, s) = ([10, 0, 0, 1], [10, 0, 0, 3], [10, 0, 0, 2]);
        let mut sides = Sides::default();
        assert_eq!(sides.side_of(&v4(c1, s)), 0, "first sender is a client");
        assert_eq!(sides.side_of(&v4(s, c1)), 1);
        assert_eq!(
            sides.side_of(&v4(s, c2)),
            1,
            "the server starts a flow: still its side"
        );
        assert_eq!(sides.side_of(&v4(c2, s)), 0);
        assert_eq!(sides.side_of(b"junk"), 0);
    }

    #[test]
    fn pcapng_timestamp_units() {
        let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65535);
        assert_eq!(ticks_per_second(&idb), 1_000_000, "microseconds by default");
        idb.options.push(InterfaceDescriptionOption::IfTsResol(9));
        assert_eq!(ticks_per_second(&idb), 1_000_000_000);
        idb.options[0] = InterfaceDescriptionOption::IfTsResol(0x8a);
        assert_eq!(ticks_per_second(&idb), 1024);
        idb.options[0] = InterfaceDescriptionOption::IfTsResol(0xff);
        assert_eq!(ticks_per_second(&idb), u64::MAX);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_bytes_behind_a_capture_magic_read_without_panic(
            ng in proptest::prelude::any::<bool>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x");
            let mut bytes = if ng { vec![0x0a, 0x0d, 0x0d, 0x0a] } else { vec![0xd4, 0xc3, 0xb2, 0xa1] };
            bytes.extend(body);
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(mut input) = Input::open(&path) {
                for _ in 0..100 {
                    match input.next() {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
    }
}
