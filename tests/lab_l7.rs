//! The seed scenarios at L7, end to end: real memcached and the deathstar
//! app behind the real enforcer, driven by the seeds' own clients
//! (bmemcached, nc, curl) and pymemcache. Root only; under CI=true a missing
//! prerequisite is a failure (see tests/kit/lab.rs).

mod kit;

use kit::guide;
use kit::lab::{self, stdout, Mode};

/// The memcached guide, inline (see `kit::guide::memcached`).
#[test]
fn memcached_guide_step_by_step() {
    lab::with_lab("l7mc", |lab| {
        guide::memcached(lab);
    });
}

#[test]
fn starwars_http_steps_over_ipv4_and_ipv6() {
    lab::with_lab("l7http", |lab| {
        lab.start(Mode::Policy(&lab::repo("policies")), &[])
            .unwrap();
        guide::starwars(lab);
    });
}

#[test]
fn denied_request_keeps_the_connection_and_bodies_never_arrive() {
    lab::with_lab("l7conn", |lab| {
        lab.start(Mode::Policy(&lab::repo("policies")), &[])
            .unwrap();
        guide::denial_keeps_the_connection(lab);

        // A denied POST with a 1 MB body: 403, and not one body byte at the server.
        let r = lab.sh(
            "awing",
            "f=$(mktemp) && head -c 1048576 /dev/zero > \"$f\" && \
             curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST --data-binary @\"$f\" \
             http://10.66.0.2/v1/cargobay; rm -f \"$f\"",
        );
        assert_eq!(stdout(&r), "403");
        let seen = lab.deathstar_log();
        assert!(seen.iter().all(|e| e["path"] != "/v1/cargobay"), "{seen:?}");
        let denied = |e: &serde_json::Value| {
            e["kind"] == "http" && e["verdict"] == "deny" && e["path"] == "/v1/cargobay"
        };
        let v = lab.verdicts_when(|v| v.iter().any(denied));
        assert!(v.iter().any(denied), "{v:?}");
    });
}
