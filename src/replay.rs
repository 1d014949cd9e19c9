//! `enforcer replay`: the engine over a capture. Reads pcap or pcapng, writes
//! the frames that would leave the enforcer (pcap) and the verdict log.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub policy: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub log: Option<PathBuf>,
    pub engine: crate::engine::EngineConfig,
}

pub fn run(args: &ReplayArgs) -> Result<(), String> {
    let _ = args;
    todo!("replay::run")
}
