//! The layers of `src/` depend downward only, and only the shells that talk
//! to the kernel use `unsafe`, each block with its reason.
//!
//! Read from the source tree as Rust tokens (comments and literals are not
//! code, so prose may mention any layer): a module names another by a path
//! (`crate::engine`, `enforcer::policy` in the binary, `super::` from a
//! top-level module file), also inside macros and `use` groups.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// Every top-level module and its rank. A module may name only modules of a
/// strictly lower rank; modules of one rank are independent of each other.
/// A new top-level module must be placed here before the test passes.
const RANKS: &[(&str, u8)] = &[
    // Below everything: plain containers.
    ("packed", 0),
    // Leaves: the vocabulary every layer shares.
    ("config", 1),
    ("counters", 1),
    ("log", 1),
    ("packet", 1),
    ("verdict", 2),
    ("l7", 3),
    ("policy", 4),
    ("stream", 5),
    ("engine", 6),
    // Shells.
    ("hostmode", 7),
    ("dataplane", 8),
    ("replay", 8),
    ("tools", 9),
    ("control", 9),
    ("main", 10),
];

/// Modules that may contain `unsafe` (each `#[allow(unsafe_code)]` in lib.rs).
const UNSAFE_SHELLS: &[&str] = &["dataplane", "hostmode"];

fn rank(m: &str) -> Option<u8> {
    RANKS.iter().find(|(n, _)| *n == m).map(|&(_, r)| r)
}

/// What a file's tokens say: the top-level modules it names after one of
/// `roots`, and the lines of its `unsafe` blocks and impls (`unsafe fn` and
/// `unsafe extern` state a contract in their docs instead).
#[derive(Default)]
struct Found {
    named: Vec<String>,
    unsafe_lines: Vec<usize>,
}

fn scan(ts: TokenStream, roots: &[&str], found: &mut Found) {
    let tt: Vec<TokenTree> = ts.into_iter().collect();
    let ident = |i: usize| match tt.get(i) {
        Some(TokenTree::Ident(x)) => Some(x.to_string()),
        _ => None,
    };
    let path_sep = |i: usize| {
        matches!((tt.get(i), tt.get(i + 1)), (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && b.as_char() == ':')
    };
    for (i, t) in tt.iter().enumerate() {
        match t {
            TokenTree::Group(g) => scan(g.stream(), roots, found),
            // `unsafe fn` and `unsafe extern` state a contract in their docs.
            TokenTree::Ident(x)
                if *x == "unsafe" && !matches!(ident(i + 1).as_deref(), Some("fn" | "extern")) =>
            {
                found.unsafe_lines.push(x.span().start().line);
            }
            TokenTree::Ident(x) if roots.iter().any(|r| *x == r) && path_sep(i + 1) => {
                let after_colon = i > 1 && path_sep(i - 2);
                if after_colon {
                    continue; // `a::crate::x` is not a root
                }
                match tt.get(i + 3) {
                    Some(TokenTree::Ident(n)) => found.named.push(n.to_string()),
                    // `crate::{a, b::c}`: the first name of each entry.
                    Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                        let mut first = true;
                        for e in g.stream() {
                            match e {
                                TokenTree::Ident(n) if first => {
                                    found.named.push(n.to_string());
                                    first = false;
                                }
                                TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                                _ => first = false,
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
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
        let at = format!("src/{}", rel.display());
        let Some(own) = rank(&module) else {
            out.push(format!(
                "{at}: top-level module `{module}` has no rank in RANKS"
            ));
            continue;
        };
        let mut roots = vec!["crate"];
        if module == "main" {
            roots.push("enforcer");
        }
        if top {
            roots.push("super");
        }
        let ts = TokenStream::from_str(text).unwrap_or_else(|e| panic!("{at}: {e:?}"));
        let mut found = Found::default();
        scan(ts, &roots, &mut found);
        for named in &found.named {
            // Items of the crate root, or the module's own: not a layer.
            match rank(named) {
                Some(r) if r >= own && *named != module => out.push(format!(
                    "{at}: `{module}` (rank {own}) names `{named}` (rank {r}): layers depend downward only"
                )),
                _ => {}
            }
        }
        let shell = UNSAFE_SHELLS.contains(&module.as_str());
        let lines: Vec<&str> = text.lines().collect();
        for &line in &found.unsafe_lines {
            if !shell {
                out.push(format!("{at}:{line}: `unsafe` outside {UNSAFE_SHELLS:?}"));
            } else if !documented(&lines, line - 1) {
                out.push(format!(
                    "{at}:{line}: `unsafe` without a `// SAFETY:` comment"
                ));
            }
        }
    }
    out
}

/// A `// SAFETY:` comment on line `i` (0-based) or in the comment block
/// (and attributes) right above the statement that holds it.
fn documented(lines: &[&str], i: usize) -> bool {
    if lines[i].contains("SAFETY:") {
        return true;
    }
    lines[..i]
        .iter()
        .rev()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("//") || l.starts_with("#["))
        .any(|l| l.contains("SAFETY:"))
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
