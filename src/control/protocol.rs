//! The control socket's protocol: one JSON request line from the client,
//! one JSON reply line from the server (`{"ok": true, ...}` or
//! `{"ok": false, "errors": [...]}`); `observe` then streams one JSON event
//! per line until the client goes away.

use serde::{Deserialize, Serialize};

use super::filter::Filter;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    PolicyGet,
    /// `file` names the client's file in errors; `content` is its text (the
    /// client reads it, so the server needs no access to the client's files).
    PolicyImport {
        file: String,
        content: String,
    },
    PolicyDelete {
        name: String,
    },
    Observe {
        #[serde(default)]
        filter: Filter,
    },
}

/// A reply that failed: what went wrong, one line per error.
pub fn refusal(errors: &[String]) -> serde_json::Value {
    serde_json::json!({ "ok": false, "errors": errors })
}
