#![no_main]
//! The whole frame path: sequences of frames in both directions, with time
//! and ticks, through `Engine` under the repository's policies (see
//! `enforcer_fuzz::scenario` for the input's structure and the invariants).

use enforcer_fuzz::scenario::{run, Scenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    run(&Scenario::decode(data));
});
