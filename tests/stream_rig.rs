//! Real TCP stacks (smoltcp) through the engine, with faults on the links:
//! memcached requests from the x-wing under the shipped seed policy. The
//! server reads exactly the allowed requests, the client reads every reply
//! and denial in order, and both connections end healthy (established,
//! nothing left unacknowledged).

mod kit;

use enforcer::config::EngineConfig;
use kit::faults::Faults;
use kit::rig::{Request, Rig};
use proptest::prelude::*;

const XWING: [u8; 4] = [10, 66, 0, 12];
const DENIAL: &[u8] = b"CLIENT_ERROR access denied\r\n";

#[derive(Debug, Clone, Copy)]
enum Req {
    GetAllowed,
    GetDenied,
    SetAllowed,
    SetDenied,
    SetQuietAllowed,
    SetQuietDenied,
}

impl Request for Req {
    fn bytes(self) -> &'static [u8] {
        match self {
            Req::GetAllowed => b"get xwing-coord\r\n",
            Req::GetDenied => b"get awing-coord\r\n",
            Req::SetAllowed => b"set xwing-coord 0 0 5\r\nhello\r\n",
            Req::SetDenied => b"set awing-coord 0 0 5\r\nhello\r\n",
            Req::SetQuietAllowed => b"set xwing-coord 0 0 3 noreply\r\nabc\r\n",
            Req::SetQuietDenied => b"set awing-coord 0 0 3 noreply\r\nabc\r\n",
        }
    }
    fn allowed(self) -> bool {
        matches!(
            self,
            Req::GetAllowed | Req::SetAllowed | Req::SetQuietAllowed
        )
    }
    /// What the client reads for it.
    fn reply(self) -> &'static [u8] {
        match self {
            Req::GetAllowed => b"VALUE xwing-coord 0 1\r\nv\r\nEND\r\n",
            Req::SetAllowed => b"STORED\r\n",
            Req::GetDenied | Req::SetDenied => DENIAL,
            Req::SetQuietAllowed | Req::SetQuietDenied => b"",
        }
    }
}

/// A tiny memcached: answers complete requests in `got[*done..]`.
fn serve(rig: &mut Rig, done: &mut usize) {
    loop {
        let rest = &rig.server_got[*done..];
        let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
            return;
        };
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        let words: Vec<&str> = line.split(' ').collect();
        let (used, reply): (usize, Vec<u8>) = match words.first().copied() {
            Some("get") => {
                let mut r = Vec::new();
                for k in &words[1..] {
                    r.extend_from_slice(format!("VALUE {k} 0 1\r\nv\r\n").as_bytes());
                }
                r.extend_from_slice(b"END\r\n");
                (nl + 2, r)
            }
            Some("set") => {
                let n: usize = words.get(4).and_then(|w| w.parse().ok()).unwrap_or(0);
                let need = nl + 2 + n + 2;
                if rest.len() < need {
                    return;
                }
                let quiet = words.get(5) == Some(&"noreply");
                (
                    need,
                    if quiet {
                        vec![]
                    } else {
                        b"STORED\r\n".to_vec()
                    },
                )
            }
            _ => panic!("server got garbage: {line:?}"),
        };
        *done += used;
        rig.server_send(&reply);
    }
}

fn run(reqs: &[Req], pipelined: bool, faults: Faults, seed: u64) {
    run_with(reqs, pipelined, faults, seed, EngineConfig::default());
}

fn run_with(reqs: &[Req], pipelined: bool, faults: Faults, seed: u64, cfg: EngineConfig) {
    let mut rig = Rig::new(XWING, 11211, cfg, faults, seed);
    let mut served = rig.converse(reqs, pipelined, serve);
    // Still usable after everything: one more allowed round trip.
    let before = rig.client_got.len();
    rig.client_send(Req::GetAllowed.bytes());
    let ok = rig.run_until(kit::rig::LOSSY_BUDGET_MS, |g| {
        serve(g, &mut served);
        g.client_got.len() >= before + Req::GetAllowed.reply().len()
    });
    assert!(ok, "connection stopped working");
    assert!(rig.client_got.ends_with(Req::GetAllowed.reply()));
    // A server whose handshake ACK was lost and that got no data yet is
    // still in SYN-RECEIVED until now; smoltcp does not answer its SYN-ACK
    // retransmissions once established.
    let ok = rig.run_until(kit::rig::LOSSY_BUDGET_MS, |g| g.quiet() && g.established());
    assert!(ok, "connection not healthy");
    let c = rig.engine.counters();
    let denied = reqs.iter().filter(|r| !r.allowed()).count() as u64;
    assert_eq!(c.l7_requests_denied, denied, "each request decided once");
    assert_eq!(c.l7_requests_allowed, reqs.len() as u64 - denied + 1);
    if std::env::var("RIG_DEBUG").is_ok() {
        eprintln!(
            "faults {faults:?} lost {} counters {}",
            rig.link.lost,
            c.to_json()
        );
    }
}

use Req::*;

#[test]
fn lossy_handshake_regression() {
    let f = Faults::new(15, 1, 6, 1);
    run(&[GetAllowed], false, f, 14293879913119795383);
}

#[test]
fn pipelined_with_faults_regression() {
    let f = Faults::new(2, 1, 1, 1);
    run(
        &[GetAllowed, GetDenied, GetAllowed, SetDenied, SetAllowed],
        true,
        f,
        11110009223952567921,
    );
}

#[test]
fn reordered_handshake_regression() {
    let f = Faults::new(14, 4, 24, 1);
    run(&[GetAllowed], false, f, 7820477270912778129);
}

#[test]
fn lost_handshake_ack_before_a_denial_regression() {
    let f = Faults::new(11, 0, 4, 1);
    run(&[SetDenied], false, f, 5873092062168090668);
    run(&[SetDenied], false, f, 5873092063535359550);
    run(&[SetDenied], false, f, 5873092063535526473);
}

#[test]
fn seed_sequence_without_faults() {
    run(
        &[GetAllowed, GetDenied, GetAllowed],
        false,
        Faults::default(),
        1,
    );
}

#[test]
fn pipelined_mix_without_faults() {
    run(
        &[
            GetAllowed,
            GetDenied,
            SetAllowed,
            SetQuietDenied,
            SetDenied,
            GetAllowed,
        ],
        true,
        Faults::default(),
        2,
    );
}

#[test]
fn seed_sequence_over_a_lossy_link() {
    let f = Faults::new(10, 5, 10, 10);
    run(
        &[GetAllowed, GetDenied, GetAllowed, SetDenied, SetAllowed],
        false,
        f,
        3,
    );
}

#[test]
fn many_pipelined_requests_with_a_small_hold_budget() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let mix = [GetAllowed, GetDenied, SetAllowed, SetQuietDenied, SetDenied];
    let reqs: Vec<Req> = (0..40).map(|i| mix[i * 7 % mix.len()]).collect();
    run_with(&reqs, true, Faults::default(), 4, cfg.clone());
    let f = Faults::new(5, 5, 10, 10);
    run_with(&reqs, true, f, 5, cfg);
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        Just(GetAllowed),
        Just(GetDenied),
        Just(SetAllowed),
        Just(SetDenied),
        Just(SetQuietAllowed),
        Just(SetQuietDenied),
    ]
}

proptest! {
    // Fixed-seed cases (see `kit::rig::proptest_config`); cases other
    // seeds found are kept as named tests.
    #![proptest_config(kit::rig::proptest_config(96))]
    #[test]
    fn random_mixes_and_faults(
        reqs in proptest::collection::vec(req(), 1..12),
        pipelined in any::<bool>(),
        drop in 0u32..15,
        dup in 0u32..10,
        reorder in 0u32..30,
        split in 0u32..30,
        seed in any::<u64>(),
        small in any::<bool>(),
    ) {
        let cfg = EngineConfig {
            max_held_bytes: if small { 64 } else { 64 * 1024 },
            ..EngineConfig::default()
        };
        run_with(&reqs, pipelined, Faults::new(drop, dup, reorder, split), seed, cfg);
    }
}

#[test]
fn pipelined_denials_with_a_lost_first_segment_regression() {
    // The first released request is lost; the client then retransmits one
    // segment that spans it, a denied request and held requests.
    let f = Faults::new(3, 1, 1, 1);
    run(
        &[
            GetAllowed, GetDenied, GetAllowed, GetDenied, GetAllowed, SetDenied, GetAllowed,
            GetAllowed,
        ],
        true,
        f,
        13644194148088256702,
    );
}

#[test]
fn many_pipelined_requests_over_a_lossy_link_regression() {
    // Server retransmissions coalesce replies across injected denials.
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let mix = [GetAllowed, GetDenied, SetAllowed, SetQuietDenied, SetDenied];
    let reqs: Vec<Req> = (0..40).map(|i| mix[i * 7 % mix.len()]).collect();
    for seed in 5..9 {
        let f = Faults::new(5, 5, 10, 10);
        run_with(&reqs, true, f, seed, cfg.clone());
    }
}

#[test]
fn sequential_quiet_sets_and_denials_with_a_small_hold_budget_regression() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [
        GetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        GetDenied,
        GetAllowed,
        GetAllowed,
        GetDenied,
        SetQuietAllowed,
        SetQuietAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(9, 2, 10, 0),
        28986785303656270,
        cfg,
    );
}

#[test]
fn sequential_gets_then_quiet_sets_small_budget_regression() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [
        GetAllowed,
        GetAllowed,
        GetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(8, 0, 19, 16),
        16397135359149923379,
        cfg,
    );
}

/// Found by a random-seed hunt once held heads had a timeout (then 60 s):
/// with a 64-byte budget each transmission ends in the start of the next
/// head, held and never acknowledged; the client sends the rest only at its
/// retransmission timeout, which had backed off past the head timeout.
#[test]
fn quiet_sets_in_a_row_small_budget_regression() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [
        SetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(3, 0, 11, 0),
        6712970870808002075,
        cfg,
    );
}

#[test]
fn quiet_sets_between_replies_small_budget_regression() {
    // Like the one above: every round trip ends with the start of the next
    // head held, which nothing acknowledges, so the client (Nagle) sends
    // the rest only at its retransmission timeout, backed off to a minute.
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [
        SetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        GetAllowed,
        GetAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(11, 1, 3, 1),
        12334756932245170474,
        cfg.clone(),
    );
    let reqs = [
        GetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        GetAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(5, 1, 3, 11),
        17882246108309620060,
        cfg,
    );
}

#[test]
fn quiet_set_denial_get_lossy_small_budget_regression() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [SetQuietAllowed, GetDenied, GetAllowed];
    run_with(
        &reqs,
        false,
        Faults::new(12, 1, 16, 11),
        14741723339777947092,
        cfg,
    );
}

#[test]
fn get_then_quiet_sets_lossy_small_budget_regression() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [
        GetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(10, 1, 2, 5),
        5688882494769249510,
        cfg,
    );
}

/// Found by a random-seed hunt: not an enforcer defect. Seven SYN-ACKs in a
/// row were lost (three after the enforcer passed them), past the 120 s the
/// rig then gave a handshake.
#[test]
fn handshake_under_heavy_loss_regression() {
    run(
        &[GetAllowed],
        false,
        Faults::new(13, 1, 7, 1),
        618662890734352118,
    );
}

#[test]
fn sets_then_quiet_sets_lossy_small_budget_regression() {
    let cfg = EngineConfig {
        max_held_bytes: 64,
        ..EngineConfig::default()
    };
    let reqs = [
        SetAllowed,
        GetAllowed,
        SetAllowed,
        SetAllowed,
        SetQuietAllowed,
        SetQuietAllowed,
    ];
    run_with(
        &reqs,
        false,
        Faults::new(10, 6, 9, 14),
        11015669686455748639,
        cfg,
    );
}
