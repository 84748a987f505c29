//! Dead letters: messages that could not be delivered (Akka's `DeadLetter` stream).
//!
//! Every message that ends up undelivered is counted, per thread (per hub), and shown to the
//! subscribers, if any: a tell or ask to an actor that has exited (the message is also handed
//! back to the caller), a message dropped by a full `DropNewest`/`DropOldest` mailbox, messages
//! still queued when an actor exits for good, and replies that arrive after their ask timed
//! out. The message itself is not shown (it is typed, and it may hold secrets): its type name
//! and the target are.
//!
//! Erlang has no dead-letter channel (a message to a dead pid vanishes); this follows Akka.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Why a message became a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Sent to an actor that had exited.
    DeadTarget,
    /// Dropped by a full mailbox (`DropNewest` drops the new one, `DropOldest` the oldest).
    Overflow,
    /// Still queued when the actor exited for good.
    Leftover,
    /// A reply that arrived after its ask had timed out (or its asker was killed).
    LateReply,
}

/// One undelivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The target: the actor's name, or `#id`; for a late reply, the actor that answered.
    pub to: String,
    /// Why it was not delivered.
    pub reason: Reason,
    /// The message's Rust type (`std::any::type_name`).
    pub message_type: &'static str,
}

/// A subscription, for [`unsubscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscription(u64);

type Subscriber = Rc<dyn Fn(&DeadLetter)>;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static NEXT: Cell<u64> = const { Cell::new(1) };
    static SUBS: RefCell<Vec<(u64, Subscriber)>> = const { RefCell::new(Vec::new()) };
}

/// How many dead letters this thread has seen.
pub fn count() -> u64 {
    COUNT.with(|c| c.get())
}

/// Calls `f` for every later dead letter on this thread. `f` runs where the message was
/// dropped (possibly a hub callback), so it must not block; to act on it, send it on (a
/// `tell` to an actor with an unbounded mailbox never blocks).
pub fn subscribe(f: impl Fn(&DeadLetter) + 'static) -> Subscription {
    let id = NEXT.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    SUBS.with(|s| s.borrow_mut().push((id, Rc::new(f))));
    Subscription(id)
}

/// Stops a subscription; `false` if it was unknown.
pub fn unsubscribe(s: Subscription) -> bool {
    SUBS.with(|subs| {
        let mut v = subs.borrow_mut();
        let before = v.len();
        v.retain(|(id, _)| *id != s.0);
        v.len() != before
    })
}

/// Records a dead letter; `to` is built only when someone listens.
pub(crate) fn record(to: impl FnOnce() -> String, reason: Reason, message_type: &'static str) {
    COUNT.with(|c| c.set(c.get() + 1));
    let subs: Vec<Subscriber> = SUBS.with(|s| {
        let v = s.borrow();
        if v.is_empty() {
            Vec::new()
        } else {
            v.iter().map(|(_, f)| f.clone()).collect()
        }
    });
    if subs.is_empty() {
        return;
    }
    let dl = DeadLetter {
        to: to(),
        reason,
        message_type,
    };
    for f in subs {
        f(&dl);
    }
}
