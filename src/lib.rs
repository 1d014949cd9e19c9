//! enforcer: an inline L7 network policy enforcer.
//!
//! Layers depend downward only (`tests/layering.rs` keeps it so):
//!
//! 0. `packed`: short byte strings held in place, for every layer above;
//! 1. leaves, the vocabulary every layer shares: `verdict` (the wire side a
//!    frame came in on, what happens to it, the frames emitted), `counters`
//!    (and drop reasons), `config`, `log` (verdict log events), `packet`
//!    (frame views and builders);
//! 2. `l7`: protocol parsers, each protocol's own rule type, denial replies;
//! 3. `policy`: documents, compilation into per-protocol rule sets, `check`;
//! 4. `stream`: per-connection L7 state over the policy's rule sets;
//! 5. `engine`: flow table, L3/L4 verdicts, hands L7 flows to `stream`;
//! 6. shells: `dataplane` (AF_XDP), `hostmode` (kernel side of host mode),
//!    `replay` (pcap); over them `control` (the control socket, policy
//!    import, observers, metrics), `tools` (what-if and suggest, over
//!    `replay`) and the binary (`main.rs`).
//!
//! Nothing below the shells performs I/O or reads a clock: time is passed in.
//! Only the shells that talk to the kernel may use `unsafe`.

#![deny(unsafe_code)]

// The test kit in `tests/kit` names the crate `enforcer`; parts of it are
// compiled into the unit tests too.
#[cfg(test)]
extern crate self as enforcer;

pub mod config;
pub mod counters;
pub mod log;
pub mod packed;
pub mod packet;
pub mod verdict;

pub mod l7;
pub mod policy;
pub mod stream;

pub mod engine;

#[allow(unsafe_code)]
pub mod dataplane;
#[allow(unsafe_code)]
pub mod hostmode;
pub mod replay;

pub mod tools;

pub mod control;
