//! The seed scenarios at L7, end to end: real memcached and the deathstar
//! app behind the real enforcer, driven by the seeds' own clients
//! (bmemcached, nc, curl) and pymemcache. Root only; under CI=true a missing
//! prerequisite is a failure (see tests/kit/lab.rs).

mod kit;

use kit::lab::{self, bmemcached, nc, stdout, Lab, Mode, DENIED8};

/// A policy directory with the endpoints and no policy: nothing enforced,
/// as in the seeds before their policies are applied.
fn endpoints_only() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        lab::repo("policies/endpoints.yaml"),
        dir.path().join("endpoints.yaml"),
    )
    .expect("copy");
    dir
}

#[test]
fn memcached_guide_step_by_step() {
    lab::with_lab("l7mc", |lab| {
        // Steps 3 and 4: no policy yet, everyone may do anything.
        let open = endpoints_only();
        lab.start(Mode::Policy(open.path()), &[]).unwrap();
        let aw = bmemcached(
            lab,
            "awing",
            "show(lambda: client.set('awing-coord', '4309.432,918.980', time=2400))\n\
             show(lambda: client.get('awing-coord'))\n",
        );
        assert_eq!(aw, ["True", "4309.432,918.980"]);
        assert_eq!(
            nc(
                lab,
                "xwing",
                "set xwing-coord 0 1200 16\\r\\n8893.34,234.3290\\r\\n"
            ),
            "STORED\r\n"
        );
        assert_eq!(
            nc(lab, "xwing", "get xwing-coord\\r\\n"),
            "VALUE xwing-coord 0 16\r\n8893.34,234.3290\r\nEND\r\n"
        );
        assert_eq!(
            nc(lab, "xwing", "get awing-coord\\r\\n"),
            "VALUE awing-coord 0 16\r\n4309.432,918.980\r\nEND\r\n",
            "over-privileged before the policy"
        );
        lab.stop();

        // Step 5: the seed policy.
        lab.start(Mode::Policy(&lab::repo("policies")), &[])
            .unwrap();
        assert_eq!(
            nc(lab, "xwing", "get awing-coord\\r\\n"),
            "CLIENT_ERROR access denied\r\n"
        );
        let aw = bmemcached(
            lab,
            "awing",
            "show(lambda: client.get('awing-coord'))\n\
             show(lambda: client.get('xwing-coord'))\n\
             show(lambda: client.get('awing-coord'))\n\
             show(lambda: client.set('awing-coord', '9852.542,892.1318', time=1200))\n\
             show(lambda: client.get('awing-coord'))\n",
        );
        assert_eq!(
            aw,
            [
                "4309.432,918.980",
                DENIED8,
                "4309.432,918.980",
                "True",
                "9852.542,892.1318"
            ],
            "a denied get leaves the client usable: no retry needed"
        );
        let tr = bmemcached(
            lab,
            "tracker",
            "show(lambda: client.get('xwing-coord'))\n\
             show(lambda: client.set('awing-coord', '0.0,0.0', time=1200))\n\
             show(lambda: client.get('awing-coord'))\n",
        );
        assert_eq!(tr, ["8893.34,234.3290", DENIED8, "9852.542,892.1318"]);
        // x-wing's own key, text protocol; `quit` is not allowed, so it is
        // dropped silently and nc ends on its own close.
        assert_eq!(
            nc(
                lab,
                "xwing",
                "set xwing-coord 0 1200 16\\r\\n9854.34,926.9187\\r\\nquit\\r\\n"
            ),
            "STORED\r\n"
        );
        assert_eq!(
            nc(lab, "xwing", "get xwing-coord\\r\\n"),
            "VALUE xwing-coord 0 16\r\n9854.34,926.9187\r\nEND\r\n"
        );
        // Pipelined on one connection: value, denial, value, in order.
        assert_eq!(
            nc(
                lab,
                "xwing",
                "get xwing-coord\\r\\nget awing-coord\\r\\nget xwing-coord\\r\\n"
            ),
            "VALUE xwing-coord 0 16\r\n9854.34,926.9187\r\nEND\r\n\
             CLIENT_ERROR access denied\r\n\
             VALUE xwing-coord 0 16\r\n9854.34,926.9187\r\nEND\r\n"
        );
        // Multi-key get: each key alone is allowed to the tracker by a
        // different rule, together by none.
        assert_eq!(
            nc(lab, "tracker", "get awing-coord xwing-coord\\r\\n"),
            "CLIENT_ERROR access denied\r\n"
        );
        // pymemcache (text) from a-wing: its own key works.
        assert_eq!(
            lab.memcache_roundtrip("awing", "awing-coord", "1.0,2.0"),
            "1.0,2.0"
        );
        // The outsider has no rule at all: it cannot even connect.
        assert_eq!(nc(lab, "outsider", "get awing-coord\\r\\n"), "");

        let st = lab.stop().unwrap();
        assert_eq!(st.status.code(), Some(0), "{st:?}");
        let c = st.counters().unwrap();
        assert!(
            c["engine"]["l7_requests_denied"].as_u64().unwrap() >= 5,
            "{c}"
        );
        let v = lab.verdicts();
        assert!(
            v.iter().any(|e| e["kind"] == "memcache"
                && e["verdict"] == "deny"
                && e["keys"][0] == "xwing-coord"),
            "verdict log names the denied key: {v:?}"
        );
    });
}

fn curl_lines(lab: &Lab, host: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["curl", "-s", "-m", "5", "-g"];
    a.extend_from_slice(args);
    stdout(&lab.exec(host, &a))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn starwars_http_steps_over_ipv4_and_ipv6() {
    lab::with_lab("l7http", |lab| {
        lab.start(Mode::Policy(&lab::repo("policies")), &[])
            .unwrap();
        for base in ["http://10.66.0.2", "http://[fd66::2]"] {
            let landing = lab.curl(
                "awing",
                &format!("{base}/v1/request-landing"),
                &["-X", "POST"],
            );
            assert_eq!(stdout(&landing), "Ship landed\n");
            let api = stdout(&lab.curl("xwing", &format!("{base}/v1/"), &[]));
            assert!(api.contains("\"name\": \"Death Star\""), "{api}");
            let port = lab.curl(
                "xwing",
                &format!("{base}/v1/exhaust-port"),
                &["-i", "-X", "PUT"],
            );
            let port = stdout(&port);
            assert!(port.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{port}");
            assert!(port.ends_with("Access denied\r\n"), "{port}");
            let force = lab.curl(
                "xwing",
                &format!("{base}/v1/exhaust-port"),
                &["-i", "-X", "PUT", "-H", "X-Has-Force: true"],
            );
            let force = stdout(&force);
            assert!(force.starts_with("HTTP/1.1 503"), "{force}");
            assert!(force.contains("Panic: deathstar exploded"), "{force}");
            // Not a spaceship: no rule, no connection (curl times out).
            let r = lab.curl("tracker", &format!("{base}/v1/"), &[]);
            assert_eq!(r.status.code(), Some(28), "{r:?}");
        }
        // The deathstar never saw a PUT without the Force.
        let seen = lab.deathstar_log();
        assert!(
            seen.iter().all(|e| e["method"] != "PUT"
                || e["path"] != "/v1/exhaust-port"
                || e["x_has_force"] == "true"),
            "{seen:?}"
        );
    });
}

#[test]
fn denied_request_keeps_the_connection_and_bodies_never_arrive() {
    lab::with_lab("l7conn", |lab| {
        lab.start(Mode::Policy(&lab::repo("policies")), &[])
            .unwrap();
        // curl --next over one connection: 200, 403, 200 and one connect.
        let w = "%{http_code} %{num_connects}\\n";
        let lines = curl_lines(
            lab,
            "xwing",
            &[
                "-o",
                "/dev/null",
                "-w",
                w,
                "http://10.66.0.2/v1/",
                "--next",
                "-o",
                "/dev/null",
                "-w",
                w,
                "-X",
                "PUT",
                "http://10.66.0.2/v1/exhaust-port",
                "--next",
                "-o",
                "/dev/null",
                "-w",
                w,
                "http://10.66.0.2/v1/",
            ],
        );
        assert_eq!(
            lines,
            ["200 1", "403 0", "200 0"],
            "one TCP connection, three answers"
        );

        // A denied POST with a 1 MB body: 403, and not one body byte at the server.
        let r = lab.sh(
            "awing",
            "head -c 1048576 /dev/zero > /tmp/l7conn-body && \
             curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST --data-binary @/tmp/l7conn-body \
             http://10.66.0.2/v1/cargobay; rm -f /tmp/l7conn-body",
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
