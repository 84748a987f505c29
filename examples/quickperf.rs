//! Single-shot timings of the hot paths, for profiling (the real, comparative numbers come from
//! `cargo bench`). `cargo run --release --example quickperf [yield|spawn|spawn-in-greenlet|queue|live|all] [N]`;
//! run it under `valgrind --tool=callgrind` with a small N to count instructions.

use std::rc::Rc;
use std::time::{Duration, Instant};

fn per_op(t: Instant, n: u64) -> f64 {
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Two greenlets each calling `sleep(ZERO)` `n` times.
fn yield_ping_pong(n: u64) {
    let t = Instant::now();
    let a = evergreen::spawn(move || (0..n).for_each(|_| evergreen::sleep(Duration::ZERO)));
    let b = evergreen::spawn(move || (0..n).for_each(|_| evergreen::sleep(Duration::ZERO)));
    a.join();
    b.join();
    println!("yield: {:.1} ns", per_op(t, 2 * n));
}

/// Spawning a greenlet and joining it, `n` times, from the root.
fn spawn_join(n: u64) {
    let t = Instant::now();
    for i in 0..n {
        evergreen::spawn(move || i + 1).join();
    }
    println!("spawn+join from the root: {:.1} ns", per_op(t, n));
}

/// The same from inside a greenlet (the benchmark's way: one more switch per join).
fn spawn_join_in_greenlet(n: u64) {
    let e = evergreen::spawn(move || {
        let t = Instant::now();
        for i in 0..n {
            let v = evergreen::spawn(move || i + 1).into_result().unwrap();
            std::hint::black_box(v);
        }
        per_op(t, n)
    });
    println!(
        "spawn+join from a greenlet: {:.1} ns",
        e.into_result().unwrap()
    );
}

/// Round trips through two queues between two greenlets.
fn queue_ping_pong(n: u64) {
    let q1 = Rc::new(evergreen::Queue::new());
    let q2 = Rc::new(evergreen::Queue::new());
    let (a1, a2) = (q1.clone(), q2.clone());
    let echo = evergreen::spawn(move || {
        for _ in 0..n {
            let v: u64 = a1.get().unwrap();
            a2.put(v).unwrap();
        }
    });
    let t = Instant::now();
    let pinger = evergreen::spawn(move || {
        for i in 0..n {
            q1.put(i).unwrap();
            q2.get().unwrap();
        }
    });
    pinger.join();
    echo.join();
    println!("queue ping-pong: {:.1} ns/round trip", per_op(t, n));
}

/// CPU time (user + system) and minor page faults of this process so far.
fn cpu_and_faults() -> (Duration, u64) {
    // SAFETY: `getrusage` fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_minflt as u64)
}

/// `n` greenlets alive at once, each parked on one shared event, then released and joined;
/// twice: first on fresh stacks, then on the stacks the first round gave back. Reports CPU
/// time and minor page faults per greenlet (the cost of fresh stack memory).
fn live_greenlets(n: u64) {
    for round in ["fresh stacks", "reused stacks"] {
        let (cpu0, f0) = cpu_and_faults();
        let t = Instant::now();
        let ev = Rc::new(evergreen::Event::new());
        let gs: Vec<_> = (0..n)
            .map(|_| {
                let ev = ev.clone();
                evergreen::spawn(move || ev.wait())
            })
            .collect();
        evergreen::sleep(Duration::ZERO);
        ev.set();
        for g in &gs {
            g.join();
        }
        let wall = per_op(t, n);
        let (cpu1, f1) = cpu_and_faults();
        println!(
            "{n} live greenlets, {round}: {wall:.0} ns wall, {:.0} ns CPU, {:.2} minor faults per greenlet",
            (cpu1 - cpu0).as_nanos() as f64 / n as f64,
            (f1 - f0) as f64 / n as f64
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    match what.as_str() {
        "yield" => yield_ping_pong(n),
        "spawn" => spawn_join(n),
        "spawn-in-greenlet" => spawn_join_in_greenlet(n),
        "queue" => queue_ping_pong(n),
        "live" => live_greenlets(n),
        "all" => {
            yield_ping_pong(n);
            spawn_join(n);
            spawn_join_in_greenlet(n);
            queue_ping_pong(n);
        }
        other => {
            eprintln!(
                "unknown workload {other:?}: use yield, spawn, spawn-in-greenlet, queue, live or all"
            );
            std::process::exit(2);
        }
    }
}
