//! The control socket: one thread per client connection (clients are
//! operators and their scripts, a handful at a time).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::protocol::{refusal, Request};
use super::status;
use crate::dataplane::{self, Handle};

/// Events an observer may lag behind before further ones are counted as
/// undelivered.
const OBSERVER_QUEUE: usize = 4096;

/// Bind the socket (root only: mode 0600 in a 0700 directory made if
/// missing). `Ok(None)`: the default path is served by another enforcer.
pub fn listen(h: Handle, path: &Path, explicit: bool) -> Result<Option<PathBuf>, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            let msg = format!(
                "control socket {} is served by another enforcer",
                path.display()
            );
            if explicit {
                return Err(format!("{msg}; give this one its own --control PATH"));
            }
            eprintln!("enforcer: warning: {msg}; running without one (give --control PATH)");
            return Ok(None);
        }
        // Left by an enforcer that did not stop cleanly.
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("control {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("enforcer-control".into())
        .spawn(move || {
            for c in l.incoming().flatten() {
                let h = h.clone();
                let _ = std::thread::Builder::new()
                    .name("enforcer-client".into())
                    .spawn(move || serve_client(h, c));
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(Some(path.to_path_buf()))
}

fn reply(c: &mut UnixStream, v: &serde_json::Value) -> std::io::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    c.write_all(s.as_bytes())
}

fn serve_client(h: Handle, mut c: UnixStream) {
    let mut line = String::new();
    {
        let mut r = BufReader::new((&c).take(64 << 20));
        if r.read_line(&mut line).is_err() {
            return;
        }
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = reply(&mut c, &refusal(&[format!("bad request: {e}")]));
            return;
        }
    };
    let v = match req {
        Request::Status => serde_json::json!({ "ok": true, "status": status::json(&h) }),
        Request::PolicyGet => {
            let f = h.in_force();
            let policies: Vec<_> = f
                .sources
                .iter()
                .map(|(file, content)| serde_json::json!({ "file": file, "content": content }))
                .collect();
            serde_json::json!({ "ok": true, "revision": f.revision, "policies": policies })
        }
        Request::PolicyImport { file, content } => match import(&h, &file, &content) {
            Ok(rev) => serde_json::json!({ "ok": true, "revision": rev }),
            Err(e) => refusal(&e),
        },
        Request::PolicyDelete { name } => match delete(&h, &name) {
            Ok((rev, file)) => serde_json::json!({ "ok": true, "revision": rev, "file": file }),
            Err(e) => refusal(&e),
        },
        Request::Observe { filter } => {
            observe(&h, c, filter);
            return;
        }
    };
    let _ = reply(&mut c, &v);
}

/// Announce a reload the control plane did, as SIGHUP's are announced.
pub fn announce(h: &Handle, what: &str, r: &Result<u64, Vec<String>>) {
    match r {
        Ok(rev) => println!(
            "policy reloaded from {} ({what}, revision {rev})",
            h.info().policy_path.display()
        ),
        Err(errs) => {
            eprintln!("enforcer: policy {what} refused, keeping the running policy:");
            for e in errs {
                eprintln!("  {e}");
            }
        }
    }
    let _ = std::io::stdout().flush();
}

fn policy_dir(h: &Handle) -> Result<PathBuf, Vec<String>> {
    let dir = h.info().policy_path.clone();
    if !dir.is_dir() {
        return Err(vec![format!(
            "--policy {} is a file; importing and deleting need a policy directory",
            dir.display()
        )]);
    }
    Ok(dir)
}

/// The directory's sources now; an empty directory has none.
fn current(dir: &Path) -> Result<Vec<(String, String)>, Vec<String>> {
    let empty = std::fs::read_dir(dir)
        .map_err(|e| vec![format!("{}: {e}", dir.display())])?
        .flatten()
        .all(|e| !is_policy_file(&e.path()));
    if empty {
        return Ok(Vec::new());
    }
    dataplane::read_sources(dir)
}

fn is_policy_file(p: &Path) -> bool {
    p.is_file()
        && matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Write through a hidden temporary file and a rename, so neither a reload
/// nor the watcher ever reads half a file.
fn write_atomic(target: &Path, content: &str) -> Result<(), String> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, content).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", target.display())
    })
}

/// Validate the directory with `file` added (or replacing its namesake),
/// errors naming the client's file; then write it and swap the policy.
fn import(h: &Handle, file: &str, content: &str) -> Result<u64, Vec<String>> {
    let dir = policy_dir(h)?;
    let name = Path::new(file)
        .file_name()
        .ok_or_else(|| vec![format!("{file}: not a file name")])?;
    let target = dir.join(name);
    if !matches!(
        target.extension().and_then(|x| x.to_str()),
        Some("yaml" | "yml" | "json")
    ) {
        return Err(vec![format!(
            "{file}: only *.yaml, *.yml and *.json files are policies"
        )]);
    }
    let target_name = target.display().to_string();
    let mut rest = current(&dir)?;
    // A policy replaces its namesake, as `cilium policy import` does: the
    // same file name, or another file holding a policy of the same name.
    let key = policy_key(content);
    let replaced: Vec<String> = rest
        .iter()
        .filter(|(n, c)| *n != target_name && key.is_some() && policy_key(c) == key)
        .map(|(n, _)| n.clone())
        .collect();
    rest.retain(|(n, _)| *n != target_name && !replaced.contains(n));
    let mut as_given = rest.clone();
    as_given.push((file.to_string(), content.to_string()));
    if let Err(e) = h.validate(&as_given) {
        h.refused("import", &e);
        announce(
            h,
            &format!("import {}", name.to_string_lossy()),
            &Err(e.clone()),
        );
        return Err(e);
    }
    let mut as_stored = rest;
    as_stored.push((target_name, content.to_string()));
    as_stored.sort();
    let r = h.apply(as_stored, "import", &mut || {
        write_atomic(&target, content)?;
        for f in &replaced {
            std::fs::remove_file(f).map_err(|e| format!("{f}: {e}"))?;
        }
        Ok(())
    });
    announce(h, &format!("import {}", name.to_string_lossy()), &r);
    r
}

/// What a file's policy is called, when it holds exactly one: a 2017
/// policy's `name`, or a document's kind and `metadata.name`.
fn policy_key(content: &str) -> Option<String> {
    let v: serde_yaml::Value = serde_yaml::from_str(content).ok()?;
    if v.get("rules").is_some() {
        return Some(format!("legacy/{}", v.get("name")?.as_str()?));
    }
    let kind = v.get("kind")?.as_str()?;
    let name = v.get("metadata")?.get("name")?.as_str()?;
    Some(format!("{kind}/{name}"))
}

/// Remove one file (by name, with or without its extension) when what is
/// left still compiles.
fn delete(h: &Handle, name: &str) -> Result<(u64, String), Vec<String>> {
    let dir = policy_dir(h)?;
    let mut rest = current(&dir)?;
    let hit = rest.iter().position(|(n, _)| {
        let p = Path::new(n);
        p.file_name().is_some_and(|f| f == name) || p.file_stem().is_some_and(|f| f == name)
    });
    let Some(i) = hit else {
        let names: Vec<_> = rest
            .iter()
            .filter_map(|(n, _)| Path::new(n).file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        return Err(vec![format!(
            "no policy file {name:?} in {} (there are: {})",
            dir.display(),
            names.join(", ")
        )]);
    };
    let (file, _) = rest.remove(i);
    let r = h.apply(rest, "delete", &mut || {
        std::fs::remove_file(&file).map_err(|e| format!("{file}: {e}"))
    });
    announce(h, &format!("delete {name}"), &r);
    r.map(|rev| (rev, file))
}

/// Stream matching events until the client goes away. The reader's queue
/// is bounded: a slow client loses events (counted), the workers never wait.
fn observe(h: &Handle, mut c: UnixStream, filter: super::filter::Filter) {
    let f = match filter.compile() {
        Ok(f) => f,
        Err(e) => {
            let _ = reply(&mut c, &refusal(&[e]));
            return;
        }
    };
    let (rx, lost) = h.observe(OBSERVER_QUEUE);
    if reply(&mut c, &serde_json::json!({ "ok": true })).is_err() {
        return;
    }
    let mut reported = 0;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(o) => {
                if !f.matches(&o) {
                    continue;
                }
                let v = serde_json::to_value(&*o).unwrap_or_default();
                if reply(&mut c, &v).is_err() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if gone(&c) {
                    return;
                }
            }
            Err(_) => return,
        }
        let l = lost.load(Ordering::Relaxed);
        if l != reported {
            reported = l;
            if reply(&mut c, &serde_json::json!({ "lost": l })).is_err() {
                return;
            }
        }
    }
}

/// The client closed its end (a read returns end of file at once).
fn gone(c: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    if c.set_nonblocking(true).is_err() {
        return true;
    }
    let r = (&*c).read(&mut b);
    let _ = c.set_nonblocking(false);
    matches!(r, Ok(0))
}
