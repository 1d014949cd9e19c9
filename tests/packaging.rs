//! The systemd unit is valid for systemd (`systemd-analyze verify`, with the
//! built binary in place of the installed one), and every subcommand's
//! `--help` shows examples.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_enforcer");

#[test]
fn the_systemd_unit_verifies() {
    let have = Command::new("systemd-analyze").arg("--version").output();
    if have.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and systemd-analyze is missing"
        );
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/enforcer.service"
    ))
    .expect("unit");
    assert!(unit.contains("Restart=on-failure"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enforcer.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/enforcer", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's other units may have their own).
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("enforcer.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}

#[test]
fn every_subcommand_has_examples_in_its_help() {
    for cmd in [
        &[][..],
        &["status"],
        &["policy", "get"],
        &["policy", "import"],
        &["policy", "delete"],
        &["observe"],
        &["check"],
        &["convert"],
        &["replay"],
    ] {
        let out = Command::new(BIN).args(cmd).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            text.contains("Example"),
            "no example in `enforcer {cmd:?} --help`:\n{text}"
        );
    }
}
