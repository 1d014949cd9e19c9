//! Closed-loop memcached load for lab benchmarks: C connections, each
//! keeping D requests in flight, for S seconds; prints ops/s as JSON.
//! (wrk covers HTTP; no packaged memcached tool can limit itself to the
//! keys a policy allows.)
//!
//! loadgen ADDR [--conns C] [--depth D] [--seconds S] [--request TEXT] [--reply-end TEXT]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || hay.len() < needle.len() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut addr: Option<SocketAddr> = None;
    let (mut conns, mut depth, mut secs) = (4usize, 8usize, 10u64);
    let mut request = unescape("get awing-coord\\r\\n");
    let mut end = unescape("END\\r\\n");
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--conns" => conns = v.parse().expect("--conns N"),
            "--depth" => depth = v.parse().expect("--depth N"),
            "--seconds" => secs = v.parse().expect("--seconds N"),
            "--request" => request = unescape(&v),
            "--reply-end" => end = unescape(&v),
            a => {
                addr = Some(a.parse().expect("ADDR as ip:port or [ip6]:port"));
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let addr = addr.expect("usage: loadgen ADDR [--conns C] [--depth D] [--seconds S]");
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let batch: Vec<u8> = request.repeat(depth);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let (ops, errors, stop, batch, end) = (
                ops.clone(),
                errors.clone(),
                stop.clone(),
                batch.clone(),
                end.clone(),
            );
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = vec![0u8; 65536];
                let mut carry: Vec<u8> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&batch).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let mut got = 0;
                    while got < depth {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Ok(n) => {
                                carry.extend_from_slice(&buf[..n]);
                                let c = count(&carry, &end);
                                got += c;
                                // keep a tail that may hold a split terminator
                                if c > 0 {
                                    let last = carry
                                        .windows(end.len())
                                        .rposition(|w| w == end.as_slice())
                                        .unwrap_or(0);
                                    carry.drain(..last + end.len());
                                } else if carry.len() > 4096 {
                                    let keep = carry.len() - end.len();
                                    carry.drain(..keep);
                                }
                            }
                        }
                    }
                    ops.fetch_add(depth as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let el = t0.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    println!(
        "{{\"ops\": {n}, \"seconds\": {el:.3}, \"ops_per_s\": {:.0}, \"errors\": {}}}",
        n as f64 / el,
        errors.load(Ordering::Relaxed)
    );
}
