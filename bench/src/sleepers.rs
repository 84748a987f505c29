//! Timer workloads that the root package's benches do not have: `sleepers` tasks each sleep
//! `sleeps` times for a fixed delay, on every Rust runtime under comparison. Used by the
//! `timers` workload (10,000 tasks × 10 sleeps = 100,000 timers armed and fired) and by the
//! scaling sweep (concurrency 1 → 100,000 parked tasks waiting on timers).
//!
//! Every run is timed inside its runtime by a driver task, like the workloads of
//! `benches/common`, and also reports the peak memory it added: `VmHWM` (the process's peak
//! resident set) at the end minus `VmRSS` before the tasks were spawned, per task.

use std::time::{Duration, Instant};

use evergreen_bench::{rss_kib, LoadRun};

/// evergreen: `tasks` greenlets each calling `evergreen::sleep(delay)` `sleeps` times.
pub fn evergreen(tasks: usize, sleeps: usize, delay: Duration) -> LoadRun {
    evergreen::spawn(move || {
        let before = rss_kib().unwrap_or(0);
        let start = Instant::now();
        let greenlets: Vec<_> = (0..tasks)
            .map(|_| {
                evergreen::spawn(move || {
                    for _ in 0..sleeps {
                        evergreen::sleep(delay);
                    }
                })
            })
            .collect();
        evergreen::joinall(&greenlets);
        let elapsed = start.elapsed();
        LoadRun::new(elapsed, before)
    })
    .into_result()
    .expect("evergreen sleepers driver failed")
}

/// tokio (`current_thread` for `None`, `multi_thread` with that many workers otherwise):
/// `tasks` tasks each awaiting `tokio::time::sleep(delay)` `sleeps` times.
pub fn tokio(workers: Option<usize>, tasks: usize, sleeps: usize, delay: Duration) -> LoadRun {
    let rt = crate::common::tokio_rt::build_runtime(workers);
    rt.block_on(async move {
        tokio::spawn(async move {
            // Warm the timer wheel up.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let before = rss_kib().unwrap_or(0);
            let start = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    tokio::spawn(async move {
                        for _ in 0..sleeps {
                            tokio::time::sleep(delay).await;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("tokio sleeper panicked");
            }
            let elapsed = start.elapsed();
            LoadRun::new(elapsed, before)
        })
        .await
        .expect("tokio sleepers driver panicked")
    })
}

/// may (configure it first): `tasks` coroutines each calling `may::coroutine::sleep(delay)`
/// `sleeps` times.
pub fn may(tasks: usize, sleeps: usize, delay: Duration) -> LoadRun {
    may::go!(move || {
        let before = rss_kib().unwrap_or(0);
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                may::go!(move || {
                    for _ in 0..sleeps {
                        may::coroutine::sleep(delay);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("may sleeper panicked");
        }
        let elapsed = start.elapsed();
        LoadRun::new(elapsed, before)
    })
    .join()
    .expect("may sleepers driver panicked")
}

/// How many may coroutines can be alive at once in this process: each may stack takes two
/// memory maps (stack and guard page) and Linux caps a process at `vm.max_map_count` maps
/// (65530 by default); going over aborts the process. `None` if the limit cannot be read.
pub fn may_coroutine_budget() -> Option<usize> {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(limit.saturating_sub(4_000) / 2)
}
