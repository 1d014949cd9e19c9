//! The control plane of a running enforcer: a Unix socket (`--control`)
//! serving `status`, `policy get|import|delete` and `observe`, a watcher
//! that reloads the policy when a file in its directory changes, and the
//! Prometheus endpoint (`--metrics`). It reads the dataplane through a
//! `dataplane::Handle` only: counters are summed over workers when asked,
//! events reach observers through bounded channels that never make a
//! worker wait.

pub mod client;
pub mod filter;
pub mod metrics;
pub mod protocol;
mod server;
mod status;
mod watch;

use std::path::PathBuf;

use crate::dataplane::Handle;

/// Where clients find a running enforcer when `--control` is not given.
pub const DEFAULT_CONTROL: &str = "/run/enforcer/enforcer.sock";

#[derive(Debug, Clone)]
pub struct Options {
    pub control: PathBuf,
    /// `--control` was given: a socket already served there is an error
    /// (with the default, the enforcer runs without a control socket and
    /// says so, so a second enforcer on one machine still starts).
    pub explicit: bool,
    pub metrics: Option<String>,
    /// Reload when a file in the policy directory changes.
    pub watch: bool,
}

/// Removes the socket when the enforcer stops.
pub struct Running {
    socket: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Start serving; the threads live as long as the process.
pub fn start(handle: Handle, opts: &Options) -> Result<Running, String> {
    let socket = server::listen(handle.clone(), &opts.control, opts.explicit)?;
    if let Some(addr) = &opts.metrics {
        metrics::serve(handle.clone(), addr)?;
    }
    if opts.watch && handle.info().policy_path.is_dir() && !handle.info().passthrough {
        watch::spawn(handle.clone());
    }
    Ok(Running { socket })
}
