//! `enforcer` command line.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use enforcer::config::{
    check_content_type, check_http_body, check_http_header, check_http_status,
    check_memcache_message, DenyAction, DenyReply, EngineConfig, SynDenyAction, TableFullPolicy,
};
use enforcer::control::{self, client, client::Format, filter::Filter};
use enforcer::dataplane::{self, PollMode, RunArgs};
use enforcer::hostmode::steer::FailMode;
use enforcer::policy;
use enforcer::replay::{self, ReplayArgs};
use enforcer::tools::compare::{self, CompareArgs};
use enforcer::tools::suggest::{self, SuggestArgs};

#[derive(Parser, Debug)]
#[command(
    name = "enforcer",
    version,
    about = "Inline L7 network policy enforcer (AF_XDP) for CiliumNetworkPolicy",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
      enforcer --iface eth1 --peer eth2 --policy /etc/enforcer      inline between two ports\n  \
      enforcer --iface eth0                                         protect this host (host mode)\n  \
      enforcer --iface eth1 --peer eth2 --metrics 127.0.0.1:9464    with Prometheus metrics\n  \
      enforcer status                                               ask the running enforcer\n  \
      enforcer policy import sw_policy_http.yaml                    change its policy\n  \
      enforcer observe --verdict deny                               follow its denials"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunOpts,
}

#[derive(Args, Debug, Clone)]
struct ControlOpt {
    /// Control socket of the enforcer to talk to.
    #[arg(long, env = "ENFORCER_CONTROL", default_value = control::DEFAULT_CONTROL)]
    control: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct OutputOpt {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Format,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Print the policies in force and their revision.
    #[command(after_help = "Example:\n  enforcer policy get -o json")]
    Get {
        #[command(flatten)]
        control: ControlOpt,
        #[command(flatten)]
        out: OutputOpt,
    },
    /// Validate a policy file, write it into the policy directory (replacing
    /// one of the same name) and reload; prints the new revision. Nothing
    /// changes when it has errors.
    #[command(
        after_help = "Example:\n  enforcer policy import sw_policy_http.real.json\n  Revision: 3"
    )]
    Import {
        #[command(flatten)]
        control: ControlOpt,
        /// CiliumNetworkPolicy YAML, Endpoints, or a 2017 JSON policy.
        file: PathBuf,
    },
    /// Remove a policy file (by name, extension optional) and reload.
    #[command(after_help = "Example:\n  enforcer policy delete sw_policy_http.real")]
    Delete {
        #[command(flatten)]
        control: ControlOpt,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show a running enforcer: mode, AF_XDP binding, workers, policy revision, counters.
    #[command(
        after_help = "Examples:\n  enforcer status\n  enforcer status -o json --control /run/enforcer/lab.sock"
    )]
    Status {
        #[command(flatten)]
        control: ControlOpt,
        #[command(flatten)]
        out: OutputOpt,
    },
    /// Get, import or delete the policies of a running enforcer.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Follow a running enforcer's verdicts (all given filters must match;
    /// a filter given twice matches either value).
    #[command(after_help = "Examples:\n  \
        enforcer observe --verdict deny\n  \
        enforcer observe --from-label org=alliance --protocol http --http-method PUT\n  \
        enforcer observe --memcache-command get --memcache-key awing-coord -o json")]
    Observe {
        #[command(flatten)]
        control: ControlOpt,
        #[command(flatten)]
        out: OutputOpt,
        /// allow, deny or audit.
        #[arg(long)]
        verdict: Vec<String>,
        /// Source endpoint label: KEY or KEY=VALUE.
        #[arg(long)]
        from_label: Vec<String>,
        /// Destination endpoint label: KEY or KEY=VALUE.
        #[arg(long)]
        to_label: Vec<String>,
        /// http, memcache, tcp, udp or icmp.
        #[arg(long)]
        protocol: Vec<String>,
        #[arg(long)]
        http_method: Vec<String>,
        /// Regular expression matched against the whole path.
        #[arg(long)]
        http_path: Vec<String>,
        #[arg(long)]
        memcache_command: Vec<String>,
        #[arg(long)]
        memcache_key: Vec<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Validate policies and endpoints and print what they allow.
    #[command(after_help = "Example:\n  enforcer check /etc/enforcer")]
    Check {
        /// Policy file or directory.
        path: PathBuf,
    },
    /// Print a 2017-format (JSON) policy as CiliumNetworkPolicy YAML.
    #[command(after_help = "Example:\n  enforcer convert sw_policy_http.real.json > sw.yaml")]
    Convert {
        /// Legacy policy file.
        path: PathBuf,
    },
    /// Print the least-privilege CiliumNetworkPolicy for what a capture or a
    /// verdict log shows: per identity pair and port, the requests seen.
    #[command(after_help = "Examples:\n  \
        enforcer suggest --endpoints policies/endpoints.yaml traffic.pcap > suggested.yaml\n  \
        enforcer suggest --endpoints policies/ --merge-paths --key-prefix audit.jsonl")]
    Suggest {
        /// Endpoints document (file or directory; policies in it are ignored).
        #[arg(long)]
        endpoints: PathBuf,
        /// A capture (pcap, pcapng) or a verdict log (JSON lines).
        input: PathBuf,
        /// HTTP: merge the paths of one method under their common prefix (`/v1/.*`).
        #[arg(long)]
        merge_paths: bool,
        /// HTTP: require the Host header seen.
        #[arg(long)]
        http_host: bool,
        /// HTTP: require this header with the value seen, where a request
        /// carried it (repeat for more; capture input only).
        #[arg(long, value_name = "NAME")]
        http_header: Vec<String>,
        /// memcached: allow keys by prefix (up to the first separator) instead of exactly.
        #[arg(long)]
        key_prefix: bool,
        /// memcached: characters that end a key prefix.
        #[arg(long, default_value = "-:_/.")]
        key_separators: String,
    },
    /// Run the engine over a capture: frames that would leave the enforcer and the verdict log.
    /// With --compare, what changes from the OLD policy to this one (docs/tools.md).
    #[command(after_help = "Examples:\n  \
          enforcer replay --policy policies in.pcap -w out.pcap --log verdicts.jsonl\n  \
          enforcer replay --policy new/ --compare policies/ in.pcap -w out.pcap --log changes.jsonl")]
    Replay {
        #[arg(long)]
        policy: PathBuf,
        /// What-if: list every decision that differs under this (old)
        /// policy, then a summary; --log then writes those as JSON lines.
        #[arg(long, value_name = "OLD")]
        compare: Option<PathBuf>,
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
    /// Worker threads (default: inline, the number of queues; host mode,
    /// half the CPUs, at most the queues).
    #[arg(long)]
    workers: Option<usize>,
    /// Poll mode (default: adaptive in host mode; inline, adaptive below 4
    /// cores, busy otherwise).
    #[arg(long, value_enum)]
    poll: Option<PollMode>,
    /// Verdict log (JSON lines).
    #[arg(long)]
    log: Option<PathBuf>,
    /// UMEM frames (4 KiB each) per worker (default: 4096 per AF_XDP socket).
    #[arg(long)]
    umem_frames: Option<u32>,
    /// Host mode: what a crashed (kill -9) enforcer leaves. open: the host is
    /// reachable directly, unenforced; closed: its IP traffic on --iface is
    /// dropped until the enforcer runs again.
    #[arg(long, value_enum, default_value = "open")]
    fail: FailMode,
    /// Control socket (status, policy, observe) [default: /run/enforcer/enforcer.sock].
    #[arg(long)]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (host:port) at /metrics (off by default).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Do not reload when a file in the policy directory changes (SIGHUP and
    /// `enforcer policy` still do).
    #[arg(long)]
    no_watch: bool,
    /// Inline mode: forward the rest of an allowed large body in the XDP
    /// program, without the engine (docs/stream.md, "A kernel path for
    /// known bytes"); paused while a port cannot take redirected frames.
    /// Host mode ignores it.
    #[arg(long, value_enum, default_value = "on")]
    kernel_path: OnOff,
    #[command(flatten)]
    engine: EngineOpts,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
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
    /// Audit mode: forward what the policy would deny (new flows at L3/L4,
    /// requests at L7) and log it with verdict `audit` and the reason.
    #[arg(long)]
    audit: bool,
    /// Bytes all L7 flows of a worker may hold together; above it no flow
    /// starts holding more (docs/security.md).
    #[arg(long, default_value_t = EngineConfig::default().max_held_total)]
    max_held_total: usize,
    /// An L7 connection whose stream state hits an internal error: closed
    /// ends it, open lets it go on unjudged (L3/L4 only).
    #[arg(long, value_enum, default_value = "closed")]
    l7_fail: L7FailArg,
    /// Status of the HTTP denial (200-599, one with a body); a policy's
    /// `enforcer.io/http-deny-status` annotation overrides it (docs/tools.md).
    #[arg(long, value_name = "CODE", default_value_t = 403, value_parser = |s: &str| check_http_status(s))]
    http_deny_status: u16,
    /// Body of the HTTP denial (sent followed by CRLF).
    #[arg(long, value_name = "TEXT", default_value = "Access denied", value_parser = |s: &str| check_http_body(s))]
    http_deny_body: String,
    /// Content-Type of the HTTP denial.
    #[arg(long, value_name = "TYPE", default_value = "text/plain", value_parser = |s: &str| check_content_type(s))]
    http_deny_content_type: String,
    /// Extra header of the HTTP denial, `Name: value` (repeat for more).
    #[arg(long, value_name = "HEADER", value_parser = |s: &str| check_http_header(s))]
    http_deny_header: Vec<(String, String)>,
    /// Message of the memcached text denial: `CLIENT_ERROR <message>`.
    #[arg(long, value_name = "TEXT", default_value = "access denied", value_parser = |s: &str| check_memcache_message(s))]
    memcache_deny_message: String,
    /// Seconds an L7 request head may take to arrive once it started; then
    /// the request is denied and the connection ends (HTTP: 408 first).
    #[arg(long, default_value_t = EngineConfig::default().l7_head_timeout_ns / 1_000_000_000)]
    l7_head_timeout: u64,
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
            audit: self.audit,
            max_held_total: self.max_held_total,
            l7_head_timeout_ns: self.l7_head_timeout.saturating_mul(1_000_000_000),
            fail: match self.l7_fail {
                L7FailArg::Closed => enforcer::config::FailMode::Closed,
                L7FailArg::Open => enforcer::config::FailMode::Open,
            },
            deny_reply: DenyReply {
                http_status: self.http_deny_status,
                http_body: self.http_deny_body.clone(),
                http_content_type: self.http_deny_content_type.clone(),
                http_headers: self.http_deny_header.clone(),
                memcache_message: self.memcache_deny_message.clone(),
            },
            ..EngineConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Cmd::Status { control, out }) => client::status(&control.control, out.output),
        Some(Cmd::Policy { cmd }) => match cmd {
            PolicyCmd::Get { control, out } => client::policy_get(&control.control, out.output),
            PolicyCmd::Import { control, file } => client::policy_import(&control.control, &file),
            PolicyCmd::Delete { control, name } => client::policy_delete(&control.control, &name),
        },
        Some(Cmd::Observe {
            control,
            out,
            verdict,
            from_label,
            to_label,
            protocol,
            http_method,
            http_path,
            memcache_command,
            memcache_key,
            count,
        }) => {
            let filter = Filter {
                verdict,
                from_label,
                to_label,
                protocol,
                http_method,
                http_path,
                memcache_command,
                memcache_key,
            };
            match filter.clone().compile() {
                Err(e) => Err(e),
                Ok(_) => client::observe(&control.control, filter, out.output, count),
            }
        }
        Some(Cmd::Check { path }) => policy::check::run(&path),
        Some(Cmd::Convert { path }) => {
            policy::legacy::convert_file(&path).map(|yaml| print!("{yaml}"))
        }
        Some(Cmd::Suggest {
            endpoints,
            input,
            merge_paths,
            http_host,
            http_header,
            key_prefix,
            key_separators,
        }) => suggest::run(&SuggestArgs {
            endpoints,
            input,
            merge_paths,
            with_host: http_host,
            headers: http_header,
            key_prefix,
            key_separators,
        }),
        Some(Cmd::Replay {
            policy,
            compare: Some(old),
            input,
            output,
            log,
            engine,
        }) => compare::run(&CompareArgs {
            new: policy,
            old,
            input,
            output,
            log,
            engine: engine.config(),
        }),
        Some(Cmd::Replay {
            policy,
            compare: None,
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
            let opts = control::Options {
                explicit: cli.run.control.is_some(),
                control: cli
                    .run
                    .control
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(control::DEFAULT_CONTROL)),
                metrics: cli.run.metrics.clone(),
                watch: !cli.run.no_watch,
            };
            let mut running = None;
            let r = dataplane::run_with(
                &RunArgs {
                    iface,
                    peer: cli.run.peer.clone(),
                    policy: cli.run.policy.clone(),
                    workers: cli.run.workers,
                    poll: cli.run.poll,
                    log: cli.run.log.clone(),
                    umem_frames: cli.run.umem_frames,
                    fail: cli.run.fail,
                    engine: EngineConfig {
                        kernel_path: cli.run.kernel_path == OnOff::On,
                        ..cli.run.engine.config()
                    },
                },
                &mut |h| {
                    running = Some(control::start(h, &opts)?);
                    Ok(())
                },
            );
            drop(running);
            r
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
