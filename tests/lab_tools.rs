//! Per-policy deny replies on the wire: real curl and nc against the lab's
//! deathstar and memcached behind the real enforcer. Root only; under
//! CI=true a missing prerequisite is a failure (see tests/kit/lab.rs).

mod kit;

use kit::lab::{self, nc, stdout, Mode};

/// The shipped policies, each annotated with its own denial.
fn annotated() -> tempfile::TempDir {
    let dir = lab::policy_dir(&[]);
    let edit = |file: &str, name: &str, ann: &str| {
        let p = dir.path().join(file);
        let text = std::fs::read_to_string(&p).expect("policy");
        let from = format!("  name: \"{name}\"\n");
        let to = format!("{from}  annotations:\n{ann}");
        assert!(text.contains(&from), "{file} names {name}");
        std::fs::write(&p, text.replace(&from, &to)).expect("write policy");
    };
    edit(
        "sw-deathstar-http.yaml",
        "deathstar-http",
        "    enforcer.io/http-deny-status: \"451\"\n    \
         enforcer.io/http-deny-body: \"Only with the Force\"\n    \
         enforcer.io/http-deny-headers: \"X-Denied-By: deathstar-http\"\n",
    );
    edit(
        "memcd-sw-security-policy.yaml",
        "secure-fleet",
        "    enforcer.io/memcache-deny-message: \"not your coordinates\"\n",
    );
    dir
}

#[test]
fn a_policy_deny_body_reaches_curl_and_the_connection_serves_the_next_request() {
    lab::with_lab("pt", |lab| {
        let pol = annotated();
        lab.start(Mode::Policy(pol.path()), &[]).unwrap();
        // Denied PUT then an allowed GET, one curl, one connection.
        let w = "\\n%{http_code} %{num_connects}\\n";
        for base in ["http://10.66.0.2", "http://[fd66::2]"] {
            // `lab.curl` puts its URL last: the --next part's GET.
            let out = lab.curl(
                "xwing",
                &format!("{base}/v1/"),
                &[
                    "-i",
                    "-X",
                    "PUT",
                    "-w",
                    w,
                    &format!("{base}/v1/exhaust-port"),
                    "--next",
                    "-s",
                    "-g",
                    "-m",
                    "3",
                    "-o",
                    "/dev/null",
                    "-w",
                    w,
                ],
            );
            let text = stdout(&out);
            assert!(out.status.success(), "{out:?}");
            let mut parts = text.split("\r\n\r\n");
            let head = parts.next().unwrap_or("");
            let rest = parts.next().unwrap_or("");
            assert!(
                head.starts_with("HTTP/1.1 451 Unavailable For Legal Reasons\r\n"),
                "{text}"
            );
            assert!(head.contains("\r\nContent-Length: 21\r\n"), "{text}");
            assert!(head.contains("\r\nX-Denied-By: deathstar-http"), "{text}");
            assert!(!head.contains("Connection: close"), "{text}");
            let lines: Vec<&str> = rest.lines().collect();
            assert_eq!(
                lines,
                ["Only with the Force", "", "451 1", "", "200 0"],
                "the denial's body, then the second request on the same connection"
            );
        }
        // memcached: the policy's message, and the connection goes on.
        let got = nc(lab, "xwing", "get awing-coord\\r\\nget xwing-coord\\r\\n");
        assert!(
            got.starts_with("CLIENT_ERROR not your coordinates\r\n"),
            "{got:?}"
        );
        assert!(got.ends_with("END\r\n"), "{got:?}");
        let seen = lab.deathstar_log();
        assert!(
            seen.iter()
                .filter(|e| e["path"] == "/v1/exhaust-port")
                .count()
                == 0,
            "the deathstar never saw a PUT without the Force: {seen:?}"
        );
    });
}
