//! The keep-alive pool: per host (scheme, host, port), at most `max_per_host` connections in
//! use, waiters served first come first served, idle connections kept for reuse until their
//! idle timeout.
//!
//! Each host has an evergreen [`Semaphore`] of `max_per_host` permits (strict FIFO hand-off,
//! so a late request cannot barge past one that waits) and a stack of idle connections. A
//! request first takes a permit (waiting at most until its deadline), then the most recently
//! used idle connection that has not expired, or else opens a new one. Idle connections hold
//! no permit, and new ones are opened only when no idle one is left, so a host never has more
//! than `max_per_host` connections open. The [`Checkout`] releases its permit when dropped:
//! if the request fails, or its greenlet is killed or timed out and unwinds, the connection
//! is closed with it, never returned half-read.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen::Semaphore;

use super::transport::Transport;
use super::wire::Wire;

/// Where a connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HostKey {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// An open connection and its reading state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub wire: Wire<Transport>,
    pub idle_since: Instant,
}

struct HostPool {
    permits: Semaphore,
    idle: RefCell<VecDeque<Conn>>,
}

/// Counters kept by a client (see [`Client::pool_stats`](super::Client::pool_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections opened.
    pub opened: u64,
    /// Requests sent on a reused (pooled) connection.
    pub reused: u64,
    /// Connections idle in the pool now.
    pub idle: usize,
    /// Attempts repeated after a failure or a retryable status (not counting the transparent
    /// replacement of a dead pooled connection).
    pub retries: u64,
}

pub(crate) struct ConnPool {
    hosts: RefCell<HashMap<HostKey, Rc<HostPool>>>,
    max_per_host: usize,
    max_idle_per_host: usize,
    idle_timeout: Duration,
    opened: Cell<u64>,
    reused: Cell<u64>,
}

impl ConnPool {
    pub(crate) fn new(
        max_per_host: usize,
        max_idle_per_host: usize,
        idle_timeout: Duration,
    ) -> ConnPool {
        ConnPool {
            hosts: RefCell::new(HashMap::new()),
            max_per_host: max_per_host.max(1),
            max_idle_per_host,
            idle_timeout,
            opened: Cell::new(0),
            reused: Cell::new(0),
        }
    }

    /// Takes a permit for `key`, waiting FIFO until `deadline`. `None` if the deadline passed.
    pub(crate) fn checkout(&self, key: &HostKey, deadline: Option<Instant>) -> Option<Checkout> {
        let host = self
            .hosts
            .borrow_mut()
            .entry(key.clone())
            .or_insert_with(|| {
                Rc::new(HostPool {
                    permits: Semaphore::new(self.max_per_host),
                    idle: RefCell::new(VecDeque::new()),
                })
            })
            .clone();
        let got = match deadline {
            None => {
                host.permits.acquire();
                true
            }
            Some(d) => {
                let left = d.saturating_duration_since(evergreen::hub::now());
                host.permits.acquire_nowait()
                    || (!left.is_zero() && host.permits.acquire_timeout(left))
            }
        };
        got.then_some(Checkout { host })
    }

    /// The most recently used idle connection of `c`'s host that has not expired.
    pub(crate) fn take_idle(&self, c: &Checkout) -> Option<Conn> {
        let now = evergreen::hub::now();
        let mut idle = c.host.idle.borrow_mut();
        // Oldest at the front: drop the expired ones.
        while idle
            .front()
            .is_some_and(|conn| now.saturating_duration_since(conn.idle_since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        let conn = idle.pop_back();
        if conn.is_some() {
            self.reused.set(self.reused.get() + 1);
        }
        conn
    }

    /// Counts a newly opened connection.
    pub(crate) fn note_opened(&self) {
        self.opened.set(self.opened.get() + 1);
    }

    /// Returns a connection that finished a response cleanly.
    pub(crate) fn checkin(&self, c: &Checkout, mut conn: Conn) {
        let mut idle = c.host.idle.borrow_mut();
        if idle.len() >= self.max_idle_per_host {
            return;
        }
        conn.idle_since = evergreen::hub::now();
        idle.push_back(conn);
    }

    /// Closes every idle connection.
    pub(crate) fn clear_idle(&self) {
        for h in self.hosts.borrow().values() {
            h.idle.borrow_mut().clear();
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            opened: self.opened.get(),
            reused: self.reused.get(),
            idle: self
                .hosts
                .borrow()
                .values()
                .map(|h| h.idle.borrow().len())
                .sum(),
            retries: 0,
        }
    }
}

/// A permit to use one connection to a host; released when dropped.
pub(crate) struct Checkout {
    host: Rc<HostPool>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.host.permits.release();
    }
}
