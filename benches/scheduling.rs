//! Criterion benchmarks: cooperative (evergreen) against work-stealing scheduling.
//!
//! One group per workload, one function per runtime (`evergreen`, `tokio-ct`, `tokio-mt2`,
//! `may-1`, `may-2`; see `common/mod.rs`). Every function uses `iter_custom`: the runtime's own
//! driver task times the ops, so criterion sees time per op.
//!
//! | group                | one op |
//! |----------------------|--------|
//! | `spawn_join`         | spawn a task returning a small value and join it |
//! | `yield`              | one yield, two tasks yielding alternately |
//! | `queue_ping_pong`    | one round trip A→q1→B→q2→A |
//! | `one_way_throughput` | one message producer→consumer (also reported as elements/s) |
//!
//! The may variants run in child processes (may's worker count is process-global); the
//! children are started on first use and live until the end of the run.
//!
//! Run: `cargo bench --bench scheduling` (filter: `cargo bench --bench scheduling -- yield/`).
//! Defaults (overridable on the command line, e.g. `-- --measurement-time 1`): 20 samples,
//! 1 s warm-up, 2 s measurement per function.

mod common;

use std::time::Duration;

use criterion::{Criterion, Throughput};

use common::{Runners, Runtime, Workload};

/// Benchmarks `workload` on every runtime, as one criterion group named after the workload.
fn bench_workload(c: &mut Criterion, runners: &mut Runners, workload: Workload) {
    let mut group = c.benchmark_group(workload.name());
    // One "element" per op, so the throughput group also prints messages per second.
    group.throughput(Throughput::Elements(1));
    for rt in Runtime::ALL {
        group.bench_function(rt.name(), |b| {
            b.iter_custom(|iters| runners.get(rt).run(workload, iters));
        });
    }
    group.finish();
}

fn main() {
    common::dispatch_child();
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut runners = Runners::default();
    for workload in Workload::ALL {
        bench_workload(&mut criterion, &mut runners, workload);
    }
    criterion.final_summary();
}
