//! `enforcer replay` end to end at L3/L4: generated captures through the real
//! binary, with the lab's endpoints and policies.

mod kit;

use kit::replay::{shipped, Replay, Run};
use kit::tcp::Conn;
use kit::*;

/// L4-only rules on the lab server (default-deny on ingress once selected):
/// spaceships may reach TCP 8080, the outsider's /32 UDP 53, the alliance
/// may ping.
const L4_POLICY: &str = r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l4-test"
spec:
  endpointSelector:
    matchLabels:
      app: memcd-server
  ingress:
  - fromEndpoints:
    - matchLabels:
        class: spaceship
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
  - fromCIDR:
    - "10.66.0.14/32"
    - "fd66::14/128"
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
  - fromEndpoints:
    - matchLabels:
        org: alliance
    icmps:
    - fields:
      - type: 8
        family: IPv4
      - type: 128
        family: IPv6
"#;

const SERVER: &str = "10.66.0.2";
const AWING: &str = "10.66.0.11";
const TRACKER: &str = "10.66.0.13";
const OUTSIDER: &str = "10.66.0.14";

fn l4() -> Replay {
    Replay::with_policies(&[("l4.yaml", L4_POLICY)])
}

fn verdicts(r: &Run) -> Vec<(String, String, u64, String)> {
    r.log
        .iter()
        .map(|e| {
            (
                e["src_identity"].as_str().unwrap_or("").to_string(),
                e["dst_identity"].as_str().unwrap_or("").to_string(),
                e["flow"]["dport"].as_u64().unwrap_or(0),
                e["verdict"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn v(s: &str, d: &str, port: u64, verdict: &str) -> (String, String, u64, String) {
    (s.into(), d.into(), port, verdict.into())
}

#[test]
fn allowed_by_identity_with_replies() {
    let rp = l4();
    let mut c = Conn::new(ep(AWING, 40000), ep(SERVER, 8080));
    let mut frames = c.handshake();
    frames.push(c.client_data(b"hello"));
    frames.push(c.server_data(b"world"));
    frames.push(c.client_fin());
    frames.push(c.server_fin());
    let r = rp.frames(&frames, &[]);
    assert_eq!(
        r.out, frames,
        "every frame of the connection, unchanged and in order"
    );
    assert_eq!(verdicts(&r), vec![v("a-wing", "server", 8080, "allow")]);
    assert_eq!(r.log[0]["kind"], "flow");
    assert_eq!(r.counters()["flows_created"], 1);
}

#[test]
fn denied_by_identity_and_world() {
    let rp = l4();
    let tracker = Conn::new(ep(TRACKER, 40000), ep(SERVER, 8080));
    let outsider = Conn::new(ep(OUTSIDER, 40000), ep(SERVER, 8080));
    let r = rp.frames(&[tracker.syn(), tracker.syn(), outsider.syn()], &[]);
    assert!(r.out.is_empty());
    assert_eq!(
        verdicts(&r),
        vec![
            v("alliance-tracker", "server", 8080, "deny"),
            v("alliance-tracker", "server", 8080, "deny"),
            v("world", "server", 8080, "deny"),
        ]
    );
    assert_eq!(r.drops("policy-denied"), 3);
}

#[test]
fn denied_by_port() {
    let rp = l4();
    let ok = Conn::new(ep(AWING, 40001), ep(SERVER, 8080));
    let bad = Conn::new(ep(AWING, 40002), ep(SERVER, 8081));
    let r = rp.frames(&[bad.syn(), ok.syn()], &[]);
    assert_eq!(r.out, vec![ok.syn()]);
    assert_eq!(
        verdicts(&r),
        vec![
            v("a-wing", "server", 8081, "deny"),
            v("a-wing", "server", 8080, "allow")
        ]
    );
}

#[test]
fn udp_allowed_by_cidr_only() {
    let rp = l4();
    let q = udp(ep(OUTSIDER, 5353), ep(SERVER, 53), b"query");
    let a = udp(ep(SERVER, 53), ep(OUTSIDER, 5353), b"answer");
    let not_in_cidr = udp(ep(AWING, 5353), ep(SERVER, 53), b"query");
    let r = rp.frames(&[q.clone(), a.clone(), not_in_cidr], &[]);
    assert_eq!(r.out, vec![q, a]);
    assert_eq!(
        verdicts(&r),
        vec![
            v("world", "server", 53, "allow"),
            v("a-wing", "server", 53, "deny")
        ]
    );
}

#[test]
fn unsolicited_inbound_to_default_deny_endpoint_is_dropped() {
    let rp = l4();
    // Mid-connection segments and a fake "answer" to a query the server never sent.
    let ack = tcp(
        ep(OUTSIDER, 443),
        ep(SERVER, 22),
        1,
        1,
        ACK | PSH,
        b"let me in",
    );
    let synack = tcp(ep(OUTSIDER, 443), ep(SERVER, 22), 1, 1, SYN | ACK, &[]);
    let fake = udp(ep(OUTSIDER, 53), ep(SERVER, 5353), b"answer");
    let r = rp.frames(&[ack, synack, fake], &[]);
    assert!(r.out.is_empty());
    assert_eq!(r.drops("no-flow"), 2);
    assert_eq!(r.drops("policy-denied"), 1);
}

#[test]
fn icmp_follows_l3_icmps_rules_of_the_seed_policy() {
    let rp = l4();
    let xwing = "10.66.0.12";
    let req = echo(xwing, SERVER, 7, 1, true, b"ping");
    let rep = echo(SERVER, xwing, 7, 1, false, b"ping");
    let denied = echo(OUTSIDER, SERVER, 8, 1, true, b"ping");
    let unsolicited_reply = echo(OUTSIDER, SERVER, 9, 1, false, b"pong");
    let input = rp.path("icmp.pcap");
    write_pcap(
        &input,
        &[
            rec(0, 0, req.clone()),
            rec(1, 0, rep.clone()),
            rec(2, 0, denied),
            rec(3, 0, unsolicited_reply),
        ],
    );
    let r = rp.file(&shipped(), &input, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.out, vec![req, rep]);
    assert_eq!(
        verdicts(&r),
        vec![
            v("x-wing", "server", 8, "allow"),
            v("world", "server", 8, "deny")
        ]
    );
}

#[test]
fn ipv6_from_pcapng_interfaces() {
    let rp = l4();
    let mut c = Conn::new(ep("fd66::11", 40000), ep("fd66::2", 8080));
    let hs = c.handshake();
    let data = c.client_data(b"v6");
    let bad = Conn::new(ep("fd66::14", 40000), ep("fd66::2", 8080));
    let ping = echo("fd66::11", "fd66::2", 3, 1, true, b"ping");
    let pong = echo("fd66::2", "fd66::11", 3, 1, false, b"ping");
    let recs = vec![
        rec(0, 0, hs[0].clone()),
        rec(1, 1, hs[1].clone()),
        rec(2, 0, hs[2].clone()),
        rec(3, 0, data.clone()),
        rec(4, 0, bad.syn()),
        rec(5, 0, ping.clone()),
        rec(6, 1, pong.clone()),
    ];
    let input = rp.path("v6.pcapng");
    write_pcapng(&input, &recs);
    let r = rp.file(&rp.policy, &input, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.out,
        vec![
            hs[0].clone(),
            hs[1].clone(),
            hs[2].clone(),
            data,
            ping,
            pong
        ]
    );
    assert_eq!(
        verdicts(&r),
        vec![
            v("a-wing", "server", 8080, "allow"),
            v("world", "server", 8080, "deny"),
            v("a-wing", "server", 128, "allow")
        ]
    );
}

#[test]
fn fragments_allowed_denied_overlapping_and_timed_out() {
    let rp = l4();
    let ms = 1_000_000;
    let allowed = udp(ep(OUTSIDER, 5353), ep(SERVER, 53), &[0x11; 120]);
    let ok = fragment_evenly(&allowed, 1, 48);
    let denied = udp(ep(OUTSIDER, 5353), ep(SERVER, 54), &[0x22; 120]);
    let no = fragment_evenly(&denied, 2, 48);
    // The second fragment rewrites bytes the first one carried.
    let overlap = fragments(&allowed, 3, &[(0, 48), (40, 128)]);
    let stale = fragments(
        &udp(ep(OUTSIDER, 5353), ep(SERVER, 53), &[0x33; 120]),
        4,
        &[(0, 48)],
    );
    let v6 = udp(ep("fd66::14", 5353), ep("fd66::2", 53), &[0x44; 100]);
    let ok6 = fragment_evenly(&v6, 5, 32);

    let mut recs = vec![rec(0, 0, stale[0].clone())];
    recs.extend(ok.iter().rev().map(|f| rec(ms, 0, f.clone())));
    recs.extend(no.iter().map(|f| rec(2 * ms, 0, f.clone())));
    recs.extend(overlap.iter().map(|f| rec(3 * ms, 0, f.clone())));
    recs.extend(ok6.iter().map(|f| rec(4 * ms, 0, f.clone())));
    // Long after: the stale datagram's queue has timed out.
    recs.push(rec(60_000 * ms, 0, allowed.clone()));
    let r = rp.recs(&recs, false, &[]);
    let mut expect: Vec<_> = ok.iter().rev().cloned().collect();
    expect.extend(ok6);
    expect.push(allowed);
    assert_eq!(r.out, expect);
    assert_eq!(r.drops("policy-denied"), no.len() as u64);
    assert_eq!(r.drops("fragment-overlap"), 2);
    assert_eq!(r.drops("fragment-timeout"), 1);
    assert_eq!(r.counters()["fragments_reassembled"], 3);
}

#[test]
fn flow_table_full() {
    let rp = l4();
    let conns: Vec<_> = (0..3)
        .map(|i| Conn::new(ep(AWING, 40000 + i), ep(SERVER, 8080)))
        .collect();
    let syns: Vec<_> = conns.iter().map(|c| c.syn()).collect();
    // Two finished handshakes fill the table: refuse-all refuses the third.
    let mut recs = Vec::new();
    for k in 0..2 {
        let mut c = Conn::new(ep(AWING, 40000 + k), ep(SERVER, 8080));
        for mut r in c.handshake_recs() {
            r.ts_ns += u64::from(k) * 1_000_000;
            recs.push(r);
        }
    }
    let full = recs.len();
    recs.push(rec(3_000_000, 0, syns[2].clone()));
    let r = rp.recs(
        &recs,
        false,
        &["--max-flows", "2", "--table-full", "refuse-all"],
    );
    assert_eq!(r.out.len(), full, "the handshakes pass, the third SYN not");
    assert_eq!(r.drops("flow-table-full"), 1);
    assert_eq!(r.counters()["flows_active"], 2);
    // Two half-open ones: the new SYN takes the place of the staler
    // (early drop), whatever the table-full policy.
    let r = rp.frames(&syns, &["--max-flows", "2", "--table-full", "refuse-all"]);
    assert_eq!(r.out, syns);
    assert_eq!(r.counters()["flows_evicted"], 1);

    let r = rp.recs(&recs, false, &["--max-flows", "2"]);
    assert_eq!(
        r.out.len(),
        full + 1,
        "refuse-l7 (default): L4 flows still pass"
    );
    assert_eq!(r.counters()["flows_untracked"], 1);

    let r = rp.frames(&syns, &["--max-flows", "2", "--table-full", "evict-oldest"]);
    assert_eq!(r.out, syns);
    assert_eq!(r.counters()["flows_evicted"], 1);
}

#[test]
fn non_ip_passes_unless_told_otherwise() {
    let rp = l4();
    let r = rp.frames(&[arp()], &[]);
    assert_eq!(r.out, vec![arp()]);
    assert_eq!(r.counters()["non_ip_passed"], 1);
    let r = rp.frames(&[arp()], &["--drop-non-ip"]);
    assert!(r.out.is_empty());
    assert_eq!(r.drops("non-ip-denied"), 1);
}

#[test]
fn truncated_and_bad_length_frames_are_counted() {
    let rp = l4();
    let mut c = Conn::new(ep(AWING, 40000), ep(SERVER, 8080));
    let syn = c.handshake().remove(0);
    let mut bad_len = syn.clone();
    bad_len[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let r = rp.frames(
        &[
            syn[..30].to_vec(),
            bad_len,
            vec![0u8; 3],
            vec![],
            syn.clone(),
        ],
        &[],
    );
    assert_eq!(r.out, vec![syn]);
    assert_eq!(r.drops("malformed"), 4);
    assert_eq!(r.counters()["frames_in"], 5);
}

#[test]
fn garbage_capture_is_a_clear_error() {
    let rp = l4();
    let garbage = rp.path("garbage.pcap");
    std::fs::write(
        &garbage,
        b"this is not a capture at all, just text\n".repeat(10),
    )
    .unwrap();
    let r = rp.file(&rp.policy, &garbage, &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("not a pcap or pcapng file"),
        "{}",
        r.stderr
    );

    let empty = rp.path("empty.pcap");
    std::fs::write(&empty, b"").unwrap();
    let r = rp.file(&rp.policy, &empty, &[]);
    assert!(!r.ok && r.stderr.contains("not a pcap"), "{}", r.stderr);
}

#[test]
fn cut_capture_is_an_error_after_the_frames_it_had() {
    let rp = l4();
    // A valid header, then a record claiming more bytes than there are.
    let cut = rp.path("cut.pcap");
    let syn = Conn::new(ep(AWING, 1), ep(SERVER, 8080)).syn();
    write_pcap(&cut, &[rec(0, 0, syn.clone()), rec(1, 0, syn)]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let r = rp.file(&rp.policy, &cut, &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("unreadable after 1 frames"),
        "{}",
        r.stderr
    );

    // Random bytes behind a pcapng magic.
    let ng = rp.path("junk.pcapng");
    let mut junk = vec![0x0a, 0x0d, 0x0d, 0x0a];
    junk.extend((0..500u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&ng, junk).unwrap();
    let r = rp.file(&rp.policy, &ng, &[]);
    assert!(!r.ok, "{}", r.stderr);
}

/// TCP payloads of the output frames, with their destination address.
fn payloads(frames: &[Vec<u8>]) -> Vec<(std::net::IpAddr, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let m = enforcer::packet::parse(f).ok()?;
            let p = m.payload(f);
            (!p.is_empty()).then(|| (m.dst, p.to_vec()))
        })
        .collect()
}

#[test]
fn l7_verdicts_and_injected_denials_reach_the_output_and_log() {
    let rp = l4();
    let mut c = Conn::new(ep(AWING, 40000), ep(SERVER, 11211));
    let mut frames = c.handshake();
    frames.push(c.client_data(b"get awing-coord\r\n"));
    frames.push(c.server_data(b"VALUE awing-coord 0 2\r\nok\r\nEND\r\n"));
    frames.push(c.client_data(b"get xwing-coord\r\n"));
    let input = rp.path("memcd.pcap");
    let recs: Vec<_> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| rec(i as u64 * 1_000_000, 0, f.clone()))
        .collect();
    write_pcap(&input, &recs);
    let r = rp.file(&shipped(), &input, &[]);
    assert!(r.ok, "{}", r.stderr);
    let server = ip(SERVER);
    let client = ip(AWING);
    assert_eq!(
        payloads(&r.out),
        vec![
            (server, b"get awing-coord\r\n".to_vec()),
            (client, b"VALUE awing-coord 0 2\r\nok\r\nEND\r\n".to_vec()),
            (client, b"CLIENT_ERROR access denied\r\n".to_vec()),
        ],
        "the denied request never reaches the server; its denial reaches the client"
    );
    let kinds: Vec<_> = r
        .log
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_string(),
                e["verdict"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("flow".into(), "allow".into()),
            ("memcache".into(), "allow".into()),
            ("memcache".into(), "deny".into())
        ]
    );
    assert_eq!(r.log[2]["keys"][0], "xwing-coord");
    assert_eq!(r.counters()["l7_requests_denied"], 1);
}

#[test]
fn short_snap_length_capture_counts_cut_frames() {
    use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
    let rp = l4();
    let c = Conn::new(ep(AWING, 40000), ep(SERVER, 8080));
    let syn = c.syn();
    let arp_frame = arp();
    let input = rp.path("snap.pcap");
    let header = PcapHeader {
        snaplen: 40,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(std::fs::File::create(&input).unwrap(), header).unwrap();
    for (i, f) in [&syn, &arp_frame].iter().enumerate() {
        let cut = &f[..f.len().min(40)];
        let raw = RawPcapPacket {
            ts_sec: 1,
            ts_frac: i as u32,
            incl_len: cut.len() as u32,
            orig_len: f.len() as u32,
            data: std::borrow::Cow::Borrowed(cut),
        };
        w.write_raw_packet(&raw).unwrap();
    }
    drop(w);
    let r = rp.file(&rp.policy, &input, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.drops("malformed"), 1, "the cut TCP frame");
    assert_eq!(r.out, vec![arp_frame[..40].to_vec()]);
}
