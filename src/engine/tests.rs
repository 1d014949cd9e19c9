//! Engine behaviour over hand-built frames, with a policy double: the real
//! `Policy::decide` lives in the policy module and is exercised by the
//! replay tests.

use std::cell::Cell;
use std::rc::Rc;

use super::*;
use crate::packet::view::testkit::*;
use crate::packet::view::testkit_tcp::Conn;
use crate::policy::L7Policy;

/// Server 10.66.0.2 / fd66::2 is default-deny on ingress: it accepts TCP 80
/// and 11211 (L7) from a-wing (.11) and x-wing (.12), UDP 53 from anyone,
/// ICMP echo from x-wing. Nothing else is selected by policy, so traffic to
/// other hosts is allowed (Cilium: unselected endpoints are default-allow).
fn lab_decide(src: IpAddr, dst: IpAddr, proto: Proto, dport: u16) -> FlowDecision {
    let server = [ip("10.66.0.2"), ip("fd66::2")].contains(&dst);
    if !server {
        return FlowDecision {
            allowed: true,
            detail: "not selected".into(),
            l7: None,
            audit: None,
        };
    }
    let wing = ["10.66.0.11", "10.66.0.12", "fd66::11", "fd66::12"]
        .iter()
        .any(|a| ip(a) == src);
    let xwing = [ip("10.66.0.12"), ip("fd66::12")].contains(&src);
    let (allowed, l7) = match proto {
        Proto::Tcp if server && wing && dport == 80 => (true, None),
        Proto::Tcp if server && wing && dport == 11211 => {
            (true, Some(L7Policy::Memcache(Arc::default())))
        }
        Proto::Udp if server && dport == 53 => (true, None),
        Proto::Icmp if server && xwing && (dport == 8 || dport == 128) => (true, None),
        _ => (false, None),
    };
    let detail = if allowed {
        "test/ingress[0]".to_string()
    } else {
        "no rule".to_string()
    };
    FlowDecision {
        allowed,
        detail,
        l7,
        audit: None,
    }
}

fn engine_with(cfg: EngineConfig) -> Engine {
    let mut e = Engine::new(Arc::new(Policy::default()), cfg, 0);
    e.decide_override = Some(Box::new(lab_decide));
    e
}

fn engine() -> Engine {
    engine_with(EngineConfig::default())
}

fn run(e: &mut Engine, side: Side, frame: &[u8], now: u64, out: &mut Output) -> Verdict {
    let mut f = frame.to_vec();
    e.on_frame(side, &mut f, now, out)
}

const FWD: Verdict = Verdict::Forward(1);
const BACK: Verdict = Verdict::Forward(0);

#[test]
fn allowed_connection_and_its_replies_pass() {
    let mut e = engine();
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    let hs = c.handshake();
    assert_eq!(run(&mut e, 0, &hs[0], 1, &mut out), FWD);
    assert_eq!(out.events.len(), 1, "one event for the new flow");
    let ev = &out.events[0];
    assert_eq!(
        (ev.verdict, ev.subject.clone(), ev.flow.dport),
        (Decision::Allow, Subject::Flow, 80)
    );
    assert_eq!(ev.rule.as_deref(), Some("test/ingress[0]"));
    assert_eq!(run(&mut e, 1, &hs[1], 2, &mut out), BACK);
    assert_eq!(run(&mut e, 0, &hs[2], 3, &mut out), FWD);
    assert_eq!(run(&mut e, 0, &c.client_data(b"GET /"), 4, &mut out), FWD);
    assert_eq!(run(&mut e, 1, &c.server_data(b"200"), 5, &mut out), BACK);
    assert_eq!(out.events.len(), 1, "no further events for the same flow");
    let idx = e
        .flows
        .find(&FlowKey::new(c.client.me.ip, 40000, c.server.me.ip, 80, 6))
        .unwrap();
    assert_eq!(e.flows.get(idx).unwrap().state, ConnState::Established);
    assert_eq!(e.counters().flows_created, 1);
    assert_eq!(e.counters().frames_forwarded, 5);
}

#[test]
fn denied_syn_is_dropped_and_logged() {
    let mut e = engine();
    let mut out = Output::default();
    let c = Conn::new(ep("10.66.0.14", 40000), ep("10.66.0.2", 80));
    assert_eq!(
        run(&mut e, 0, &c.syn(), 1, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(out.events[0].verdict, Decision::Deny);
    assert_eq!(out.events[0].reason.as_deref(), Some("no rule"));
    assert!(out.emits.is_empty());
    // Allowed source, port without a rule.
    let c2 = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 22));
    assert_eq!(
        run(&mut e, 0, &c2.syn(), 2, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(e.flow_count(), 0);
    assert_eq!(e.counters().dropped(DropReason::PolicyDenied), 2);
}

#[test]
fn unsolicited_segments_without_flow() {
    let mut e = engine_with(EngineConfig {
        tcp_pickup: false,
        ..EngineConfig::default()
    });
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    c.handshake();
    assert_eq!(
        run(&mut e, 0, &c.client_data(b"x"), 1, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    assert_eq!(
        run(&mut e, 1, &c.syn_ack(), 1, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    assert!(out.events.is_empty());
}

#[test]
fn pickup_adopts_allowed_l4_connections_only() {
    let mut e = engine();
    let mut out = Output::default();
    // Enforcer restarted mid-connection: the client's next segment is
    // judged like its SYN was and the connection adopted.
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    c.handshake();
    assert_eq!(run(&mut e, 0, &c.client_data(b"more"), 1, &mut out), FWD);
    assert_eq!(e.counters().flows_picked_up, 1);
    assert_eq!(out.events[0].flow.dport, 80);
    assert_eq!(run(&mut e, 1, &c.server_data(b"reply"), 2, &mut out), BACK);
    // A stray ACK to a server port nobody may reach, although the server
    // could have opened that connection itself: dropped.
    let stray = tcp(ep("10.66.0.14", 443), ep("10.66.0.2", 22), 5, 5, ACK, b"x");
    assert_eq!(
        run(&mut e, 0, &stray, 3, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    // Denied: dropped.
    let mut bad = Conn::new(ep("10.66.0.14", 40000), ep("10.66.0.2", 80));
    bad.handshake();
    assert_eq!(
        run(&mut e, 0, &bad.client_data(b"x"), 3, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    // L7 port: cannot join mid-stream.
    let mut m = Conn::new(ep("10.66.0.11", 40001), ep("10.66.0.2", 11211));
    m.handshake();
    assert_eq!(
        run(&mut e, 0, &m.client_data(b"get k\r\n"), 4, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    // A RST alone never creates state.
    let r = tcp(
        ep("10.66.0.11", 40002),
        ep("10.66.0.2", 80),
        1,
        1,
        RST | ACK,
        &[],
    );
    assert_eq!(
        run(&mut e, 0, &r, 5, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    assert_eq!(e.flow_count(), 1);
}

#[test]
fn udp_flow_and_reply() {
    let mut e = engine();
    let mut out = Output::default();
    let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), b"query");
    let a = udp(ep("10.66.0.2", 53), ep("10.66.0.14", 5353), b"answer");
    // Looks like the answer to a query the server sent: it never did.
    let fake = udp(ep("10.66.0.14", 53), ep("10.66.0.2", 5353), b"answer");
    assert_eq!(
        run(&mut e, 0, &fake, 0, &mut out),
        Verdict::Drop(DropReason::PolicyDenied),
        "judged in its own direction"
    );
    assert_eq!(run(&mut e, 0, &q, 1, &mut out), FWD);
    assert_eq!(run(&mut e, 1, &a, 2, &mut out), BACK);
    let other_port = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 54), b"query");
    assert_eq!(
        run(&mut e, 0, &other_port, 3, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let v6 = udp(ep("fd66::14", 5353), ep("fd66::2", 53), b"q6");
    assert_eq!(run(&mut e, 0, &v6, 4, &mut out), FWD);
    assert_eq!(e.flow_count(), 2);
}

#[test]
fn icmp_echo_by_id_and_errors_by_quoted_flow() {
    let mut e = engine();
    let mut out = Output::default();
    let req = echo("10.66.0.12", "10.66.0.2", 9, 1, true, b"ping");
    let rep = echo("10.66.0.2", "10.66.0.12", 9, 1, false, b"ping");
    assert_eq!(
        run(&mut e, 1, &rep, 0, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    assert_eq!(run(&mut e, 0, &req, 1, &mut out), FWD);
    assert_eq!(out.events[0].flow.dport, 8, "policy sees the echo type");
    assert_eq!(run(&mut e, 1, &rep, 2, &mut out), BACK);
    let other_id = echo("10.66.0.2", "10.66.0.12", 10, 1, false, b"ping");
    assert_eq!(
        run(&mut e, 1, &other_id, 3, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    let denied = echo("10.66.0.11", "10.66.0.2", 9, 1, true, b"ping");
    assert_eq!(
        run(&mut e, 0, &denied, 4, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    let v6 = echo("fd66::12", "fd66::2", 9, 1, true, b"ping");
    assert_eq!(run(&mut e, 0, &v6, 5, &mut out), FWD);
    assert_eq!(
        run(
            &mut e,
            1,
            &echo("fd66::2", "fd66::12", 9, 1, false, b"ping"),
            6,
            &mut out
        ),
        BACK
    );

    // Port unreachable about an allowed UDP flow passes; about an unknown one not.
    let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), b"query");
    assert_eq!(run(&mut e, 0, &q, 7, &mut out), FWD);
    assert_eq!(
        run(
            &mut e,
            1,
            &unreachable("10.66.0.2", "10.66.0.14", &q),
            8,
            &mut out
        ),
        BACK
    );
    let stray = udp(ep("10.66.0.14", 5354), ep("10.66.0.2", 53), b"query");
    assert_eq!(
        run(
            &mut e,
            1,
            &unreachable("10.66.0.2", "10.66.0.14", &stray),
            9,
            &mut out
        ),
        Verdict::Drop(DropReason::NoFlow)
    );
    // Addressed to someone other than the quoted sender.
    assert_eq!(
        run(
            &mut e,
            1,
            &unreachable("10.66.0.2", "10.66.0.12", &q),
            10,
            &mut out
        ),
        Verdict::Drop(DropReason::NoFlow)
    );
    let mut c = Conn::new(ep("fd66::11", 40000), ep("fd66::2", 80));
    let syn = c.handshake().remove(0);
    assert_eq!(run(&mut e, 0, &syn, 11, &mut out), FWD);
    assert_eq!(
        run(
            &mut e,
            1,
            &unreachable("fd66::2", "fd66::11", &syn),
            12,
            &mut out
        ),
        BACK
    );
}

#[test]
fn non_ip_and_neighbour_discovery() {
    let mut e = engine();
    let mut out = Output::default();
    assert_eq!(run(&mut e, 0, &arp(), 0, &mut out), FWD);
    assert_eq!(
        run(
            &mut e,
            1,
            &icmpv6_raw("fd66::2", "ff02::1:ff00:11", 135, 0),
            0,
            &mut out
        ),
        BACK
    );
    assert_eq!(e.counters().non_ip_passed, 2);
    let mut strict = engine_with(EngineConfig {
        pass_non_ip: false,
        ..EngineConfig::default()
    });
    assert_eq!(
        run(&mut strict, 0, &arp(), 0, &mut out),
        Verdict::Drop(DropReason::NonIpDenied)
    );
    assert_eq!(
        run(
            &mut strict,
            0,
            &icmpv6_raw("fd66::2", "ff02::1", 134, 0),
            0,
            &mut out
        ),
        Verdict::Drop(DropReason::NonIpDenied)
    );
    // Not ND: ICMPv6 type 140 is judged by policy.
    assert_eq!(
        run(
            &mut e,
            0,
            &icmpv6_raw("fd66::14", "fd66::2", 140, 0),
            0,
            &mut out
        ),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert!(out.emits.is_empty());
}

#[test]
fn malformed_frames_are_counted() {
    let mut e = engine();
    let mut out = Output::default();
    let f = tcp(ep("10.66.0.11", 1), ep("10.66.0.2", 80), 0, 0, SYN, b"abc");
    for cut in [0, 5, 20, 40, f.len() - 1] {
        assert_eq!(
            run(&mut e, 0, &f[..cut], 0, &mut out),
            Verdict::Drop(DropReason::Malformed)
        );
    }
    let synfin = tcp(
        ep("10.66.0.11", 1),
        ep("10.66.0.2", 80),
        0,
        0,
        SYN | FIN,
        &[],
    );
    assert_eq!(
        run(&mut e, 0, &synfin, 0, &mut out),
        Verdict::Drop(DropReason::TcpInvalid)
    );
    assert_eq!(e.counters().dropped(DropReason::Malformed), 5);
    assert_eq!(e.counters().frames_in, 6);
}

#[test]
fn fragments_are_judged_on_the_reassembled_header() {
    let mut e = engine();
    let mut out = Output::default();
    let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), &[0xab; 100]);
    let frags = fragment_evenly(&q, 1, 32);
    assert_eq!(frags.len(), 4);
    // Out of order: last first.
    assert_eq!(run(&mut e, 0, &frags[3], 0, &mut out), Verdict::Consumed);
    assert_eq!(run(&mut e, 0, &frags[0], 0, &mut out), Verdict::Consumed);
    assert_eq!(run(&mut e, 0, &frags[2], 0, &mut out), Verdict::Consumed);
    assert!(
        out.emits.is_empty(),
        "nothing leaves before the datagram is judged"
    );
    assert_eq!(run(&mut e, 0, &frags[1], 0, &mut out), Verdict::Consumed);
    let sent: Vec<_> = out
        .emits
        .iter()
        .map(|x| (x.side, x.frame.clone()))
        .collect();
    let expect: Vec<_> = [3, 0, 2, 1]
        .iter()
        .map(|&i| (1u8, frags[i].clone()))
        .collect();
    assert_eq!(sent, expect, "unchanged, in arrival order");
    assert_eq!(e.counters().fragments_reassembled, 1);
    assert_eq!(e.counters().frames_emitted, 4);

    // Denied: every fragment dropped and counted.
    out.clear();
    let bad = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 54), &[0xab; 100]);
    let frags = fragment_evenly(&bad, 2, 56);
    assert_eq!(run(&mut e, 0, &frags[0], 1, &mut out), Verdict::Consumed);
    assert_eq!(
        run(&mut e, 0, &frags[1], 1, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert!(out.emits.is_empty());
    assert_eq!(e.counters().dropped(DropReason::PolicyDenied), 2);

    // IPv6 TCP SYN in fragments: the header is only whole after reassembly.
    let mut c = Conn::new(ep("fd66::11", 40000), ep("fd66::2", 80));
    let syn = tcp(c.client.me, c.server.me, c.client.snd_nxt, 0, SYN, &[1; 30]);
    let frags = fragment_evenly(&syn, 7, 16);
    for f in &frags[..frags.len() - 1] {
        assert_eq!(run(&mut e, 0, f, 2, &mut out), Verdict::Consumed);
    }
    assert_eq!(
        run(&mut e, 0, frags.last().unwrap(), 2, &mut out),
        Verdict::Consumed
    );
    assert_eq!(out.emits.len(), frags.len());
    c.handshake();
    assert_eq!(run(&mut e, 1, &c.server_data(b"ok"), 3, &mut out), BACK);
}

#[test]
fn overlapping_and_stale_fragments_are_dropped() {
    let mut e = engine();
    let mut out = Output::default();
    let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), &[0xab; 64]);
    // A second fragment that rewrites the first's bytes 8..16.
    let frags = fragments(&q, 3, &[(0, 24), (8, 72)]);
    assert_eq!(run(&mut e, 0, &frags[0], 0, &mut out), Verdict::Consumed);
    assert_eq!(
        run(&mut e, 0, &frags[1], 0, &mut out),
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    assert_eq!(e.counters().dropped(DropReason::FragmentOverlap), 2);
    assert!(out.emits.is_empty());

    let frags = fragments(&q, 4, &[(0, 24)]);
    assert_eq!(run(&mut e, 0, &frags[0], 0, &mut out), Verdict::Consumed);
    e.tick(e.cfg.frag_timeout_ns + 1, &mut out);
    assert_eq!(e.counters().dropped(DropReason::FragmentTimeout), 1);
    assert_eq!(e.frags.pending(), 0);
    assert!(out.emits.is_empty());
}

#[test]
fn fragment_queues_are_bounded() {
    let mut e = engine_with(EngineConfig {
        max_frag_queues: 2,
        ..EngineConfig::default()
    });
    let mut out = Output::default();
    let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), &[0xab; 64]);
    for id in 0..2 {
        assert_eq!(
            run(&mut e, 0, &fragments(&q, id, &[(0, 24)])[0], 0, &mut out),
            Verdict::Consumed
        );
    }
    assert_eq!(
        run(&mut e, 0, &fragments(&q, 9, &[(0, 24)])[0], 0, &mut out),
        Verdict::Drop(DropReason::FragmentTableFull)
    );
}

fn syn_from(port: u16) -> Vec<u8> {
    tcp(ep("10.66.0.11", port), ep("10.66.0.2", 80), 1, 0, SYN, &[])
}

/// A finished handshake from a-wing's `port` to the server's port 80 at
/// `now`: an entry no new flow may take (unlike a half-open one).
fn established_from(e: &mut Engine, port: u16, now: u64, out: &mut Output) {
    let mut c = Conn::new(ep("10.66.0.11", port), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        assert_eq!(
            run(e, (i % 2) as u8, f, now, out),
            Verdict::Forward(1 - (i % 2) as u8)
        );
    }
}

#[test]
fn full_table_refuse_l7_passes_l4_flows_untracked() {
    let mut e = engine_with(EngineConfig {
        max_flows: 2,
        ..EngineConfig::default()
    });
    let mut out = Output::default();
    established_from(&mut e, 1, 0, &mut out);
    established_from(&mut e, 2, 0, &mut out);
    // Third L4 flow: passes, not stored; its replies pass statelessly.
    let mut c = Conn::new(ep("10.66.0.11", 3), ep("10.66.0.2", 80));
    let hs = c.handshake();
    assert_eq!(run(&mut e, 0, &hs[0], 0, &mut out), FWD);
    assert_eq!(run(&mut e, 1, &hs[1], 0, &mut out), BACK);
    assert_eq!(run(&mut e, 1, &c.server_data(b"x"), 0, &mut out), BACK);
    assert_eq!(e.counters().flows_untracked, 3);
    assert_eq!(e.flow_count(), 2);
    // Still no way in for what policy denies.
    let bad = tcp(ep("10.66.0.14", 3), ep("10.66.0.2", 80), 1, 0, SYN, &[]);
    assert_eq!(
        run(&mut e, 0, &bad, 0, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    // An L7 flow needs state: refused.
    let m = tcp(ep("10.66.0.11", 4), ep("10.66.0.2", 11211), 1, 0, SYN, &[]);
    assert_eq!(
        run(&mut e, 0, &m, 0, &mut out),
        Verdict::Drop(DropReason::TableFull)
    );
}

#[test]
fn full_table_refuse_all_and_evict_oldest() {
    let cfg = EngineConfig {
        max_flows: 2,
        table_full: TableFullPolicy::RefuseAll,
        ..EngineConfig::default()
    };
    let mut e = engine_with(cfg.clone());
    let mut out = Output::default();
    established_from(&mut e, 1, 0, &mut out);
    established_from(&mut e, 2, 0, &mut out);
    assert_eq!(
        run(&mut e, 0, &syn_from(3), 0, &mut out),
        Verdict::Drop(DropReason::TableFull)
    );
    // Expired entries are reclaimed before refusing.
    let later = cfg.tcp_established_timeout_ns + 10;
    assert_eq!(run(&mut e, 0, &syn_from(3), later, &mut out), FWD);
    assert_eq!(e.counters().flows_expired, 1);

    let mut e = engine_with(EngineConfig {
        table_full: TableFullPolicy::EvictOldest,
        ..cfg
    });
    established_from(&mut e, 1, 0, &mut out);
    established_from(&mut e, 2, 0, &mut out);
    assert_eq!(run(&mut e, 0, &syn_from(3), 1, &mut out), FWD);
    assert_eq!(e.counters().flows_evicted, 1);
    assert_eq!(e.flow_count(), 2);
}

#[test]
fn syn_flood_gives_way_to_new_l7_connections() {
    // A table full of half-open flows that are all fresh (a flood the
    // server answers, each SYN-ACK retransmission refreshing its entry):
    // new L7 connections still get in, taking the stalest handshake;
    // finished ones are never taken.
    let mut e = engine_with(EngineConfig {
        max_flows: 64,
        ..EngineConfig::default()
    });
    let mut out = Output::default();
    established_from(&mut e, 1, 0, &mut out);
    for p in 2..=64 {
        assert_eq!(run(&mut e, 0, &syn_from(p), p as u64, &mut out), FWD);
    }
    assert!(e.flows.is_full());
    let now = 100;
    for k in 0..100u16 {
        let c = Conn::new(ep("10.66.0.12", 5000 + k), ep("10.66.0.2", 11211));
        assert_eq!(
            run(&mut e, 0, &c.syn(), now, &mut out),
            FWD,
            "new L7 connection {k}"
        );
    }
    assert_eq!(e.counters().flows_evicted, 100);
    assert_eq!(e.counters().dropped(DropReason::TableFull), 0);
    let key = FlowKey::new(ip("10.66.0.11"), 1, ip("10.66.0.2"), 80, 6);
    assert!(e.flows.find(&key).is_some(), "the established flow stays");
    assert_eq!(e.held_total(), e.held_bytes());
}

#[test]
fn idle_flows_expire_by_state() {
    let mut e = engine();
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    run(&mut e, 0, &syn_from(7), 0, &mut out); // stays half-open
    run(
        &mut e,
        0,
        &udp(ep("10.66.0.14", 1), ep("10.66.0.2", 53), b"q"),
        0,
        &mut out,
    );
    assert_eq!(e.flow_count(), 3);
    e.tick(
        e.cfg.udp_timeout_ns.max(e.cfg.tcp_transitory_timeout_ns) + 1,
        &mut out,
    );
    assert_eq!(e.flow_count(), 1, "only the established connection is left");
    assert_eq!(
        run(
            &mut e,
            0,
            &c.client_data(b"still here"),
            100 * SECOND,
            &mut out
        ),
        FWD
    );
    e.tick(
        100 * SECOND + e.cfg.tcp_established_timeout_ns + 1,
        &mut out,
    );
    assert_eq!(e.flow_count(), 0);
    assert_eq!(e.counters().flows_expired, 3);
    assert_eq!(e.counters().flows_active, 0);
}

const SECOND: u64 = 1_000_000_000;

#[test]
fn closed_connection_tuple_reuse_is_judged_again() {
    let mut e = engine();
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    run(&mut e, 0, &c.client_fin(), 1, &mut out);
    run(&mut e, 1, &c.server_fin(), 1, &mut out);
    let idx = e
        .flows
        .find(&FlowKey::new(c.client.me.ip, 40000, c.server.me.ip, 80, 6))
        .unwrap();
    assert_eq!(e.flows.get(idx).unwrap().state, ConnState::Closed);
    assert_eq!(run(&mut e, 0, &c.syn(), 2, &mut out), FWD);
    assert_eq!(out.events.len(), 2, "the new connection is a new decision");
    // A retransmitted SYN is not.
    assert_eq!(run(&mut e, 0, &c.syn(), 3, &mut out), FWD);
    assert_eq!(out.events.len(), 2);
    // A SYN on an established connection whose end we missed is the old
    // connection's business (the server answers it with a challenge ACK,
    // the client's RST ends the old connection): no new decision, no new
    // state, until the RST came by. Then the retransmitted SYN is new.
    let hs = c.handshake();
    run(&mut e, 1, &hs[1], 4, &mut out);
    run(&mut e, 0, &hs[2], 4, &mut out);
    assert_eq!(run(&mut e, 0, &c.syn(), 5, &mut out), FWD);
    assert_eq!(out.events.len(), 2);
    assert_eq!(e.flows.get(idx).unwrap().state, ConnState::Established);
    let rst = tcp(c.client.me, c.server.me, c.client.snd_nxt, 0, RST, &[]);
    assert_eq!(run(&mut e, 0, &rst, 6, &mut out), FWD);
    assert_eq!(run(&mut e, 0, &c.syn(), 7, &mut out), FWD);
    assert_eq!(out.events.len(), 3);
}

#[test]
fn policy_swap_redecides_lazily() {
    let allow = Rc::new(Cell::new(true));
    let a = allow.clone();
    let mut e = Engine::new(Arc::new(Policy::default()), EngineConfig::default(), 3);
    e.decide_override = Some(Box::new(move |_, _, _, _| FlowDecision {
        allowed: a.get(),
        detail: "x".into(),
        l7: None,
        audit: None,
    }));
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    allow.set(false);
    assert_eq!(
        run(&mut e, 0, &c.client_data(b"a"), 1, &mut out),
        FWD,
        "old policy still in force"
    );
    e.set_policy(Arc::new(Policy::default()));
    assert_eq!(
        run(&mut e, 0, &c.client_data(b"b"), 2, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(e.flow_count(), 0, "denied flows leave the table");
    assert_eq!(
        run(&mut e, 1, &c.server_data(b"c"), 3, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    assert_eq!(e.counters().flows_redecided, 1);
    let last = out.events.last().unwrap();
    assert_eq!((last.verdict, last.worker), (Decision::Deny, 3));
}

#[test]
fn vlan_tagged_flows_work() {
    let mut e = engine();
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    let hs = c.handshake();
    assert_eq!(
        run(&mut e, 0, &vlan_tag(&hs[0], 0x8100, 10), 0, &mut out),
        FWD
    );
    assert_eq!(
        run(
            &mut e,
            1,
            &vlan_tag(&vlan_tag(&hs[1], 0x8100, 10), 0x88a8, 20),
            0,
            &mut out
        ),
        BACK
    );
}

#[test]
fn denied_syn_answered_with_rst_when_configured() {
    let mut e = engine_with(EngineConfig {
        syn_deny: SynDenyAction::Reset,
        ..EngineConfig::default()
    });
    let mut out = Output::default();
    let c = Conn::new(ep("10.66.0.14", 40000), ep("10.66.0.2", 80));
    assert_eq!(
        run(&mut e, 0, &c.syn(), 1, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(out.emits.len(), 1);
    let rst = &out.emits[0];
    assert_eq!(rst.side, 0, "back to the client");
    let m = view::parse(&rst.frame).unwrap();
    assert_eq!(
        (m.src, m.dst, m.sport, m.dport),
        (c.server.me.ip, c.client.me.ip, 80, 40000)
    );
    let t = m.tcp().unwrap();
    assert_eq!(
        (t.flags & (TCP_RST | TCP_ACK), t.ack),
        (TCP_RST | TCP_ACK, c.client.snd_nxt + 1)
    );
}

#[test]
fn steering_keeps_flows_fragments_and_errors_together() {
    let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), &[1; 64]);
    let a = udp(ep("10.66.0.2", 53), ep("10.66.0.14", 5353), b"a");
    let h = steering_hash(&q);
    assert_eq!(h, steering_hash(&a));
    for f in fragment_evenly(&q, 1, 24) {
        assert_eq!(h, steering_hash(&f));
    }
    // From a router, about the flow.
    assert_eq!(
        h,
        steering_hash(&unreachable("10.66.0.1", "10.66.0.14", &q))
    );
    assert_ne!(
        h,
        steering_hash(&udp(ep("10.66.0.13", 5353), ep("10.66.0.2", 53), b"q"))
    );
    assert_eq!(steering_hash(&arp()), 0);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn pool() -> Vec<Vec<u8>> {
        let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
        let mut v = c.handshake();
        v.push(c.client_data(b"GET / HTTP/1.1\r\n\r\n"));
        v.push(c.server_fin());
        let q = udp(ep("10.66.0.14", 5353), ep("10.66.0.2", 53), &[9; 80]);
        v.extend(fragment_evenly(&q, 5, 24));
        v.push(unreachable("10.66.0.2", "10.66.0.14", &q));
        v.push(echo("fd66::12", "fd66::2", 1, 1, true, b"x"));
        v.push(
            fragment_evenly(
                &tcp(ep("fd66::11", 1), ep("fd66::2", 80), 0, 0, SYN, &[0; 40]),
                6,
                16,
            )
            .remove(1),
        );
        v.push(vlan_tag(&q, 0x8100, 3));
        v.push(arp());
        v.push(q);
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_frame_sequence_is_safe_and_bounded(
            steps in proptest::collection::vec(
                (0usize..13, 0u8..2, proptest::collection::vec((0usize..100, any::<u8>()), 0..4), 0usize..200, 0u64..40),
                1..60,
            )
        ) {
            let cfg = EngineConfig { max_flows: 4, max_frag_queues: 2, ..EngineConfig::default() };
            let mut e = engine_with(cfg);
            let mut out = Output::default();
            let pool = pool();
            let mut now = 0u64;
            for (pick, side, flips, cut, dt) in steps {
                let mut f = pool[pick % pool.len()].clone();
                for (i, b) in flips {
                    if let Some(x) = f.get_mut(i) {
                        *x = b;
                    }
                }
                if cut < f.len() {
                    f.truncate(cut);
                }
                now += dt * SECOND;
                e.on_frame(side, &mut f, now, &mut out);
                if dt % 7 == 0 {
                    e.tick(now, &mut out);
                }
                prop_assert!(e.flow_count() <= 4);
                prop_assert!(e.frags.pending() <= 2);
                prop_assert!(out.emits.iter().all(|x| x.side <= 1));
                out.clear();
            }
        }
    }
}

#[test]
fn l7_timers_queue_only_flows_with_deadlines() {
    let mut e = engine_with(EngineConfig {
        max_flows: 64,
        ..EngineConfig::default()
    });
    let l7 = Some(L7Policy::Http(Arc::default()));
    for i in 0..40u16 {
        let init = Initiator {
            src: ip("10.66.0.11"),
            sport: 1000 + i,
            dst: ip("10.66.0.2"),
            dport: 80,
            proto: IPPROTO_TCP,
            side: 0,
        };
        let d = FlowDecision {
            allowed: true,
            detail: String::new(),
            l7: if i % 2 == 0 { l7.clone() } else { None },
            audit: None,
        };
        // Every third flow stays busy; the others go idle.
        let now = if i % 3 == 0 { 1_000 * SECOND } else { 0 };
        assert!(matches!(
            e.admit(init, 80, d, ConnState::Established, now),
            NewFlow::Tracked(_)
        ));
    }
    // Twenty L7 flows, none with anything to retransmit: nothing queued,
    // and a tick has no L7 work at all.
    assert_eq!(e.timers_pending(), 0);
    let mut out = Output::default();
    e.tick(e.cfg.tcp_established_timeout_ns + 10, &mut out);
    assert_eq!(e.flow_count(), 14);
    assert_eq!(e.timers_pending(), 0);
    assert!(out.emits.is_empty());
    // A stale deadline (its flow gone) is skipped without harm.
    e.timers.push(Reverse((5, 3)));
    e.tick(e.cfg.tcp_established_timeout_ns + 20, &mut out);
    assert_eq!(e.timers_pending(), 0);
    assert!(out.emits.is_empty());
}

#[test]
fn policy_swap_adding_l7_rules_ends_live_l4_connections() {
    let l7 = Rc::new(Cell::new(false));
    let flag = l7.clone();
    let mut e = Engine::new(Arc::new(Policy::default()), EngineConfig::default(), 0);
    e.decide_override = Some(Box::new(move |_, _, _, _| FlowDecision {
        allowed: true,
        detail: "x".into(),
        l7: flag.get().then(|| L7Policy::Http(Arc::default())),
        audit: None,
    }));
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    let u = udp(ep("10.66.0.11", 5000), ep("10.66.0.2", 53), b"q");
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    assert_eq!(run(&mut e, 0, &u, 0, &mut out), FWD);
    l7.set(true);
    e.set_policy(Arc::new(Policy::default()));
    assert_eq!(
        run(&mut e, 0, &c.client_data(b"GET /"), 1, &mut out),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert_eq!(out.events.last().unwrap().verdict, Decision::Deny);
    // Its next segment cannot be adopted either (an L7 port): no way around the rules.
    assert_eq!(
        run(&mut e, 0, &c.client_data(b"GET /"), 2, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    assert_eq!(
        run(&mut e, 0, &u, 3, &mut out),
        FWD,
        "datagram flows are not affected"
    );
}

fn l7_engine(fail: crate::config::FailMode) -> Engine {
    let mut e = Engine::new(
        Arc::new(Policy::default()),
        EngineConfig {
            fail,
            ..EngineConfig::default()
        },
        0,
    );
    e.decide_override = Some(Box::new(|_, _, _, _| FlowDecision {
        allowed: true,
        detail: "x".into(),
        l7: Some(L7Policy::Http(Arc::default())),
        audit: None,
    }));
    e
}

#[test]
fn internal_error_in_a_stream_fails_closed_by_default() {
    use crate::config::FailMode;
    assert_eq!(EngineConfig::default().fail, FailMode::Closed);
    let mut e = l7_engine(FailMode::Closed);
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    e.panic_next_l7 = true;
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(
        run(&mut e, 0, &c.client_data(req), 1, &mut out),
        Verdict::Drop(DropReason::InternalError)
    );
    assert_eq!(e.counters().l7_internal_errors, 1);
    assert_eq!(e.flow_count(), 0, "the flow's state is gone");
    // Nothing of the connection passes unjudged afterwards.
    assert_eq!(
        run(&mut e, 0, &c.client_data(req), 2, &mut out),
        Verdict::Drop(DropReason::NoFlow)
    );
    // Other connections of the worker go on.
    let mut d = Conn::new(ep("10.66.0.11", 40001), ep("10.66.0.2", 80));
    for (i, f) in d.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 3, &mut out);
    }
    assert_eq!(run(&mut e, 0, &d.client_data(req), 4, &mut out), FWD);
}

#[test]
fn internal_error_in_a_stream_fails_open_when_asked() {
    use crate::config::FailMode;
    let mut e = l7_engine(FailMode::Open);
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    e.panic_next_l7 = true;
    assert_eq!(run(&mut e, 0, &c.client_data(b"GET /"), 1, &mut out), FWD);
    assert_eq!(e.counters().l7_internal_errors, 1);
    assert_eq!(e.flow_count(), 1);
    assert_eq!(
        run(&mut e, 0, &c.client_data(b" HTTP/1.1"), 2, &mut out),
        FWD
    );
}

#[test]
fn answered_handshake_outlives_the_syn_timeout() {
    // The client's ACK and first data after the SYN-ACK are lost; its
    // retransmission comes 16 s later, past a short half-open timeout (an
    // operator's choice). The entry must still be there: an L7 connection
    // is never adopted again.
    let mut e = l7_engine(crate::config::FailMode::Closed);
    e.cfg.tcp_syn_timeout_ns = 10 * SECOND;
    e.timeouts.tcp_syn = e.cfg.tcp_syn_timeout_ns;
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    let hs = c.handshake();
    assert_eq!(run(&mut e, 0, &hs[0], 0, &mut out), FWD);
    assert_eq!(run(&mut e, 1, &hs[1], SECOND, &mut out), BACK);
    let late = SECOND + e.cfg.tcp_syn_timeout_ns + 6 * SECOND;
    e.tick(late, &mut out);
    assert_eq!(e.flow_count(), 1, "answered: not half-open any more");
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(run(&mut e, 0, &c.client_data(req), late, &mut out), FWD);
    // A SYN nobody answered still leaves after the short timeout.
    run(&mut e, 0, &syn_from(7), late, &mut out);
    e.tick(late + e.cfg.tcp_syn_timeout_ns + 1, &mut out);
    assert_eq!(e.flow_count(), 1);
    assert_eq!(e.counters().flows_expired, 1);
}

#[test]
fn slow_request_head_is_timed_out_by_the_timer_queue() {
    let mut e = l7_engine(crate::config::FailMode::Closed);
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    for (i, f) in c.handshake().iter().enumerate() {
        run(&mut e, (i % 2) as u8, f, 0, &mut out);
    }
    assert_eq!(e.timers_pending(), 0, "nothing held, no timer");
    run(
        &mut e,
        0,
        &c.client_data(b"GET / HTTP/1.1\r\n"),
        SECOND,
        &mut out,
    );
    assert_eq!(e.timers_pending(), 1);
    out.emits.clear();
    e.tick(SECOND + e.cfg.l7_head_timeout_ns - 1, &mut out);
    assert!(out.emits.is_empty());
    e.tick(SECOND + e.cfg.l7_head_timeout_ns, &mut out);
    assert_eq!(e.counters().l7_head_timeouts, 1);
    assert!(
        out.emits
            .iter()
            .any(|m| m.side == 0 && m.frame.ends_with(b"Request timeout\r\n")),
        "the 408 goes to the client"
    );
    assert_eq!(e.held_total(), e.held_bytes());
}

#[test]
fn rsts_on_l4_flows_are_sequence_checked() {
    let mut e = engine();
    let mut out = Output::default();
    let mut c = Conn::new(ep("10.66.0.11", 40000), ep("10.66.0.2", 80));
    // Before the SYN-ACK, a responder's RST must acknowledge the SYN.
    let syn = c.syn();
    assert_eq!(run(&mut e, 0, &syn, 0, &mut out), FWD);
    let isn = c.client.snd_nxt;
    let blind = tcp(c.server.me, c.client.me, 7, isn + 5, RST | ACK, &[]);
    assert_eq!(
        run(&mut e, 1, &blind, 0, &mut out),
        Verdict::Drop(DropReason::TcpOutOfWindow)
    );
    let hs = c.handshake();
    run(&mut e, 1, &hs[1], 1, &mut out);
    run(&mut e, 0, &hs[2], 1, &mut out);
    run(&mut e, 0, &c.client_data(b"hello"), 2, &mut out);
    run(&mut e, 1, &c.server_data(b"world"), 2, &mut out);
    let key = FlowKey::new(c.client.me.ip, 40000, c.server.me.ip, 80, 6);
    let state = |e: &Engine| e.flows.get(e.flows.find(&key).unwrap()).unwrap().state;
    // The server acknowledged up to the client's next byte and offers a
    // 64240-byte window: a client RST before that or beyond the window is
    // one the server would not take, and our state stays.
    let next = c.client.snd_nxt;
    for seq in [
        next.wrapping_sub(1),
        next.wrapping_sub(100_000),
        next + 64_241,
        next + (1 << 30),
    ] {
        let rst = tcp(c.client.me, c.server.me, seq, 0, RST, &[]);
        assert_eq!(
            run(&mut e, 0, &rst, 3, &mut out),
            Verdict::Drop(DropReason::TcpOutOfWindow),
            "seq {seq}"
        );
    }
    assert_eq!(state(&e), ConnState::Established);
    assert_eq!(e.counters().dropped(DropReason::TcpOutOfWindow), 5);
    // Within the window (bytes in flight): accepted, the flow is over.
    let rst = tcp(c.client.me, c.server.me, next + 1000, 0, RST, &[]);
    assert_eq!(run(&mut e, 0, &rst, 4, &mut out), FWD);
    assert_eq!(state(&e), ConnState::Closed);

    // Adopted mid-stream: the server's side is unknown until it sends an
    // ACK; then the window is assumed at the widest scale.
    let mut d = Conn::new(ep("10.66.0.11", 40001), ep("10.66.0.2", 80));
    d.handshake();
    assert_eq!(run(&mut e, 0, &d.client_data(b"x"), 5, &mut out), FWD);
    let rst = tcp(d.client.me, d.server.me, 12345, 0, RST, &[]);
    assert_eq!(run(&mut e, 0, &rst, 5, &mut out), FWD, "nothing known yet");
    let mut d = Conn::new(ep("10.66.0.11", 40002), ep("10.66.0.2", 80));
    d.handshake();
    assert_eq!(run(&mut e, 0, &d.client_data(b"x"), 6, &mut out), FWD);
    assert_eq!(run(&mut e, 1, &d.server_data(b"y"), 6, &mut out), BACK);
    let old = tcp(d.client.me, d.server.me, d.client.snd_nxt - 2, 0, RST, &[]);
    assert_eq!(
        run(&mut e, 0, &old, 7, &mut out),
        Verdict::Drop(DropReason::TcpOutOfWindow)
    );
    let wide = tcp(
        d.client.me,
        d.server.me,
        d.client.snd_nxt + 1_000_000,
        0,
        RST,
        &[],
    );
    assert_eq!(run(&mut e, 0, &wide, 7, &mut out), FWD);
}
