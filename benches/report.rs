//! The headline report: evergreen against tokio and may, in one run, written to
//! `benches/REPORT.md` and printed.
//!
//! Timing is deliberately simple (not criterion): for each workload and runtime the iteration
//! count is doubled until one run takes at least [`TARGET_RUN`], then [`RUNS`] runs are timed
//! and the median time per op is reported; evergreen and tokio-ct, whose ratio the targets
//! are about, are timed in alternation (one run of each per round) and the ratio is the median
//! of the rounds' ratios, so that load from other jobs on a shared machine hits both sides of
//! a ratio alike. The one-way throughput of [`BIG_MESSAGES`] messages
//! is measured once per runtime. Memory per parked task comes from a fresh child process per
//! runtime (see `common/memory.rs`). Each row is compared with tokio `current_thread` and
//! checked against the targets of the issue:
//!
//! | workload         | target |
//! |------------------|--------|
//! | yield            | evergreen ≤ 1/15 of tokio-ct's time |
//! | spawn+join       | evergreen ≤ 1/5 of tokio-ct's time |
//! | queue ping-pong  | evergreen ≤ 1/4 of tokio-ct's time |
//! | parked greenlet  | ≤ 4.5 KiB of RSS each, at 100k |
//!
//! Run: `cargo bench --bench report`; restrict runtimes with `EVERGREEN_BENCH_RUNTIMES`.
//! Under `cargo test --benches` it does a quick smoke run (one short run per cell, 1,000
//! parked tasks) and prints the table without writing `REPORT.md`.

mod common;

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::memory::{measure_in_child, ParkedMemory, PARKED_TASKS, SMOKE_PARKED_TASKS};
use common::{median, Runners, Runtime, Workload};

/// Timed runs per (workload, runtime); the median is reported.
const RUNS: usize = 21;

/// Minimum duration of one timed run; the iteration count is doubled until a run is this long.
const TARGET_RUN: Duration = Duration::from_millis(20);

/// Messages in the one-shot throughput measurement.
const BIG_MESSAGES: u64 = 10_000_000;

/// How much to measure: the full report, or a smoke run under `cargo test --benches`.
struct Settings {
    /// Timed runs per cell.
    runs: usize,
    /// Minimum duration of one timed run.
    target_run: Duration,
    /// Messages in the one-shot throughput measurement.
    big_messages: u64,
    /// Tasks parked in the memory measurement.
    parked_tasks: usize,
}

impl Settings {
    /// The full report.
    const FULL: Settings = Settings {
        runs: RUNS,
        target_run: TARGET_RUN,
        big_messages: BIG_MESSAGES,
        parked_tasks: PARKED_TASKS,
    };

    /// A smoke run: every code path once, quickly.
    const SMOKE: Settings = Settings {
        runs: 1,
        target_run: Duration::ZERO,
        big_messages: 100_000,
        parked_tasks: SMOKE_PARKED_TASKS,
    };
}

/// Memory target: RSS per parked greenlet, in bytes (4.5 KiB).
const MEMORY_TARGET_BYTES: f64 = 4.5 * 1024.0;

/// What evergreen's number must be, at most, as a fraction of tokio-ct's; `None`: no target.
fn ratio_target(workload: Workload) -> Option<(f64, &'static str)> {
    match workload {
        Workload::SpawnJoin => Some((1.0 / 5.0, "≤ 1/5")),
        Workload::Yield => Some((1.0 / 15.0, "≤ 1/15")),
        Workload::PingPong => Some((1.0 / 4.0, "≤ 1/4")),
        Workload::Throughput => None,
    }
}

/// Human-readable row title for a workload.
fn title(workload: Workload) -> &'static str {
    match workload {
        Workload::SpawnJoin => "spawn + join (ns/op)",
        Workload::Yield => "yield (ns/yield)",
        Workload::PingPong => "queue ping-pong (ns/round trip)",
        Workload::Throughput => "one-way throughput (ns/msg)",
    }
}

/// What one op is, for the instruction counts (the callgrind child runs N ops of a workload:
/// a yield op is one yield of each of the two greenlets).
fn op_title(workload: Workload) -> &'static str {
    match workload {
        Workload::SpawnJoin => "spawn + join (one greenlet)",
        Workload::Yield => "yield (one yield of each of two greenlets)",
        Workload::PingPong => "queue ping-pong (one round trip)",
        Workload::Throughput => "one-way throughput (one message)",
    }
}

/// Median ns per op of `workload` on `rt`: calibrates the iteration count, then times
/// `settings.runs` runs.
fn median_ns_per_op(
    settings: &Settings,
    runners: &mut Runners,
    rt: Runtime,
    workload: Workload,
) -> f64 {
    let iters = calibrate(settings, runners, rt, workload);
    let runner = runners.get(rt);
    let mut samples: Vec<f64> = (0..settings.runs)
        .map(|_| runner.run(workload, iters).as_nanos() as f64 / iters as f64)
        .collect();
    median(&mut samples)
}

/// The iteration count for `workload` on `rt`: doubled until one run takes at least
/// `settings.target_run`.
fn calibrate(settings: &Settings, runners: &mut Runners, rt: Runtime, workload: Workload) -> u64 {
    let runner = runners.get(rt);
    let mut iters = 1_000u64;
    loop {
        let elapsed = runner.run(workload, iters);
        if elapsed >= settings.target_run || iters >= 1 << 26 {
            return iters;
        }
        iters *= 2;
    }
}

/// evergreen and tokio-ct timed in alternation on one workload: each round times one run of
/// each, back to back, so that a change in the load of a shared machine hits both numbers
/// of a round alike.
struct Paired {
    /// Median ns per op of evergreen's runs.
    evergreen_ns: f64,
    /// Median ns per op of tokio-ct's runs.
    tokio_ns: f64,
    /// Median over the rounds of evergreen's time ÷ tokio-ct's time in that round.
    ratio: f64,
}

/// Measures `workload` on evergreen and tokio-ct in alternation (see [`Paired`]).
fn paired(settings: &Settings, runners: &mut Runners, workload: Workload) -> Paired {
    let e_iters = calibrate(settings, runners, Runtime::Evergreen, workload);
    let t_iters = calibrate(settings, runners, Runtime::TokioCurrentThread, workload);
    let (mut e, mut t, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.runs {
        let en = runners
            .get(Runtime::Evergreen)
            .run(workload, e_iters)
            .as_nanos() as f64
            / e_iters as f64;
        let tn = runners
            .get(Runtime::TokioCurrentThread)
            .run(workload, t_iters)
            .as_nanos() as f64
            / t_iters as f64;
        e.push(en);
        t.push(tn);
        r.push(en / tn);
    }
    Paired {
        evergreen_ns: median(&mut e),
        tokio_ns: median(&mut t),
        ratio: median(&mut r),
    }
}

/// One runtime's results; `None` where the measurement failed.
struct Column {
    rt: Runtime,
    ns_per_op: Vec<Option<f64>>,
    big_throughput: Option<Duration>,
    memory: Result<ParkedMemory, String>,
}

/// Runs `f`, turning a panic into `None` (the panic message is already on stderr).
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(_) => {
            eprintln!("report: {what} failed; reported as an error");
            None
        }
    }
}

/// Measures every workload, the 10M throughput and the parked memory of `rt`. `pairs` holds
/// the alternating evergreen / tokio-ct measurements, when both runtimes are selected: their
/// timed cells come from there.
fn measure(
    settings: &Settings,
    runners: &mut Runners,
    rt: Runtime,
    pairs: &[Option<Paired>],
) -> Column {
    let mut ns_per_op = Vec::new();
    for (row, workload) in Workload::ALL.into_iter().enumerate() {
        let started = Instant::now();
        let from_pair = pairs
            .get(row)
            .and_then(Option::as_ref)
            .and_then(|p| match rt {
                Runtime::Evergreen => Some(p.evergreen_ns),
                Runtime::TokioCurrentThread => Some(p.tokio_ns),
                _ => None,
            });
        let value = match from_pair {
            Some(ns) => Some(ns),
            None => guarded(&format!("{} on {}", workload.name(), rt.name()), || {
                median_ns_per_op(settings, runners, rt, workload)
            }),
        };
        eprintln!(
            "report: {:<10} {:<20} {:>12} ({:.1} s)",
            rt.name(),
            workload.name(),
            value.map_or("error".to_string(), |ns| format!("{ns:.1} ns/op")),
            started.elapsed().as_secs_f64()
        );
        ns_per_op.push(value);
    }
    let big_throughput = guarded(&format!("10M messages on {}", rt.name()), || {
        runners
            .get(rt)
            .run(Workload::Throughput, settings.big_messages)
    });
    let memory = measure_in_child(rt, settings.parked_tasks);
    Column {
        rt,
        ns_per_op,
        big_throughput,
        memory,
    }
}

/// `10M`, `100k` or the plain number.
fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.checked_rem(1_000_000) == Some(0) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.checked_rem(1_000) == Some(0) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// Formats a nanosecond value with a precision that suits its size.
fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

/// PASS/FAIL cell for `value ≤ limit`; `n/a` when there is no value.
fn verdict(value: Option<f64>, limit: f64) -> &'static str {
    match value {
        Some(v) if v <= limit => "PASS",
        Some(_) => "FAIL",
        None => "n/a",
    }
}

/// A few facts about the machine, for the report header.
fn machine() -> String {
    let cpu = common::cpu::cpu_model();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".to_string());
    format!("{cpu}, {cores} cores available, Linux {kernel}")
}

/// Renders the markdown report.
fn render(settings: &Settings, columns: &[Column], pairs: &[Option<Paired>]) -> String {
    let tokio_ct = columns
        .iter()
        .position(|c| c.rt == Runtime::TokioCurrentThread);
    let evergreen = columns.iter().position(|c| c.rt == Runtime::Evergreen);
    let mut md = String::new();
    let _ = writeln!(md, "# evergreen benchmark report\n");
    let _ = writeln!(
        md,
        "Generated by `cargo bench --bench report` (benches/report.rs) on: {}.\n",
        machine()
    );
    let _ = writeln!(
        md,
        "Median of {} timed runs per cell (each run ≥ {} ms, iteration count calibrated \
         per cell); memory from a fresh process per runtime with {} parked tasks. \
         Ratio = evergreen ÷ tokio-ct (time or bytes: lower is better for evergreen). \
         evergreen and tokio-ct are timed in alternation, one run of each per round, and the \
         ratio of a timed row is the median of the {} rounds' ratios, so that a change in the \
         load of a shared machine during the run hits both sides of a ratio alike.\n",
        settings.runs,
        settings.target_run.as_millis(),
        settings.parked_tasks,
        settings.runs
    );

    let _ = write!(md, "| workload |");
    for c in columns {
        let _ = write!(md, " {} |", c.rt.name());
    }
    let _ = writeln!(md, " evergreen ÷ tokio-ct | target | result |");
    let _ = write!(md, "|---|");
    for _ in columns {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md, "---:|---|---|");

    // Timed workloads.
    for (row, workload) in Workload::ALL.into_iter().enumerate() {
        let _ = write!(md, "| {} |", title(workload));
        for c in columns {
            let _ = write!(
                md,
                " {} |",
                c.ns_per_op[row].map_or("error".to_string(), fmt_ns)
            );
        }
        let ratio = match (pairs.get(row).and_then(Option::as_ref), evergreen, tokio_ct) {
            (Some(p), _, _) => Some(p.ratio),
            (None, Some(e), Some(t)) => columns[e].ns_per_op[row]
                .zip(columns[t].ns_per_op[row])
                .map(|(e, t)| e / t),
            _ => None,
        };
        let ratio_cell = ratio.map_or("n/a".to_string(), |r| format!("{r:.3}"));
        match ratio_target(workload) {
            Some((limit, text)) => {
                let _ = writeln!(md, " {ratio_cell} | {text} | {} |", verdict(ratio, limit));
            }
            None => {
                let _ = writeln!(md, " {ratio_cell} | — | — |");
            }
        }
    }

    // 10M messages, once.
    let _ = write!(
        md,
        "| one-way throughput, {} messages once (M msg/s) |",
        count_label(settings.big_messages as usize)
    );
    for c in columns {
        let cell = c.big_throughput.map_or("error".to_string(), |d| {
            format!(
                "{:.1}",
                settings.big_messages as f64 / d.as_secs_f64() / 1e6
            )
        });
        let _ = write!(md, " {cell} |");
    }
    let ratio = match (evergreen, tokio_ct) {
        (Some(e), Some(t)) => columns[e]
            .big_throughput
            .zip(columns[t].big_throughput)
            .map(|(e, t)| e.as_secs_f64() / t.as_secs_f64()),
        _ => None,
    };
    let _ = writeln!(
        md,
        " {} (time) | — | — |",
        ratio.map_or("n/a".to_string(), |r| format!("{r:.3}"))
    );

    // Memory per parked task.
    let _ = write!(
        md,
        "| memory per parked task at {} (bytes) |",
        count_label(settings.parked_tasks)
    );
    for c in columns {
        let cell = match &c.memory {
            Ok(m) if m.note.is_some() => format!("{:.0} ¹", m.bytes_per_task()),
            Ok(m) => format!("{:.0}", m.bytes_per_task()),
            Err(_) => "error".to_string(),
        };
        let _ = write!(md, " {cell} |");
    }
    let memory_of = |i: Option<usize>| {
        i.and_then(|i| columns[i].memory.as_ref().ok())
            .map(ParkedMemory::bytes_per_task)
    };
    let evergreen_bytes = memory_of(evergreen);
    let ratio = evergreen_bytes
        .zip(memory_of(tokio_ct))
        .map(|(e, t)| format!("{:.3}", e / t));
    let _ = writeln!(
        md,
        " {} | ≤ 4.5 KiB ({:.0} B) | {} |",
        ratio.unwrap_or_else(|| "n/a".to_string()),
        MEMORY_TARGET_BYTES,
        verdict(evergreen_bytes, MEMORY_TARGET_BYTES)
    );

    // Notes.
    let _ = writeln!(md, "\nNotes:\n");
    for c in columns {
        match &c.memory {
            Ok(m) => {
                if let Some(note) = &m.note {
                    let _ = writeln!(
                        md,
                        "- ¹ {}: memory measured with {} parked tasks: {note}.",
                        c.rt.name(),
                        m.tasks
                    );
                }
            }
            Err(reason) => {
                let _ = writeln!(md, "- {}: memory measurement failed: {reason}", c.rt.name());
            }
        }
    }
    let _ = writeln!(
        md,
        "- Runtimes: evergreen (one thread, cooperative hub); tokio-ct = tokio `current_thread`; \
         tokio-mt2 = tokio `multi_thread` (work-stealing) with 2 workers; may-1 / may-2 = may \
         with 1 / 2 workers, each in its own child process because may's worker count is \
         process-global and fixed at first use (pinning off)."
    );
    let _ = writeln!(
        md,
        "- Every number is timed inside the runtime by a driver task (greenlet / task / \
         coroutine), so entering the runtime from `main` is not counted."
    );
    let _ = writeln!(
        md,
        "- yield: two tasks each yield N times (evergreen `sleep(Duration::ZERO)`, \
         `tokio::task::yield_now`, `may::coroutine::yield_now`); time ÷ 2N. On the 2-worker \
         runtimes the two tasks can run in parallel, so that is wall time per yield."
    );
    let _ = writeln!(
        md,
        "- queue ping-pong: evergreen unbounded `Queue`, tokio unbounded `mpsc`, may `mpsc`. \
         One-way throughput: bounded queue of {} (evergreen `Queue::bounded`, tokio `mpsc::channel`); \
         may has no bounded channel, so it uses its unbounded `mpsc`.",
        common::THROUGHPUT_QUEUE_CAPACITY
    );
    let _ = writeln!(
        md,
        "- Parked tasks wait on one shared object: evergreen `Event`, tokio `Notify`, may \
         `SyncFlag`; RSS from `/proc/self/statm`, after − before, ÷ tasks."
    );
    md
}

/// Child flag: `--callgrind-child <workload|raw> <iters>` runs that many ops of one evergreen
/// workload (or raw corosensei round trips) and exits; the parent runs it under callgrind.
const CALLGRIND_CHILD: &str = "--callgrind-child";

/// Iterations counted under callgrind: the count of `2 × N` minus the count of `N` ops,
/// divided by `N`, is the cost of one op without the start-up and tear-down.
const CALLGRIND_ITERS: u64 = 20_000;

fn callgrind_child() {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == CALLGRIND_CHILD) else {
        return;
    };
    let what = args.get(i + 1).cloned().unwrap_or_default();
    let iters: u64 = args.get(i + 2).and_then(|n| n.parse().ok()).unwrap_or(1000);
    if what == "raw" {
        // Two raw resume+suspend round trips of one corosensei coroutine per op: the floor
        // under a spawn + join (the greenlet runs, then the joiner runs again).
        let mut co = corosensei::Coroutine::new(|y: &corosensei::Yielder<(), ()>, ()| loop {
            y.suspend(())
        });
        for _ in 0..2 * iters {
            std::hint::black_box(co.resume(()));
        }
        std::process::exit(0);
    }
    let workload = Workload::from_name(&what).unwrap_or_else(|| panic!("unknown workload {what}"));
    let mut runner = common::runner(Runtime::Evergreen);
    runner.run(workload, iters);
    std::process::exit(0);
}

/// Instructions of one run of this binary as a callgrind child, or `None` without valgrind.
fn callgrind_instructions(what: &str, iters: u64) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args([CALLGRIND_CHILD, what, &iters.to_string()])
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

/// Instructions per op of `what` (see [`CALLGRIND_ITERS`]).
fn instructions_per_op(what: &str) -> Option<f64> {
    let one = callgrind_instructions(what, CALLGRIND_ITERS)?;
    let two = callgrind_instructions(what, 2 * CALLGRIND_ITERS)?;
    Some(two.saturating_sub(one) as f64 / CALLGRIND_ITERS as f64)
}

/// The callgrind section of the report: machine-independent instruction counts.
fn render_instructions() -> String {
    let mut md = String::new();
    let Some(raw) = instructions_per_op("raw") else {
        return "\nInstruction counts: valgrind not found (install it for the callgrind section).\n"
            .to_string();
    };
    let _ = writeln!(
        md,
        "\n## Instructions per operation (callgrind)\n\nCounted by `valgrind --tool=callgrind` \
         (the same on every CPU): the count of {} ops subtracted from the count of {} ops, \
         divided by {}. The floor is two raw corosensei resume + suspend round trips \
         ({raw:.0} instructions): a spawn + join switches into the new greenlet and back to the \
         joiner.\n",
        CALLGRIND_ITERS,
        2 * CALLGRIND_ITERS,
        CALLGRIND_ITERS
    );
    let _ = writeln!(md, "| op | instructions/op | ÷ two raw round trips |");
    let _ = writeln!(md, "|---|---:|---:|");
    let _ = writeln!(
        md,
        "| two raw corosensei resume + suspend round trips | {raw:.0} | 1.0 |"
    );
    for w in Workload::ALL {
        match instructions_per_op(w.name()) {
            Some(n) => {
                let _ = writeln!(md, "| {} | {n:.0} | {:.1} |", op_title(w), n / raw);
            }
            None => {
                let _ = writeln!(md, "| {} | error | |", op_title(w));
            }
        }
    }
    md
}

fn main() {
    callgrind_child();
    common::dispatch_child();
    let started = Instant::now();
    let bench_mode = common::bench_mode();
    let settings = if bench_mode {
        Settings::FULL
    } else {
        Settings::SMOKE
    };
    let mut runners = Runners::default();
    let selected = Runtime::selected();
    let both =
        selected.contains(&Runtime::Evergreen) && selected.contains(&Runtime::TokioCurrentThread);
    let pairs: Vec<Option<Paired>> = Workload::ALL
        .into_iter()
        .map(|w| {
            if !both || ratio_target(w).is_none() {
                return None;
            }
            let started = Instant::now();
            let p = guarded(&format!("{} on evergreen / tokio-ct", w.name()), || {
                paired(&settings, &mut runners, w)
            });
            if let Some(p) = &p {
                eprintln!(
                    "report: {:<20} evergreen {:.1} ns/op, tokio-ct {:.1} ns/op, ratio {:.3} ({:.1} s)",
                    w.name(),
                    p.evergreen_ns,
                    p.tokio_ns,
                    p.ratio,
                    started.elapsed().as_secs_f64()
                );
            }
            p
        })
        .collect();
    let columns: Vec<Column> = selected
        .into_iter()
        .map(|rt| measure(&settings, &mut runners, rt, &pairs))
        .collect();
    drop(runners);
    let mut md = render(&settings, &columns, &pairs);
    if bench_mode {
        md.push_str(&render_instructions());
    }
    if !bench_mode {
        println!("{md}");
        println!("(smoke run under `cargo test`: REPORT.md not written)");
        return;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/REPORT.md");
    std::fs::write(&path, &md).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("{md}");
    println!(
        "(written to {} in {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
