//! `enforcer suggest`: the least-privilege CiliumNetworkPolicy for observed
//! traffic.
//!
//! Input is a capture or a verdict log (JSON lines, such as audit mode
//! writes). From a capture, the engine itself observes: a first pass finds
//! which ports of which endpoints speak HTTP or memcached (the first bytes a
//! connection's client sends), then the capture runs under an observing
//! policy (every such port gets a rule that matches every request, every
//! endpoint is in audit mode), so each request is parsed and logged by the
//! same parsers that will enforce the suggestion. From a log, its decisions
//! are read as written; `deny` decisions are left out (they were blocked, not
//! observed traffic the policy should keep), `allow` and `audit` kept.
//!
//! The suggestion is one policy per destination endpoint, ingress only:
//! per source identity (an endpoint, or a /32 or /128 for an address no
//! endpoint owns) and port exactly the L7 requests seen. Traffic towards
//! addresses no endpoint owns is only listed in a comment: restricting it
//! would take egress rules, which make the source default-deny for all its
//! other egress too.
//!
//! `input` turns a capture or a log into observations, `render` writes the
//! YAML.

mod input;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use crate::policy::Policy;
use crate::replay;

#[derive(Debug, Clone, Default)]
pub struct SuggestArgs {
    pub endpoints: PathBuf,
    pub input: PathBuf,
    /// HTTP: paths of one method (and host) seen more than once merged
    /// under their common prefix (`/v1/.*`).
    pub merge_paths: bool,
    /// HTTP: require the Host seen.
    pub with_host: bool,
    /// HTTP: require these headers with the value seen, where a request
    /// carried them (capture input only).
    pub headers: Vec<String>,
    /// memcached: `keyPrefix` (the key up to its first separator) instead of `keyExact`.
    pub key_prefix: bool,
    /// Characters that end a key prefix.
    pub key_separators: String,
}

/// What one decision saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Flow,
    Http {
        method: String,
        host: String,
        path: String,
        /// `Name: value` of the asked-for headers the request carried.
        headers: Vec<String>,
    },
    Memcache {
        command: String,
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone)]
struct Obs {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
    seen: Seen,
}

/// A source: an endpoint (by index) or an address no endpoint owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Endpoint(usize),
    Addr(IpAddr),
}

/// An HTTP request as a rule sees it: method, host, path, headers.
type HttpSeen = (String, String, String, Vec<String>);

/// What one port of one destination saw from one source.
#[derive(Debug, Default)]
struct PortSeen {
    http: BTreeSet<HttpSeen>,
    memcache: BTreeSet<(String, Vec<String>)>,
}

/// Per source, per (protocol, port), what it sent.
type FromPeers = BTreeMap<Peer, BTreeMap<(u8, u16), PortSeen>>;

#[derive(Debug, Default)]
struct Observed {
    /// dst endpoint → source → (proto, port) → requests.
    ingress: BTreeMap<usize, FromPeers>,
    /// Flows towards addresses no endpoint owns: (src, dst, proto, port).
    unowned: BTreeSet<(IpAddr, IpAddr, u8, u16)>,
    decisions: u64,
    skipped_denied: u64,
    /// memcached command names no rule group covers.
    unknown_commands: BTreeSet<String>,
}

fn observe(obs: &[Obs], policy: &Policy) -> Observed {
    let model = policy.model();
    let mut o = Observed::default();
    for x in obs {
        o.decisions += 1;
        let Some(d) = model.ident(x.dst) else {
            if x.seen == Seen::Flow {
                o.unowned.insert((x.src, x.dst, x.proto, x.dport));
            }
            continue;
        };
        let peer = model.ident(x.src).map_or(Peer::Addr(x.src), Peer::Endpoint);
        let port = o
            .ingress
            .entry(d)
            .or_default()
            .entry(peer)
            .or_default()
            .entry((x.proto, x.dport))
            .or_default();
        match &x.seen {
            Seen::Flow => {}
            Seen::Http {
                method,
                host,
                path,
                headers,
            } => {
                port.http
                    .insert((method.clone(), host.clone(), path.clone(), headers.clone()));
            }
            Seen::Memcache { command, keys } => {
                port.memcache.insert((command.clone(), keys.clone()));
            }
        }
    }
    o
}

/// The suggested policies as YAML.
pub fn suggest(args: &SuggestArgs) -> Result<String, String> {
    let endpoints = replay::load_policy(&args.endpoints)?;
    let (obs, denied) = if input::is_capture(&args.input)? {
        input::from_capture(&args.input, &endpoints, &args.headers)?
    } else if !args.headers.is_empty() {
        return Err(format!(
            "{}: a verdict log holds no header values; --http-header needs a capture",
            args.input.display()
        ));
    } else {
        input::from_log(&args.input)?
    };
    let mut o = observe(&obs, &endpoints);
    o.skipped_denied = denied;
    Ok(render::render(&mut o, &endpoints, args))
}

pub fn run(args: &SuggestArgs) -> Result<(), String> {
    print!("{}", suggest(args)?);
    Ok(())
}
