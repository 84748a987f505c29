//! Memory per parked task, one fresh process per runtime.
//!
//! The parent re-executes the current bench binary as `<exe> --memory-child <runtime> <tasks>`.
//! The child builds the runtime, warms it up (one task spawned and joined), reads its resident
//! set size from `/proc/self/status` (`VmRSS`), spawns `<tasks>` ([`PARKED_TASKS`]) tasks that each block on one shared
//! never-yet-signalled object, waits until every one of them has reached its wait, reads RSS
//! again, releases them all, joins them and exits. It prints one line,
//! `parked-memory tasks=<n> before=<bytes> after=<bytes>`, which the parent parses, preceded
//! by `parked-memory-note <text>` when fewer tasks than asked could be parked.
//!
//! The vector that holds the join handles is pre-faulted before the first reading
//! ([`prefaulted_vec`]), so only the tasks themselves are counted.
//!
//! A fresh process per runtime keeps one runtime's freed-but-retained heap and stacks from
//! hiding another's growth. RSS counts what the tasks really touched (stack pages, task
//! structs, queue nodes), not address space reserved for stacks.

use std::mem::MaybeUninit;
use std::process::Command;

use super::Runtime;

/// Command-line flag that turns a bench binary into a memory-measuring child.
pub const CHILD_FLAG: &str = "--memory-child";

/// How many tasks are parked at once.
pub const PARKED_TASKS: usize = 100_000;

/// How many tasks are parked in a smoke run (`cargo test --benches`).
pub const SMOKE_PARKED_TASKS: usize = 1_000;

/// The RSS of one process before and after parking `tasks` tasks.
#[derive(Clone, Debug)]
pub struct ParkedMemory {
    /// Number of tasks parked.
    pub tasks: usize,
    /// Resident set size (bytes) with the runtime warmed up, before spawning.
    pub rss_before: u64,
    /// Resident set size (bytes) with all tasks parked.
    pub rss_after: u64,
    /// Set when fewer tasks than asked for could be parked: what stopped the runtime.
    pub note: Option<String>,
}

impl ParkedMemory {
    /// RSS growth per parked task, in bytes.
    pub fn bytes_per_task(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.tasks as f64
    }
}

/// An empty `Vec` with room for `n` handles whose pages are already resident, so that storing
/// the tasks' join handles during the measurement does not count as the tasks' memory.
pub fn prefaulted_vec<T>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    for slot in v.spare_capacity_mut() {
        *slot = MaybeUninit::zeroed();
    }
    // Keep the stores: the compiler must assume the buffer is observed.
    std::hint::black_box(&mut v);
    v
}

/// Resident set size of this process in bytes, from `VmRSS` in `/proc/self/status` (KiB
/// resolution, which is far below what 1,000 parked tasks add).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/self/status"));
    kib * 1024
}

/// Body of a memory child: parks `tasks` tasks on `rt`, prints the result line.
pub fn child_main(rt: Runtime, tasks: usize) {
    let result = match rt {
        Runtime::Evergreen => super::evergreen_rt::parked_memory(tasks),
        Runtime::TokioCurrentThread => {
            super::tokio_rt::parked_memory(&super::tokio_rt::TokioRunner::current_thread(), tasks)
        }
        Runtime::TokioMultiThread2 => {
            super::tokio_rt::parked_memory(&super::tokio_rt::TokioRunner::multi_thread(2), tasks)
        }
        Runtime::May1 => {
            super::may_rt::configure(1);
            super::may_rt::parked_memory(tasks)
        }
        Runtime::May2 => {
            super::may_rt::configure(2);
            super::may_rt::parked_memory(tasks)
        }
    };
    if let Some(note) = &result.note {
        println!("{NOTE_PREFIX}{note}");
    }
    println!(
        "{RESULT_PREFIX}tasks={} before={} after={}",
        result.tasks, result.rss_before, result.rss_after
    );
}

/// Prefix of the result line a memory child prints.
const RESULT_PREFIX: &str = "parked-memory ";

/// Prefix of the optional note line a memory child prints before its result.
const NOTE_PREFIX: &str = "parked-memory-note ";

/// Runs the memory measurement for `rt` with `tasks` parked tasks in a fresh child process.
/// On failure (the child crashed or printed no result) returns a one-line reason, including
/// the last line of the child's stderr.
pub fn measure_in_child(rt: Runtime, tasks: usize) -> Result<ParkedMemory, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let output = Command::new(exe)
        .arg(CHILD_FLAG)
        .arg(rt.name())
        .arg(tasks.to_string())
        .output()
        .map_err(|e| format!("spawn child: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let parsed = stdout
        .lines()
        .find_map(|line| parse_result_line(line.trim()));
    let note = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix(NOTE_PREFIX))
        .map(str::to_string);
    match (output.status.success(), parsed) {
        (true, Some(result)) => Ok(ParkedMemory { note, ..result }),
        (_, _) => {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.starts_with("note:"))
                .unwrap_or("no stderr output");
            Err(format!("child failed ({}): {last}", output.status))
        }
    }
}

/// Parses `parked-memory tasks=<n> before=<b> after=<a>`.
fn parse_result_line(line: &str) -> Option<ParkedMemory> {
    let rest = line.strip_prefix(RESULT_PREFIX)?;
    let mut tasks = None;
    let mut before = None;
    let mut after = None;
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "tasks" => tasks = value.parse().ok(),
            "before" => before = value.parse().ok(),
            "after" => after = value.parse().ok(),
            _ => return None,
        }
    }
    Some(ParkedMemory {
        tasks: tasks?,
        rss_before: before?,
        rss_after: after?,
        note: None,
    })
}
