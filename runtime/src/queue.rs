//! Queues (gevent's `queue.py`): [`Queue`] (FIFO, joinable), [`LifoQueue`],
//! [`PriorityQueue`], and the rendezvous [`Channel`].
//!
//! # Mechanism
//!
//! Items live in a `VecDeque` (a `BinaryHeap` for priorities). Blocked getters and putters
//! wait on FIFO [wait lists](crate::waiter) and are served by **direct hand-off**:
//!
//! * `put` with a getter waiting gives the item straight to the longest-waiting getter;
//! * `get` from a full queue moves the longest-waiting putter's item into the queue;
//! * a getter whose timeout fired is already off the list, so it cannot swallow an item, and
//!   a getter that was handed an item gets it even if its timeout fires before it runs.
//!
//! So each `put` completes exactly one waiting `get`, nothing is lost, and a putter blocked at
//! `maxsize` continues as soon as a `get` makes room.
//!
//! # Shutdown
//!
//! [`BaseQueue::shutdown`] follows Python 3.13's `Queue.shutdown`: later puts fail with
//! [`Error::ShutDown`]; gets return the remaining items, then fail with `ShutDown`; blocked
//! getters and putters wake with `ShutDown` (putters get their item back). With `immediate`
//! the remaining items are discarded and `join` returns.
//!
//! # Differences from gevent
//!
//! * `maxsize` 0 is not "unbounded": use [`Queue::new`] for unbounded and [`Channel`] for a
//!   rendezvous.
//! * `peek` clones the head item (`T: Clone`).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Deref;
use std::time::Duration;

use crate::error::{Error, Rejected};
use crate::hub::hub;
use crate::waiter::{WaitFail, WaitList};

/// How a queue stores its items.
pub trait Store<T>: Default {
    /// Adds an item.
    fn push(&mut self, v: T);
    /// Removes the next item.
    fn pop(&mut self) -> Option<T>;
    /// The next item.
    fn peek(&self) -> Option<&T>;
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there is no item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Removes every item.
    fn clear(&mut self) -> usize;
}

/// First in, first out.
pub struct Fifo<T>(VecDeque<T>);
/// Last in, first out.
pub struct Lifo<T>(Vec<T>);
/// Smallest first (gevent's `PriorityQueue` pops the lowest entry).
pub struct Priority<T>(BinaryHeap<Reverse<T>>);

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo(VecDeque::new())
    }
}
impl<T> Default for Lifo<T> {
    fn default() -> Self {
        Lifo(Vec::new())
    }
}
impl<T: Ord> Default for Priority<T> {
    fn default() -> Self {
        Priority(BinaryHeap::new())
    }
}

impl<T> Store<T> for Fifo<T> {
    fn push(&mut self, v: T) {
        self.0.push_back(v)
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }
    fn peek(&self) -> Option<&T> {
        self.0.front()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) -> usize {
        let n = self.0.len();
        self.0.clear();
        n
    }
}

impl<T> Store<T> for Lifo<T> {
    fn push(&mut self, v: T) {
        self.0.push(v)
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    fn peek(&self) -> Option<&T> {
        self.0.last()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) -> usize {
        let n = self.0.len();
        self.0.clear();
        n
    }
}

impl<T: Ord> Store<T> for Priority<T> {
    fn push(&mut self, v: T) {
        self.0.push(Reverse(v))
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop().map(|Reverse(v)| v)
    }
    fn peek(&self) -> Option<&T> {
        self.0.peek().map(|Reverse(v)| v)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) -> usize {
        let n = self.0.len();
        self.0.clear();
        n
    }
}

/// The queue engine shared by [`Queue`], [`LifoQueue`] and [`PriorityQueue`]; its methods are
/// reached through them.
pub struct BaseQueue<T, S: Store<T>> {
    items: RefCell<S>,
    maxsize: Option<usize>,
    getters: WaitList<T>,
    putters: WaitList<T>,
    peekers: WaitList<()>,
    unfinished: Cell<usize>,
    joiners: WaitList<()>,
    shut: Cell<bool>,
}

impl<T, S: Store<T>> std::fmt::Debug for BaseQueue<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Queue(len={}, maxsize={:?}, getters={}, putters={})",
            self.qsize(),
            self.maxsize,
            self.getters.len(),
            self.putters.len()
        )
    }
}

impl<T, S: Store<T>> BaseQueue<T, S> {
    fn with_maxsize(maxsize: Option<usize>) -> Self {
        if let Some(0) = maxsize {
            panic!("a queue's maxsize must be at least 1 (use Channel for a rendezvous)");
        }
        BaseQueue {
            items: RefCell::new(S::default()),
            maxsize,
            getters: WaitList::new(),
            putters: WaitList::new(),
            peekers: WaitList::new(),
            unfinished: Cell::new(0),
            joiners: WaitList::new(),
            shut: Cell::new(false),
        }
    }

    /// Number of items in the queue (not counting items of blocked putters).
    pub fn qsize(&self) -> usize {
        self.items.borrow().len()
    }

    /// Alias of [`qsize`](Self::qsize).
    pub fn len(&self) -> usize {
        self.qsize()
    }

    /// Whether the queue holds no item.
    pub fn is_empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue is at `maxsize`.
    pub fn is_full(&self) -> bool {
        matches!(self.maxsize, Some(m) if self.qsize() >= m)
    }

    /// The bound, `None` if unbounded.
    pub fn maxsize(&self) -> Option<usize> {
        self.maxsize
    }

    /// Number of greenlets blocked in `get`.
    pub fn getter_count(&self) -> usize {
        self.getters.len()
    }

    /// Number of greenlets blocked in `put`.
    pub fn putter_count(&self) -> usize {
        self.putters.len()
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutdown(&self) -> bool {
        self.shut.get()
    }

    /// Puts without blocking: hands the item to a waiting getter, or stores it;
    /// [`Error::Full`] at `maxsize`.
    pub fn put_nowait(&self, item: T) -> Result<(), Rejected<T>> {
        match self.try_put(item) {
            Ok(()) => Ok(()),
            Err(item) => Err(Rejected {
                item,
                reason: if self.shut.get() {
                    Error::ShutDown
                } else {
                    Error::Full
                },
            }),
        }
    }

    #[inline(always)]
    fn try_put(&self, item: T) -> Result<(), T> {
        if self.shut.get() {
            return Err(item);
        }
        let item = match self.getters.wake_one_with(item) {
            Ok(()) => {
                self.unfinished.set(self.unfinished.get() + 1);
                return Ok(());
            }
            Err(item) => item,
        };
        if self.is_full() {
            return Err(item);
        }
        self.items.borrow_mut().push(item);
        self.unfinished.set(self.unfinished.get() + 1);
        if !self.peekers.is_empty() {
            self.peekers.wake_all_unit();
        }
        Ok(())
    }

    fn shut_down_err(item: T) -> Rejected<T> {
        Rejected {
            item,
            reason: Error::ShutDown,
        }
    }

    /// Puts, blocking while the queue is full. Fails only after [`shutdown`](Self::shutdown).
    #[inline(always)]
    pub fn put(&self, item: T) -> Result<(), Rejected<T>> {
        self.put_inner(item, None)
    }

    /// Puts, blocking at most `timeout`; on timeout the item comes back with
    /// [`Error::Timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), Rejected<T>> {
        self.put_inner(item, Some(timeout))
    }

    #[inline(always)]
    fn put_inner(&self, item: T, timeout: Option<Duration>) -> Result<(), Rejected<T>> {
        let item = match self.try_put(item) {
            Ok(()) => return Ok(()),
            Err(item) => item,
        };
        if self.shut.get() {
            return Err(Self::shut_down_err(item));
        }
        let hub = hub();
        let deadline = timeout.and_then(|t| hub.deadline(t));
        match self.putters.wait(Some(item), deadline, "Queue::put") {
            Ok(None) => Ok(()),
            Ok(Some(item)) => Err(Self::shut_down_err(item)),
            Err(WaitFail::Deadline(item)) => Err(Rejected {
                item: item.expect("a timed-out putter keeps its item"),
                reason: Error::Timeout(timeout.unwrap_or_default()),
            }),
        }
    }

    /// Takes an item if one is available: from the queue (then moving a blocked putter's item
    /// in), or from a blocked putter.
    #[inline(always)]
    fn take_available(&self) -> Option<T> {
        let v = self.items.borrow_mut().pop();
        match v {
            Some(v) => {
                if !self.putters.is_empty() {
                    if let Some(p) = self.putters.take_one() {
                        self.items.borrow_mut().push(p);
                        self.unfinished.set(self.unfinished.get() + 1);
                    }
                }
                Some(v)
            }
            None => {
                let p = self.putters.take_one()?;
                self.unfinished.set(self.unfinished.get() + 1);
                Some(p)
            }
        }
    }

    /// Takes an item without blocking: [`Error::Empty`] (or [`Error::ShutDown`] once shut
    /// down) if there is none.
    pub fn get_nowait(&self) -> Result<T, Error> {
        match self.take_available() {
            Some(v) => Ok(v),
            None if self.shut.get() => Err(Error::ShutDown),
            None => Err(Error::Empty),
        }
    }

    /// Takes an item, blocking (FIFO among getters) while the queue is empty.
    #[inline(always)]
    pub fn get(&self) -> Result<T, Error> {
        self.get_inner(None)
    }

    /// Takes an item, blocking at most `timeout` ([`Error::Timeout`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.get_inner(Some(timeout))
    }

    #[inline(always)]
    fn get_inner(&self, timeout: Option<Duration>) -> Result<T, Error> {
        if let Some(v) = self.take_available() {
            return Ok(v);
        }
        if self.shut.get() {
            return Err(Error::ShutDown);
        }
        let hub = hub();
        let deadline = timeout.and_then(|t| hub.deadline(t));
        match self.getters.wait(None, deadline, "Queue::get") {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Error::ShutDown),
            Err(WaitFail::Deadline(_)) => Err(Error::Timeout(timeout.unwrap_or_default())),
        }
    }

    /// A clone of the next item without removing it, blocking while there is none.
    pub fn peek(&self) -> Result<T, Error>
    where
        T: Clone,
    {
        self.peek_inner(None)
    }

    /// Like [`peek`](Self::peek), blocking at most `timeout`.
    pub fn peek_timeout(&self, timeout: Duration) -> Result<T, Error>
    where
        T: Clone,
    {
        self.peek_inner(Some(timeout))
    }

    /// A clone of the next item, if any, without blocking.
    pub fn peek_nowait(&self) -> Result<T, Error>
    where
        T: Clone,
    {
        if let Some(v) = self.items.borrow().peek() {
            return Ok(v.clone());
        }
        if let Some(v) = self.putters.with_front(|v| v.cloned()) {
            return Ok(v);
        }
        Err(if self.shut.get() {
            Error::ShutDown
        } else {
            Error::Empty
        })
    }

    fn peek_inner(&self, timeout: Option<Duration>) -> Result<T, Error>
    where
        T: Clone,
    {
        let hub = hub();
        let deadline = timeout.and_then(|t| hub.deadline(t));
        loop {
            match self.peek_nowait() {
                Err(Error::Empty) => {}
                r => return r,
            }
            if self.peekers.wait(None, deadline, "Queue::peek").is_err() {
                return Err(Error::Timeout(timeout.unwrap_or_default()));
            }
        }
    }

    /// Marks one item as processed (joinable queue, Python's `task_done`).
    pub fn task_done(&self) -> Result<(), Error> {
        let n = self.unfinished.get();
        if n == 0 {
            return Err(Error::TaskDoneTooManyTimes);
        }
        self.unfinished.set(n - 1);
        if n == 1 {
            self.joiners.wake_all_unit();
        }
        Ok(())
    }

    /// Items put and not yet marked done.
    pub fn unfinished_tasks(&self) -> usize {
        self.unfinished.get()
    }

    /// Blocks until every item put has been marked done.
    pub fn join(&self) {
        if self.unfinished.get() > 0 {
            let _ = self.joiners.wait(None, None, "Queue::join");
        }
    }

    /// Like [`join`](Self::join) with a timeout; `false` if it timed out.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        if self.unfinished.get() == 0 {
            return true;
        }
        let hub = hub();
        self.joiners
            .wait(None, hub.deadline(timeout), "Queue::join")
            .is_ok()
    }

    /// Shuts the queue down (see the [module docs](self#shutdown)).
    pub fn shutdown(&self, immediate: bool) {
        self.shut.set(true);
        if immediate {
            let n = self.items.borrow_mut().clear();
            self.unfinished.set(self.unfinished.get().saturating_sub(n));
            if self.unfinished.get() == 0 {
                self.joiners.wake_all_unit();
            }
        }
        self.getters.release_all();
        self.putters.release_all();
        self.peekers.wake_all_unit();
    }
}

macro_rules! queue_type {
    ($(#[$doc:meta])* $name:ident, $store:ident, $($bound:tt)*) => {
        $(#[$doc])*
        pub struct $name<T: $($bound)*>(BaseQueue<T, $store<T>>);

        impl<T: $($bound)*> $name<T> {
            /// An unbounded queue.
            pub fn new() -> Self {
                $name(BaseQueue::with_maxsize(None))
            }

            /// A queue holding at most `maxsize` items (≥ 1); `put` blocks while it is full.
            ///
            /// # Panics
            ///
            /// If `maxsize` is 0 (use [`Channel`]).
            pub fn bounded(maxsize: usize) -> Self {
                $name(BaseQueue::with_maxsize(Some(maxsize)))
            }
        }

        impl<T: $($bound)*> Default for $name<T> {
            fn default() -> Self {
                Self::new()
            }
        }

        impl<T: $($bound)*> Deref for $name<T> {
            type Target = BaseQueue<T, $store<T>>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl<T: $($bound)*> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

queue_type!(
    /// A FIFO queue, joinable (gevent's `Queue`/`JoinableQueue`). Its methods are on
    /// [`BaseQueue`].
    ///
    /// ```
    /// let q = evergreen::Queue::new();
    /// q.put(1).unwrap();
    /// q.put(2).unwrap();
    /// assert_eq!(q.get(), Ok(1));
    /// assert_eq!(q.get_nowait(), Ok(2));
    /// assert_eq!(q.get_nowait(), Err(evergreen::Error::Empty));
    /// ```
    Queue, Fifo, Sized
);
queue_type!(
    /// A last-in-first-out queue (gevent's `LifoQueue`).
    LifoQueue, Lifo, Sized
);
queue_type!(
    /// A queue that returns its smallest item first (gevent's `PriorityQueue`).
    ///
    /// ```
    /// let q = evergreen::PriorityQueue::new();
    /// for x in [3, 1, 2] { q.put(x).unwrap(); }
    /// assert_eq!(q.get(), Ok(1));
    /// ```
    PriorityQueue, Priority, Ord
);

/// A rendezvous channel (gevent's `Channel`, a queue of size 0): `put` blocks until a getter
/// has taken the item, and returns after that getter ran (as in gevent).
///
/// ```
/// use std::rc::Rc;
/// let ch = Rc::new(evergreen::Channel::new());
/// let c2 = ch.clone();
/// let g = evergreen::spawn(move || c2.put("hi").map_err(|r| r.reason));
/// assert_eq!(ch.get(), Ok("hi"));
/// assert_eq!(g.get(), Ok(Ok(())));
/// ```
pub struct Channel<T> {
    getters: WaitList<T>,
    putters: WaitList<T>,
}

impl<T> Default for Channel<T> {
    fn default() -> Self {
        Channel {
            getters: WaitList::new(),
            putters: WaitList::new(),
        }
    }
}

impl<T> std::fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Channel(getters={}, putters={})",
            self.getters.len(),
            self.putters.len()
        )
    }
}

impl<T> Channel<T> {
    /// A channel with nobody waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of greenlets blocked in `get`.
    pub fn getter_count(&self) -> usize {
        self.getters.len()
    }

    /// Always `true`: a channel holds no item (gevent's `Channel.full()`). Whether a `put`
    /// would block is `getter_count() == 0`.
    pub fn full(&self) -> bool {
        true
    }

    /// Always `true`: a channel holds no item (gevent's `Channel.empty()`). Whether a `get`
    /// would block is `putter_count() == 0`.
    pub fn empty(&self) -> bool {
        true
    }

    /// Number of greenlets blocked in `put`.
    pub fn putter_count(&self) -> usize {
        self.putters.len()
    }

    /// Hands `item` to a getter, blocking until one takes it.
    pub fn put(&self, item: T) -> Result<(), Rejected<T>> {
        self.put_inner(item, None)
    }

    /// Like [`put`](Self::put), giving up after `timeout` (the item comes back).
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), Rejected<T>> {
        self.put_inner(item, Some(timeout))
    }

    /// Hands `item` to a getter that is already waiting, else [`Error::Full`].
    pub fn put_nowait(&self, item: T) -> Result<(), Rejected<T>> {
        self.getters.wake_one_with(item).map_err(|item| Rejected {
            item,
            reason: Error::Full,
        })
    }

    fn put_inner(&self, item: T, timeout: Option<Duration>) -> Result<(), Rejected<T>> {
        let item = match self.getters.wake_one_with(item) {
            Ok(()) => {
                // As in gevent, `put` returns after the getter has taken the item and run.
                hub().yield_keeping_interrupts();
                return Ok(());
            }
            Err(item) => item,
        };
        let hub = hub();
        let deadline = timeout.and_then(|t| hub.deadline(t));
        match self.putters.wait(Some(item), deadline, "Channel::put") {
            Ok(None) => Ok(()),
            Ok(Some(item)) => Err(Rejected {
                item,
                reason: Error::ShutDown,
            }),
            Err(WaitFail::Deadline(item)) => Err(Rejected {
                item: item.expect("a timed-out putter keeps its item"),
                reason: Error::Timeout(timeout.unwrap_or_default()),
            }),
        }
    }

    /// Takes an item from a waiting putter, blocking until one comes (inlined down to the
    /// switch).
    #[inline]
    pub fn get(&self) -> Result<T, Error> {
        self.get_inner(None)
    }

    /// Like [`get`](Self::get), giving up after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.get_inner(Some(timeout))
    }

    /// Takes an item from a putter that is already waiting, else [`Error::Empty`].
    pub fn get_nowait(&self) -> Result<T, Error> {
        self.putters.take_one().ok_or(Error::Empty)
    }

    #[inline(always)]
    fn get_inner(&self, timeout: Option<Duration>) -> Result<T, Error> {
        if let Some(v) = self.putters.take_one() {
            return Ok(v);
        }
        let hub = hub();
        let deadline = timeout.and_then(|t| hub.deadline(t));
        match self.getters.wait(None, deadline, "Channel::get") {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Error::ShutDown),
            Err(WaitFail::Deadline(_)) => Err(Error::Timeout(timeout.unwrap_or_default())),
        }
    }
}
