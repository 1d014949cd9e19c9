//! The layers of `src/` depend downward only, and only the shells that talk
//! to the kernel use `unsafe`, each block with its reason.
//!
//! Read from the source tree, not the compiler: a module names another by a
//! path (`crate::engine`, `enforcer::policy` in the binary, `super::` from a
//! top-level module file). Comments and string literals are blanked first,
//! so prose may mention any layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every top-level module and its rank. A module may name only modules of a
/// strictly lower rank; modules of one rank are independent of each other.
/// A new top-level module must be placed here before the test passes.
const RANKS: &[(&str, u8)] = &[
    // Leaves: the vocabulary every layer shares.
    ("config", 0),
    ("counters", 0),
    ("log", 0),
    ("packet", 0),
    ("verdict", 1),
    ("l7", 2),
    ("policy", 3),
    ("stream", 4),
    ("engine", 5),
    // Shells.
    ("hostmode", 6),
    ("dataplane", 7),
    ("replay", 7),
    ("main", 8),
];

/// Modules that may contain `unsafe` (each `#[allow(unsafe_code)]` in lib.rs).
const UNSAFE_SHELLS: &[&str] = &["dataplane", "hostmode"];

fn rank(m: &str) -> Option<u8> {
    RANKS.iter().find(|(n, _)| *n == m).map(|&(_, r)| r)
}

/// `s` with comments, string and char literals replaced by spaces (lines kept).
fn code_only(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |c: u8| if c == b'\n' { b'\n' } else { b' ' };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' && (i == 0 || !is_ident(b[i - 1])) {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let end = b[j + 1..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| j + 1 + p + close.len());
                out.extend(b[i..end].iter().map(|&c| blank(c)));
                i = end;
            } else {
                out.push(b[i]);
                i += 1;
            }
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out.push(b' ');
                    i += 1;
                }
                out.push(blank(b[i]));
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x', '\n', '\''); lifetimes ('a) are left alone.
            let end = b[i + 1..]
                .iter()
                .enumerate()
                .skip(1)
                .find(|&(k, &c)| c == b'\'' && b[i + k] != b'\\')
                .map_or(b.len(), |(k, _)| i + 1 + k + 1);
            out.extend(b[i..end].iter().map(|&c| blank(c)));
            i = end;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Top-level modules a file names: `root::x`, `root::{x, y::z}`, and for a
/// top-level module file (`src/x.rs`, `src/x/mod.rs`) `super::x`.
fn named_modules(code: &str, roots: &[&str]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let b = code.as_bytes();
    for root in roots {
        let pat = format!("{root}::");
        let mut from = 0;
        while let Some(p) = code[from..].find(&pat) {
            let at = from + p;
            from = at + pat.len();
            if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b':') {
                continue; // `foo_crate::x`, `a::crate::x`
            }
            let rest = &code[from..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c, d}`: first segment of each top-level entry.
                let mut depth = 0usize;
                let mut entry_start = true;
                for (k, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => entry_start = true,
                        c if entry_start && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                            let name: String = group[k..]
                                .chars()
                                .take_while(|&c| c.is_alphanumeric() || c == '_')
                                .collect();
                            found.insert(name);
                            entry_start = false;
                        }
                        c if c.is_whitespace() => {}
                        _ => entry_start = false,
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|&c| c.is_alphanumeric() || c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// The top-level module a source file belongs to, and whether `super::`
/// in it reaches the crate root.
fn module_of(rel: &Path) -> (String, bool) {
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap_or("")).collect();
    match parts.as_slice() {
        [file] => (file.trim_end_matches(".rs").to_string(), true),
        [dir, "mod.rs"] => (dir.to_string(), true),
        [dir, ..] => (dir.to_string(), false),
        [] => (String::new(), false),
    }
}

/// Every upward (or sideways) edge in the given sources (paths relative to
/// `src/`), one message each.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in files {
        let (module, top) = module_of(rel);
        if module == "lib" {
            continue; // the crate root declares every module
        }
        let Some(own) = rank(&module) else {
            out.push(format!(
                "src/{}: top-level module `{module}` has no rank in RANKS",
                rel.display()
            ));
            continue;
        };
        let code = code_only(text);
        let mut roots = vec!["crate"];
        if module == "main" {
            roots.push("enforcer");
        }
        if top {
            roots.push("super");
        }
        for named in named_modules(&code, &roots) {
            if named == module || named == "self" || named == "super" {
                continue;
            }
            match rank(&named) {
                Some(r) if r < own => {}
                Some(r) => out.push(format!(
                    "src/{}: `{module}` (rank {own}) names `{named}` (rank {r}): layers depend downward only",
                    rel.display()
                )),
                // Items of the crate root or of the module itself (`super::X`
                // from a file of `src/`): not a layer.
                None => {}
            }
        }
        if !UNSAFE_SHELLS.contains(&module.as_str()) && has_unsafe(&code) {
            out.push(format!(
                "src/{}: `unsafe` outside the shells that need it ({UNSAFE_SHELLS:?})",
                rel.display()
            ));
        }
        out.extend(undocumented_unsafe(rel, text, &code));
    }
    out
}

fn unsafe_positions(code: &str) -> Vec<usize> {
    let b = code.as_bytes();
    code.match_indices("unsafe")
        .map(|(i, _)| i)
        .filter(|&i| (i == 0 || !is_ident(b[i - 1])) && b.get(i + 6).is_none_or(|&c| !is_ident(c)))
        .collect()
}

fn has_unsafe(code: &str) -> bool {
    !unsafe_positions(code).is_empty()
}

/// `unsafe` blocks and impls without a `// SAFETY:` comment on the lines just
/// above them (or on the same line). `unsafe fn` and `unsafe extern` state a
/// contract instead, in their docs.
fn undocumented_unsafe(rel: &Path, text: &str, code: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for i in unsafe_positions(code) {
        let after = code[i + 6..].trim_start();
        if after.starts_with("fn") || after.starts_with("extern") {
            continue;
        }
        let line = code[..i].matches('\n').count();
        let mut ok = lines[line].contains("SAFETY:");
        // Walk up over the comment block (and attributes) right above.
        let mut k = line;
        while !ok && k > 0 {
            k -= 1;
            let l = lines[k].trim();
            if l.contains("SAFETY:") {
                ok = true;
            } else if !(l.starts_with("//") || l.starts_with("#[")) {
                // One statement may open the line before the block
                // (`let x = unsafe {` is on one line; `match unsafe` too).
                break;
            }
        }
        if !ok {
            out.push(format!(
                "src/{}:{}: `unsafe` without a `// SAFETY:` comment",
                rel.display(),
                line + 1
            ));
        }
    }
    out
}

fn read_tree(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(&p, base, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((p.strip_prefix(base).unwrap().to_path_buf(), text));
        }
    }
}

fn tree() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    files
}

#[test]
fn layers_depend_downward_only() {
    let files = tree();
    assert!(
        files.len() > 40,
        "read {} files: not the source tree",
        files.len()
    );
    let v = violations(&files);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

#[test]
fn every_top_level_module_is_ranked_and_declared() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for (m, _) in RANKS {
        if *m != "main" {
            assert!(
                lib.contains(&format!("pub mod {m};")),
                "lib.rs does not declare `{m}`"
            );
        }
    }
    assert!(lib.contains("#![deny(unsafe_code)]"));
    for m in UNSAFE_SHELLS {
        assert!(
            lib.contains(&format!("#[allow(unsafe_code)]\npub mod {m};")),
            "lib.rs allows unsafe in `{m}`"
        );
    }
}

fn one(path: &str, text: &str) -> Vec<String> {
    violations(&[(PathBuf::from(path), text.to_string())])
}

/// The checker itself: each kind of upward edge is caught, downward ones and
/// prose are not.
#[test]
fn the_checker_catches_planted_edges() {
    // Upward edges, in every spelling.
    for (path, text) in [
        ("stream/conn.rs", "use crate::engine::Engine;"),
        ("stream/mod.rs", "fn f(x: crate::engine::Engine) {}"),
        ("l7/http/mod.rs", "use crate::policy::Policy;"),
        ("l7/mod.rs", "use crate::{log::Subject, policy::L7Policy};"),
        (
            "l7/mod.rs",
            "use crate::{\n    log,\n    stream::{L7Flow},\n};",
        ),
        ("log.rs", "use crate::policy::Policy;"),
        ("verdict.rs", "use crate::engine::Engine;"),
        ("counters.rs", "use crate::log::Event;"), // same rank: sideways
        ("engine/mod.rs", "use crate::dataplane::run;"),
        ("policy/mod.rs", "use super::stream::L7Flow;"),
        ("replay.rs", "use crate::dataplane::Shared;"),
        ("unknown.rs", "fn f() {}"),
        ("stream/mod.rs", "fn f() { unsafe { g() } }"),
        ("dataplane/worker.rs", "fn f() {\n    unsafe { g() }\n}"),
    ] {
        assert!(!one(path, text).is_empty(), "not caught: {path}: {text}");
    }
    // Downward edges, prose and documented unsafe in a shell pass.
    for (path, text) in [
        (
            "engine/mod.rs",
            "use crate::stream::L7Flow;\nuse crate::policy::Policy;",
        ),
        (
            "stream/mod.rs",
            "use crate::{config::EngineConfig, l7::http::Http};",
        ),
        (
            "stream/mod.rs",
            "// crate::engine hands segments here\nfn f() {}",
        ),
        ("stream/mod.rs", "const S: &str = \"crate::engine\";"),
        ("stream/conn.rs", "use super::reply::ReplyState;"),
        ("main.rs", "use enforcer::dataplane::run;"),
        ("l7/mod.rs", "fn f<'a>(x: &'a str) -> char { 'x' }"),
        (
            "dataplane/worker.rs",
            "fn f() {\n    // SAFETY: g has no preconditions.\n    unsafe { g() }\n}",
        ),
    ] {
        let v = one(path, text);
        assert!(v.is_empty(), "false alarm: {path}: {text}: {v:?}");
    }
}
