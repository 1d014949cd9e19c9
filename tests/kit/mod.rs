//! The shared test kit: frame and capture builders (`frames`), one TCP
//! endpoint model (`tcp`), one pair of endpoints stepped through a middle
//! (`pair`), faults as a wrapper around any link (`faults`), the smoltcp rig
//! (`rig`), one replay runner (`replay`), one lab with its root gate
//! (`lab`) and the seed guides as walks over it (`guide`). Every integration test uses it as `mod kit;`; `frames`, `tcp`
//! and `pair` are also compiled into the library's unit tests.
#![allow(dead_code)]

pub mod faults;
pub mod frames;
pub mod guide;
pub mod lab;
pub mod pair;
pub mod policy;
pub mod replay;
pub mod rig;
pub mod tcp;

#[allow(unused_imports)]
pub use frames::*;

use std::ffi::OsStr;

use enforcer::engine::Engine;
use enforcer::verdict::{Output, Side, Verdict};

/// The engine as the middle of a pair.
impl pair::Middle for Engine {
    fn on_frame(&mut self, side: Side, frame: &mut [u8], now: u64, out: &mut Output) -> Verdict {
        Engine::on_frame(self, side, frame, now, out)
    }

    fn tick(&mut self, now: u64, out: &mut Output) {
        Engine::tick(self, now, out)
    }
}

/// Run the `enforcer` binary: whether it succeeded, its stdout and stderr.
pub fn enforcer<S: AsRef<OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .output()
        .expect("run enforcer");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
