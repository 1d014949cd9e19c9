//! Reading policy files: a file or a directory of them, multi-document
//! YAML (JSON is YAML), every error with file, line and field. Endpoints are
//! read first so that selectors can be resolved (and warned about) at load.

use std::path::{Path, PathBuf};

use super::compile::{compile_endpoint, compile_rule, CompileError};
use super::locate::LineIndex;
use super::model::{CompiledRule, Endpoint, Model};
use super::spec::{EndpointsDoc, PolicyDoc};
use super::PolicyError;

/// One YAML document and where it starts in its file.
struct Doc<'a> {
    file: &'a str,
    text: &'a str,
    first_line: usize,
}

/// Split a stream at `---` / `...` lines (column 0).
fn split_docs<'a>(file: &'a str, text: &'a str) -> Vec<Doc<'a>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut off = 0usize;
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let t = line.trim_end_matches(['\n', '\r']);
        let sep = t == "---" || t.starts_with("--- ") || t == "...";
        if sep {
            docs.push(Doc {
                file,
                text: &text[start..off],
                first_line: start_line,
            });
            start = off + line.len();
            start_line = line_no + 1;
        }
        off += line.len();
    }
    docs.push(Doc {
        file,
        text: &text[start..],
        first_line: start_line,
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

fn yaml_error(doc: &Doc<'_>, e: &serde_yaml::Error) -> PolicyError {
    let line = e.location().map(|l| l.line() + doc.first_line - 1);
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    // serde_yaml puts the field path first: "spec.ingress[0]: unknown field `x`, ..."
    let (field, message) = match msg.split_once(": ") {
        Some((f, m)) if !f.contains(' ') => (Some(f.to_string()), m.to_string()),
        _ => (None, msg),
    };
    PolicyError {
        file: doc.file.to_string(),
        line,
        field,
        message,
    }
}

fn located(doc: &Doc<'_>, ix: &LineIndex, e: CompileError) -> PolicyError {
    let line = ix.line(&e.field).map(|l| l + doc.first_line - 1);
    PolicyError {
        file: doc.file.to_string(),
        line,
        field: Some(e.field),
        message: e.message,
    }
}

pub use super::annotations::AUDIT_ANNOTATION;

/// Files to read: the path itself, or a directory's *.yaml|*.yml|*.json, sorted.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let top = |m: String| PolicyError {
        file: path.display().to_string(),
        line: None,
        field: None,
        message: m,
    };
    let meta = std::fs::metadata(path).map_err(|e| top(format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| top(format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(top(
            "no *.yaml, *.yml or *.json files in this directory".into()
        ));
    }
    Ok(out)
}

/// Everything read from a set of sources, before compiling.
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<PolicyError>,
    /// (policy name, file) per compiled rule, for `check`.
    pub rule_files: Vec<String>,
}

pub fn load_sources(sources: &[(String, String)]) -> Result<Loaded, Vec<PolicyError>> {
    load_sources_on(sources, None)
}

/// Host mode: the endpoint that claims one of `host` (this machine's
/// addresses, most specific match) is the host endpoint, so `nodeSelector`
/// and the `host` entity select it; when none claims any, an endpoint
/// named "host" with exactly these addresses stands for it.
fn mark_host(endpoints: &mut Vec<Endpoint>, host: &[std::net::IpAddr]) {
    let mut claimed = false;
    for ip in host {
        let mut best: Option<(usize, u8)> = None;
        for (i, e) in endpoints.iter().enumerate() {
            for n in &e.nets {
                if n.contains(ip) && best.is_none_or(|(_, l)| n.prefix_len() > l) {
                    best = Some((i, n.prefix_len()));
                }
            }
        }
        if let Some((i, _)) = best {
            claimed = true;
            let e = &mut endpoints[i];
            e.host = true;
            e.labels.insert("reserved:host".into(), String::new());
        }
    }
    if !claimed && !host.is_empty() {
        let mut labels = super::selector::Labels::new();
        labels.insert("reserved:host".into(), String::new());
        endpoints.push(Endpoint {
            name: "host".into(),
            labels,
            nets: host.iter().map(|&a| ipnet::IpNet::from(a)).collect(),
            host: true,
        });
    }
}

pub fn load_sources_on(
    sources: &[(String, String)],
    host: Option<&[std::net::IpAddr]>,
) -> Result<Loaded, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut docs = Vec::new();
    for (file, text) in sources {
        for d in split_docs(file, text) {
            let kind = match serde_yaml::from_str::<serde_yaml::Value>(d.text) {
                Ok(v) => v.get("kind").and_then(|k| k.as_str()).map(str::to_string),
                Err(e) => {
                    errors.push(yaml_error(&d, &e));
                    continue;
                }
            };
            docs.push((d, kind));
        }
    }
    // Endpoints first: selectors resolve against them.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (d, kind) in &docs {
        if kind.as_deref() != Some("Endpoints") {
            continue;
        }
        match serde_yaml::from_str::<EndpointsDoc>(d.text) {
            Err(e) => errors.push(yaml_error(d, &e)),
            Ok(doc) => {
                let ix = LineIndex::build(d.text);
                for (i, e) in doc.endpoints.iter().enumerate() {
                    let at = format!("endpoints[{i}]");
                    if endpoints.iter().any(|x| x.name == e.name) {
                        errors.push(located(
                            d,
                            &ix,
                            CompileError {
                                field: format!("{at}.name"),
                                message: format!("endpoint {:?} defined twice", e.name),
                            },
                        ));
                        continue;
                    }
                    match compile_endpoint(e, &at) {
                        Ok(ep) => endpoints.push(ep),
                        Err(ce) => errors.push(located(d, &ix, ce)),
                    }
                }
            }
        }
    }
    if let Some(h) = host {
        mark_host(&mut endpoints, h);
    }
    let mut rules: Vec<CompiledRule> = Vec::new();
    let mut rule_files = Vec::new();
    for (d, kind) in &docs {
        let ix = LineIndex::build(d.text);
        // A 2017 legacy document converts into CiliumNetworkPolicy documents;
        // errors found after conversion point at the legacy document.
        let mut legacy = false;
        let parsed: Vec<PolicyDoc> = match kind.as_deref() {
            Some("Endpoints") => continue,
            Some("CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy") => {
                match serde_yaml::from_str::<PolicyDoc>(d.text) {
                    Ok(doc) => vec![doc],
                    Err(e) => {
                        errors.push(yaml_error(d, &e));
                        continue;
                    }
                }
            }
            Some(other) => {
                errors.push(PolicyError {
                    file: d.file.to_string(),
                    line: Some(d.first_line),
                    field: Some("kind".into()),
                    message: format!(
                        "kind {other:?} is not a policy (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Endpoints)"
                    ),
                });
                continue;
            }
            None => match legacy_docs(d, &ix) {
                Ok(Some(docs)) => {
                    legacy = true;
                    docs
                }
                Ok(None) => {
                    errors.push(PolicyError {
                        file: d.file.to_string(),
                        line: Some(d.first_line),
                        field: Some("kind".into()),
                        message: "missing kind".into(),
                    });
                    continue;
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
        };
        for doc in parsed {
            if !doc.api_version.starts_with("cilium.io/") {
                errors.push(located(
                    d,
                    &ix,
                    CompileError {
                        field: "apiVersion".into(),
                        message: format!(
                            "unsupported apiVersion {:?} (cilium.io/v2)",
                            doc.api_version
                        ),
                    },
                ));
                continue;
            }
            let name = if doc.metadata.name.is_empty() {
                format!("{}:{}", d.file, d.first_line)
            } else {
                doc.metadata.name.clone()
            };
            let mut specs = Vec::new();
            if let Some(s) = &doc.spec {
                specs.push(("spec".to_string(), s));
            }
            for (i, s) in doc.specs.iter().flatten().enumerate() {
                specs.push((format!("specs[{i}]"), s));
            }
            if specs.is_empty() {
                errors.push(located(
                    d,
                    &ix,
                    CompileError {
                        field: "spec".into(),
                        message: "a policy needs spec or specs".into(),
                    },
                ));
            }
            let ann = match super::annotations::read(&doc.metadata._other) {
                Ok(a) => a,
                Err(es) if legacy => {
                    errors.extend(es.into_iter().map(|ce| PolicyError {
                        file: d.file.to_string(),
                        line: Some(d.first_line),
                        field: Some(format!("(converted) {}", ce.field)),
                        message: ce.message,
                    }));
                    continue;
                }
                Err(es) => {
                    errors.extend(es.into_iter().map(|ce| located(d, &ix, ce)));
                    continue;
                }
            };
            let deny_reply = ann.deny.map(std::sync::Arc::new);
            for (at, s) in specs {
                match compile_rule(s, &at, &name, &endpoints) {
                    Ok(mut r) => {
                        r.audit = ann.audit;
                        r.deny_reply = deny_reply.clone();
                        if r.subject_ids.is_empty() {
                            let sel = r
                                .subject
                                .as_ref()
                                .map(|s| s.describe())
                                .unwrap_or_else(|| "nodeSelector".into());
                            warnings.push(located(d, &ix, CompileError {
                            field: format!("{at}.endpointSelector"),
                            message: format!("selects no endpoint ({sel}): no Endpoints entry has these labels"),
                        }));
                        }
                        warn_empty_peers(d, &ix, &at, &r, &mut warnings);
                        rule_files.push(d.file.to_string());
                        rules.push(r);
                    }
                    Err(ce) if legacy => errors.push(PolicyError {
                        file: d.file.to_string(),
                        line: Some(d.first_line),
                        field: Some(format!("(converted) {}", ce.field)),
                        message: ce.message,
                    }),
                    Err(ce) => errors.push(located(d, &ix, ce)),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let model = Model::new(endpoints, rules);
    for (ri, item, ep, port) in model.l7_conflicts() {
        errors.push(PolicyError {
            file: rule_files.get(ri).cloned().unwrap_or_default(),
            line: None,
            field: Some(item),
            message: format!("http and memcache rules on port {port} of endpoint {ep}"),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Loaded {
        model,
        warnings,
        rule_files,
    })
}

/// The documents a legacy (2017) document converts into; None when `d` is
/// not one.
fn legacy_docs(d: &Doc<'_>, ix: &LineIndex) -> Result<Option<Vec<PolicyDoc>>, PolicyError> {
    use super::legacy;
    let looks =
        serde_yaml::from_str::<serde_yaml::Value>(d.text).is_ok_and(|v| legacy::looks_legacy(&v));
    if !looks {
        return Ok(None);
    }
    let doc: legacy::LegacyDoc = serde_yaml::from_str(d.text).map_err(|e| yaml_error(d, &e))?;
    let converted = legacy::convert(&doc).map_err(|e| {
        located(
            d,
            ix,
            CompileError {
                field: e.field,
                message: e.message,
            },
        )
    })?;
    converted
        .into_iter()
        .map(|v| {
            serde_yaml::from_value::<PolicyDoc>(v).map_err(|e| PolicyError {
                file: d.file.to_string(),
                line: Some(d.first_line),
                field: None,
                message: format!("converted policy: {e}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn warn_empty_peers(
    d: &Doc<'_>,
    ix: &LineIndex,
    _at: &str,
    r: &CompiledRule,
    out: &mut Vec<PolicyError>,
) {
    use super::model::Peer;
    for it in r
        .ingress
        .iter()
        .chain(&r.egress)
        .chain(&r.ingress_deny)
        .chain(&r.egress_deny)
    {
        for p in it.peers.iter().flatten() {
            if let Peer::Endpoints { sel, ids } = p {
                if ids.is_empty() && !sel.is_empty() {
                    let field = it
                        .name
                        .split_once('/')
                        .map(|(_, f)| f.to_string())
                        .unwrap_or_default();
                    out.push(located(
                        d,
                        ix,
                        CompileError {
                            field,
                            message: format!("selector {} selects no endpoint", sel.describe()),
                        },
                    ));
                }
            }
        }
    }
}

pub fn load_path(path: &Path) -> Result<Loaded, Vec<PolicyError>> {
    load_path_on(path, None)
}

pub fn load_path_on(
    path: &Path,
    host: Option<&[std::net::IpAddr]>,
) -> Result<Loaded, Vec<PolicyError>> {
    let mut sources = Vec::new();
    for f in files(path).map_err(|e| vec![e])? {
        let name = f.display().to_string();
        match std::fs::read_to_string(&f) {
            Ok(t) => sources.push((name, t)),
            Err(e) => {
                return Err(vec![PolicyError {
                    file: name,
                    line: None,
                    field: None,
                    message: format!("cannot read: {e}"),
                }])
            }
        }
    }
    load_sources_on(&sources, host)
}

#[cfg(test)]
mod host_tests {
    use crate::policy::{Policy, Proto};
    use std::net::IpAddr;

    const EPS: &str = "kind: Endpoints\nendpoints:\n\
        - name: server\n  labels: {app: srv}\n  addresses: [\"10.0.0.2\", \"fd00::2\"]\n\
        - name: net\n  labels: {app: lan}\n  addresses: [\"10.0.0.0/24\"]\n\
        - name: ship\n  labels: {class: spaceship}\n  addresses: [\"10.0.0.9\"]\n";
    const CCNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n\
        metadata: {name: fw}\nspec:\n  nodeSelector: {}\n  ingress:\n\
        \x20 - fromEndpoints: [{matchLabels: {class: spaceship}}]\n\
        \x20   toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn load(texts: &[&str], host: &[IpAddr]) -> Policy {
        let src: Vec<(String, String)> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("f{i}.yaml"), t.to_string()))
            .collect();
        Policy::from_sources_on_host(&src, host).unwrap()
    }

    #[test]
    fn the_most_specific_endpoint_claiming_an_address_is_the_host() {
        let p = load(&[EPS, CCNP], &[ip("10.0.0.2")]);
        let (i, selected) = p.host_endpoint(&[ip("10.0.0.2")]).unwrap();
        assert_eq!(p.model().endpoints[i].name, "server", "not the /24");
        assert!(selected, "nodeSelector selects the host");
        assert!(!p.model().endpoints[1].host);
        // The host firewall is enforced on it, and only on it.
        let d = |s: &str, dst: &str| p.decide(ip(s), ip(dst), Proto::Tcp, 80).allowed;
        assert!(d("10.0.0.9", "10.0.0.2"));
        assert!(!d("10.0.0.7", "10.0.0.2"));
        assert!(
            d("10.0.0.7", "10.0.0.5"),
            "other endpoints are not the host"
        );
    }

    #[test]
    fn unclaimed_addresses_become_an_endpoint_of_their_own() {
        let eps = "kind: Endpoints\nendpoints:\n\
            - name: ship\n  labels: {class: spaceship}\n  addresses: [\"10.0.0.9\"]\n";
        let p = load(&[eps, CCNP], &[ip("10.0.0.2"), ip("fd00::2")]);
        let (i, selected) = p.host_endpoint(&[ip("fd00::2")]).unwrap();
        let e = &p.model().endpoints[i];
        assert_eq!(e.name, "host");
        assert_eq!(e.nets.len(), 2);
        assert!(selected);
        assert_eq!(p.identity(ip("fd00::2")), "host");
        assert!(
            !p.decide(ip("10.0.0.7"), ip("fd00::2"), Proto::Tcp, 80)
                .allowed
        );
    }

    #[test]
    fn a_host_no_rule_selects_is_reported_and_plain_loading_marks_nothing() {
        let p = load(&[EPS], &[ip("10.0.0.2")]);
        assert_eq!(
            p.host_endpoint(&[ip("10.0.0.2")]).map(|(_, s)| s),
            Some(false)
        );
        let plain = Policy::from_sources(&[
            ("e.yaml".into(), EPS.into()),
            ("c.yaml".into(), CCNP.into()),
        ])
        .unwrap();
        assert_eq!(
            plain.host_endpoint(&[ip("10.0.0.2")]),
            None,
            "no host outside host mode"
        );
    }
}
