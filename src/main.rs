//! `enforcer` command line.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use enforcer::config::{DenyAction, EngineConfig, SynDenyAction, TableFullPolicy};
use enforcer::dataplane::{self, PollMode, RunArgs};
use enforcer::hostmode::steer::FailMode;
use enforcer::policy;
use enforcer::replay::{self, ReplayArgs};

#[derive(Parser, Debug)]
#[command(
    name = "enforcer",
    version,
    about = "Inline L7 network policy enforcer (AF_XDP) for CiliumNetworkPolicy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunOpts,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate policies and endpoints and print what they allow.
    Check {
        /// Policy file or directory.
        path: PathBuf,
    },
    /// Print a 2017-format (JSON) policy as CiliumNetworkPolicy YAML.
    Convert {
        /// Legacy policy file.
        path: PathBuf,
    },
    /// Run the engine over a capture: frames that would leave the enforcer and the verdict log.
    Replay {
        #[arg(long)]
        policy: PathBuf,
        /// pcap or pcapng input.
        input: PathBuf,
        /// pcap output.
        #[arg(short = 'w', long = "write")]
        output: PathBuf,
        /// Verdict log (JSON lines).
        #[arg(long)]
        log: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineOpts,
    },
}

#[derive(Args, Debug)]
struct RunOpts {
    /// Interface facing clients; alone, host mode: protect this host's own addresses on it.
    #[arg(long)]
    iface: Option<String>,
    /// Interface facing servers (inline mode).
    #[arg(long)]
    peer: Option<String>,
    /// Policy file or directory (default: /etc/enforcer).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Worker threads (default: number of queues).
    #[arg(long)]
    workers: Option<usize>,
    /// Poll mode (default: adaptive below 4 cores, busy otherwise).
    #[arg(long, value_enum)]
    poll: Option<PollMode>,
    /// Verdict log (JSON lines).
    #[arg(long)]
    log: Option<PathBuf>,
    /// UMEM frames (4 KiB each) per worker (default: 2048 per AF_XDP socket).
    #[arg(long)]
    umem_frames: Option<u32>,
    /// Host mode: what a crashed (kill -9) enforcer leaves. open: the host is
    /// reachable directly, unenforced; closed: its IP traffic on --iface is
    /// dropped until the enforcer runs again.
    #[arg(long, value_enum, default_value = "open")]
    fail: FailMode,
    #[command(flatten)]
    engine: EngineOpts,
}

#[derive(Args, Debug, Clone)]
struct EngineOpts {
    /// Flows per worker.
    #[arg(long, default_value_t = EngineConfig::default().max_flows)]
    max_flows: usize,
    /// When the flow table is full.
    #[arg(long, value_enum, default_value = "refuse-l7")]
    table_full: TableFullArg,
    /// Bytes held per flow direction for an undecided L7 request.
    #[arg(long, default_value_t = EngineConfig::default().max_held_bytes)]
    max_held_bytes: usize,
    /// Answer to a denied L7 request.
    #[arg(long, value_enum, default_value = "reply")]
    deny_action: DenyArg,
    /// Answer to a TCP SYN denied by L3/L4 policy.
    #[arg(long, value_enum, default_value = "drop")]
    syn_deny: SynArg,
    /// Drop non-IP frames (ARP, ...) instead of passing them.
    #[arg(long)]
    drop_non_ip: bool,
    /// Bytes all L7 flows of a worker may hold together; above it no flow
    /// starts holding more (docs/security.md).
    #[arg(long, default_value_t = EngineConfig::default().max_held_total)]
    max_held_total: usize,
    /// An L7 connection whose stream state hits an internal error: closed
    /// ends it, open lets it go on unjudged (L3/L4 only).
    #[arg(long, value_enum, default_value = "closed")]
    l7_fail: L7FailArg,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum L7FailArg {
    Closed,
    Open,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum TableFullArg {
    RefuseL7,
    RefuseAll,
    EvictOldest,
}
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum DenyArg {
    Reply,
    Reset,
}
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum SynArg {
    Drop,
    Reset,
}

impl EngineOpts {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            max_flows: self.max_flows,
            table_full: match self.table_full {
                TableFullArg::RefuseL7 => TableFullPolicy::RefuseL7,
                TableFullArg::RefuseAll => TableFullPolicy::RefuseAll,
                TableFullArg::EvictOldest => TableFullPolicy::EvictOldest,
            },
            max_held_bytes: self.max_held_bytes,
            deny_action: match self.deny_action {
                DenyArg::Reply => DenyAction::Reply,
                DenyArg::Reset => DenyAction::Reset,
            },
            syn_deny: match self.syn_deny {
                SynArg::Drop => SynDenyAction::Drop,
                SynArg::Reset => SynDenyAction::Reset,
            },
            pass_non_ip: !self.drop_non_ip,
            max_held_total: self.max_held_total,
            fail: match self.l7_fail {
                L7FailArg::Closed => enforcer::config::FailMode::Closed,
                L7FailArg::Open => enforcer::config::FailMode::Open,
            },
            ..EngineConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Cmd::Check { path }) => policy::check::run(&path),
        Some(Cmd::Convert { path }) => {
            policy::legacy::convert_file(&path).map(|yaml| print!("{yaml}"))
        }
        Some(Cmd::Replay {
            policy,
            input,
            output,
            log,
            engine,
        }) => replay::run(&ReplayArgs {
            policy,
            input,
            output,
            log,
            engine: engine.config(),
        }),
        None => {
            let Some(iface) = cli.run.iface.clone() else {
                eprintln!("enforcer: --iface is required (see --help)");
                return ExitCode::from(2);
            };
            dataplane::run(&RunArgs {
                iface,
                peer: cli.run.peer.clone(),
                policy: cli.run.policy.clone(),
                workers: cli.run.workers,
                poll: cli.run.poll,
                log: cli.run.log.clone(),
                umem_frames: cli.run.umem_frames,
                fail: cli.run.fail,
                engine: cli.run.engine.config(),
            })
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcer: {e}");
            ExitCode::FAILURE
        }
    }
}
