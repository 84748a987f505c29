//! Memory per parked task at 100,000 tasks, one fresh process per runtime.
//!
//! For each runtime this binary re-executes itself as `<exe> --memory-child <runtime>`; the
//! child parks 100,000 tasks on one shared never-signalled object (evergreen `Event`, tokio
//! `Notify`, may `SyncFlag`), reads RSS from `/proc/self/statm` before and after, releases
//! them and exits cleanly (see `common/memory.rs`). The parent prints bytes per parked task.
//!
//! Run: `cargo bench --bench memory` (under `cargo test --benches` it only parks 1,000 tasks
//! per runtime, as a smoke test); restrict runtimes with
//! `EVERGREEN_BENCH_RUNTIMES=evergreen,tokio-ct cargo bench --bench memory`.

mod common;

use common::memory::{measure_in_child, PARKED_TASKS, SMOKE_PARKED_TASKS};
use common::Runtime;

fn main() {
    common::dispatch_child();
    // Under `cargo test --benches` only a quick smoke run.
    let tasks = if common::bench_mode() {
        PARKED_TASKS
    } else {
        SMOKE_PARKED_TASKS
    };
    println!("memory per parked task, {tasks} tasks, fresh process per runtime");
    println!(
        "{:<10} {:>14} {:>14} {:>14}",
        "runtime", "RSS before", "RSS after", "bytes/task"
    );
    for rt in Runtime::selected() {
        match measure_in_child(rt, tasks) {
            Ok(m) => {
                println!(
                    "{:<10} {:>14} {:>14} {:>14.0}",
                    rt.name(),
                    m.rss_before,
                    m.rss_after,
                    m.bytes_per_task()
                );
                if let Some(note) = &m.note {
                    println!("{:<10} note: {note}", "");
                }
            }
            Err(reason) => println!("{:<10} failed: {reason}", rt.name()),
        }
    }
}
