//! `Event` and `AsyncResult` (gevent's `event.py`).
//!
//! Both are built on one [`WaitList`](crate::waiter) and one set of links. Setting wakes every
//! current waiter, in the order they started waiting, and schedules every raw link as a hub
//! callback, in registration order. A waiter woken by `set` returns even if the event is
//! cleared again before it runs (`set(); clear()` still wakes every current waiter), as in
//! gevent.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::error::Error;
use crate::hub::hub;
use crate::waiter::{LinkId, Links, WaitList, Waitable};

/// A flag that greenlets can wait for (gevent's `Event`).
///
/// ```
/// use std::rc::Rc;
/// let ev = Rc::new(evergreen::Event::new());
/// let e2 = ev.clone();
/// let g = evergreen::spawn(move || { e2.wait(); "woken" });
/// evergreen::sleep(std::time::Duration::ZERO); // let it start waiting
/// ev.set();
/// assert_eq!(g.get(), Ok("woken"));
/// ```
#[derive(Default)]
pub struct Event {
    flag: Cell<bool>,
    waiters: WaitList<()>,
    links: Links,
    /// Waiters woken by `set` that have not run yet: a `wait` on the set event yields to
    /// them first (gevent issue 1520: waiters run in the order they started waiting).
    notifying: Cell<usize>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Event(set={}, waiters={})",
            self.flag.get(),
            self.waiters.len()
        )
    }
}

impl Event {
    /// A cleared event.
    pub fn new() -> Event {
        Event::default()
    }

    /// Whether the flag is set (gevent's `is_set`).
    pub fn is_set(&self) -> bool {
        self.flag.get()
    }

    /// Sets the flag and wakes every waiter (FIFO); schedules the raw links.
    pub fn set(&self) {
        self.flag.set(true);
        let n = self.waiters.wake_all_unit();
        self.notifying.set(self.notifying.get() + n);
        self.links.fire_all();
    }

    /// A waiter woken by `set` runs again.
    fn woken(&self) {
        self.notifying.set(self.notifying.get().saturating_sub(1));
    }

    /// A `wait` on a set event: it returns after the waiters that `set` woke and that have
    /// not run yet, as in gevent.
    fn after_notified(&self) {
        if self.notifying.get() > 0 {
            hub().yield_keeping_interrupts();
        }
    }

    /// Clears the flag. Waiters already woken by a `set` still return.
    pub fn clear(&self) {
        self.flag.set(false);
    }

    /// Blocks until the flag is set. (Inlined down to the switch, so a greenlet parks in its
    /// caller's frame: see the `greenlet` module docs on the return-address predictor.)
    #[inline]
    pub fn wait(&self) {
        if self.flag.get() {
            self.after_notified();
        } else if self.waiters.wait(None, None, "Event::wait").is_ok() {
            self.woken();
        }
    }

    /// Blocks until the flag is set or `timeout` passed; returns the flag (gevent's
    /// `wait(timeout)`), which is `true` also when a `set` woke the waiter and a `clear`
    /// followed.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        if self.flag.get() {
            self.after_notified();
            return true;
        }
        let hub = hub();
        let woken = self
            .waiters
            .wait(None, hub.deadline(timeout), "Event::wait")
            .is_ok();
        if woken {
            self.woken();
        }
        woken
    }

    /// Number of greenlets waiting.
    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }
}

impl Waitable for Event {
    fn ready(&self) -> bool {
        self.is_set()
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.links.add_or_fire(f, self.is_set())
    }
    fn unlink(&self, id: LinkId) -> bool {
        self.links.remove(id)
    }
}

/// A one-shot value or error that greenlets can wait for (gevent's `AsyncResult`).
///
/// ```
/// use std::rc::Rc;
/// let r = Rc::new(evergreen::AsyncResult::<u32>::new());
/// let r2 = r.clone();
/// evergreen::spawn(move || r2.set(7));
/// assert_eq!(r.get(), Ok(7));
/// ```
pub struct AsyncResult<T> {
    value: RefCell<Option<Result<T, Error>>>,
    waiters: WaitList<()>,
    links: Links,
}

impl<T> Default for AsyncResult<T> {
    fn default() -> Self {
        AsyncResult {
            value: RefCell::new(None),
            waiters: WaitList::new(),
            links: Links::default(),
        }
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsyncResult(ready={})", self.value.borrow().is_some())
    }
}

impl<T: Clone> AsyncResult<T> {
    /// An empty result.
    pub fn new() -> AsyncResult<T> {
        AsyncResult::default()
    }

    /// Whether a value or error was set.
    pub fn ready(&self) -> bool {
        self.value.borrow().is_some()
    }

    /// Whether a value (not an error) was set.
    pub fn successful(&self) -> bool {
        matches!(&*self.value.borrow(), Some(Ok(_)))
    }

    /// Sets the value and wakes every waiter. A later `set` replaces the value (as gevent).
    pub fn set(&self, v: T) {
        self.complete(Ok(v));
    }

    /// Sets an error and wakes every waiter (gevent's `set_exception`).
    pub fn set_exception(&self, e: Error) {
        self.complete(Err(e));
    }

    fn complete(&self, r: Result<T, Error>) {
        *self.value.borrow_mut() = Some(r);
        self.waiters.wake_all_unit();
        self.links.fire_all();
    }

    /// The value or error if set, without blocking (gevent's `get_nowait`, which raises
    /// `Timeout` when unset: here `Err(Error::Empty)`).
    pub fn get_nowait(&self) -> Result<T, Error> {
        self.value.borrow().clone().unwrap_or(Err(Error::Empty))
    }

    /// Blocks until set; returns the value or the error (inlined down to the switch).
    #[inline]
    pub fn get(&self) -> Result<T, Error> {
        if !self.ready() {
            let _ = self.waiters.wait(None, None, "AsyncResult::get");
        }
        self.get_nowait()
    }

    /// Like [`get`](Self::get) but gives up after `timeout` with `Err(Error::Timeout)`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        if !self.ready() {
            let hub = hub();
            if self
                .waiters
                .wait(None, hub.deadline(timeout), "AsyncResult::get")
                .is_err()
            {
                return Err(Error::Timeout(timeout));
            }
        }
        self.get_nowait()
    }

    /// Blocks until set, without taking the value; `false` on timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        if self.ready() {
            return true;
        }
        let hub = hub();
        self.waiters
            .wait(None, hub.deadline(timeout), "AsyncResult::wait")
            .is_ok()
    }
}

impl<T: Clone> Waitable for AsyncResult<T> {
    fn ready(&self) -> bool {
        AsyncResult::ready(self)
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.links.add_or_fire(f, AsyncResult::ready(self))
    }
    fn unlink(&self, id: LinkId) -> bool {
        self.links.remove(id)
    }
}
