//! `Semaphore`, `BoundedSemaphore` and `RLock` (gevent's `_semaphore.py` and `lock.py`).
//!
//! Waiters are served strictly FIFO by **hand-off**: `release` with a greenlet waiting gives
//! the permit directly to the longest waiter instead of incrementing the counter, so a
//! greenlet that calls `acquire` later cannot barge in ahead of it.
//!
//! Difference from gevent: gevent increments the counter and notifies waiters from a hub
//! callback, so a non-blocking `acquire` in between can take the permit; here it cannot.

use std::cell::Cell;
use std::time::Duration;

use crate::error::Error;
use crate::hub::hub;
use crate::waiter::{LinkId, Links, WaitList, Waitable};

/// A counting semaphore (gevent's `Semaphore`).
///
/// ```
/// let s = evergreen::Semaphore::new(1);
/// assert!(s.acquire_nowait());
/// assert!(!s.acquire_nowait());
/// s.release();
/// assert_eq!(s.count(), 1);
/// ```
pub struct Semaphore {
    counter: Cell<usize>,
    acquirers: WaitList<()>,
    watchers: WaitList<()>,
    /// Raw links, run when a permit becomes free (gevent's linkable semaphores).
    links: Links,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Semaphore(count={}, waiters={})",
            self.count(),
            self.waiter_count()
        )
    }
}

impl Semaphore {
    /// A semaphore with `value` permits.
    pub fn new(value: usize) -> Semaphore {
        Semaphore {
            counter: Cell::new(value),
            acquirers: WaitList::new(),
            watchers: WaitList::new(),
            links: Links::default(),
        }
    }

    /// Free permits.
    pub fn count(&self) -> usize {
        self.counter.get()
    }

    /// Whether `acquire` would block (gevent's `locked`).
    pub fn locked(&self) -> bool {
        self.counter.get() == 0
    }

    /// Number of greenlets blocked in `acquire`.
    pub fn waiter_count(&self) -> usize {
        self.acquirers.len()
    }

    /// Takes a permit if one is free and nobody waits; never blocks.
    pub fn acquire_nowait(&self) -> bool {
        if self.counter.get() > 0 && self.acquirers.is_empty() {
            self.counter.set(self.counter.get() - 1);
            true
        } else {
            false
        }
    }

    /// Takes a permit, blocking (FIFO) while none is free (inlined down to the switch).
    #[inline]
    pub fn acquire(&self) {
        if !self.acquire_nowait() {
            let _ = self.acquirers.wait(None, None, "Semaphore::acquire");
        }
    }

    /// Takes a permit, blocking at most `timeout`; `false` if it timed out.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        if self.acquire_nowait() {
            return true;
        }
        let hub = hub();
        self.acquirers
            .wait(None, hub.deadline(timeout), "Semaphore::acquire")
            .is_ok()
    }

    /// Returns a permit: handed to the longest waiter if any, else counted.
    pub fn release(&self) {
        if self.acquirers.wake_one_with(()).is_err() {
            self.counter.set(self.counter.get() + 1);
            self.watchers.wake_all_unit();
            self.links.fire_all();
        }
    }

    /// Blocks until a permit is free, without taking it (gevent's `wait`); returns the number
    /// of free permits (0 on timeout).
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> usize {
        if self.counter.get() > 0 {
            return self.counter.get();
        }
        let hub = hub();
        let _ = self.watchers.wait(
            None,
            timeout.and_then(|t| hub.deadline(t)),
            "Semaphore::wait",
        );
        self.counter.get()
    }

    /// Acquires and returns a guard that releases on drop.
    pub fn guard(&self) -> SemaphoreGuard<'_> {
        self.acquire();
        SemaphoreGuard { sem: self }
    }
}

/// A semaphore is ready when a permit is free (gevent's `Semaphore.ready()`); a raw link runs
/// (once) when a permit becomes free, so `wait`/`iwait` can wait for one along with other
/// objects. Waiting this way does not take the permit.
impl Waitable for Semaphore {
    fn ready(&self) -> bool {
        self.counter.get() > 0
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.links.add_or_fire(f, self.counter.get() > 0)
    }
    fn unlink(&self, id: LinkId) -> bool {
        self.links.remove(id)
    }
}

/// Releases its permit when dropped (also when unwinding from a kill).
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        self.sem.release();
    }
}

/// A semaphore that refuses to be released above its initial value (gevent's
/// `BoundedSemaphore`).
#[derive(Debug)]
pub struct BoundedSemaphore {
    sem: Semaphore,
    initial: usize,
}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` permits.
    pub fn new(value: usize) -> BoundedSemaphore {
        BoundedSemaphore {
            sem: Semaphore::new(value),
            initial: value,
        }
    }
    /// See [`Semaphore::acquire`].
    pub fn acquire(&self) {
        self.sem.acquire()
    }
    /// See [`Semaphore::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.sem.acquire_timeout(timeout)
    }
    /// See [`Semaphore::acquire_nowait`].
    pub fn acquire_nowait(&self) -> bool {
        self.sem.acquire_nowait()
    }
    /// See [`Semaphore::count`].
    pub fn count(&self) -> usize {
        self.sem.count()
    }
    /// Returns a permit; [`Error::ReleasedTooManyTimes`] if that would exceed the initial
    /// value.
    pub fn release(&self) -> Result<(), Error> {
        if self.sem.acquirers.is_empty() && self.sem.count() >= self.initial {
            return Err(Error::ReleasedTooManyTimes);
        }
        self.sem.release();
        Ok(())
    }
}

/// A reentrant lock owned by one greenlet at a time (gevent's `RLock`).
///
/// ```
/// let l = evergreen::RLock::new();
/// l.acquire();
/// l.acquire(); // reentrant
/// l.release().unwrap();
/// l.release().unwrap();
/// assert!(l.release().is_err());
/// ```
#[derive(Debug)]
pub struct RLock {
    sem: Semaphore,
    owner: Cell<Option<u64>>,
    count: Cell<usize>,
}

impl Default for RLock {
    fn default() -> Self {
        Self::new()
    }
}

impl RLock {
    /// An unlocked lock.
    pub fn new() -> RLock {
        RLock {
            sem: Semaphore::new(1),
            owner: Cell::new(None),
            count: Cell::new(0),
        }
    }

    fn me() -> u64 {
        hub().current().id
    }

    /// Acquires, blocking while another greenlet owns it; reentrant for the owner.
    pub fn acquire(&self) {
        let me = Self::me();
        if self.owner.get() == Some(me) {
            self.count.set(self.count.get() + 1);
            return;
        }
        self.sem.acquire();
        self.owner.set(Some(me));
        self.count.set(1);
    }

    /// Like [`acquire`](Self::acquire) with a timeout; `false` if it timed out.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        let me = Self::me();
        if self.owner.get() == Some(me) {
            self.count.set(self.count.get() + 1);
            return true;
        }
        if !self.sem.acquire_timeout(timeout) {
            return false;
        }
        self.owner.set(Some(me));
        self.count.set(1);
        true
    }

    /// Releases one level; [`Error::NotOwner`] if the current greenlet does not own it.
    pub fn release(&self) -> Result<(), Error> {
        if self.owner.get() != Some(Self::me()) {
            return Err(Error::NotOwner);
        }
        let c = self.count.get() - 1;
        self.count.set(c);
        if c == 0 {
            self.owner.set(None);
            self.sem.release();
        }
        Ok(())
    }

    /// Whether some greenlet owns it.
    pub fn locked(&self) -> bool {
        self.owner.get().is_some()
    }

    /// Acquires without blocking (gevent's `acquire(blocking=False)`): `true` if it now owns
    /// it (also reentrantly), `false` if another greenlet does.
    pub fn acquire_nowait(&self) -> bool {
        let me = Self::me();
        if self.owner.get() == Some(me) {
            self.count.set(self.count.get() + 1);
            return true;
        }
        if !self.sem.acquire_nowait() {
            return false;
        }
        self.owner.set(Some(me));
        self.count.set(1);
        true
    }
}

/// An `RLock` is ready when nobody owns it; a raw link runs (once) when it is released, so
/// `wait`/`iwait` can wait for it along with other objects (gevent's linkable locks).
impl Waitable for RLock {
    fn ready(&self) -> bool {
        !self.locked()
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.sem.rawlink(f)
    }
    fn unlink(&self, id: LinkId) -> bool {
        self.sem.unlink(id)
    }
}

/// See the `Semaphore` implementation.
impl Waitable for BoundedSemaphore {
    fn ready(&self) -> bool {
        self.sem.ready()
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.sem.rawlink(f)
    }
    fn unlink(&self, id: LinkId) -> bool {
        self.sem.unlink(id)
    }
}
