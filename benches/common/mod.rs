//! Code shared by the `scheduling`, `memory` and `report` bench targets.
//!
//! Every workload is written once per runtime, in the runtime's own idiom, and timed *inside*
//! the runtime: a driver task (greenlet, tokio task or may coroutine) takes the start time,
//! runs the workload and returns the elapsed time. So the cost of entering the runtime from
//! `main` (`block_on`, the first hub switch, a thread hand-off) is never part of a number.
//!
//! # The runtimes
//!
//! | name        | what it is |
//! |-------------|------------|
//! | `evergreen` | this workspace's hub: one thread, cooperative, FIFO run queue |
//! | `tokio-ct`  | tokio `current_thread` runtime |
//! | `tokio-mt2` | tokio `multi_thread` runtime (work-stealing) with 2 worker threads |
//! | `may-1`     | may (stackful, work-stealing) with 1 worker |
//! | `may-2`     | may with 2 workers |
//!
//! # Why may runs in a child process
//!
//! may's configuration (`may::config().set_workers(n)`) is process-global and is read once,
//! when its scheduler starts on first use; later calls have no effect. To compare 1 and 2
//! workers in the same run, each may variant lives in its own child process: the bench binary
//! re-executes itself as `<exe> --may-child <workers>`, the child configures may before its
//! first use, and then serves requests `<workload> <iters>` on stdin, answering with the
//! elapsed nanoseconds it measured itself (see [`may_rt`]). The pipe round trip is therefore
//! not in the measurement, and the child stays warm between criterion samples just like the
//! in-process runtimes do.
//!
//! Memory is measured the same way, one fresh process per runtime (see [`memory`]).

// Each bench target compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod cpu;
pub mod echo;
pub mod evergreen_rt;
pub mod may_rt;
pub mod memory;
pub mod tokio_rt;

use std::time::Duration;

/// Environment variable that restricts which runtimes the `memory` and `report` targets run:
/// a comma-separated list of runtime names (for example `evergreen,tokio-ct`). Default: all.
/// (The criterion target `scheduling` uses criterion's own filter argument instead.)
pub const RUNTIMES_ENV: &str = "EVERGREEN_BENCH_RUNTIMES";

/// Capacity of the bounded queue used by the one-way throughput workload, where the runtime
/// has a bounded queue (evergreen, tokio). may has no bounded channel; it uses its unbounded
/// `mpsc` there.
pub const THROUGHPUT_QUEUE_CAPACITY: usize = 1024;

/// The runtimes under comparison, in the order they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// evergreen's single-threaded cooperative hub.
    Evergreen,
    /// tokio's `current_thread` runtime.
    TokioCurrentThread,
    /// tokio's work-stealing `multi_thread` runtime with 2 workers.
    TokioMultiThread2,
    /// may with 1 worker thread (in a child process).
    May1,
    /// may with 2 worker threads (in a child process).
    May2,
}

impl Runtime {
    /// All runtimes, in report order.
    pub const ALL: [Runtime; 5] = [
        Runtime::Evergreen,
        Runtime::TokioCurrentThread,
        Runtime::TokioMultiThread2,
        Runtime::May1,
        Runtime::May2,
    ];

    /// Short name used in benchmark ids, child-process arguments and the report.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Evergreen => "evergreen",
            Runtime::TokioCurrentThread => "tokio-ct",
            Runtime::TokioMultiThread2 => "tokio-mt2",
            Runtime::May1 => "may-1",
            Runtime::May2 => "may-2",
        }
    }

    /// Inverse of [`Runtime::name`].
    pub fn from_name(name: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|rt| rt.name() == name)
    }

    /// The runtimes selected by [`RUNTIMES_ENV`] (all of them when it is unset or empty).
    pub fn selected() -> Vec<Runtime> {
        match std::env::var(RUNTIMES_ENV) {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    Runtime::from_name(name.trim()).unwrap_or_else(|| {
                        panic!("{RUNTIMES_ENV}: unknown runtime {name:?}; known: evergreen, tokio-ct, tokio-mt2, may-1, may-2")
                    })
                })
                .collect(),
            _ => Runtime::ALL.to_vec(),
        }
    }
}

/// The timed workloads. For each, one "op" is what [`Runner::run`]'s `iters` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// op = spawn a task that returns a small value, then join it and read the value.
    SpawnJoin,
    /// op = one yield. Two tasks each yield `iters` times (alternating on a single-threaded
    /// scheduler); the elapsed time is halved, so the result is time per yield. On the
    /// multi-worker runtimes the two tasks may run in parallel, so this is wall time per yield.
    Yield,
    /// op = one queue round trip: A puts to q1, B gets from q1 and puts to q2, A gets from q2.
    PingPong,
    /// op = one message sent by a producer task and received by a consumer task.
    Throughput,
}

impl Workload {
    /// All workloads, in report order.
    pub const ALL: [Workload; 4] = [
        Workload::SpawnJoin,
        Workload::Yield,
        Workload::PingPong,
        Workload::Throughput,
    ];

    /// Short name used as the criterion group name and in the child-process protocol.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SpawnJoin => "spawn_join",
            Workload::Yield => "yield",
            Workload::PingPong => "queue_ping_pong",
            Workload::Throughput => "one_way_throughput",
        }
    }

    /// Inverse of [`Workload::name`].
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Something that can run a workload `iters` times and report the time it took.
pub trait Runner {
    /// Runs `workload` for `iters` ops inside the runtime and returns the elapsed time
    /// measured inside the runtime (see [`Workload`] for what an op is).
    fn run(&mut self, workload: Workload, iters: u64) -> Duration;
}

/// Creates the runner for `rt`. may runners start their child process here.
pub fn runner(rt: Runtime) -> Box<dyn Runner> {
    match rt {
        Runtime::Evergreen => Box::new(evergreen_rt::EvergreenRunner::new()),
        Runtime::TokioCurrentThread => Box::new(tokio_rt::TokioRunner::current_thread()),
        Runtime::TokioMultiThread2 => Box::new(tokio_rt::TokioRunner::multi_thread(2)),
        Runtime::May1 => Box::new(may_rt::MayChild::start(1)),
        Runtime::May2 => Box::new(may_rt::MayChild::start(2)),
    }
}

/// Lazily created runners, one per runtime, kept for the whole process so that runtimes and
/// may child processes are built once and stay warm.
#[derive(Default)]
pub struct Runners {
    slots: [Option<Box<dyn Runner>>; 5],
}

impl Runners {
    /// The runner for `rt`, created on first use.
    pub fn get(&mut self, rt: Runtime) -> &mut dyn Runner {
        let index = Runtime::ALL
            .iter()
            .position(|r| *r == rt)
            .expect("known runtime");
        self.slots[index].get_or_insert_with(|| runner(rt)).as_mut()
    }
}

/// If this process was started as a child (`--may-child <workers>` or
/// `--memory-child <runtime> [tasks]`), runs the child's job and exits; otherwise returns.
/// Every bench target calls this first thing in `main`.
pub fn dispatch_child() {
    let args: Vec<String> = std::env::args().collect();
    let flag_value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).cloned().unwrap_or_default())
    };
    if let Some(workers) = flag_value(may_rt::CHILD_FLAG) {
        let workers = workers
            .parse()
            .unwrap_or_else(|_| panic!("{}: bad worker count {workers:?}", may_rt::CHILD_FLAG));
        may_rt::serve_child(workers);
        std::process::exit(0);
    }
    if let Some(name) = flag_value(memory::CHILD_FLAG) {
        let rt = Runtime::from_name(&name)
            .unwrap_or_else(|| panic!("{}: unknown runtime {name:?}", memory::CHILD_FLAG));
        let position = args.iter().position(|a| a == memory::CHILD_FLAG);
        let tasks = position
            .and_then(|i| args.get(i + 2))
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("{}: bad task count {n:?}", memory::CHILD_FLAG))
            })
            .unwrap_or(memory::PARKED_TASKS);
        memory::child_main(rt, tasks);
        std::process::exit(0);
    }
}

/// True when cargo runs this target as a benchmark (`cargo bench` passes `--bench`); false
/// when it runs it as a test (`cargo test --benches` / `--all-targets`), where the `memory`
/// and `report` targets only do a quick smoke run and write no file.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Median of `samples` (which must not be empty); sorts in place.
pub fn median(samples: &mut [f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    }
}
