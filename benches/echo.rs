//! TCP echo over loopback: round trips per second, evergreen against tokio, may and blocking
//! std threads, each running both the server and the clients in the same process.
//!
//! One run: a server on `127.0.0.1:0` echoes whatever it reads; [`FULL`] opens 100
//! connections, and on each a client does 10,000 round trips of 64 bytes (`write_all` 64 bytes,
//! then `read_exact` 64 bytes; the server does `read_exact` 64 then `write_all` 64). Every
//! socket has `TCP_NODELAY`. The clock starts once all connections are established and the
//! server has accepted them, just before the client tasks are spawned, and stops when the
//! last client has finished; rate = connections × round trips ÷ elapsed.
//!
//! | name          | server | clients |
//! |---------------|--------|---------|
//! | `evergreen`   | `net::StreamServer` (a greenlet per connection) | a greenlet per connection |
//! | `tokio-ct`    | `current_thread`: an acceptor task, a task per connection | a task per connection |
//! | `tokio-mt2`   | the same on `multi_thread` with 2 workers | a task per connection |
//! | `may-1/2`     | an acceptor coroutine, a coroutine per connection (child process) | a coroutine per connection |
//! | `std-threads` | an acceptor thread, an OS thread per connection | an OS thread per connection |
//! | `evergreen-2hubs` | greenlets on a hub on one OS thread | greenlets on a second hub on another OS thread |
//!
//! The may variants run in a child process each (may's worker count is process-global, see
//! `common/mod.rs`): the parent re-executes this binary as `<exe> --only may-N ...` and reads
//! the elapsed times it prints.
//!
//! Run: `cargo bench --bench echo` (median of [`RUNS`] runs per runtime; prints the table and
//! writes `benches/ECHO.md`). Restrict runtimes with `EVERGREEN_BENCH_RUNTIMES` (names as
//! above, e.g. `evergreen,tokio-ct,std-threads`). Under `cargo test --benches` it does a smoke
//! run (4 connections × 100 round trips, one run) and writes nothing.
//!
//! One runtime in this process, no table (used by `benches/strace_echo.sh` to count syscalls
//! with `strace -f -c`):
//!
//! ```text
//! <exe> --only <runtime> [--conns N] [--trips N] [--runs N]
//! ```
//!
//! prints one `elapsed_ns <n>` line per run, then a human-readable summary.

mod common;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::echo::{evergreen_2hubs_echo, evergreen_echo, may_echo, std_echo, tokio_echo, MESSAGE};
use common::{median, Runtime, RUNTIMES_ENV};

/// Timed runs per runtime in the full benchmark; the median is reported.
const RUNS: usize = 3;

/// Name of the blocking std-threads contender (not a [`Runtime`]: no task scheduler at all).
const STD_THREADS: &str = "std-threads";

/// Flag that runs a single runtime in this process (see the module docs).
const ONLY_FLAG: &str = "--only";

/// Prefix of the per-run lines printed by `--only`, parsed by the parent for may.
const ELAPSED_PREFIX: &str = "elapsed_ns ";

/// First line of the syscall section of `ECHO.md`, written by `benches/strace_echo.sh`; kept
/// when this benchmark rewrites the file.
const STRACE_SECTION: &str = "## Syscalls per round trip";

/// Size of one measurement.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// Concurrent connections (and client tasks).
    conns: usize,
    /// Round trips per connection.
    trips: u64,
    /// Timed runs.
    runs: usize,
}

/// The full benchmark: 100 connections × 10,000 round trips, median of [`RUNS`].
const FULL: Settings = Settings {
    conns: 100,
    trips: 10_000,
    runs: RUNS,
};

/// The smoke run under `cargo test --benches`.
const SMOKE: Settings = Settings {
    conns: 4,
    trips: 100,
    runs: 1,
};

impl Settings {
    /// Round trips in one run.
    fn round_trips(self) -> u64 {
        self.conns as u64 * self.trips
    }
}

/// A contender: one of the task runtimes of `common`, or one OS thread per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    /// A task runtime (evergreen, tokio, may).
    Rt(Runtime),
    /// Blocking `std::net` sockets, an OS thread per connection on each side.
    StdThreads,
    /// evergreen with two hubs: the server on one OS thread, the clients on another (one hub
    /// per thread is evergreen's model for using more than one core).
    Evergreen2Hubs,
}

impl Contender {
    /// All contenders, in report order.
    fn all() -> Vec<Contender> {
        Runtime::ALL
            .into_iter()
            .map(Contender::Rt)
            .chain([Contender::Evergreen2Hubs, Contender::StdThreads])
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Contender::Rt(rt) => rt.name(),
            Contender::StdThreads => STD_THREADS,
            Contender::Evergreen2Hubs => "evergreen-2hubs",
        }
    }

    fn from_name(name: &str) -> Option<Contender> {
        Contender::all().into_iter().find(|c| c.name() == name)
    }

    /// The contenders selected by [`RUNTIMES_ENV`] (all when unset or empty).
    fn selected() -> Vec<Contender> {
        match std::env::var(RUNTIMES_ENV) {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    Contender::from_name(name.trim()).unwrap_or_else(|| {
                        panic!(
                            "{RUNTIMES_ENV}: unknown runtime {name:?}; known: {}",
                            known()
                        )
                    })
                })
                .collect(),
            _ => Contender::all(),
        }
    }
}

/// The contender names, for error messages.
fn known() -> String {
    Contender::all()
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `settings.runs` timed runs of `contender` in this process and returns their times.
/// For may this configures may, so it must be the only may use of the process.
fn run_in_process(contender: Contender, settings: Settings) -> Vec<Duration> {
    let Settings { conns, trips, runs } = settings;
    match contender {
        Contender::Rt(Runtime::Evergreen) => (0..runs)
            .map(|_| evergreen_echo::run(conns, trips))
            .collect(),
        Contender::Rt(Runtime::TokioCurrentThread) => {
            let rt = tokio_echo::TokioEcho::current_thread();
            (0..runs).map(|_| rt.run(conns, trips)).collect()
        }
        Contender::Rt(Runtime::TokioMultiThread2) => {
            let rt = tokio_echo::TokioEcho::multi_thread(2);
            (0..runs).map(|_| rt.run(conns, trips)).collect()
        }
        Contender::Rt(Runtime::May1) | Contender::Rt(Runtime::May2) => {
            let workers = if contender == Contender::Rt(Runtime::May1) {
                1
            } else {
                2
            };
            common::may_rt::configure(workers);
            (0..runs).map(|_| may_echo::run(conns, trips)).collect()
        }
        Contender::StdThreads => (0..runs).map(|_| std_echo::run(conns, trips)).collect(),
        Contender::Evergreen2Hubs => (0..runs)
            .map(|_| evergreen_2hubs_echo::run(conns, trips))
            .collect(),
    }
}

/// Runs `contender` in a child process (`<exe> --only <name> ...`) and returns its times.
fn run_in_child(contender: Contender, settings: Settings) -> Vec<Duration> {
    let exe = std::env::current_exe().expect("path of the running bench binary");
    let output = Command::new(exe)
        .args([ONLY_FLAG, contender.name()])
        .args(["--conns", &settings.conns.to_string()])
        .args(["--trips", &settings.trips.to_string()])
        .args(["--runs", &settings.runs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start echo child process");
    assert!(
        output.status.success(),
        "echo child for {} failed: {}",
        contender.name(),
        output.status
    );
    let times: Vec<Duration> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(ELAPSED_PREFIX))
        .map(|n| Duration::from_nanos(n.trim().parse().expect("child elapsed_ns")))
        .collect();
    assert_eq!(
        times.len(),
        settings.runs,
        "echo child for {} reported {} runs",
        contender.name(),
        times.len()
    );
    times
}

/// Round trips per second of one run.
fn rate(settings: Settings, elapsed: Duration) -> f64 {
    settings.round_trips() as f64 / elapsed.as_secs_f64()
}

/// The `--only` mode: runs one contender here, prints each run's time and a summary.
fn only_main(name: &str, settings: Settings) {
    let contender = Contender::from_name(name)
        .unwrap_or_else(|| panic!("{ONLY_FLAG}: unknown runtime {name:?}; known: {}", known()));
    let times = run_in_process(contender, settings);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for t in &times {
        writeln!(out, "{ELAPSED_PREFIX}{}", t.as_nanos()).expect("write stdout");
    }
    let mut rates: Vec<f64> = times.iter().map(|t| rate(settings, *t)).collect();
    writeln!(
        out,
        "echo {}: {} conns × {} round trips × {} runs: median {:.0} round trips/s",
        contender.name(),
        settings.conns,
        settings.trips,
        settings.runs,
        if rates.is_empty() {
            0.0
        } else {
            median(&mut rates)
        }
    )
    .expect("write stdout");
}

/// One row of the table.
struct Row {
    contender: Contender,
    /// Median round trips per second; `None` if it failed.
    rate: Option<f64>,
    /// Every run's rate, in run order.
    samples: Vec<f64>,
}

/// Measures `contender` (in a child process for may) and logs the result on stderr.
fn measure(contender: Contender, settings: Settings) -> Row {
    let started = Instant::now();
    let times = std::panic::catch_unwind(|| match contender {
        Contender::Rt(Runtime::May1) | Contender::Rt(Runtime::May2) => {
            run_in_child(contender, settings)
        }
        _ => run_in_process(contender, settings),
    });
    let samples: Vec<f64> = match &times {
        Ok(times) => times.iter().map(|t| rate(settings, *t)).collect(),
        Err(_) => Vec::new(),
    };
    let rate = (!samples.is_empty()).then(|| median(&mut samples.clone()));
    eprintln!(
        "echo: {:<11} {:>12} round trips/s (median of {}; {:.1} s)",
        contender.name(),
        rate.map_or("error".to_string(), |r| format!("{r:.0}")),
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    Row {
        contender,
        rate,
        samples,
    }
}

/// Renders the table (and the notes) as markdown.
fn render(settings: Settings, rows: &[Row]) -> String {
    let rate_of = |rt: Runtime| {
        rows.iter()
            .find(|r| r.contender == Contender::Rt(rt))
            .and_then(|r| r.rate)
    };
    let tokio_ct = rate_of(Runtime::TokioCurrentThread);
    let tokio_mt2 = rate_of(Runtime::TokioMultiThread2);
    let ratio = |rate: Option<f64>, base: Option<f64>| {
        rate.zip(base)
            .map_or("n/a".to_string(), |(r, b)| format!("{:.2}", r / b))
    };
    let mut md = String::new();
    md.push_str("| runtime | round trips/s (median) | ÷ tokio-ct | ÷ tokio-mt2 | runs |\n");
    md.push_str("|---|---:|---:|---:|---|\n");
    for row in rows {
        let runs: Vec<String> = row.samples.iter().map(|r| format!("{r:.0}")).collect();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.contender.name(),
            row.rate.map_or("error".to_string(), |r| format!("{r:.0}")),
            ratio(row.rate, tokio_ct),
            ratio(row.rate, tokio_mt2),
            runs.join(", ")
        ));
    }
    md.push_str(&format!(
        "\n{} connections × {} round trips of {MESSAGE} bytes per run ({} round trips), \
         median of {} runs. Ratios are throughput ratios (higher is better).\n",
        settings.conns,
        settings.trips,
        settings.round_trips(),
        settings.runs
    ));
    md
}

/// Writes `benches/ECHO.md`, keeping the syscall section `strace_echo.sh` wrote, if any.
fn write_report(table: &str, settings: Settings) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/ECHO.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let strace_section = old
        .find(STRACE_SECTION)
        .map(|i| old[i..].to_string())
        .unwrap_or_else(|| {
            format!("{STRACE_SECTION}\n\nNot measured yet: run `benches/strace_echo.sh`.\n")
        });
    let cpu = common::cpu::cpu_model();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let md = format!(
        "# TCP echo benchmark\n\n\
         ## TCP echo\n\n\
         Generated by `cargo bench --bench echo` (benches/echo.rs) on: {cpu}, {cores} cores \
         available. Server and clients of each runtime run in one process, over 127.0.0.1, \
         TCP_NODELAY on every socket; one round trip = the client writes {MESSAGE} bytes, \
         the server reads them and writes them back, the client reads {MESSAGE} bytes \
         (`write_all` / `read_exact`, a fixed {MESSAGE}-byte buffer). The clock starts once \
         every connection is established and accepted, and stops when the last client is \
         done.\n\n\
         {table}\n\
         - evergreen: `net::StreamServer` (a greenlet per connection) and a client greenlet \
         per connection, one thread.\n\
         - tokio-ct / tokio-mt2: tokio `current_thread` / `multi_thread` with 2 workers; an \
         acceptor task, a task per server connection, a task per client.\n\
         - may-1 / may-2: may with 1 / 2 workers, in a child process each (worker count is \
         process-global); a coroutine per server connection and per client.\n\
         - evergreen-2hubs: evergreen with one hub per OS thread (its model for using more \
         than one core): the server's greenlets on one thread, the clients' on another.\n\
         - std-threads: blocking `std::net`, an OS thread per connection on each side \
         ({} threads).\n\n\
         {strace_section}",
        2 * settings.conns
    );
    std::fs::write(&path, md).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The value after `flag` on the command line, parsed.
fn flag<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    let i = args.iter().position(|a| a == flag)?;
    let value = args
        .get(i + 1)
        .unwrap_or_else(|| panic!("{flag} needs a value"));
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{flag}: bad value {value:?}")),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench_mode = common::bench_mode();
    let only: Option<String> = flag(&args, ONLY_FLAG);
    let base = if bench_mode || only.is_some() {
        FULL
    } else {
        SMOKE
    };
    let settings = Settings {
        conns: flag(&args, "--conns").unwrap_or(base.conns),
        trips: flag(&args, "--trips").unwrap_or(base.trips),
        runs: flag(&args, "--runs").unwrap_or(base.runs),
    };
    if let Some(name) = only {
        only_main(&name, settings);
        return;
    }
    let started = Instant::now();
    eprintln!(
        "echo: {} conns × {} round trips × {} runs per runtime",
        settings.conns, settings.trips, settings.runs
    );
    let rows: Vec<Row> = Contender::selected()
        .into_iter()
        .map(|c| measure(c, settings))
        .collect();
    let table = render(settings, &rows);
    println!("{table}");
    if !bench_mode {
        println!("(smoke run under `cargo test`: ECHO.md not written)");
        return;
    }
    let path = write_report(&table, settings);
    println!(
        "(written to {} in {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        rows.iter().all(|r| r.rate.is_some()),
        "some runtimes failed"
    );
}
