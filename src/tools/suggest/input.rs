//! Observations from a capture (the engine over it, under an observing
//! policy) or from a verdict log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use super::render::{labels_yaml, q};
use super::{Obs, Seen};
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::l7::http::{parse_request, ChunkedDecoder};
use crate::l7::memcache::group_of;
use crate::l7::{Body, Parse};
use crate::log::{Decision, Event, Subject};
use crate::policy::{L7Proto, Policy};
use crate::replay;
use crate::tools::{DecisionKey, Keyer, Tuple};

/// The first bytes a client sends tell its protocol.
fn sniff(payload: &[u8]) -> Option<L7Proto> {
    if payload.first() == Some(&0x80) {
        return Some(L7Proto::Memcache);
    }
    let line_end = payload
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(payload.len());
    let line = String::from_utf8_lossy(&payload[..line_end]);
    let line = line.trim_end();
    if line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0") {
        return Some(L7Proto::Http);
    }
    let word = line.split(' ').next().unwrap_or("");
    (group_of(word).is_some() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then_some(L7Proto::Memcache)
}

/// Pass 1 over a capture: which (destination, port) speak which L7 protocol.
fn l7_ports(input: &Path) -> Result<BTreeMap<(IpAddr, u16), L7Proto>, String> {
    // Connections whose SYN we saw, client → server, until their first data.
    let mut opened: BTreeSet<(IpAddr, u16, IpAddr, u16)> = BTreeSet::new();
    let mut ports = BTreeMap::new();
    replay::each_frame(input, |_, _, data| {
        let Ok(m) = crate::packet::parse(&data) else {
            return Ok(());
        };
        let Some(t) = m.tcp() else {
            return Ok(());
        };
        let key = (m.src, m.sport, m.dst, m.dport);
        if t.flags & 0x12 == 0x02 {
            opened.insert(key);
            return Ok(());
        }
        let p = m.payload(&data);
        if !p.is_empty() && opened.remove(&key) {
            if let Some(proto) = sniff(p) {
                ports.entry((m.dst, m.dport)).or_insert(proto);
            }
        }
        Ok(())
    })?;
    Ok(ports)
}

/// The policy a capture is observed under: the endpoints, and per L7 port
/// a rule matching every request, everything else audited.
fn observing_policy(
    endpoints: &Policy,
    ports: &BTreeMap<(IpAddr, u16), L7Proto>,
) -> Result<Policy, String> {
    let model = endpoints.model();
    let mut eps = String::from("kind: Endpoints\nendpoints:\n");
    for e in &model.endpoints {
        let _ = writeln!(eps, "- name: {}\n  labels:", q(&e.name));
        labels_yaml(&e.labels, "    ", &mut eps);
        let nets: Vec<String> = e.nets.iter().map(|n| q(&n.to_string())).collect();
        let _ = writeln!(eps, "  addresses: [{}]", nets.join(", "));
    }
    let mut by_ep: BTreeMap<usize, Vec<(u16, L7Proto)>> = BTreeMap::new();
    for (&(dst, port), &proto) in ports {
        if let Some(i) = model.ident(dst) {
            by_ep.entry(i).or_default().push((port, proto));
        }
    }
    let mut pol = String::new();
    for (i, ports) in by_ep {
        let _ = write!(
            pol,
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: observe-{i}\n  annotations:\n    enforcer.io/audit: \"true\"\nspec:\n  endpointSelector:\n    matchLabels:\n"
        );
        labels_yaml(&model.endpoints[i].labels, "      ", &mut pol);
        pol.push_str("  ingress:\n  - fromEntities: [all]\n    toPorts:\n");
        for (port, proto) in ports {
            let _ = writeln!(
                pol,
                "    - ports:\n      - port: \"{port}\"\n        protocol: TCP"
            );
            match proto {
                L7Proto::Http => pol.push_str("      rules:\n        http:\n        - {}\n"),
                L7Proto::Memcache => pol.push_str(
                    "      rules:\n        l7proto: memcache\n        l7:\n        - {}\n",
                ),
            }
        }
    }
    Policy::from_sources(&[
        ("(endpoints)".into(), eps),
        ("(observing policy)".into(), pol),
    ])
    .map_err(|errs| {
        let e: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        format!("observing policy: {}", e.join("; "))
    })
}

fn from_event(ev: &Event) -> Obs {
    Obs {
        src: ev.flow.src,
        dst: ev.flow.dst,
        proto: ev.flow.proto,
        dport: ev.flow.dport,
        seen: match &ev.subject {
            Subject::Flow => Seen::Flow,
            Subject::Http { method, host, path } => Seen::Http {
                method: method.to_string(),
                host: host.to_string(),
                path: path.to_string(),
                headers: Vec::new(),
            },
            Subject::Memcache { command, keys } => Seen::Memcache {
                command: command.to_string(),
                keys: keys.iter().map(String::from).collect(),
            },
        },
    }
}

pub(super) fn from_capture(
    input: &Path,
    endpoints: &Policy,
    headers: &[String],
) -> Result<(Vec<Obs>, u64), String> {
    let ports = l7_ports(input)?;
    let seen_headers = if headers.is_empty() {
        HashMap::new()
    } else {
        http_headers(input, &ports, headers)?
    };
    let policy = Arc::new(observing_policy(endpoints, &ports)?);
    let mut engines = [Engine::new(policy, EngineConfig::default(), 0)];
    let mut obs = Vec::new();
    let mut denied = 0;
    let mut keyer = Keyer::default();
    replay::drive(input, &mut engines, |_, _, _, out| {
        for ev in &out.events {
            let key = keyer.key(ev);
            // Denied here: a request that did not parse; not traffic to keep.
            if ev.verdict == Decision::Deny {
                denied += 1;
                continue;
            }
            let mut o = from_event(ev);
            if let (Seen::Http { headers, .. }, Some(h)) = (&mut o.seen, seen_headers.get(&key)) {
                headers.clone_from(h);
            }
            obs.push(o);
        }
        out.clear();
        Ok(())
    })?;
    Ok((obs, denied))
}

/// Client bytes kept per connection for header look-ups.
const MAX_CONN_BYTES: usize = 64 << 20;

/// One connection's client → server bytes by stream offset.
struct ClientBytes {
    isn: u32,
    segs: BTreeMap<u32, Vec<u8>>,
    kept: usize,
}

impl ClientBytes {
    /// The stream from its start up to the first gap, the first copy of
    /// each byte winning.
    fn contiguous(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (&off, d) in &self.segs {
            let off = off as usize;
            if off > out.len() {
                break;
            }
            let skip = out.len() - off;
            if skip < d.len() {
                out.extend_from_slice(&d[skip..]);
            }
        }
        out
    }
}

/// The asked-for headers of every HTTP request in a capture, by decision
/// key. A second reading of the clients' byte streams with the engine's
/// own parser: the engine's decisions carry no header values. Requests are
/// numbered per connection as `Keyer` numbers decisions (a connection per
/// SYN with a new initial sequence number), so the two agree.
fn http_headers(
    input: &Path,
    ports: &BTreeMap<(IpAddr, u16), L7Proto>,
    names: &[String],
) -> Result<HashMap<DecisionKey, Vec<String>>, String> {
    let mut conns: BTreeMap<(Tuple, u32), ClientBytes> = BTreeMap::new();
    let mut current: HashMap<Tuple, u32> = HashMap::new();
    replay::each_frame(input, |_, _, data| {
        let Ok(m) = crate::packet::parse(&data) else {
            return Ok(());
        };
        let Some(t) = m.tcp() else {
            return Ok(());
        };
        if ports.get(&(m.dst, m.dport)) != Some(&L7Proto::Http) {
            return Ok(());
        }
        let tuple = (m.src, m.dst, m.proto, m.sport, m.dport);
        if t.flags & 0x12 == 0x02 {
            let n = current.entry(tuple).or_insert(0);
            let same = conns.get(&(tuple, *n)).is_some_and(|c| c.isn == t.seq);
            if !same {
                *n += 1;
                conns.insert(
                    (tuple, *n),
                    ClientBytes {
                        isn: t.seq,
                        segs: BTreeMap::new(),
                        kept: 0,
                    },
                );
            }
            return Ok(());
        }
        let p = m.payload(&data);
        let Some(c) = current
            .get(&tuple)
            .and_then(|n| conns.get_mut(&(tuple, *n)))
        else {
            return Ok(());
        };
        if p.is_empty() || c.kept + p.len() > MAX_CONN_BYTES {
            return Ok(());
        }
        let off = t.seq.wrapping_sub(c.isn.wrapping_add(1));
        // Longer copies win: a retransmission may carry more.
        let e = c.segs.entry(off).or_default();
        if p.len() > e.len() {
            c.kept += p.len() - e.len();
            *e = p.to_vec();
        }
        Ok(())
    })?;
    let mut out = HashMap::new();
    for ((tuple, conn), c) in &conns {
        let buf = c.contiguous();
        let mut off = 0usize;
        let mut index = 0u32;
        while off < buf.len() {
            let Parse::Complete(h) = parse_request(&buf[off..]) else {
                break;
            };
            let mut hs = Vec::new();
            for name in names {
                for v in h.req.header_values(name.as_bytes()) {
                    hs.push(format!("{name}: {}", String::from_utf8_lossy(v)));
                }
            }
            let key = DecisionKey {
                tuple: *tuple,
                conn: *conn,
                request: Some(index),
            };
            out.insert(key, hs);
            index += 1;
            off += h.head_len;
            match h.body {
                Body::None => {}
                Body::Length(n) => {
                    off = off.saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
                }
                Body::Chunked => {
                    let mut d = ChunkedDecoder::new();
                    match d.feed(buf.get(off..).unwrap_or(&[])) {
                        Ok((used, true)) => off += used,
                        _ => break,
                    }
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn from_log(input: &Path) -> Result<(Vec<Obs>, u64), String> {
    let name = input.display();
    let f = std::fs::File::open(input).map_err(|e| format!("{name}: {e}"))?;
    let mut obs = Vec::new();
    let mut denied = 0;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{name}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: &str| format!("{name}:{}: {m}", i + 1);
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(&format!("not JSON: {e}")))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| at(&format!("{k}: missing")))
        };
        let flow = v.get("flow").ok_or_else(|| at("flow: missing"))?;
        let fl = |k: &str| flow.get(k).ok_or_else(|| at(&format!("flow.{k}: missing")));
        let addr = |k: &str| -> Result<IpAddr, String> {
            fl(k)?
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| at(&format!("flow.{k}: not an address")))
        };
        let num = |k: &str| -> Result<u64, String> {
            fl(k)?
                .as_u64()
                .ok_or_else(|| at(&format!("flow.{k}: not a number")))
        };
        let verdict = field("verdict")?;
        match verdict {
            "allow" | "audit" => {}
            "deny" => {
                denied += 1;
                continue;
            }
            o => return Err(at(&format!("verdict: unknown {o:?}"))),
        }
        let seen = match field("kind")? {
            "flow" => Seen::Flow,
            "http" => Seen::Http {
                method: field("method")?.into(),
                host: field("host")?.into(),
                path: field("path")?.into(),
                headers: Vec::new(),
            },
            "memcache" => Seen::Memcache {
                command: field("command")?.into(),
                keys: v
                    .get("keys")
                    .and_then(|k| k.as_array())
                    .ok_or_else(|| at("keys: missing"))?
                    .iter()
                    .map(|k| k.as_str().unwrap_or("").to_string())
                    .collect(),
            },
            o => return Err(at(&format!("kind: unknown {o:?}"))),
        };
        obs.push(Obs {
            src: addr("src")?,
            dst: addr("dst")?,
            proto: u8::try_from(num("proto")?).map_err(|_| at("flow.proto: out of range"))?,
            dport: u16::try_from(num("dport")?).map_err(|_| at("flow.dport: out of range"))?,
            seen,
        });
    }
    Ok((obs, denied))
}

pub(super) fn is_capture(path: &Path) -> Result<bool, String> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = f
        .read(&mut magic)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(n == 4
        && matches!(
            u32::from_le_bytes(magic),
            0x0a0d_0d0a | 0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_http_from_memcached() {
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(L7Proto::Http)
        );
        assert_eq!(sniff(b"get awing-coord\r\n"), Some(L7Proto::Memcache));
        assert_eq!(sniff(b"set k 0 0 1\r\nx\r\n"), Some(L7Proto::Memcache));
        assert_eq!(sniff(&[0x80, 0, 0, 5]), Some(L7Proto::Memcache));
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9\r\n"), None);
        assert_eq!(sniff(b"\x16\x03\x01"), None);
    }
}
