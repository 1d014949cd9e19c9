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
    let mut line_no = 1usize;
    let mut off = 0usize;
    for line in text.split_inclusive('\n') {
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
        line_no += 1;
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
            for (at, s) in specs {
                match compile_rule(s, &at, &name, &endpoints) {
                    Ok(r) => {
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
    load_sources(&sources)
}
