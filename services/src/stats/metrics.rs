//! Counters of the pipeline, read by the progress display, the summary and `/metrics`
//! (Prometheus text format).

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;

use super::ServiceId;

/// One service's counters (cumulative since the process started, except `users_total` and
/// `users_done`, which are for the date in progress).
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Users of the date in progress.
    pub users_total: Cell<u64>,
    /// Users of the date in progress done (fetched and parsed, or failed).
    pub users_done: Cell<u64>,
    /// Users whose fetch failed after retries (cumulative).
    pub users_failed: Cell<u64>,
    /// Users fetched (cumulative).
    pub users_fetched: Cell<u64>,
    /// Rows handed to the writer (cumulative).
    pub rows: Cell<u64>,
    /// Malformed elements skipped (cumulative).
    pub malformed: Cell<u64>,
}

fn inc(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// All the pipeline's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per service, in [`ServiceId::ALL`] order.
    pub services: [ServiceCounters; 3],
    /// Rows written to the store.
    pub rows_written: Cell<u64>,
    /// Upsert calls that succeeded.
    pub batches: Cell<u64>,
    /// Upsert calls that failed (each retried).
    pub write_errors: Cell<u64>,
    /// Dates completed.
    pub dates_complete: Cell<u64>,
    /// Dates crunched incompletely (retried on the next tick).
    pub dates_incomplete: Cell<u64>,
    /// HTTP retries (copied from the client's counters).
    pub http_retries: Cell<u64>,
    /// The date being crunched, if any.
    pub current_date: RefCell<Option<String>>,
    /// The cursor after the last tick.
    pub cursor: RefCell<Option<String>>,
    /// Whether the last crunch was complete (for `/healthz`).
    pub healthy: Cell<bool>,
}

impl Metrics {
    /// A fresh set, healthy.
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.healthy.set(true);
        m
    }

    /// The counters of `id`.
    pub fn service(&self, id: ServiceId) -> &ServiceCounters {
        &self.services[id.index()]
    }

    pub(crate) fn add(c: &Cell<u64>, n: u64) {
        inc(c, n)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let per = |f: &dyn Fn(&ServiceCounters) -> u64| -> Vec<(String, u64)> {
            ServiceId::ALL
                .iter()
                .map(|id| {
                    (
                        format!("{{service=\"{}\"}}", id.name()),
                        f(self.service(*id)),
                    )
                })
                .collect()
        };
        family(
            "stats_users_fetched_total",
            "Users fetched and parsed.",
            "counter",
            per(&|c| c.users_fetched.get()),
        );
        family(
            "stats_users_failed_total",
            "Users whose fetch failed after retries.",
            "counter",
            per(&|c| c.users_failed.get()),
        );
        family(
            "stats_rows_total",
            "Rows produced by the service.",
            "counter",
            per(&|c| c.rows.get()),
        );
        family(
            "stats_malformed_elements_total",
            "Malformed elements skipped.",
            "counter",
            per(&|c| c.malformed.get()),
        );
        family(
            "stats_date_users",
            "Users of the date in progress.",
            "gauge",
            per(&|c| c.users_total.get()),
        );
        family(
            "stats_date_users_done",
            "Users of the date in progress done.",
            "gauge",
            per(&|c| c.users_done.get()),
        );
        family(
            "stats_rows_written_total",
            "Rows written to the store.",
            "counter",
            vec![(String::new(), self.rows_written.get())],
        );
        family(
            "stats_write_batches_total",
            "Upsert transactions committed.",
            "counter",
            vec![(String::new(), self.batches.get())],
        );
        family(
            "stats_write_errors_total",
            "Upsert transactions that failed.",
            "counter",
            vec![(String::new(), self.write_errors.get())],
        );
        family(
            "stats_http_retries_total",
            "HTTP attempts repeated.",
            "counter",
            vec![(String::new(), self.http_retries.get())],
        );
        family(
            "stats_dates_complete_total",
            "Dates crunched completely.",
            "counter",
            vec![(String::new(), self.dates_complete.get())],
        );
        family(
            "stats_dates_incomplete_total",
            "Dates crunched incompletely.",
            "counter",
            vec![(String::new(), self.dates_incomplete.get())],
        );
        s
    }
}
