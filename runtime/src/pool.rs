//! `Group` and `Pool` (gevent's `pool.py`).
//!
//! A [`Group`] tracks a set of greenlets: members leave it when they finish (through a raw
//! link), so [`Pool::join`] (on a group) waits until it is empty. A [`Pool`] is a group with a
//! [`Semaphore`] of `size` permits: [`Pool::spawn`] blocks (FIFO) while the pool is full,
//! [`Pool::add`] can refuse with [`Error::PoolFull`] instead, and a member's permit is given
//! back when it finishes.
//!
//! `map`, `imap` and `imap_unordered` run a function over an iterator of items with at most
//! `size` at a time: a feeder greenlet spawns the tasks (blocking while the pool is full), and
//! each task's result, or how it failed, reaches the consumer; `imap_unordered` yields in
//! completion order, `imap` in input order. Dropping the iterator stops the feeder.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::rc::Rc;
use std::time::Duration;

use crate::error::Error;
use crate::greenlet::{spawn, Greenlet, GreenletRef};
use crate::hub::hub;
use crate::lock::Semaphore;
use crate::queue::Queue;
use crate::waiter::{LinkId, WaitList, Waitable};

struct Inner {
    members: RefCell<Vec<(GreenletRef, LinkId)>>,
    empty: WaitList<()>,
    sem: Option<Semaphore>,
    size: Option<usize>,
    /// The feeder greenlets of `map`/`imap` calls still adding members: `kill` stops them
    /// first, or they would add a member after it.
    feeders: RefCell<Vec<GreenletRef>>,
}

/// A pool of at most `size` running greenlets (gevent's `Pool`).
///
/// ```
/// let pool = evergreen::Pool::new(2);
/// let squares = pool.map(|x: u64| x * x, 1..=5).unwrap();
/// assert_eq!(squares, vec![1, 4, 9, 16, 25]);
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool(len={}, size={:?})", self.len(), self.inner.size)
    }
}

impl Pool {
    /// A pool that runs at most `size` greenlets at a time. A pool of size 0 is valid and
    /// always full, as in gevent: `spawn` blocks for ever and `add(g, false)` fails with
    /// [`Error::PoolFull`].
    pub fn new(size: usize) -> Pool {
        Pool::make(Some(size))
    }

    fn make(size: Option<usize>) -> Pool {
        Pool {
            inner: Rc::new(Inner {
                members: RefCell::new(Vec::new()),
                empty: WaitList::new(),
                sem: size.map(Semaphore::new),
                size,
                feeders: RefCell::new(Vec::new()),
            }),
        }
    }

    /// The bound (`None` for a [`Group`]).
    pub fn size(&self) -> Option<usize> {
        self.inner.size
    }

    /// Number of members (running or scheduled greenlets).
    pub fn len(&self) -> usize {
        self.inner.members.borrow().len()
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the greenlet is a member.
    pub fn contains(&self, g: &GreenletRef) -> bool {
        self.inner.members.borrow().iter().any(|(m, _)| m == g)
    }

    /// Handles to the members.
    pub fn greenlets(&self) -> Vec<GreenletRef> {
        self.inner
            .members
            .borrow()
            .iter()
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Free slots (`usize::MAX` for a group).
    pub fn free_count(&self) -> usize {
        match &self.inner.sem {
            Some(s) => s.count(),
            None => usize::MAX,
        }
    }

    /// Whether `spawn` would block.
    pub fn full(&self) -> bool {
        self.free_count() == 0
    }

    /// Blocks until a slot is free or `timeout` passed; returns the free count (gevent's
    /// `wait_available`).
    pub fn wait_available(&self, timeout: Option<Duration>) -> usize {
        match &self.inner.sem {
            Some(s) => s.wait_timeout(timeout),
            None => usize::MAX,
        }
    }

    /// Spawns `f` in the pool, first blocking (FIFO) while the pool is full.
    pub fn spawn<T: 'static>(&self, f: impl FnOnce() -> T + 'static) -> Greenlet<T> {
        if let Some(s) = &self.inner.sem {
            s.acquire();
        }
        let g = spawn(f);
        self.track(&g.handle());
        g
    }

    /// Adds a greenlet (started or not) to the pool. When the pool is full, blocks if
    /// `blocking`, else fails with [`Error::PoolFull`] (gevent's `add(greenlet, blocking)`).
    pub fn add<T: 'static>(&self, g: &Greenlet<T>, blocking: bool) -> Result<(), Error> {
        let h = g.handle();
        if self.contains(&h) {
            return Ok(());
        }
        if let Some(s) = &self.inner.sem {
            if blocking {
                s.acquire();
            } else if !s.acquire_nowait() {
                return Err(Error::PoolFull);
            }
        }
        self.track(&h);
        Ok(())
    }

    /// Like [`add`](Self::add) with `blocking`, giving up after `timeout` with
    /// [`Error::PoolFull`] (gevent's `add(greenlet, blocking=True, timeout=...)`).
    pub fn add_timeout<T: 'static>(&self, g: &Greenlet<T>, timeout: Duration) -> Result<(), Error> {
        let h = g.handle();
        if self.contains(&h) {
            return Ok(());
        }
        if let Some(s) = &self.inner.sem {
            if !s.acquire_timeout(timeout) {
                return Err(Error::PoolFull);
            }
        }
        self.track(&h);
        Ok(())
    }

    fn track(&self, h: &GreenletRef) {
        let inner = Rc::downgrade(&self.inner);
        let id = h.id();
        let link = Waitable::rawlink(
            h,
            Box::new(move || {
                if let Some(inner) = inner.upgrade() {
                    Pool { inner }.discard_id(id);
                }
            }),
        );
        self.inner.members.borrow_mut().push((h.clone(), link));
    }

    fn discard_id(&self, id: u64) {
        let removed = {
            let mut m = self.inner.members.borrow_mut();
            m.iter()
                .position(|(g, _)| g.id() == id)
                .map(|p| m.remove(p))
        };
        if let Some((g, link)) = removed {
            Waitable::unlink(&g, link);
            if let Some(s) = &self.inner.sem {
                s.release();
            }
            if self.is_empty() {
                self.inner.empty.wake_all_unit();
            }
        }
    }

    /// Removes a greenlet from the pool without killing it, freeing its slot.
    pub fn discard(&self, g: &GreenletRef) {
        self.discard_id(g.id())
    }

    /// Blocks until every member has finished.
    pub fn join(&self) {
        if !self.is_empty() {
            let _ = self.inner.empty.wait(None, None, "Pool::join");
        }
    }

    /// Waits until every member has finished, then returns the error of the first member
    /// (in the order they were added) that failed or was killed, if any (gevent's
    /// `join(raise_error=True)`).
    pub fn join_raise(&self) -> Result<(), Error> {
        let members = self.greenlets();
        self.join();
        match members.iter().find_map(|g| g.exception()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Kills one member and waits until it has finished (gevent's `Group.killone`); does
    /// nothing if it is not a member.
    pub fn killone(&self, g: &GreenletRef) {
        if self.contains(g) {
            g.kill();
        }
    }

    /// Kills one member without waiting (gevent's `killone(block=False)`).
    pub fn killone_nowait(&self, g: &GreenletRef) {
        if self.contains(g) {
            g.kill_nowait();
        }
    }

    /// Like [`join`](Self::join) with a timeout; `false` if members were still running.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        if self.is_empty() {
            return true;
        }
        let hub = hub();
        self.inner
            .empty
            .wait(None, hub.deadline(timeout), "Pool::join")
            .is_ok()
    }

    /// Kills every member, and the feeders of running `map`/`imap` calls, and waits until
    /// they have finished: the pool is empty when it returns (gevent's `kill`).
    pub fn kill(&self) {
        loop {
            let feeders = std::mem::take(&mut *self.inner.feeders.borrow_mut());
            for f in &feeders {
                f.kill_nowait();
            }
            for g in self.greenlets() {
                g.kill_nowait();
            }
            self.join();
            // A feeder whose wait for a free slot had already completed adds one more member
            // before its kill is delivered: wait for the feeders, then look again.
            for f in &feeders {
                f.join();
            }
            if self.is_empty() && self.inner.feeders.borrow().is_empty() {
                return;
            }
        }
    }

    /// Kills every member (and feeder) without waiting (gevent's `kill(block=False)`).
    pub fn kill_nowait(&self) {
        let feeders = std::mem::take(&mut *self.inner.feeders.borrow_mut());
        for f in feeders {
            f.kill_nowait();
        }
        for g in self.greenlets() {
            g.kill_nowait();
        }
    }

    /// Runs `f` in the pool and waits for its result (gevent's `apply`). Called from a
    /// member of this pool, it runs `f` right away in the caller (as gevent does), since
    /// waiting for a slot that the caller itself holds could never end.
    pub fn apply<R: 'static>(&self, f: impl FnOnce() -> R + 'static) -> Result<R, Error> {
        if self.contains(&crate::greenlet::getcurrent()) {
            return run_inline(f);
        }
        self.spawn(f).into_result()
    }

    /// Runs `f` in the pool without waiting (gevent's `apply_async`): returns its greenlet,
    /// and calls `callback` with the result, in a new greenlet, if `f` succeeds.
    pub fn apply_async<R: Clone + 'static>(
        &self,
        f: impl FnOnce() -> R + 'static,
        callback: Option<Box<dyn FnOnce(R)>>,
    ) -> Greenlet<R> {
        let g = self.spawn(f);
        if let Some(cb) = callback {
            g.link_value(move |g| {
                if let Some(v) = g.value() {
                    cb(v)
                }
            });
        }
        g
    }

    /// [`map`](Self::map) in a new greenlet (not a member), whose value is the results
    /// (gevent's `map_async`).
    pub fn map_async<I, F, R>(&self, f: F, items: I) -> Greenlet<Result<Vec<R>, Error>>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        let pool = self.clone();
        spawn(move || pool.map(f, items))
    }

    /// Runs `f` over `items` with the pool's concurrency and returns the results in input
    /// order; the first failure (in input order) is returned instead (gevent's `map`).
    pub fn map<I, F, R>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        self.imap(f, items).collect()
    }

    /// Like [`map`](Self::map), lazily: yields each result in input order as soon as it and
    /// all earlier ones are done (gevent's `imap`).
    pub fn imap<I, F, R>(&self, f: F, items: I) -> IMap<R>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        self.imap_inner(f, items, true, None)
    }

    /// Like [`imap`](Self::imap), with at most `maxsize` results started and not yet taken
    /// by the consumer (gevent's `imap(..., maxsize=)`): a slow consumer holds the feeder
    /// back instead of letting results pile up.
    ///
    /// # Panics
    ///
    /// If `maxsize` is 0.
    pub fn imap_maxsize<I, F, R>(&self, f: F, items: I, maxsize: usize) -> IMap<R>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        assert!(maxsize > 0, "imap's maxsize must be at least 1");
        self.imap_inner(f, items, true, Some(maxsize))
    }

    /// [`imap_unordered`](Self::imap_unordered) with a bound, as [`imap_maxsize`](Self::imap_maxsize).
    ///
    /// # Panics
    ///
    /// If `maxsize` is 0.
    pub fn imap_unordered_maxsize<I, F, R>(&self, f: F, items: I, maxsize: usize) -> IMap<R>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        assert!(maxsize > 0, "imap's maxsize must be at least 1");
        self.imap_inner(f, items, false, Some(maxsize))
    }

    /// Yields results in completion order (gevent's `imap_unordered`).
    pub fn imap_unordered<I, F, R>(&self, f: F, items: I) -> IMap<R>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        self.imap_inner(f, items, false, None)
    }

    fn imap_inner<I, F, R>(&self, f: F, items: I, ordered: bool, maxsize: Option<usize>) -> IMap<R>
    where
        I: IntoIterator + 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> R + 'static,
        R: 'static,
    {
        let results: Rc<Queue<Msg<R>>> = Rc::new(Queue::new());
        let pool = self.clone();
        let f = Rc::new(f);
        let q = results.clone();
        let window = maxsize.map(|n| Rc::new(Semaphore::new(n)));
        let w2 = window.clone();
        let feeder = crate::greenlet::Builder::new()
            .name("imap feeder")
            .spawn(move || {
                let mut n = 0usize;
                for item in items {
                    if let Some(w) = &w2 {
                        w.acquire();
                    }
                    let f = f.clone();
                    let g = pool.spawn(move || f(item));
                    let g2 = g.clone();
                    let q = q.clone();
                    let idx = n;
                    g.rawlink(move || {
                        let _ = q.put_nowait(Msg::Item(idx, g2.into_result()));
                    });
                    n += 1;
                }
                let _ = q.put_nowait(Msg::Done(n));
            });
        {
            let mut fs = self.inner.feeders.borrow_mut();
            fs.retain(|f| !f.dead());
            fs.push(feeder.handle());
        }
        // If the feeder dies before saying `Done` (the input iterator panicked, say), tell the
        // consumer instead of leaving it waiting forever.
        let (q2, f2) = (results.clone(), feeder.clone());
        feeder.rawlink(move || {
            if let Some(e) = f2.exception() {
                let _ = q2.put_nowait(Msg::Aborted(e));
            }
        });
        IMap {
            results,
            feeder,
            window,
            ordered,
            total: Cell::new(None),
            yielded: 0,
            next_index: 0,
            buffer: BTreeMap::new(),
        }
    }
}

/// Runs `f` in the calling greenlet for [`Pool::apply`]: a panic becomes the error it would
/// be in a member; a kill or `Timeout` passes through.
fn run_inline<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Ok(v),
        Err(p) if p.is::<crate::GreenletExit>() || p.is::<crate::TimeoutExpired>() => {
            std::panic::resume_unwind(p)
        }
        Err(p) => Err(Error::Panicked(crate::greenlet::panic_message(&*p))),
    }
}

enum Msg<R> {
    Item(usize, Result<R, Error>),
    Done(usize),
    /// The feeder failed: the error, then the end of the results.
    Aborted(Error),
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`].
pub struct IMap<R: 'static> {
    results: Rc<Queue<Msg<R>>>,
    feeder: Greenlet<()>,
    /// With a `maxsize`: one permit per result started and not yet yielded.
    window: Option<Rc<Semaphore>>,
    ordered: bool,
    total: Cell<Option<usize>>,
    yielded: usize,
    next_index: usize,
    buffer: BTreeMap<usize, Result<R, Error>>,
}

impl<R> std::fmt::Debug for IMap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IMap(yielded={}, ordered={})",
            self.yielded, self.ordered
        )
    }
}

impl<R: 'static> Iterator for IMap<R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.next_result();
        if r.is_some() {
            if let Some(w) = &self.window {
                w.release();
            }
        }
        r
    }
}

impl<R: 'static> IMap<R> {
    fn next_result(&mut self) -> Option<Result<R, Error>> {
        loop {
            if self.total.get() == Some(self.yielded) {
                return None;
            }
            if self.ordered {
                if let Some(r) = self.buffer.remove(&self.next_index) {
                    self.next_index += 1;
                    self.yielded += 1;
                    return Some(r);
                }
            }
            match self.results.get() {
                Ok(Msg::Done(n)) => self.total.set(Some(n)),
                Ok(Msg::Aborted(e)) => {
                    if e == Error::Killed {
                        // Only `IMap::drop` kills the feeder; nobody is listening.
                        continue;
                    }
                    self.yielded += 1;
                    self.total.set(Some(self.yielded));
                    self.buffer.clear();
                    return Some(Err(e));
                }
                Ok(Msg::Item(i, r)) => {
                    if self.ordered {
                        self.buffer.insert(i, r);
                    } else {
                        self.yielded += 1;
                        return Some(r);
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<R: 'static> Drop for IMap<R> {
    fn drop(&mut self) {
        self.feeder.kill_nowait();
    }
}

/// A set of greenlets that can be joined or killed together (gevent's `Group`): a [`Pool`]
/// without a bound.
///
/// ```
/// let group = evergreen::Group::new();
/// for i in 0..3 { group.spawn(move || i); }
/// group.join();
/// assert!(group.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct Group(Pool);

impl Default for Group {
    fn default() -> Self {
        Group::new()
    }
}

impl Group {
    /// An empty group.
    pub fn new() -> Group {
        Group(Pool::make(None))
    }
}

impl Deref for Group {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.0
    }
}
