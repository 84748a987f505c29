//! Timeouts (gevent's `timeout.py`) and `sleep`/`idle` (from gevent's `hub.py`).
//!
//! # Two kinds of timeout
//!
//! * **Per-call**: every blocking API has a `*_timeout` form that gives up and returns an
//!   error ([`Error::Timeout`], or the item back for puts). Nothing unwinds.
//! * **Scoped**: a [`Timeout`] armed for the current greenlet interrupts *whatever* it blocks
//!   on once it expires, by unwinding from that blocking point with a [`TimeoutExpired`]
//!   payload (every `Drop` runs). [`Timeout::run`] and [`with_timeout`] catch the expiry of
//!   *their own* timeout and turn it into `Err(Error::Timeout)`; an expiry that belongs to
//!   another (outer) timeout passes through untouched, identity-checked by a unique id, so
//!   nested timeouts behave as in gevent:
//!
//! ```
//! use std::time::Duration;
//! use evergreen::{with_timeout, sleep, Error};
//!
//! let r = with_timeout(Duration::from_millis(10), || {
//!     // the inner, longer timeout does not swallow the outer one's expiry
//!     with_timeout(Duration::from_secs(5), || sleep(Duration::from_secs(60)))
//! });
//! assert_eq!(r, Err(Error::Timeout(Duration::from_millis(10))));
//! ```
//!
//! A timeout that expires while its greenlet is runnable but not parked (for example in a
//! `loop { sleep(ZERO) }`) is delivered at the next blocking point; the hub's fairness policy
//! guarantees its timer fires. Dropping the `Timeout` cancels it.
//!
//! # Differences from gevent
//!
//! * gevent's `Timeout` can raise a custom exception; here the expiry is always
//!   [`TimeoutExpired`], caught by `run`/`with_timeout`, or it ends the greenlet as a failure
//!   ([`Error::TimedOut`]). In the root context an uncaught expiry unwinds out of `main`.
//! * A timeout never interrupts code that does not block (neither does gevent's).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::greenlet::{GRef, Interrupt};
use crate::hub::{hub, TimerAction, Wake};
use crate::timer::TimerId;

/// The unwinding payload of an expired scoped [`Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutExpired {
    pub(crate) id: u64,
    /// The timeout's duration.
    pub after: Duration,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A scoped timeout for the current greenlet (gevent's `Timeout`). See the
/// [module docs](self).
pub struct Timeout {
    id: u64,
    duration: Duration,
    timer: Option<TimerId>,
    owner: Option<GRef>,
}

impl std::fmt::Debug for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("id", &self.id)
            .field("duration", &self.duration)
            .field("pending", &self.pending())
            .finish()
    }
}

impl Timeout {
    /// A timeout that is not armed yet (gevent's `Timeout(seconds)`).
    pub fn new(duration: Duration) -> Timeout {
        Timeout {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            duration,
            timer: None,
            owner: None,
        }
    }

    /// Creates and arms a timeout for the current greenlet (gevent's `Timeout.start_new`).
    pub fn start_new(duration: Duration) -> Timeout {
        let mut t = Timeout::new(duration);
        t.start();
        t
    }

    /// Arms the timeout for the current greenlet; re-arms it if it was armed.
    pub fn start(&mut self) {
        self.cancel();
        let hub = hub();
        let owner = hub.current_gref();
        let action = TimerAction::Interrupt(
            owner.clone(),
            Interrupt::Timeout {
                id: self.id,
                after_ns: self.duration.as_nanos().min(u64::MAX as u128) as u64,
            },
        );
        self.timer = Some(hub.add_timer(hub.far_deadline(self.duration), action));
        self.owner = Some(owner);
    }

    /// Whether it is armed and has not fired yet (gevent's `pending`: false once it fired,
    /// whether or not its expiry was delivered).
    pub fn pending(&self) -> bool {
        match self.timer {
            Some(t) => crate::hub::exists() && hub().timers.borrow().contains(t) && !self.expired(),
            None => false,
        }
    }

    fn expired(&self) -> bool {
        match &self.owner {
            Some(o) => {
                matches!(o.core().interrupt.get(), Some(Interrupt::Timeout { id, .. }) if id == self.id)
            }
            None => false,
        }
    }

    /// Disarms the timeout. An expiry that fired but was not delivered yet is withdrawn.
    pub fn cancel(&mut self) {
        if let Some(t) = self.timer.take() {
            if crate::hub::exists() {
                drop(hub().take_timer(t));
            }
        }
        if let Some(o) = self.owner.take() {
            let c = o.core();
            if matches!(c.interrupt.get(), Some(Interrupt::Timeout { id, .. }) if id == self.id) {
                c.interrupt.set(None);
            }
        }
    }

    /// Its duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Whether a caught panic payload is *this* timeout's expiry.
    pub fn is_mine(&self, payload: &(dyn std::any::Any + Send)) -> bool {
        matches!(payload.downcast_ref::<TimeoutExpired>(), Some(e) if e.id == self.id)
    }

    /// Runs `f` with this timeout armed (arming it if needed) and catches its own expiry
    /// as `Err(Error::Timeout)`; any other panic, including another timeout's expiry,
    /// continues to unwind.
    pub fn run<R>(mut self, f: impl FnOnce() -> R) -> Result<R, Error> {
        if self.timer.is_none() {
            self.start();
        }
        let r = catch_unwind(AssertUnwindSafe(f));
        self.cancel();
        match r {
            Ok(v) => Ok(v),
            Err(p) if self.is_mine(&*p) => {
                // This greenlet's unwind is over: interrupts may be delivered to it again.
                hub().current().unwind_caught();
                Err(Error::Timeout(self.duration))
            }
            Err(p) => resume_unwind(p),
        }
    }
}

impl Drop for Timeout {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Runs `f`, interrupting it at its next blocking point once `duration` has passed
/// (gevent's `with_timeout`).
pub fn with_timeout<R>(duration: Duration, f: impl FnOnce() -> R) -> Result<R, Error> {
    Timeout::new(duration).run(f)
}

/// Blocks the current greenlet for `duration` (gevent's `sleep`). `sleep(Duration::ZERO)`
/// yields: the greenlet runs again after every greenlet that was already runnable.
#[inline(always)]
pub fn sleep(duration: Duration) {
    if duration.is_zero() {
        hub().yield_now();
        return;
    }
    sleep_for(duration)
}

fn sleep_for(duration: Duration) {
    let hub = hub();
    // `None`: a duration beyond what `Instant` can represent sleeps until killed.
    let deadline = hub.deadline(duration);
    loop {
        match hub.park(deadline, "sleep") {
            Wake::Deadline => return,
            Wake::Interrupted => hub.deliver_interrupt(),
            Wake::Woken => {
                debug_assert!(false, "a sleeping greenlet was woken (a bug in evergreen)")
            }
        }
        if deadline.is_some_and(|d| hub.now() >= d) {
            return;
        }
    }
}

/// Blocks until the hub has nothing else to run (gevent's `idle`): every runnable greenlet
/// has run and the hub is about to wait for I/O or timers.
pub fn idle() {
    let hub = hub();
    let _ = hub.idle_waiters.wait(None, None, "idle");
}
