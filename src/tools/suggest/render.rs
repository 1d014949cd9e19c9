//! The suggestion as CiliumNetworkPolicy YAML, written by hand: every
//! scalar quoted, regexes escaped, so `enforcer check` reads back exactly
//! what was observed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{HttpSeen, Observed, Peer, SuggestArgs};
use crate::l7::memcache::group_of;
use crate::policy::Policy;

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
pub(super) fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A regex that matches exactly `s` (the rule's regexes match whole
/// values). Only what is special outside a character class is escaped, so
/// `/v1/request-landing` stays readable.
fn exact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A mapping key: plain when it is a label-like word, else quoted.
fn key(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        q(s)
    }
}

/// Paths merged under their common prefix at a `/`.
fn merged_path(paths: &[&str]) -> String {
    if paths.len() == 1 {
        return exact(paths[0]);
    }
    let first = paths[0];
    let mut n = first.len();
    for p in &paths[1..] {
        n = n.min(
            first
                .bytes()
                .zip(p.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let prefix = &first[..n];
    match prefix.rfind('/') {
        Some(i) => format!("{}.*", exact(&prefix[..=i])),
        // Paths that share no leading `/` (an absolute URI and a path).
        None => ".*".into(),
    }
}

fn http_rules(seen: &BTreeSet<HttpSeen>, args: &SuggestArgs, out: &mut String) {
    out.push_str("      rules:\n        http:\n");
    // (method, host, headers) → paths
    type Group<'a> = (&'a str, &'a str, &'a [String]);
    let mut groups: BTreeMap<Group<'_>, Vec<&str>> = BTreeMap::new();
    for (m, h, p, hs) in seen {
        let host = if args.with_host { h.as_str() } else { "" };
        groups.entry((m, host, hs)).or_default().push(p);
    }
    for ((m, h, hs), mut paths) in groups {
        paths.dedup();
        let paths: Vec<String> = if args.merge_paths {
            vec![merged_path(&paths)]
        } else {
            paths.iter().map(|p| exact(p)).collect()
        };
        for p in paths {
            let _ = writeln!(out, "        - method: {}", q(&exact(m)));
            let _ = writeln!(out, "          path: {}", q(&p));
            if args.with_host {
                let _ = writeln!(out, "          host: {}", q(&exact(h)));
            }
            if !hs.is_empty() {
                out.push_str("          headers:\n");
                for h in hs {
                    let _ = writeln!(out, "          - {}", q(h));
                }
            }
        }
    }
}

/// The key up to and including its first separator, if it has one.
fn key_prefix<'a>(k: &'a str, seps: &str) -> Option<&'a str> {
    k.char_indices()
        .find(|(_, c)| seps.contains(*c))
        .map(|(i, c)| &k[..i + c.len_utf8()])
}

fn memcache_rules(
    seen: &BTreeSet<(String, Vec<String>)>,
    args: &SuggestArgs,
    o: &mut Observed,
    out: &mut String,
) {
    out.push_str("      rules:\n        l7proto: memcache\n        l7:\n");
    let mut rules: BTreeSet<(String, &'static str, String)> = BTreeSet::new();
    for (cmd, keys) in seen {
        let Some(group) = group_of(cmd) else {
            o.unknown_commands.insert(cmd.clone());
            continue;
        };
        let prefixes: Option<Vec<&str>> = args
            .key_prefix
            .then(|| {
                keys.iter()
                    .map(|k| key_prefix(k, &args.key_separators))
                    .collect::<Option<Vec<_>>>()
            })
            .flatten();
        let rule = match (keys.len(), prefixes) {
            (0, _) => ("", String::new()),
            (_, Some(ps)) => {
                let ps: BTreeSet<&str> = ps.into_iter().collect();
                if ps.len() == 1 {
                    ("keyPrefix", ps.into_iter().next().unwrap_or("").to_string())
                } else {
                    let alts: Vec<String> = ps.iter().map(|p| exact(p)).collect();
                    ("keyRegex", format!("^(?:{})", alts.join("|")))
                }
            }
            (1, None) => ("keyExact", keys[0].clone()),
            // One rule must accept every key of a multi-key request.
            (_, None) => {
                let uniq: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
                let alts: Vec<String> = uniq.iter().map(|k| exact(k)).collect();
                ("keyRegex", format!("^(?:{})$", alts.join("|")))
            }
        };
        rules.insert((group, rule.0, rule.1));
    }
    for (group, field, value) in rules {
        let _ = writeln!(out, "        - command: {}", q(&group));
        if !field.is_empty() {
            let _ = writeln!(out, "          {field}: {}", q(&value));
        }
    }
}

pub(super) fn labels_yaml(labels: &BTreeMap<String, String>, indent: &str, out: &mut String) {
    if labels.is_empty() {
        let _ = writeln!(out, "{indent}{{}}");
    }
    for (k, v) in labels {
        let _ = writeln!(out, "{indent}{}: {}", key(k), q(v));
    }
}

pub(super) fn render(o: &mut Observed, policy: &Policy, args: &SuggestArgs) -> String {
    let eps = &policy.model().endpoints;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `enforcer suggest` from {}: {} decisions observed.",
        args.input.display(),
        o.decisions
    );
    if o.skipped_denied > 0 {
        let _ = writeln!(
            out,
            "# {} denied decisions of the log left out.",
            o.skipped_denied
        );
    }
    for (s, d, p, port) in &o.unowned {
        let _ = writeln!(
            out,
            "# Not restricted (no endpoint owns the destination): {s} -> {d} proto {p} port {port}"
        );
    }
    let ingress = std::mem::take(&mut o.ingress);
    for (d, peers) in &ingress {
        let ep = &eps[*d];
        out.push_str("---\napiVersion: \"cilium.io/v2\"\nkind: CiliumNetworkPolicy\nmetadata:\n");
        let _ = writeln!(out, "  name: {}", q(&format!("suggested-{}", ep.name)));
        let wider: Vec<&str> = eps
            .iter()
            .enumerate()
            .filter(|(i, e)| *i != *d && ep.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .map(|(_, e)| e.name.as_str())
            .collect();
        if !wider.is_empty() {
            let _ = writeln!(
                out,
                "# The selector also selects {} (their labels include {}'s).",
                wider.join(", "),
                ep.name
            );
        }
        out.push_str("spec:\n  endpointSelector:\n    matchLabels:\n");
        labels_yaml(&ep.labels, "      ", &mut out);
        out.push_str("  ingress:\n");
        for (peer, ports) in peers {
            let from = |out: &mut String| match peer {
                Peer::Endpoint(i) => {
                    out.push_str("  - fromEndpoints:\n    - matchLabels:\n");
                    labels_yaml(&eps[*i].labels, "        ", out);
                }
                Peer::Addr(a) => {
                    let len = if a.is_ipv4() { 32 } else { 128 };
                    let _ = writeln!(out, "  - fromCIDR:\n    - {}", q(&format!("{a}/{len}")));
                }
            };
            let (icmp, l4): (Vec<_>, Vec<_>) =
                ports.iter().partition(|((p, _), _)| matches!(p, 1 | 58));
            if !l4.is_empty() {
                from(&mut out);
                out.push_str("    toPorts:\n");
                for ((proto, port), seen) in l4 {
                    let pname = match proto {
                        6 => "TCP",
                        17 => "UDP",
                        _ => "ANY",
                    };
                    let _ = writeln!(
                        out,
                        "    - ports:\n      - port: \"{port}\"\n        protocol: {pname}"
                    );
                    if !seen.http.is_empty() {
                        http_rules(&seen.http, args, &mut out);
                    } else if !seen.memcache.is_empty() {
                        memcache_rules(&seen.memcache, args, o, &mut out);
                    }
                }
            }
            if !icmp.is_empty() {
                from(&mut out);
                out.push_str("    icmps:\n    - fields:\n");
                for ((proto, kind), _) in icmp {
                    let fam = if *proto == 58 { "IPv6" } else { "IPv4" };
                    let _ = writeln!(out, "      - type: {kind}\n        family: {fam}");
                }
            }
        }
    }
    o.ingress = ingress;
    for c in &o.unknown_commands {
        let _ = writeln!(
            out,
            "# memcached command {c:?} seen; no rule group covers it."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_paths_keep_their_common_directory() {
        assert_eq!(merged_path(&["/v1/"]), "/v1/");
        assert_eq!(merged_path(&["/v1/", "/v1/healthz"]), "/v1/.*");
        assert_eq!(merged_path(&["/v1/a.b", "/v1/ab"]), "/v1/.*");
        assert_eq!(merged_path(&["/v2/x", "/v1/x"]), "/.*");
        assert_eq!(merged_path(&["/a?b=1"]), r"/a\?b=1");
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        for p in ["/v1/request-landing", "/a.b?c=(d)|e*", "/x$[y]{2}^\\", "/ü"] {
            let re = regex::Regex::new(&format!("^(?:{})$", exact(p))).unwrap();
            assert!(re.is_match(p), "{p}");
            assert!(!re.is_match(&format!("{p}x")), "{p}");
        }
        assert_eq!(exact("/v1/request-landing"), "/v1/request-landing");
        let re = regex::Regex::new(&format!("^(?:{})$", exact("/a.b"))).unwrap();
        assert!(!re.is_match("/aXb"));
    }

    #[test]
    fn key_prefixes_end_at_the_first_separator() {
        assert_eq!(key_prefix("awing-coord", "-:"), Some("awing-"));
        assert_eq!(key_prefix("user:42:name", "-:"), Some("user:"));
        assert_eq!(key_prefix("plain", "-:"), None);
    }
}
