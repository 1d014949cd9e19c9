//! `enforcer check` as a user runs it: every shipped policy passes, every
//! broken fixture fails naming file, line and field.

mod kit;

fn check(path: &str) -> (bool, String, String) {
    kit::enforcer(&["check", path])
}

#[test]
fn shipped_policies_pass_and_summarise() {
    let (ok, out, err) = check("policies");
    assert!(ok, "{err}");
    assert!(out.contains("policy secure-fleet"), "{out}");
    assert!(out.contains("command get, key = \"awing-coord\""), "{out}");
    assert!(
        out.contains("method PUT, path /v1/exhaust-port, header \"X-Has-Force: true\""),
        "{out}"
    );
    assert!(out.contains("ok: 4 endpoint(s)"), "{out}");
    for entry in std::fs::read_dir("policies").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("yaml") {
            let (ok, _, err) = check(p.to_str().unwrap());
            assert!(ok, "{}: {err}", p.display());
        }
    }
}

#[test]
fn the_seed_policy_loads_unchanged() {
    let seed = "../shared/policies/memcd-sw-security-policy.yaml";
    if std::path::Path::new(seed).exists() {
        let a = std::fs::read(seed).unwrap();
        let b = std::fs::read("policies/memcd-sw-security-policy.yaml").unwrap();
        assert_eq!(a, b, "policies/ carries the seed policy byte for byte");
    }
    let (ok, _, err) = check("policies/memcd-sw-security-policy.yaml");
    assert!(ok, "{err}");
}

#[test]
fn broken_policies_fail_with_their_location() {
    let d = "tests/policies/broken";
    let cases = [
        (
            "bad-port.yaml",
            "12",
            "spec.ingress[0].toPorts[0].ports[0].port",
            "out of range",
        ),
        (
            "unknown-field.yaml",
            "10",
            "spec.ingress[0]",
            "unknown field `fromEndpoint`",
        ),
        (
            "bad-regex.yaml",
            "17",
            "spec.ingress[0].toPorts[0].rules.http[0].path",
            "",
        ),
        (
            "unknown-command.yaml",
            "19",
            "spec.ingress[0].toPorts[0].rules.l7[1].command",
            "hyperjump",
        ),
        ("wrong-type.yaml", "10", "spec.ingress", "invalid type"),
        (
            "bad-operator.yaml",
            "9",
            "spec.endpointSelector.matchExpressions[0].operator",
            "Equals",
        ),
        (
            "bad-endpoint-address.yaml",
            "5",
            "endpoints[0].addresses[1]",
            "10.66.0.300",
        ),
    ];
    for (file, line, field, words) in cases {
        let path = format!("{d}/{file}");
        let (ok, _, err) = check(&path);
        assert!(!ok, "{file} should fail");
        let want = format!("error: {path}:{line}: {field}: ");
        let hit = err.lines().find(|l| l.starts_with(&want));
        assert!(
            hit.is_some(),
            "{file}: want a line starting {want:?}, got:\n{err}"
        );
        assert!(hit.unwrap().contains(words), "{file}: {err}");
    }
}

#[test]
fn missing_and_garbage_inputs_are_clear_errors() {
    let (ok, _, err) = check("tests/policies/does-not-exist.yaml");
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("garbage.yaml");
    std::fs::write(&f, "\u{0}\u{1}: [unclosed\n").unwrap();
    let (ok, _, err) = check(f.to_str().unwrap());
    assert!(!ok);
    assert!(err.contains("garbage.yaml"), "{err}");
}
