//! The writer actor: the services tell it rows; it batches them into upserts, flushed when
//! `batch` rows are buffered and every `flush_interval` (a keyed `send_after` timer, re-armed), and on
//! a service's `Flush` ask at the end of its date. A failed upsert is retried (3 attempts, with
//! back-off); if it still fails its rows are dropped and the error is kept for that table's next
//! `Flush`, so the date is reported incomplete and crunched again (upserts are idempotent).
//!
//! Batches are written by up to [`FLUSHERS`] greenlets at once (an evergreen `Pool`; with MySQL
//! each on a connection of its own), so the writer keeps taking rows while the database commits.
//! Its mailbox is bounded (`Policy::Block`) and it parks when all flushers are busy: when the
//! store is slower than the fetches, the services' user greenlets park on `tell`, which bounds
//! memory.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use evergreen::Pool;
use evergreen_actors::{Actor, Ctx, ExitReason, Reply};

use super::Metrics;
use crate::store::{Row, Store, Table};

/// Messages of the [`Writer`].
pub enum WriterMsg {
    /// Rows of one table to store.
    Rows(Table, Vec<Row>),
    /// Write everything buffered; answer the table's error since its last flush, if any.
    Flush(Table, Reply<Result<(), String>>),
    /// The flush timer.
    Tick,
}

/// The writer (see the [module docs](self)).
pub struct Writer {
    store: Rc<dyn Store>,
    metrics: Rc<Metrics>,
    buf: [Vec<Row>; 3],
    buffered: usize,
    batch: usize,
    flush_interval: Duration,
    errors: Rc<RefCell<[Option<String>; 3]>>,
    flushers: Pool,
}

/// Batches written concurrently by one writer.
pub const FLUSHERS: usize = 4;

fn slot(t: Table) -> usize {
    match t {
        Table::BulkSmsNetworksCost => 0,
        Table::BulkSmsNetworksFailed => 1,
        Table::AirtimeNetworksDelivered => 2,
    }
}

impl Writer {
    /// A writer to `store`, flushing at `batch` rows and every `flush_interval`.
    pub fn new(
        store: Rc<dyn Store>,
        metrics: Rc<Metrics>,
        batch: usize,
        flush_interval: Duration,
    ) -> Writer {
        Writer {
            store,
            metrics,
            buf: Default::default(),
            buffered: 0,
            batch: batch.max(1),
            flush_interval,
            errors: Default::default(),
            flushers: Pool::new(FLUSHERS),
        }
    }

    /// Hands every buffered table to a flusher greenlet (at most [`FLUSHERS`] in flight, so
    /// with MySQL as many connections write at once; the writer parks when all are busy, which
    /// is the back-pressure). Each batch is one transaction, retried up to 3 attempts.
    fn flush_all(&mut self) {
        for t in Table::ALL {
            let rows = std::mem::take(&mut self.buf[slot(t)]);
            if rows.is_empty() {
                continue;
            }
            self.buffered -= rows.len();
            let (store, metrics, errors) = (
                self.store.clone(),
                self.metrics.clone(),
                self.errors.clone(),
            );
            self.flushers.spawn(move || {
                if let Err(e) = write_with_retries(&*store, &metrics, t, &rows) {
                    errors.borrow_mut()[slot(t)].get_or_insert(e);
                }
            });
        }
    }

    /// Flushes and waits until every batch handed out is written (or failed).
    fn flush_and_wait(&mut self) {
        self.flush_all();
        self.flushers.join();
    }
}

fn write_with_retries(
    store: &dyn Store,
    metrics: &Metrics,
    t: Table,
    rows: &[Row],
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match store.upsert(t, rows) {
            Ok(n) => {
                log::debug!("writer: wrote {n} rows into {}", t.name());
                Metrics::add(&metrics.rows_written, n);
                Metrics::add(&metrics.batches, 1);
                return Ok(());
            }
            Err(e) => {
                Metrics::add(&metrics.write_errors, 1);
                attempt += 1;
                if attempt >= 3 {
                    log::error!(
                        "writer: giving up on {} rows of {} after {attempt} attempts: {e}",
                        rows.len(),
                        t.name()
                    );
                    return Err(e.to_string());
                }
                log::warn!(
                    "writer: upsert into {} failed (attempt {attempt}), retrying: {e}",
                    t.name()
                );
                evergreen::sleep(Duration::from_millis(100 << (2 * attempt)));
            }
        }
    }
}

impl Actor for Writer {
    type Msg = WriterMsg;

    fn started(&mut self, ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        // `send_interval` needs `Clone` messages (a `Reply` is not): re-armed after each tick.
        ctx.send_after("flush", self.flush_interval, WriterMsg::Tick);
        Ok(())
    }

    fn handle(&mut self, msg: WriterMsg, ctx: &mut Ctx<Self>) {
        match msg {
            WriterMsg::Rows(t, rows) => {
                self.buffered += rows.len();
                self.buf[slot(t)].extend(rows);
                if self.buffered >= self.batch {
                    self.flush_all();
                }
            }
            WriterMsg::Tick => {
                self.flush_all();
                ctx.send_after("flush", self.flush_interval, WriterMsg::Tick);
            }
            WriterMsg::Flush(t, reply) => {
                self.flush_and_wait();
                let err = self.errors.borrow_mut()[slot(t)].take();
                reply.send(match err {
                    None => Ok(()),
                    Some(e) => Err(e),
                });
            }
        }
    }

    fn stopped(&mut self, _reason: &ExitReason, _ctx: &mut Ctx<Self>) {
        self.flush_and_wait();
    }
}
