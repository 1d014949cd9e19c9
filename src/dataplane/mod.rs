//! The live shell: AF_XDP sockets (xsk-rs), UMEM, per-core workers and their
//! poll loops, XDP program life cycle. Everything with syscalls lives here.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Spin on the rings (one core per worker at 100%).
    Busy,
    /// Spin while there is work, sleep in poll() when idle.
    Adaptive,
}

#[derive(Debug, Clone)]
pub struct RunArgs {
    pub iface: String,
    pub peer: Option<String>,
    pub policy: Option<PathBuf>,
    pub workers: Option<usize>,
    pub poll: Option<PollMode>,
    pub log: Option<PathBuf>,
    pub engine: crate::engine::EngineConfig,
}

pub fn run(args: &RunArgs) -> Result<(), String> {
    let _ = args;
    todo!("dataplane::run")
}
