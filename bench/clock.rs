//! One measurement loop for the benches, timed two ways: criterion's wall
//! clock, and this thread's CPU clock. On a shared machine a batch of
//! iterations that was preempted counts the other processes' time on the
//! wall clock; the thread's CPU clock counts only ours, so the `_cpu`
//! figure is the fair one when the load average is high. Each bench uses
//! what it needs of this file.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup};

/// This thread's CPU time, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `BENCH_COUNT=NAME:N`: instead of timing, run bench NAME's routine N times
/// inside `counted` and nothing else, for an instruction count that the
/// machine's load does not move:
/// `valgrind --tool=callgrind --toggle-collect='*clock*counted*' BENCH -- --bench`
/// (instructions per iteration: the total over N).
pub const COUNT_ENV: &str = "BENCH_COUNT";

/// `Some(n)` for the bench `BENCH_COUNT` names, `Some(0)` for the others
/// while it is set, `None` when it is not set.
fn count_for(name: &str) -> Option<u64> {
    let v = std::env::var(COUNT_ENV).ok()?;
    let (want, n) = v.rsplit_once(':')?;
    Some(if want == name {
        n.parse().unwrap_or(0)
    } else {
        0
    })
}

#[inline(never)]
pub fn counted<O>(n: u64, f: &mut impl FnMut() -> O) {
    for _ in 0..n {
        black_box(f());
    }
}

/// `name` (wall clock) and `name_cpu` (thread CPU clock), both running `f`
/// once per iteration.
pub fn wall_and_cpu<O>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut f: impl FnMut() -> O) {
    if let Some(n) = count_for(name) {
        counted(n, &mut f);
        return;
    }
    g.bench_function(name, |b| b.iter(&mut f));
    g.bench_function(format!("{name}_cpu"), |b| {
        b.iter_custom(|iters| {
            let t0 = thread_cpu_ns();
            for _ in 0..iters {
                black_box(f());
            }
            Duration::from_nanos(thread_cpu_ns() - t0)
        })
    });
}

/// Inputs made per CPU-clock batch: built outside the timed part, few
/// enough to stay in cache.
const BATCH: usize = 256;

/// `wall_and_cpu` for a routine that consumes an input `setup` makes; the
/// setup is never timed (criterion's `iter_batched` on the wall clock; the
/// CPU clock is read around each batch of routines only).
pub fn wall_and_cpu_batched<I, O>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut setup: impl FnMut() -> I,
    mut routine: impl FnMut(I) -> O,
) {
    if let Some(n) = count_for(name) {
        // Inputs made ahead, outside the counted loop.
        let mut inputs = (0..n).map(|_| setup()).collect::<Vec<I>>().into_iter();
        let mut next = || routine(inputs.next().expect("one input per iteration"));
        counted(n, &mut next);
        return;
    }
    g.bench_function(name, |b| {
        b.iter_batched(&mut setup, &mut routine, BatchSize::SmallInput)
    });
    g.bench_function(format!("{name}_cpu"), |b| {
        b.iter_custom(|iters| {
            let mut spent = 0;
            let mut left = iters as usize;
            let mut inputs = Vec::with_capacity(BATCH);
            while left > 0 {
                let n = left.min(BATCH);
                inputs.extend((0..n).map(|_| setup()));
                let t0 = thread_cpu_ns();
                for i in inputs.drain(..) {
                    black_box(routine(i));
                }
                spent += thread_cpu_ns() - t0;
                left -= n;
            }
            Duration::from_nanos(spent)
        })
    });
}
