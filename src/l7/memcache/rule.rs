//! Cilium's memcached rules: a command group plus one key test that every
//! key of the request must pass.

use regex::bytes::Regex;

use super::command::CmdSet;
use super::{McRequest, MemcacheRuleSpec, RuleError};

#[derive(Debug, Clone)]
enum KeyTest {
    Any,
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    /// Unanchored, as in Cilium.
    Regex(Regex),
}

/// A compiled `rules.l7[]` item for `l7proto: memcache`.
#[derive(Debug, Clone)]
pub struct MemcacheRule {
    /// None: the rule names no command (and no key): it allows everything.
    commands: Option<CmdSet>,
    key: KeyTest,
}

fn given(s: &Option<String>) -> Option<&str> {
    // Cilium treats an empty key string as "not given".
    s.as_deref().filter(|s| !s.is_empty())
}

impl MemcacheRule {
    /// Unknown command names and bad regexes are errors.
    pub fn compile(spec: &MemcacheRuleSpec) -> Result<MemcacheRule, RuleError> {
        // Only one key test applies: keyExact, else keyPrefix, else keyRegex.
        let key = if let Some(k) = given(&spec.key_exact) {
            KeyTest::Exact(k.as_bytes().to_vec())
        } else if let Some(k) = given(&spec.key_prefix) {
            KeyTest::Prefix(k.as_bytes().to_vec())
        } else if let Some(k) = given(&spec.key_regex) {
            KeyTest::Regex(Regex::new(k).map_err(|e| RuleError {
                field: "keyRegex".into(),
                message: format!("invalid regular expression: {e}"),
            })?)
        } else {
            KeyTest::Any
        };
        let commands = match spec.command.as_deref() {
            Some(name) => Some(CmdSet::group(name).ok_or_else(|| RuleError {
                field: "command".into(),
                message: format!("unknown memcached command {name:?}"),
            })?),
            None if !matches!(key, KeyTest::Any) => {
                return Err(RuleError {
                    field: "command".into(),
                    message: "a key test needs a command".into(),
                })
            }
            None => None,
        };
        Ok(MemcacheRule { commands, key })
    }

    /// The rule's group contains the command and every key passes its key test.
    pub fn matches(&self, req: &McRequest) -> bool {
        let Some(cmds) = &self.commands else {
            return true;
        };
        if !cmds.contains(req.command) {
            return false;
        }
        let mut keys = req.keys.iter();
        match &self.key {
            KeyTest::Any => true,
            KeyTest::Exact(k) => keys.all(|x| x == k.as_slice()),
            KeyTest::Prefix(p) => keys.all(|x| x.starts_with(p)),
            KeyTest::Regex(r) => keys.all(|x| r.is_match(x)),
        }
    }
}
