//! Verdict log: one event per decision, written as JSON lines by the shells.
//!
//! An event names its flow by addresses only. The endpoint names a reader
//! wants ("a-wing", "world") are looked up from those addresses when the
//! event is written (`to_json_line`, given the policy the event was decided
//! under), so the layers that make events need no policy, and a busy L7
//! connection pays for names only when it logs.

use serde::Serialize;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use crate::packed::{Inline, Packed, PackedIter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    /// Audit mode: would have been denied (`reason`), forwarded.
    Audit,
}

/// The 5-tuple as seen by the initiator of the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// What the decision was about.
///
/// Every L7 request makes one, whether or not anything writes the log, so
/// its strings live in the value itself up to a size that holds what most
/// requests send (`Text`, `Texts`): an event costs no allocation then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    /// A new flow judged by L3/L4 policy.
    Flow,
    Http {
        /// The standard methods are static.
        method: Cow<'static, str>,
        host: Text,
        path: Text,
    },
    Memcache {
        command: &'static str,
        keys: Texts,
    },
}

/// Bytes of a `Text` held in the value itself.
const TEXT_INLINE: usize = 46;

/// A string of a log event: up to `TEXT_INLINE` bytes in place, longer on
/// the heap. Bytes off the wire are taken as UTF-8 with invalid sequences
/// replaced (`from_lossy`), as the log has always shown them.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(Inline<TEXT_INLINE>);

impl Text {
    pub fn new(s: &str) -> Text {
        Text(Inline::new(s.as_bytes()))
    }

    /// `bytes` as UTF-8, invalid sequences replaced by U+FFFD.
    pub fn from_lossy(bytes: &[u8]) -> Text {
        Text::new(&String::from_utf8_lossy(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from a whole `&str` (`new`).
        std::str::from_utf8(self.0.bytes()).unwrap_or_default()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Bytes of a `Texts` held in the value itself.
const TEXTS_INLINE: usize = 62;

/// A list of log strings (a request's keys): up to `TEXTS_INLINE` bytes of
/// their encoding (`Packed`) in place, longer lists on the heap. Serialized
/// as a list of strings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Texts(Packed<TEXTS_INLINE>);

impl Texts {
    pub const fn new() -> Texts {
        Texts(Packed::new())
    }

    pub fn push(&mut self, s: &str) {
        self.0.push(s.as_bytes())
    }

    /// `bytes` as UTF-8 (invalid sequences replaced), appended.
    pub fn push_lossy(&mut self, bytes: &[u8]) {
        self.push(&String::from_utf8_lossy(bytes));
    }

    pub fn iter(&self) -> TextsIter<'_> {
        TextsIter(self.0.iter())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Texts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Texts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'a> FromIterator<&'a str> for Texts {
    fn from_iter<I: IntoIterator<Item = &'a str>>(items: I) -> Texts {
        let mut t = Texts::new();
        for s in items {
            t.push(s);
        }
        t
    }
}

impl<'a> IntoIterator for &'a Texts {
    type Item = &'a str;
    type IntoIter = TextsIter<'a>;
    fn into_iter(self) -> TextsIter<'a> {
        self.iter()
    }
}

/// The strings of a `Texts`, in order.
#[derive(Debug, Clone)]
pub struct TextsIter<'a>(PackedIter<'a>);

impl<'a> Iterator for TextsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        // Only ever filled from whole `&str`s (`push`).
        self.0
            .next()
            .map(|s| std::str::from_utf8(s).unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Nanoseconds, on the clock the shell passed in.
    pub time_ns: u64,
    pub worker: u16,
    pub flow: FlowTuple,
    #[serde(flatten)]
    pub subject: Subject,
    pub verdict: Decision,
    /// Which rule matched ("policy-name/ingress[0]/rules[1]") for allows.
    /// Shared with the compiled policy: an allowed request's event copies
    /// no name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// Why, for denies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<str>>,
}

/// Endpoint names for addresses; the compiled policy is one.
pub trait Identities {
    /// The endpoint that owns `ip`, or "world".
    fn identity(&self, ip: IpAddr) -> &str;
}

/// An event as written: the event plus its endpoints' names.
#[derive(Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    event: &'a Event,
    src_identity: &'a str,
    dst_identity: &'a str,
}

impl Event {
    /// One JSON line, endpoints named by `ids`.
    pub fn to_json_line(&self, ids: &dyn Identities) -> String {
        let w = Written {
            event: self,
            src_identity: ids.identity(self.flow.src),
            dst_identity: ids.identity(self.flow.dst),
        };
        let mut s = serde_json::to_string(&w).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings of any length read back as given, in place or on the heap,
    /// and write as JSON strings and lists of strings.
    #[test]
    fn texts_hold_any_lengths_and_write_as_strings() {
        let long = "é".repeat(200);
        for n in [
            0,
            1,
            TEXT_INLINE - 1,
            TEXT_INLINE,
            TEXT_INLINE + 1,
            255,
            256,
            400,
        ] {
            let s = &long[..n - n % 2];
            let t = Text::new(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(t.0.spilled(), s.len() > TEXT_INLINE);
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
        assert_eq!(Text::from_lossy(b"a\xffb").as_str(), "a\u{fffd}b");
        for lens in [
            &[][..],
            &[0],
            &[11],
            &[61],
            &[62],
            &[20, 20, 20],
            &[254, 255, 256, 0, 3],
        ] {
            let want: Vec<String> = lens.iter().map(|&n| "k".repeat(n)).collect();
            let t: Texts = want.iter().map(String::as_str).collect();
            assert_eq!(t.iter().collect::<Vec<_>>(), want, "{lens:?}");
            assert_eq!((t.len(), t.is_empty()), (want.len(), want.is_empty()));
            assert_eq!(serde_json::to_value(&t).unwrap(), serde_json::json!(want));
        }
        let mut t = Texts::new();
        t.push_lossy(b"k\xff");
        assert_eq!(t.iter().collect::<Vec<_>>(), ["k\u{fffd}"]);
        let http = Subject::Http {
            method: "GET".into(),
            host: "deathstar".into(),
            path: "/v1/".into(),
        };
        assert_eq!(
            serde_json::to_value(&http).unwrap(),
            serde_json::json!({"kind": "http", "method": "GET", "host": "deathstar", "path": "/v1/"})
        );
    }

    #[test]
    fn flow_event_is_one_flat_json_line() {
        let ev = Event {
            time_ns: 5,
            worker: 1,
            flow: FlowTuple {
                src: "10.66.0.11".parse().unwrap(),
                dst: "fd66::2".parse().unwrap(),
                proto: 6,
                sport: 40000,
                dport: 80,
            },
            subject: Subject::Flow,
            verdict: Decision::Deny,
            rule: None,
            reason: Some("no rule".into()),
        };
        struct Names;
        impl Identities for Names {
            fn identity(&self, ip: IpAddr) -> &str {
                if ip.is_ipv4() {
                    "a-wing"
                } else {
                    "server"
                }
            }
        }
        let line = ev.to_json_line(&Names);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "flow");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["flow"]["dst"], "fd66::2");
        assert_eq!(v["reason"], "no rule");
        assert_eq!(v["src_identity"], "a-wing");
        assert_eq!(v["dst_identity"], "server");
        assert!(v.get("rule").is_none());
    }
}
