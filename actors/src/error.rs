//! Exit reasons and the crate's one error type.
//!
//! [`ExitReason`] is Erlang's exit reason (`normal`, `shutdown`, `killed`, `{panic, Msg}`,
//! ...), typed. [`Error`] is what an operation on an actor returns when it did not happen;
//! where a message could not be delivered, the error hands it back (`Error::Full(msg)`,
//! `Error::Dead(reason, msg)`), so nothing is lost silently.

use std::fmt;
use std::time::Duration;

/// Why an actor (or one incarnation of it) ended; Erlang's exit reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// It stopped because it was asked to ([`ActorRef::stop`](crate::ActorRef::stop),
    /// [`Ctx::stop`](crate::Ctx::stop)) or its work was done (Erlang's `normal`).
    Normal,
    /// Its supervisor (or an orderly shutdown) stopped it (Erlang's `shutdown`).
    Shutdown,
    /// It was killed: its greenlet was unwound without running its `stopped` hook
    /// (Erlang's `killed`).
    Killed,
    /// It panicked while handling a message (not an ask: see [`Error::Panicked`]); the panic
    /// message.
    Panicked(String),
    /// Its `started` hook failed (returned an error or panicked).
    StartFailed(String),
    /// It stopped itself with an error of its own ([`Ctx::stop_with`](crate::Ctx::stop_with)).
    Error(String),
    /// A supervisor gave up: one of its children exited more often than its restart
    /// intensity allows (OTP exits with `shutdown` here; see the crate docs).
    Escalated(String),
}

impl ExitReason {
    /// Whether this is an orderly exit (`Normal` or `Shutdown`): a `Transient` child that
    /// exits this way is not restarted, and an exit signal with `Normal` is ignored by a
    /// linked actor that does not trap exits.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panicked(m) => write!(f, "panicked: {m}"),
            ExitReason::StartFailed(m) => write!(f, "start failed: {m}"),
            ExitReason::Error(m) => write!(f, "error: {m}"),
            ExitReason::Escalated(m) => write!(f, "escalated: {m}"),
        }
    }
}

/// What went wrong with an operation on an actor. `M` is the message type when the error
/// hands an undelivered message back (tells); it is `()` otherwise (asks, supervisor calls).
#[derive(Clone, PartialEq, Eq)]
pub enum Error<M = ()> {
    /// The target actor has exited for good, with this reason; the message is handed back.
    /// For an ask, also: the incarnation handling it was killed (a supervisor may restart the
    /// actor, but that answer is lost).
    Dead(ExitReason, M),
    /// The target's bounded mailbox is full (policy `Fail`, or any `try_tell` that would
    /// block); the message is handed back. For an ask evicted by a `DropOldest` mailbox, `()`.
    Full(M),
    /// A wait would never end: a blocking tell whose target is (transitively) blocked telling
    /// or asking the caller, both mailboxes full, or an actor telling itself with its own
    /// mailbox full; or an ask whose callee is (transitively) waiting in an ask (or a blocking
    /// tell) on the caller (gen_server's `call` deadlock). The text names the actors of the
    /// cycle; a tell's message is handed back.
    LoopExit(String, M),
    /// An ask got no answer in time (gevent's `Timeout`; OTP's `{timeout, ...}` exit of
    /// `gen_server:call`, as a value here).
    Timeout(Duration),
    /// An actor asked itself: it would wait for its own answer forever.
    SelfAsk,
    /// The callee dropped the reply handle without answering.
    ReplyDropped,
    /// The callee panicked while answering the ask (it lives on); the panic message.
    Panicked(String),
    /// An actor or child failed to start (its `started` hook failed); names which and why.
    StartFailed(String),
    /// A name is already registered ([`registry::register`](crate::registry::register)).
    AlreadyRegistered(String),
    /// Bad input to an API (a zero mailbox capacity, an unknown child id, ...), named.
    Invalid(String),
}

impl<M> Error<M> {
    /// The undelivered message, if this error carries one back.
    pub fn into_msg(self) -> Option<M> {
        match self {
            Error::Dead(_, m) | Error::Full(m) | Error::LoopExit(_, m) => Some(m),
            _ => None,
        }
    }

    /// The same error without the message (to compare or report it).
    pub fn discard(self) -> Error {
        match self {
            Error::Dead(r, _) => Error::Dead(r, ()),
            Error::Full(_) => Error::Full(()),
            Error::LoopExit(s, _) => Error::LoopExit(s, ()),
            Error::Timeout(d) => Error::Timeout(d),
            Error::SelfAsk => Error::SelfAsk,
            Error::ReplyDropped => Error::ReplyDropped,
            Error::Panicked(s) => Error::Panicked(s),
            Error::StartFailed(s) => Error::StartFailed(s),
            Error::AlreadyRegistered(s) => Error::AlreadyRegistered(s),
            Error::Invalid(s) => Error::Invalid(s),
        }
    }
}

impl<M> fmt::Debug for Error<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message is not printed: `M` need not be `Debug`, and it may hold secrets.
        match self {
            Error::Dead(r, _) => write!(f, "Dead({r:?})"),
            Error::Full(_) => f.write_str("Full"),
            Error::LoopExit(s, _) => write!(f, "LoopExit({s:?})"),
            Error::Timeout(d) => write!(f, "Timeout({d:?})"),
            Error::SelfAsk => f.write_str("SelfAsk"),
            Error::ReplyDropped => f.write_str("ReplyDropped"),
            Error::Panicked(s) => write!(f, "Panicked({s:?})"),
            Error::StartFailed(s) => write!(f, "StartFailed({s:?})"),
            Error::AlreadyRegistered(s) => write!(f, "AlreadyRegistered({s:?})"),
            Error::Invalid(s) => write!(f, "Invalid({s:?})"),
        }
    }
}

impl<M> fmt::Display for Error<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Dead(r, _) => write!(f, "the actor has exited ({r})"),
            Error::Full(_) => f.write_str("the actor's mailbox is full"),
            Error::LoopExit(s, _) => write!(f, "LoopExit: this tell would block forever: {s}"),
            Error::Timeout(d) => write!(f, "no answer within {d:?}"),
            Error::SelfAsk => {
                f.write_str("an actor asked itself (it would wait for its own answer forever)")
            }
            Error::ReplyDropped => f.write_str("the callee dropped the reply without answering"),
            Error::Panicked(m) => write!(f, "the callee panicked while answering: {m}"),
            Error::StartFailed(m) => write!(f, "start failed: {m}"),
            Error::AlreadyRegistered(n) => write!(f, "the name {n:?} is already registered"),
            Error::Invalid(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl<M> std::error::Error for Error<M> {}

/// The message of a caught panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(t) = p.downcast_ref::<evergreen::TimeoutExpired>() {
        format!("an uncaught Timeout of {:?} expired", t.after)
    } else {
        "a panic with a non-string payload".into()
    }
}

/// Whether a caught payload is a kill being delivered (it must keep unwinding).
pub(crate) fn is_kill(p: &(dyn std::any::Any + Send)) -> bool {
    p.is::<evergreen::GreenletExit>()
}
