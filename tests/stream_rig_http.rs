//! Real TCP stacks (smoltcp) through the engine, with faults on the links:
//! HTTP/1.1 keep-alive from the a-wing to the deathstar under the shipped
//! Star Wars policy. The server reads exactly the allowed requests, the
//! client reads every response and 403 in order, the connection stays usable.

mod kit;

use enforcer::config::EngineConfig;
use kit::faults::Faults;
use kit::rig::{Request, Rig, LOSSY_BUDGET_MS};
use proptest::prelude::*;

const AWING: [u8; 4] = [10, 66, 0, 11];
const DENY_403: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nAccess denied\r\n";
const CHUNKED_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
const LANDED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nShip landed";
const PANIC: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\npanic";

#[derive(Debug, Clone, Copy)]
enum Req {
    Get,
    Land,
    ExhaustWithForce,
    Exhaust,
    Secret,
    ChunkedPost,
}

use Req::*;

impl Request for Req {
    fn bytes(self) -> &'static [u8] {
        match self {
            Get => b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n",
            Land => b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 6\r\n\r\nx-wing",
            ExhaustWithForce => b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nX-Has-Force: true\r\nContent-Length: 4\r\n\r\nboom",
            Exhaust => b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 4\r\n\r\nboom",
            Secret => b"GET /v1/secret HTTP/1.1\r\nHost: deathstar\r\n\r\n",
            ChunkedPost => b"POST /v1/request-landing/x HTTP/1.1\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        }
    }
    fn allowed(self) -> bool {
        matches!(self, Get | Land | ExhaustWithForce)
    }
    fn reply(self) -> &'static [u8] {
        match self {
            Get => CHUNKED_OK,
            Land => LANDED,
            ExhaustWithForce => PANIC,
            Exhaust | Secret | ChunkedPost => DENY_403,
        }
    }
}

/// A tiny deathstar: answers complete requests in `server_got[*done..]`.
fn serve(rig: &mut Rig, done: &mut usize) {
    loop {
        let rest = &rig.server_got[*done..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        assert!(
            !head.contains("Transfer-Encoding"),
            "a denied chunked request reached the server"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let need = end + 4 + len;
        if rest.len() < need {
            return;
        }
        let reply = match head.split(' ').take(2).collect::<Vec<_>>()[..] {
            ["GET", "/v1/"] => CHUNKED_OK,
            ["POST", "/v1/request-landing"] => LANDED,
            ["PUT", "/v1/exhaust-port"] => PANIC,
            _ => panic!("server got a request it should not: {head:?}"),
        };
        *done += need;
        rig.server_send(reply);
    }
}

fn run(reqs: &[Req], pipelined: bool, faults: Faults, seed: u64) {
    let mut rig = Rig::new(AWING, 80, EngineConfig::default(), faults, seed);
    let mut served = rig.converse(reqs, pipelined, serve);
    let before = rig.client_got.len();
    rig.client_send(Get.bytes());
    let ok = rig.run_until(LOSSY_BUDGET_MS, |g| {
        serve(g, &mut served);
        g.client_got.len() >= before + CHUNKED_OK.len() && g.quiet() && g.established()
    });
    assert!(ok, "connection stopped working");
    assert!(rig.client_got.ends_with(CHUNKED_OK));
    let c = rig.engine.counters();
    let denied = reqs.iter().filter(|r| !r.allowed()).count() as u64;
    assert_eq!(c.l7_requests_denied, denied);
}

#[test]
fn curl_next_200_403_200() {
    run(&[Get, Exhaust, Get], false, Faults::default(), 1);
}

#[test]
fn pipelined_with_bodies_and_chunked_denial() {
    run(
        &[Land, ChunkedPost, Get, Exhaust, ExhaustWithForce, Secret],
        true,
        Faults::default(),
        2,
    );
}

#[test]
fn pipelined_over_a_lossy_link() {
    let f = Faults::new(10, 5, 10, 20);
    run(&[Get, Secret, Land, Exhaust, Get], true, f, 3);
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        Just(Get),
        Just(Land),
        Just(ExhaustWithForce),
        Just(Exhaust),
        Just(Secret),
        Just(ChunkedPost),
    ]
}

proptest! {
    // Fixed-seed cases (see `kit::rig::proptest_config`); cases other
    // seeds found are kept as named tests.
    #![proptest_config(kit::rig::proptest_config(64))]
    #[test]
    fn random_mixes_and_faults(
        reqs in proptest::collection::vec(req(), 1..10),
        pipelined in any::<bool>(),
        faults in kit::rig::faults(),
        seed in any::<u64>(),
    ) {
        run(&reqs, pipelined, faults, seed);
    }
}

/// Found by `random_mixes_and_faults` with a random seed: one allowed GET
/// with 13 % of frames dropped. The client's ACK and first data after the
/// SYN-ACK were lost, and its retransmission came 16 s later: the flow
/// entry, still half-open, had expired after 10 s, and an L7 connection is
/// never adopted mid-stream, so every later segment met no flow.
#[test]
fn one_get_under_heavy_loss() {
    run(&[Get], false, Faults::new(13, 1, 1, 1), 1432278540552774366);
}

/// Found by a random-seed hunt: not an enforcer defect. Reply and ACKs
/// were lost eight round trips in a row at a 60 s retransmission timeout,
/// beyond the 600 s the rig then allowed (see `LOSSY_BUDGET_MS`).
#[test]
fn one_get_lossy_reordered_split_regression() {
    run(
        &[Get],
        false,
        Faults::new(14, 0, 14, 7),
        11738818655304779588,
    );
}

/// Found by a random-seed hunt: SYN-ACKs lost for 15 s, the unanswered
/// flow then expired after 10 s idle (the half-open timeout of the time)
/// between the client's SYN retransmissions, and the server's SYN-ACK
/// retransmissions at 32 s and 64 s met no flow. (smoltcp, unlike Linux,
/// does not answer a duplicate SYN in SYN-RECEIVED with its SYN-ACK, so
/// the client's later SYN did not help either.)
#[test]
fn handshake_under_heavy_loss_regression() {
    run(&[Get], false, Faults::new(13, 1, 3, 1), 6139508179091007611);
}
