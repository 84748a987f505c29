//! The blocked-hub monitor (gevent's `_monitor.py`, `max_blocking_time`).
//!
//! A cooperative scheduler has one failure mode no scheduler can fix: code that runs for long
//! without blocking holds the whole hub. The monitor is a watchdog *thread*: the hub
//! publishes (in two relaxed atomic stores per switch) what it is running — a greenlet, a hub
//! callback, the root context (`main` between two blocking calls, and the hub's own loop), or
//! nothing (waiting in `epoll_wait`) — and how many switches it has made; the watchdog wakes
//! every quarter of the threshold, and when the same thing has held the hub for longer than
//! the threshold it reports it, once per episode:
//!
//! ```text
//! evergreen monitor: greenlet #7 'cruncher' has held the hub for 212 ms without yielding (threshold 100 ms); other greenlets, timers and I/O are stalled
//! evergreen monitor: the root context (main, outside any greenlet) has held the hub for ...
//! evergreen monitor: a hub callback (a raw link, timer or run_callback) has held the hub for ...
//! ```
//!
//! The report goes through `log::warn!` when a logger is installed, and straight to stderr
//! when none is, so it is never silent. Enable it with `EVERGREEN_MONITOR=1` (threshold
//! `EVERGREEN_MONITOR_THRESHOLD_MS`, default 100 ms) or [`start`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hub::hub;

/// Published while the hub waits for I/O or timers (nothing holds it).
const IDLE: u64 = u64::MAX;
/// Published while a hub callback runs.
const CALLBACK: u64 = u64::MAX - 1;
/// The root context's id (the root core's id).
const ROOT: u64 = 0;

struct Shared {
    current: AtomicU64,
    switches: AtomicU64,
    reports: AtomicU64,
    stop: AtomicBool,
    names: Mutex<HashMap<u64, String>>,
}

/// The monitor of one hub; stops its thread when dropped.
pub(crate) struct MonitorHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    switches: std::cell::Cell<u64>,
}

impl MonitorHandle {
    pub(crate) fn start(threshold: Duration) -> MonitorHandle {
        let shared = Arc::new(Shared {
            current: AtomicU64::new(ROOT),
            switches: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            names: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("evergreen-monitor".into())
            .spawn(move || watch(s, threshold))
            .map_err(|e| log::error!("evergreen: cannot start the monitor thread: {e}"))
            .ok();
        MonitorHandle {
            shared,
            thread,
            switches: std::cell::Cell::new(0),
        }
    }

    #[inline]
    pub(crate) fn entered(&self, id: u64) {
        let n = self.switches.get() + 1;
        self.switches.set(n);
        self.shared.switches.store(n, Ordering::Relaxed);
        self.shared.current.store(id, Ordering::Relaxed);
    }

    /// Back to the root context (the hub loop, or `main`).
    #[inline]
    pub(crate) fn left(&self) {
        self.entered(ROOT);
    }

    /// A hub callback starts.
    #[inline]
    pub(crate) fn callback(&self) {
        self.entered(CALLBACK);
    }

    /// The hub starts waiting for I/O or timers.
    #[inline]
    pub(crate) fn idle(&self) {
        self.entered(IDLE);
    }

    pub(crate) fn name(&self, id: u64, name: &str) {
        if let Ok(mut m) = self.shared.names.lock() {
            m.insert(id, name.to_string());
        }
    }

    pub(crate) fn forget(&self, id: u64) {
        if let Ok(mut m) = self.shared.names.lock() {
            m.remove(&id);
        }
    }

    pub(crate) fn reports(&self) -> u64 {
        self.shared.reports.load(Ordering::Relaxed)
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watch(s: Arc<Shared>, threshold: Duration) {
    let tick = (threshold / 4).max(Duration::from_millis(1));
    let mut last = (0u64, 0u64);
    let mut since = Instant::now();
    let mut reported = false;
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(tick);
        let now = (
            s.current.load(Ordering::Relaxed),
            s.switches.load(Ordering::Relaxed),
        );
        if now != last || now.0 == IDLE {
            last = now;
            since = Instant::now();
            reported = false;
            continue;
        }
        let held = since.elapsed();
        if !reported && held >= threshold {
            reported = true;
            let who = match now.0 {
                ROOT => "the root context (main, outside any greenlet)".to_string(),
                CALLBACK => "a hub callback (a raw link, timer or run_callback)".to_string(),
                id => {
                    let name = s
                        .names
                        .lock()
                        .ok()
                        .and_then(|m| m.get(&id).cloned())
                        .map(|n| format!(" '{n}'"))
                        .unwrap_or_default();
                    format!("greenlet #{id}{name}")
                }
            };
            let msg = format!(
                "evergreen monitor: {who} has held the hub for {} ms without yielding \
                 (threshold {} ms); other greenlets, timers and I/O are stalled",
                held.as_millis(),
                threshold.as_millis()
            );
            if log::log_enabled!(log::Level::Warn) {
                log::warn!("{msg}");
            } else {
                eprintln!("{msg}");
            }
            s.reports.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the monitor for this thread's hub with the given threshold, if it is not running.
pub fn start(threshold: Duration) {
    let hub = hub();
    hub.start_monitor(threshold);
}

/// How many times the monitor of this thread's hub reported a blocked hub (0 if it is not
/// running).
pub fn reports() -> u64 {
    hub().monitor().map(|m| m.reports()).unwrap_or(0)
}
