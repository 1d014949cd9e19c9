//! Reload when the policy directory changes: its files are read twice a
//! second and compared with the sources in force. A change is applied once
//! it has stood still for one look (an editor's half-written file is not
//! loaded); one that failed is not tried again until it changes again.

use std::time::Duration;

use super::server::announce;
use crate::dataplane::{self, Handle};

const LOOK: Duration = Duration::from_millis(500);

pub fn spawn(h: Handle) {
    let _ = std::thread::Builder::new()
        .name("enforcer-watch".into())
        .spawn(move || {
            let dir = h.info().policy_path.clone();
            let mut last_seen: Option<Vec<(String, String)>> = None;
            let mut refused: Option<Vec<(String, String)>> = None;
            loop {
                std::thread::sleep(LOOK);
                let now = dataplane::read_sources(&dir).ok();
                let stable = now.is_some() && now == last_seen;
                last_seen = now.clone();
                let Some(now) = now.filter(|_| stable) else {
                    continue;
                };
                if now == h.in_force().sources || Some(&now) == refused.as_ref() {
                    continue;
                }
                let r = h.apply(now.clone(), "watch", &mut || Ok(()));
                refused = r.is_err().then_some(now);
                announce(&h, "change in the directory", &r);
            }
        });
}
