//! The seed guides as walks over a lab, each step with what the user sees:
//! the memcached guide and the Star Wars demo. One walk each, run inline
//! (tests/lab_l7.rs) and in host mode (tests/lab_host.rs); where the modes
//! differ, the walk says why.

use super::lab::{self, bmemcached, nc, stdout, Lab, Mode, DENIED8};

/// The memcached guide from step 3 on, starting with no enforcer running;
/// ends with the enforcer stopped cleanly and returns its last counters.
pub fn memcached(lab: &mut Lab) -> serde_json::Value {
    // Steps 3 and 4: no policy selects the server yet, everyone may do
    // anything.
    let open = lab::endpoints_only();
    if lab.host_mode {
        // Host mode would have nothing to enforce on this host: it refuses
        // to start, and the server answers everyone directly.
        let e = lab.start(Mode::Policy(open.path()), &[]).unwrap_err();
        assert!(e.contains("no policy selects this host"), "{e}");
    } else {
        lab.start(Mode::Policy(open.path()), &[]).unwrap();
    }
    memcached_own_keys(lab);
    assert_eq!(
        nc(lab, "xwing", "get awing-coord\\r\\n"),
        "VALUE awing-coord 0 16\r\n4309.432,918.980\r\nEND\r\n",
        "over-privileged before the policy"
    );
    if !lab.host_mode {
        lab.stop_clean();
    }

    // Step 5: the seed policy.
    lab.start(Mode::Policy(&lab::repo("policies")), &[])
        .unwrap();
    if lab.host_mode {
        let ready = lab.ready_line();
        assert!(
            ready.contains("mode=host")
                && ready.contains("host=server")
                && ready.contains("addresses=10.66.0.2,fd66::2"),
            "{ready}"
        );
    }
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
        "a denied get leaves the client usable: the next get succeeds, no retry"
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
    // IPv6 too.
    let r = lab.sh(
        "xwing",
        "printf 'get awing-coord\\r\\n' | nc -N -w 3 fd66::2 11211",
    );
    assert_eq!(stdout(&r), "CLIENT_ERROR access denied\r\n");

    let c = lab.stop_clean();
    assert!(
        c["engine"]["l7_requests_denied"].as_u64().unwrap() >= 6,
        "{c}"
    );
    let v = lab.verdicts();
    assert!(
        v.iter().any(|e| e["kind"] == "memcache"
            && e["verdict"] == "deny"
            && e["keys"][0] == "xwing-coord"),
        "verdict log names the denied key: {v:?}"
    );
    c
}

/// The guide's first writes, which the seed policy allows too: the a-wing
/// sets and reads its coordinates (bmemcached, binary protocol), the x-wing
/// sets and reads its own (nc, text protocol).
pub fn memcached_own_keys(lab: &Lab) {
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
}

/// The Star Wars demo with the seed policy running, over IPv4 and IPv6:
/// the a-wing lands, the x-wing reads the API, its PUT to the exhaust port
/// is denied without the Force and reaches the deathstar with it, and the
/// tracker (no rule) cannot even connect.
pub fn starwars(lab: &Lab) {
    for base in ["http://10.66.0.2", "http://[fd66::2]"] {
        let landing = lab.curl(
            "awing",
            &format!("{base}/v1/request-landing"),
            &["-X", "POST"],
        );
        assert_eq!(stdout(&landing), "Ship landed\n");
        let api = stdout(&lab.curl("xwing", &format!("{base}/v1/"), &[]));
        assert!(api.contains("\"name\": \"Death Star\""), "{api}");
        let port = stdout(&lab.curl(
            "xwing",
            &format!("{base}/v1/exhaust-port"),
            &["-i", "-X", "PUT"],
        ));
        assert!(port.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{port}");
        assert!(port.ends_with("Access denied\r\n"), "{port}");
        let force = stdout(&lab.curl(
            "xwing",
            &format!("{base}/v1/exhaust-port"),
            &["-i", "-X", "PUT", "-H", "X-Has-Force: true"],
        ));
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
}

/// `curl --next` from the x-wing over one connection: GET /v1/, the denied
/// PUT, GET /v1/ again. Three answers (200, 403, 200) and one connect: a
/// denial keeps the connection.
pub fn denial_keeps_the_connection(lab: &Lab) {
    denial_keeps_the_connection_at(lab, "http://10.66.0.2");
}

/// `denial_keeps_the_connection` towards `base` (`http://[fd66::2]` too).
pub fn denial_keeps_the_connection_at(lab: &Lab, base: &str) {
    let w = "%{http_code} %{num_connects}\\n";
    let (get, put) = (format!("{base}/v1/"), format!("{base}/v1/exhaust-port"));
    let mut a = vec!["curl", "-s", "-m", "5", "-g"];
    for (i, (method, url)) in [("GET", &get), ("PUT", &put), ("GET", &get)]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            a.push("--next");
        }
        a.extend_from_slice(&["-o", "/dev/null", "-w", w, "-X", method, url]);
    }
    let lines: Vec<String> = stdout(&lab.exec("xwing", &a))
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        ["200 1", "403 0", "200 0"],
        "one TCP connection, three answers ({base})"
    );
}
