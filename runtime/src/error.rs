//! The crate's one error type. Each variant says whose fault it is and what to do, the way
//! gevent's exceptions do (`LoopExit`, `ConcurrentObjectUseError`, `InvalidSwitchError`, ...).

use std::fmt;
use std::time::Duration;

/// Errors returned by evergreen's APIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A per-call timeout expired (`*_timeout` methods; gevent raises `Timeout` or returns
    /// `None`). The operation did not happen.
    Timeout(Duration),
    /// The greenlet was killed (gevent's `GreenletExit`). Counts as success for
    /// [`Greenlet::successful`](crate::Greenlet::successful).
    Killed,
    /// The greenlet panicked; the panic message (and location when known). Your code's fault.
    Panicked(String),
    /// A scoped [`Timeout`](crate::Timeout) that was not caught inside the greenlet expired
    /// there and ended it.
    TimedOut(Duration),
    /// The greenlet's value was already moved out by [`Greenlet::into_result`](crate::Greenlet::into_result).
    ValueTaken,
    /// `get_nowait` on an empty queue (gevent's `queue.Empty`).
    Empty,
    /// `put_nowait` on a full queue (gevent's `queue.Full`).
    Full,
    /// The queue was shut down (Python's `queue.ShutDown`).
    ShutDown,
    /// `Queue::task_done` called more times than items were put (Python raises
    /// `ValueError`). A programming error.
    TaskDoneTooManyTimes,
    /// `Pool::add` without blocking on a full pool (gevent's `PoolFull`).
    PoolFull,
    /// A [`BoundedSemaphore`](crate::BoundedSemaphore) was released more times than acquired
    /// (gevent raises `ValueError`). A programming error.
    ReleasedTooManyTimes,
    /// An [`RLock`](crate::RLock) was released by a greenlet that does not own it
    /// (gevent raises `RuntimeError`). A programming error.
    NotOwner,
    /// Two greenlets used an object that allows one user at a time, for example two readers on
    /// one socket (gevent's `ConcurrentObjectUseError`: "usually a programming error").
    ConcurrentObjectUse(String),
    /// A blocking call was made where it can never be woken (gevent's `LoopExit`, "this
    /// operation would block forever"), or from hub context (a raw link or timer callback,
    /// gevent's `BlockingSwitchOutError`). The message names what was waited on and what the
    /// hub still had pending.
    LoopExit(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout(d) => write!(f, "timed out after {d:?}"),
            Error::Killed => f.write_str("greenlet was killed (GreenletExit)"),
            Error::Panicked(m) => write!(f, "greenlet panicked: {m}"),
            Error::TimedOut(d) => write!(f, "greenlet ended by an uncaught Timeout of {d:?}"),
            Error::ValueTaken => f.write_str("the greenlet's value was already taken"),
            Error::Empty => f.write_str("queue is empty"),
            Error::Full => f.write_str("queue is full"),
            Error::ShutDown => f.write_str("queue was shut down"),
            Error::TaskDoneTooManyTimes => {
                f.write_str("Queue::task_done() called more times than items were put")
            }
            Error::PoolFull => f.write_str("pool is full"),
            Error::ReleasedTooManyTimes => {
                f.write_str("BoundedSemaphore released too many times (a programming error)")
            }
            Error::NotOwner => f.write_str(
                "cannot release an RLock owned by another greenlet (a programming error)",
            ),
            Error::ConcurrentObjectUse(m) => {
                write!(f, "concurrent use of one object by two greenlets (usually a programming error): {m}")
            }
            Error::LoopExit(m) => write!(f, "LoopExit: this operation would block forever: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// An item handed back by a `put` that could not complete, with the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected<T> {
    /// The item that was not put; nothing is lost.
    pub item: T,
    /// Why: [`Error::Full`], [`Error::Timeout`] or [`Error::ShutDown`].
    pub reason: Error,
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put rejected: {}", self.reason)
    }
}

impl<T: fmt::Debug> std::error::Error for Rejected<T> {}

/// The panic payload that delivers a kill (gevent's `GreenletExit`).
///
/// It unwinds the victim's stack from its blocking point, running every `Drop`. Code that
/// catches panics (`catch_unwind`) inside a greenlet should resume it with
/// `std::panic::resume_unwind` when it sees this payload, as Python code re-raises
/// `GreenletExit`.
#[derive(Debug)]
pub struct GreenletExit;

/// The panic payload of a blocking call that could never be woken; see [`Error::LoopExit`].
/// It is raised (by unwinding) only in the root context, where no greenlet is running.
#[derive(Debug, Clone)]
pub struct LoopExit(pub String);

impl fmt::Display for LoopExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LoopExit: this operation would block forever: {}",
            self.0
        )
    }
}
