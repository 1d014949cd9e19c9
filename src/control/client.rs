//! The client side of the control socket: `enforcer status`, `policy`,
//! `observe`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::filter::Filter;
use super::protocol::Request;

/// Output format of the client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn connect(control: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(control).map_err(|e| {
        format!(
            "cannot reach an enforcer at {}: {e} (is it running? is this its --control PATH?)",
            control.display()
        )
    })
}

fn send(control: &Path, req: &Request) -> Result<BufReader<UnixStream>, String> {
    let mut c = connect(control)?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    c.write_all(line.as_bytes())
        .map_err(|e| format!("{}: {e}", control.display()))?;
    Ok(BufReader::new(c))
}

fn read_reply(r: &mut BufReader<UnixStream>) -> Result<serde_json::Value, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|_| "the enforcer closed the connection without a reply".to_string())?;
    if v["ok"] == true {
        return Ok(v);
    }
    let errs: Vec<String> = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Err(errs.join("\n"))
}

/// One request, one reply.
pub fn call(control: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let mut r = send(control, req)?;
    read_reply(&mut r)
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub fn status(control: &Path, fmt: Format) -> Result<(), String> {
    let v = call(control, &Request::Status)?;
    let s = &v["status"];
    if fmt == Format::Json {
        println!("{}", pretty(s));
        return Ok(());
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let ifaces = match s["peer"].as_str() {
        Some(p) => format!(
            "{} (clients) -> {p} (servers)",
            s["iface"].as_str().unwrap_or("")
        ),
        None => format!("{} (this host)", s["iface"].as_str().unwrap_or("")),
    };
    println!(
        "Mode:         {}, {ifaces}",
        s["mode"].as_str().unwrap_or("")
    );
    for q in s["queues"].as_array().into_iter().flatten() {
        println!(
            "AF_XDP:       {} queue {}: {}{}",
            q["iface"].as_str().unwrap_or(""),
            n(&q["queue"]),
            if q["zero_copy"] == true {
                "zero-copy"
            } else {
                "copy"
            },
            if q["need_wakeup"] == true {
                ", need_wakeup"
            } else {
                ""
            }
        );
    }
    let busy: Vec<String> = s["worker_busy_ratio"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| format!("{:.0}%", b.as_f64().unwrap_or(0.0) * 100.0))
        .collect();
    println!(
        "Workers:      {} (poll {}; busy {})",
        n(&s["workers"]),
        s["poll"].as_str().unwrap_or(""),
        busy.join(" ")
    );
    let p = &s["policy"];
    let last = &p["last_reload"];
    println!(
        "Policy:       revision {}, {}{}",
        n(&p["revision"]),
        p["path"].as_str().unwrap_or(""),
        if s["passthrough"] == true {
            " (pass-through: not enforced)"
        } else if s["audit"] == true {
            " (audit mode: would-be denials forwarded and logged)"
        } else {
            ""
        }
    );
    println!(
        "Last reload:  {} ({}), {} ok, {} failed",
        if last["ok"] == true {
            "ok"
        } else {
            "FAILED, previous policy kept"
        },
        last["trigger"].as_str().unwrap_or(""),
        n(&p["reloads_ok"]),
        n(&p["reloads_failed"])
    );
    for e in last["errors"].as_array().into_iter().flatten() {
        println!("              {}", e.as_str().unwrap_or(""));
    }
    println!("Flows:        {}", n(&s["flows"]));
    println!("Held bytes:   {}", n(&s["held_bytes"]));
    let c = &s["counters"];
    println!(
        "Frames:       {} in, {} forwarded, {} emitted",
        n(&c["frames_in"]),
        n(&c["frames_forwarded"]),
        n(&c["frames_emitted"])
    );
    println!(
        "L7 requests:  {} allowed, {} denied, {} audited",
        n(&c["l7_requests_allowed"]),
        n(&c["l7_requests_denied"]),
        n(&c["l7_requests_audited"])
    );
    let drops: Vec<String> = c["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {}", n(v)))
        .collect();
    println!(
        "Drops:        {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(", ")
        }
    );
    Ok(())
}

pub fn policy_get(control: &Path, fmt: Format) -> Result<(), String> {
    let v = call(control, &Request::PolicyGet)?;
    if fmt == Format::Json {
        println!("{}", pretty(&v));
        return Ok(());
    }
    for p in v["policies"].as_array().into_iter().flatten() {
        println!("==> {} <==", p["file"].as_str().unwrap_or(""));
        let c = p["content"].as_str().unwrap_or("");
        print!("{c}");
        if !c.ends_with('\n') {
            println!();
        }
    }
    println!("Revision: {}", v["revision"]);
    Ok(())
}

pub fn policy_import(control: &Path, file: &Path) -> Result<(), String> {
    let content = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let v = call(
        control,
        &Request::PolicyImport {
            file: file.display().to_string(),
            content,
        },
    )?;
    println!("Revision: {}", v["revision"]);
    Ok(())
}

pub fn policy_delete(control: &Path, name: &str) -> Result<(), String> {
    let v = call(control, &Request::PolicyDelete { name: name.into() })?;
    println!("Revision: {}", v["revision"]);
    Ok(())
}

/// One readable line per event, as `observe` prints it.
pub fn line(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let f = &v["flow"];
    let ep = |ip: &serde_json::Value, port: &serde_json::Value| {
        let ip = ip.as_str().unwrap_or("");
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    let proto = match f["proto"].as_u64() {
        Some(6) => "tcp",
        Some(17) => "udp",
        Some(1) | Some(58) => "icmp",
        _ => "ip",
    };
    let what = match v["kind"].as_str() {
        Some("http") => format!("http {} {}{}", s("method"), s("host"), s("path")),
        Some("memcache") => {
            let keys: Vec<&str> = v["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            format!("memcache {} {}", s("command"), keys.join(" "))
        }
        _ => format!("{proto} flow"),
    };
    let why = match (v["rule"].as_str(), v["reason"].as_str()) {
        (Some(r), _) => format!(" rule={r}"),
        (None, Some(r)) => format!(" reason={r:?}"),
        _ => String::new(),
    };
    let ms = v["unix_ms"].as_u64().unwrap_or(0);
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!(
        "{h:02}:{m:02}:{sec:02}.{milli:03} {} {} ({}) -> {} ({}) {what}{why}",
        s("verdict").to_uppercase(),
        s("src_identity"),
        ep(&f["src"], &f["sport"]),
        s("dst_identity"),
        ep(&f["dst"], &f["dport"]),
    )
}

/// Follow events until interrupted (or `limit` were printed).
pub fn observe(
    control: &Path,
    filter: Filter,
    fmt: Format,
    limit: Option<u64>,
) -> Result<(), String> {
    let mut r = send(control, &Request::Observe { filter })?;
    read_reply(&mut r)?;
    let mut shown = 0;
    let out = std::io::stdout();
    for l in r.lines() {
        let l = l.map_err(|e| e.to_string())?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
            continue;
        };
        if let Some(n) = v.get("lost") {
            eprintln!("enforcer: {n} events could not be delivered (this observer fell behind)");
            continue;
        }
        let mut o = out.lock();
        let text = match fmt {
            Format::Json => l,
            Format::Text => line(&v),
        };
        if writeln!(o, "{text}").and_then(|_| o.flush()).is_err() {
            return Ok(());
        }
        shown += 1;
        if limit.is_some_and(|n| shown >= n) {
            return Ok(());
        }
    }
    Err("the enforcer went away".into())
}
