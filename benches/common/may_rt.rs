//! The workloads on may, run in a child process per worker count.
//!
//! may reads its worker count once, when its scheduler starts, from a process-global setting
//! (`may::config().set_workers(n)`), so one process can only ever run one may configuration.
//! [`MayChild`] re-executes the current bench binary as `<exe> --may-child <workers>`; the
//! child ([`serve_child`]) configures may before first use and then answers requests on its
//! stdin/stdout:
//!
//! ```text
//! parent → child   "<workload> <iters>\n"     e.g. "yield 100000"
//! child  → parent  "<elapsed nanoseconds>\n"  measured inside a may coroutine
//! ```
//!
//! The child exits when its stdin closes (the parent drops the [`MayChild`]).
//! Worker pinning is switched off (`set_worker_pin(false)`) so may, like tokio and evergreen,
//! leaves thread placement to the OS scheduler.

use std::any::Any;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::panic::AssertUnwindSafe;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use may::go;
use may::sync::{mpsc, SyncFlag};

use super::memory::{prefaulted_vec, rss_bytes, ParkedMemory};
use super::{Runner, Workload};

/// Command-line flag that turns a bench binary into a may child serving timing requests.
pub const CHILD_FLAG: &str = "--may-child";

/// Line a child prints once may is configured and it is ready for requests.
const READY: &str = "ready";

/// Parent-side handle of a may child process with a fixed number of workers.
pub struct MayChild {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    workers: usize,
}

impl MayChild {
    /// Starts `<current exe> --may-child <workers>` and waits until it is ready.
    pub fn start(workers: usize) -> Self {
        let exe = std::env::current_exe().expect("path of the running bench binary");
        let mut child = Command::new(exe)
            .arg(CHILD_FLAG)
            .arg(workers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start may child process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("child stdout is piped"));
        let mut this = MayChild {
            child,
            stdin,
            stdout,
            workers,
        };
        let line = this.read_line();
        assert_eq!(line, READY, "may child sent {line:?} instead of {READY:?}");
        this
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read from may child");
        assert!(
            n > 0,
            "may child ({} workers) exited unexpectedly; see its stderr above",
            self.workers
        );
        line.trim().to_string()
    }
}

impl Runner for MayChild {
    fn run(&mut self, workload: Workload, iters: u64) -> Duration {
        let stdin = self.stdin.as_mut().expect("may child stdin is open");
        writeln!(stdin, "{} {iters}", workload.name()).expect("write to may child");
        stdin.flush().expect("flush to may child");
        let line = self.read_line();
        let nanos: u64 = line
            .parse()
            .unwrap_or_else(|_| panic!("may child answered {line:?}, not nanoseconds"));
        Duration::from_nanos(nanos)
    }
}

impl Drop for MayChild {
    fn drop(&mut self) {
        // Closing stdin tells the child to exit.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Configures may for this process: `workers` worker threads, no core pinning.
/// Must run before anything else in the process touches may.
pub fn configure(workers: usize) {
    may::config().set_workers(workers);
    may::config().set_worker_pin(false);
}

/// Body of a may child process: configures may with `workers` workers, prints [`READY`],
/// then serves `<workload> <iters>` requests from stdin until it closes.
pub fn serve_child(workers: usize) {
    configure(workers);
    // Start the scheduler now so its start-up cost is not in the first measurement.
    go!(|| {}).join().expect("may warm-up coroutine");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "{READY}").expect("write to parent");
    out.flush().expect("flush to parent");
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read request from parent");
        let mut parts = line.split_whitespace();
        let (Some(name), Some(iters), None) = (parts.next(), parts.next(), parts.next()) else {
            panic!("may child: malformed request {line:?}");
        };
        let workload = Workload::from_name(name)
            .unwrap_or_else(|| panic!("may child: unknown workload {name:?}"));
        let iters: u64 = iters
            .parse()
            .unwrap_or_else(|_| panic!("may child: bad iteration count {iters:?}"));
        let elapsed = run_in_process(workload, iters);
        writeln!(out, "{}", elapsed.as_nanos()).expect("write to parent");
        out.flush().expect("flush to parent");
    }
}

/// Runs `workload` for `iters` ops inside a may driver coroutine of this process.
pub fn run_in_process(workload: Workload, iters: u64) -> Duration {
    go!(move || match workload {
        Workload::SpawnJoin => spawn_join(iters),
        Workload::Yield => yield_ping_pong(iters),
        Workload::PingPong => queue_ping_pong(iters),
        Workload::Throughput => one_way_throughput(iters),
    })
    .join()
    .expect("may driver coroutine panicked")
}

/// Time for `iters` × (spawn a coroutine returning a small value, join it).
fn spawn_join(iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let value = go!(move || black_box(i))
            .join()
            .expect("spawned coroutine panicked");
        black_box(value);
    }
    start.elapsed()
}

/// Time per `iters` yields: two coroutines each call `may::coroutine::yield_now` `iters` times.
fn yield_ping_pong(iters: u64) -> Duration {
    let start = Instant::now();
    let yielder = move || {
        for _ in 0..iters {
            may::coroutine::yield_now();
        }
    };
    let a = go!(yielder);
    let b = go!(yielder);
    a.join().expect("yielder panicked");
    b.join().expect("yielder panicked");
    start.elapsed() / 2
}

/// Time for `iters` round trips over two `may::sync::mpsc` channels.
fn queue_ping_pong(iters: u64) -> Duration {
    let start = Instant::now();
    let (to_b, from_a) = mpsc::channel::<u64>();
    let (to_a, from_b) = mpsc::channel::<u64>();
    let b = go!(move || {
        for _ in 0..iters {
            let v = from_a.recv().expect("ping channel closed");
            to_a.send(v).expect("pong channel closed");
        }
    });
    let a = go!(move || {
        for i in 0..iters {
            to_b.send(i).expect("ping channel closed");
            let v = from_b.recv().expect("pong channel closed");
            debug_assert_eq!(v, i);
        }
    });
    a.join().expect("pinger panicked");
    b.join().expect("ponger panicked");
    start.elapsed()
}

/// Time for a producer coroutine to send `iters` messages through a `may::sync::mpsc`
/// channel (unbounded: may has no bounded channel) to a consumer coroutine, until the
/// consumer has received the last one.
fn one_way_throughput(iters: u64) -> Duration {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<u64>();
    let consumer = go!(move || {
        let mut sum = 0u64;
        for _ in 0..iters {
            sum = sum.wrapping_add(rx.recv().expect("channel closed early"));
        }
        sum
    });
    let producer = go!(move || {
        for i in 0..iters {
            tx.send(i).expect("consumer gone");
        }
    });
    producer.join().expect("producer panicked");
    let sum = consumer.join().expect("consumer panicked");
    let elapsed = start.elapsed();
    black_box(sum);
    elapsed
}

/// Memory per parked coroutine: spawns `n` coroutines (default may stack size) that each wait
/// on one shared `may::sync::SyncFlag`, measures RSS once all of them are parked, then fires
/// the flag and joins them all. Call [`configure`] first.
///
/// may gives every coroutine stack its own mapping plus a guard page, i.e. two memory maps, so
/// Linux's default `vm.max_map_count` (65530) stops it at about 32k live coroutines, and
/// running into that limit aborts the process (other threads' allocations fail too). So the
/// count is capped below the limit (two maps per coroutine, with a margin), a stack
/// allocation panic is still caught, and [`ParkedMemory::note`] says how many were parked.
pub fn parked_memory(n: usize) -> ParkedMemory {
    // Start the scheduler so its threads and first stack are not counted.
    go!(|| {}).join().expect("may warm-up coroutine");
    let release = Arc::new(SyncFlag::new());
    let parked = Arc::new(AtomicUsize::new(0));
    let mut handles = prefaulted_vec(n);
    let mut note = None;
    let limit = max_map_count().parse::<usize>().ok();
    let budget = limit.map_or(n, |limit| {
        limit.saturating_sub(map_count() + MAP_MARGIN) / MAPS_PER_COROUTINE
    });
    let target = n.min(budget);
    if target < n {
        note = Some(format!(
            "capped at {target} of {n} coroutines: each may stack takes {MAPS_PER_COROUTINE} \
             memory maps (stack + guard page) and vm.max_map_count = {}",
            max_map_count()
        ));
    }
    let before = rss_bytes();
    for k in 0..target {
        let release = release.clone();
        let parked = parked.clone();
        let spawned = std::panic::catch_unwind(AssertUnwindSafe(|| {
            go!(move || {
                parked.fetch_add(1, Ordering::Relaxed);
                release.wait();
            })
        }));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(payload) => {
                note = Some(format!(
                    "only {k} of {n} coroutines could be spawned ({}; vm.max_map_count = {})",
                    panic_message(payload.as_ref()),
                    max_map_count(),
                ));
                break;
            }
        }
    }
    let spawned = handles.len();
    while parked.load(Ordering::Relaxed) < spawned {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the last coroutines reach their wait.
    std::thread::sleep(Duration::from_millis(10));
    let after = rss_bytes();
    release.fire();
    for handle in handles {
        handle.join().expect("parked coroutine panicked");
    }
    ParkedMemory {
        tasks: spawned,
        rss_before: before,
        rss_after: after,
        note,
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// Memory maps one may coroutine stack uses: the stack and its guard page.
const MAPS_PER_COROUTINE: usize = 2;

/// Memory maps left free for everything else (heap growth, thread stacks) when capping.
const MAP_MARGIN: usize = 2_000;

/// Number of memory maps of this process (lines of `/proc/self/maps`).
fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |maps| maps.lines().count())
}

/// `/proc/sys/vm/max_map_count`, or `?` if it cannot be read.
fn max_map_count() -> String {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}
