//! Diagnostics: a run-info dump of every live greenlet (gevent's `util.format_run_info`).

use std::fmt::Write as _;

use crate::greenlet::state_name;
use crate::hub::hub;

/// A snapshot of one live greenlet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreenletInfo {
    /// Its id.
    pub id: u64,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// `not started`, `scheduled to start later`, `runnable`, `running`, or `parked`.
    pub state: &'static str,
    /// What it is blocked on (`Queue::get`, `sleep`, ...), empty unless parked.
    pub waiting_on: &'static str,
    /// Its usable stack size in bytes.
    pub stack_size: usize,
}

/// Every live greenlet of this thread's hub, in id order.
pub fn run_info() -> Vec<GreenletInfo> {
    let mut v: Vec<GreenletInfo> = hub()
        .live_greenlets()
        .iter()
        .map(|g| {
            let c = g.core();
            GreenletInfo {
                id: c.id,
                name: c.name().map(str::to_string),
                state: state_name(c.state.get()),
                waiting_on: c.waiting_on.get(),
                stack_size: c.stack_size(),
            }
        })
        .collect();
    v.sort_by_key(|i| i.id);
    v
}

/// A human-readable dump: one line per live greenlet, plus the hub's queue and timers.
pub fn format_run_info() -> String {
    let infos = run_info();
    let mut s = format!(
        "evergreen hub: {} live greenlet(s), {} timer(s), current {:?}\n",
        infos.len(),
        crate::hub::timer_count(),
        crate::greenlet::getcurrent()
    );
    for i in infos {
        let _ = write!(s, "  #{}", i.id);
        if let Some(n) = &i.name {
            let _ = write!(s, " '{n}'");
        }
        let _ = write!(s, ": {}", i.state);
        if !i.waiting_on.is_empty() {
            let _ = write!(s, " on {}", i.waiting_on);
        }
        let _ = writeln!(s, " (stack {} KiB)", i.stack_size / 1024);
    }
    s
}

/// The message of a caught panic's payload: the text of a `&str` or `String` payload, the
/// explanation of a [`LoopExit`](crate::LoopExit), or a description of the payload's type
/// (`GreenletExit`, a `Timeout` expiry, "a panic with a non-string payload").
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    crate::greenlet::panic_message(payload)
}
