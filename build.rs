//! Compiles our XDP programs with clang into OUT_DIR (the binary embeds the
//! objects): host mode's steering program (src/hostmode/steer.bpf.c) and
//! inline mode's kernel path (src/dataplane/kpath.bpf.c).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    for (src, obj) in [
        ("src/hostmode/steer.bpf.c", "steer.bpf.o"),
        ("src/dataplane/kpath.bpf.c", "kpath.bpf.o"),
    ] {
        compile(src, obj);
    }
}

fn compile(src: &str, obj: &str) {
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join(obj);
    // libbpf-sys exports the directory holding <bpf/bpf_helpers.h>.
    let bpf_inc = env::var("DEP_BPF_INCLUDE").expect("libbpf-sys include directory");
    let mut cmd = Command::new(env::var("BPF_CLANG").unwrap_or_else(|_| "clang".into()));
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall"])
        .arg(format!("-I{bpf_inc}"));
    // <asm/types.h> lives under the multiarch directory on Debian.
    if let Ok(o) = Command::new("cc").arg("-print-multiarch").output() {
        let arch = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !arch.is_empty() {
            cmd.arg(format!("-I/usr/include/{arch}"));
        }
    }
    cmd.args(["-c", src, "-o"]).arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to build {src} ({s}); install clang and linux-libc-dev"),
        Err(e) => {
            panic!("cannot run clang to build {src}: {e}; install clang (scripts/lib/deps.sh does)")
        }
    }
}
