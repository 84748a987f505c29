//! The one park/unpark primitive every blocking object is built on (gevent's `_waiter.py` and
//! `_abstract_linkable.py`).
//!
//! # Mechanism
//!
//! A `WaitList` is a FIFO of waiters. A waiter lives *on the waiting greenlet's stack* for
//! the duration of the wait, and the list holds a pointer to it, so waiting allocates nothing.
//! A waiter carries one value slot:
//!
//! * a *getter* waits with an empty slot; whoever completes the wait puts a value in it
//!   (**direct hand-off**), unlinks it and unparks its greenlet;
//! * a *putter* waits with its item in the slot; whoever completes the wait takes the item
//!   out, unlinks it and unparks its greenlet.
//!
//! Completing a wait is therefore a single step done by the waker, and a waiter that has been
//! completed can no longer time out or be skipped: **a wait that was completed always wins**
//! over a timeout or interrupt that arrives before the greenlet runs again. This is how "a
//! getter whose timeout fired does not swallow an item" and "each `put` completes exactly one
//! waiting `get`" hold by construction. (The interrupt is not lost: it stays pending and is
//! delivered at the greenlet's next blocking point.)
//!
//! When a wait ends any other way (its deadline, a kill or a `Timeout` unwinding through it),
//! a guard on the waiter's frame unlinks it, so a list never points to a dead frame.
//!
//! `Links` are the other half of gevent's `AbstractLinkable`: callbacks registered on an
//! object (greenlet death, event set) that run *as hub callbacks*, in registration order.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::time::Instant;

use crate::greenlet::CorePtr;
use crate::hub::{hub, Wake};

type Link<T> = Cell<Option<NonNull<Waiter<T>>>>;

/// A waiter, pinned on the waiting frame, and a node of its list (intrusive, doubly linked:
/// linking and unlinking never allocate).
pub(crate) struct Waiter<T> {
    /// The waiting greenlet; alive (registered, or the root) while it waits.
    greenlet: CorePtr,
    slot: Cell<Option<T>>,
    linked: Cell<bool>,
    prev: Link<T>,
    next: Link<T>,
}

/// How a wait on a [`WaitList`] ended without completing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WaitFail<T> {
    /// The deadline passed; the slot's content (a putter's item) is handed back.
    Deadline(Option<T>),
}

/// A FIFO list of waiting greenlets. See the [module docs](self).
///
/// The list is intrusive: its nodes are the [`Waiter`]s on the waiting greenlets' stacks.
/// Invariant: every node reachable from `head` is a live frame's waiter with `linked` set.
pub(crate) struct WaitList<T> {
    head: Link<T>,
    tail: Link<T>,
    len: Cell<usize>,
}

impl<T> Default for WaitList<T> {
    fn default() -> Self {
        Self::new()
    }
}

struct Unlink<'a, T> {
    list: &'a WaitList<T>,
    w: &'a Waiter<T>,
}

impl<T> Drop for Unlink<'_, T> {
    fn drop(&mut self) {
        if self.w.linked.get() {
            self.list.unlink(self.w);
        }
    }
}

impl<T> WaitList<T> {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        WaitList {
            head: Cell::new(None),
            tail: Cell::new(None),
            len: Cell::new(0),
        }
    }

    /// Number of waiters.
    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }

    /// Whether nobody waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.get().is_none()
    }

    #[inline(always)]
    fn push_back(&self, w: &Waiter<T>) {
        let p = NonNull::from(w);
        w.prev.set(self.tail.get());
        w.next.set(None);
        match self.tail.get() {
            // SAFETY: nodes in the list are live waiters (see the type's invariant).
            Some(t) => unsafe { t.as_ref() }.next.set(Some(p)),
            None => self.head.set(Some(p)),
        }
        self.tail.set(Some(p));
        w.linked.set(true);
        self.len.set(self.len.get() + 1);
    }

    /// Removes a linked waiter from anywhere in the list.
    #[inline(always)]
    fn unlink(&self, w: &Waiter<T>) {
        debug_assert!(w.linked.get());
        let (prev, next) = (w.prev.get(), w.next.get());
        match prev {
            // SAFETY: neighbours of a linked node are live waiters of this list.
            Some(p) => unsafe { p.as_ref() }.next.set(next),
            None => self.head.set(next),
        }
        match next {
            // SAFETY: as above.
            Some(n) => unsafe { n.as_ref() }.prev.set(prev),
            None => self.tail.set(prev),
        }
        w.prev.set(None);
        w.next.set(None);
        w.linked.set(false);
        self.len.set(self.len.get() - 1);
    }

    /// Waits at the back of the list until a waker completes the wait, `deadline` passes, or
    /// an interrupt is delivered (by unwinding, after unlinking). `slot` is the initial slot
    /// content (a putter's item); on completion the slot's final content is returned.
    #[inline(always)]
    pub(crate) fn wait(
        &self,
        slot: Option<T>,
        deadline: Option<Instant>,
        what: &'static str,
    ) -> Result<Option<T>, WaitFail<T>> {
        self.wait_on(hub(), slot, deadline, what)
    }

    /// [`wait`](Self::wait) for a caller that has this thread's hub at hand.
    #[inline(always)]
    pub(crate) fn wait_on(
        &self,
        hub: &'static crate::hub::Hub,
        slot: Option<T>,
        deadline: Option<Instant>,
        what: &'static str,
    ) -> Result<Option<T>, WaitFail<T>> {
        let w = Waiter {
            greenlet: hub.current().ptr(),
            slot: Cell::new(slot),
            linked: Cell::new(false),
            prev: Cell::new(None),
            next: Cell::new(None),
        };
        self.push_back(&w);
        let guard = Unlink { list: self, w: &w };
        loop {
            let wake = hub.park(deadline, what);
            if !w.linked.get() {
                // Completed by a waker: that wins over a deadline or interrupt.
                drop(guard);
                return Ok(w.slot.take());
            }
            match wake {
                Wake::Woken => {
                    debug_assert!(
                        false,
                        "greenlet #{} was woken while still waiting on {what}: a wake-up for \
                         the wrong reason (a bug in evergreen)",
                        hub.current().id
                    );
                }
                Wake::Deadline => {
                    drop(guard);
                    return Err(WaitFail::Deadline(w.slot.take()));
                }
                Wake::Interrupted => {
                    // Unwinds (the guard unlinks the waiter). Returns only while the thread is
                    // already unwinding, when the interrupt must stay pending: keep waiting.
                    hub.deliver_interrupt();
                }
            }
        }
    }

    #[inline(always)]
    fn pop(&self) -> Option<&Waiter<T>> {
        let p = self.head.get()?;
        // SAFETY: a waiter stays in the list only while its frame is alive: the frame's
        // `Unlink` guard removes it on every exit path (return or unwind) unless a waker
        // already removed it. The reference does not outlive the waker's use of it, during
        // which the waiting greenlet cannot run.
        let w = unsafe { p.as_ref() };
        self.unlink(w);
        Some(w)
    }

    /// Completes the first wait by handing it `v`; gives `v` back if nobody waits.
    #[inline(always)]
    pub(crate) fn wake_one_with(&self, v: T) -> Result<(), T> {
        match self.pop() {
            Some(w) => {
                w.slot.set(Some(v));
                wake(w.greenlet);
                Ok(())
            }
            None => Err(v),
        }
    }

    /// Completes the first wait by taking its slot's content (a putter's item).
    #[inline(always)]
    pub(crate) fn take_one(&self) -> Option<T> {
        let w = self.pop()?;
        let v = w.slot.take();
        wake(w.greenlet);
        v
    }

    /// Calls `f` on the first waiter's slot content without completing the wait.
    pub(crate) fn with_front<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        match self.head.get() {
            Some(p) => {
                // SAFETY: see `pop`.
                let w = unsafe { p.as_ref() };
                let v = w.slot.take();
                let r = f(v.as_ref());
                w.slot.set(v);
                r
            }
            None => f(None),
        }
    }
}

impl<T> WaitList<T> {
    /// Completes every wait without handing anything: getters get `None`, putters get their
    /// item back (used by `shutdown`).
    pub(crate) fn release_all(&self) -> usize {
        let mut n = 0;
        while let Some(w) = self.pop() {
            wake(w.greenlet);
            n += 1;
        }
        n
    }
}

impl WaitList<()> {
    /// Completes every wait, in FIFO order (see [`WaitList::wake_all`]).
    #[inline]
    pub(crate) fn wake_all_unit(&self) -> usize {
        self.wake_all()
    }
}

impl<T> WaitList<T> {
    /// Completes every wait, in FIFO order, leaving each slot as it is (the whole list is
    /// detached at once: waking only queues the greenlets, so nothing can touch the list
    /// meanwhile).
    #[inline]
    pub(crate) fn wake_all(&self) -> usize {
        let mut cur = self.head.take();
        if cur.is_none() {
            return 0;
        }
        self.tail.set(None);
        let n = self.len.replace(0);
        let hub = hub();
        while let Some(p) = cur {
            // SAFETY: see `pop`: every node of the list is a live waiter.
            let w = unsafe { p.as_ref() };
            cur = w.next.take();
            w.prev.set(None);
            w.linked.set(false);
            // SAFETY: a waiter's greenlet is parked on this wait, so it is alive: registered
            // with the hub (which holds a count of it), the root, or leaked at hub teardown
            // (never freed, and dead, so `unpark` ignores it).
            hub.unpark(unsafe { w.greenlet.as_ref() });
        }
        n
    }
}

#[inline(always)]
fn wake(g: CorePtr) {
    // SAFETY: as in `wake_all_unit`: a waiter's greenlet is alive while it waits.
    hub().unpark(unsafe { g.as_ref() });
}

/// Identifies a link registered with `rawlink`, for `unlink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkId(pub(crate) u64);

/// A callback run on the hub.
pub(crate) type Callback = Box<dyn FnOnce()>;

/// One registered link.
struct LinkEntry {
    id: u64,
    /// Registration order on this object (see [`Links::next_ordinal`]).
    ordinal: u32,
    cb: Callback,
}

/// A FIFO whose front item is kept inline: an object with one link (a greenlet joined by
/// `joinall` or `wait`) never allocates a buffer for it.
#[derive(Default)]
struct Entries {
    /// The front item; `None` only when the FIFO is empty.
    first: Option<LinkEntry>,
    /// The items after `first`.
    rest: std::collections::VecDeque<LinkEntry>,
}

impl Entries {
    fn push_back(&mut self, e: LinkEntry) {
        if self.first.is_none() {
            debug_assert!(self.rest.is_empty());
            self.first = Some(e);
        } else {
            self.rest.push_back(e);
        }
    }

    fn pop_front(&mut self) -> Option<LinkEntry> {
        let e = self.first.take()?;
        self.first = self.rest.pop_front();
        Some(e)
    }

    fn front(&self) -> Option<&LinkEntry> {
        self.first.as_ref()
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Removes the entry of link `id`, if it is here.
    fn remove(&mut self, id: u64) -> Option<LinkEntry> {
        if self.first.as_ref()?.id == id {
            return self.pop_front();
        }
        let p = self.rest.iter().position(|e| e.id == id)?;
        self.rest.remove(p)
    }
}

/// The links of one object, shared with the notification callback while one is scheduled.
#[derive(Default)]
struct LinkList {
    entries: Entries,
    next_ordinal: u32,
    /// A notification callback is scheduled or running: it will run what is added meanwhile.
    notifying: bool,
}

/// Callbacks to run when an object becomes ready (gevent's `AbstractLinkable` links).
///
/// As in gevent, a notification is *one* hub callback that runs the links one at a time, in
/// registration order, taking each from the object's list only when its turn comes: a link
/// that unlinks another, not yet run, link stops it, and a link added while the notification
/// runs is run by it too. Each link runs as a hub callback of its own (it must not block; a
/// panic is logged and does not stop the others).
pub(crate) struct Links {
    /// Made on the first link: most objects never get one, and every greenlet has a `Links`.
    list: std::cell::OnceCell<std::rc::Rc<RefCell<LinkList>>>,
}

impl Default for Links {
    fn default() -> Links {
        Links {
            list: std::cell::OnceCell::new(),
        }
    }
}

thread_local! {
    static NEXT_LINK: Cell<u64> = const { Cell::new(1) };
}

impl Links {
    fn shared(&self) -> &std::rc::Rc<RefCell<LinkList>> {
        self.list.get_or_init(Default::default)
    }

    /// Whether no link was ever registered (so there is nothing to drop).
    #[inline(always)]
    pub(crate) fn is_unused(&self) -> bool {
        self.list.get().is_none()
    }

    /// Registers `f` (it is not run: see [`add_or_fire`](Self::add_or_fire)).
    pub(crate) fn add(&self, f: Callback) -> LinkId {
        let id = NEXT_LINK.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        let mut l = self.shared().borrow_mut();
        let ordinal = l.next_ordinal;
        l.next_ordinal = ordinal.wrapping_add(1);
        l.entries.push_back(LinkEntry { id, ordinal, cb: f });
        LinkId(id)
    }

    /// Removes a link that has not run; `false` if it ran (or was never registered here).
    pub(crate) fn remove(&self, id: LinkId) -> bool {
        let Some(rc) = self.list.get() else {
            return false;
        };
        let removed = {
            let mut l = rc.borrow_mut();
            l.entries.remove(id.0)
        };
        // Dropped outside the borrow: a callback's captures may do anything when dropped.
        removed.is_some()
    }

    /// Removes every link that has not run (gevent's `unlink_all`); returns how many.
    pub(crate) fn clear(&self) -> usize {
        let Some(rc) = self.list.get() else {
            return 0;
        };
        let taken = std::mem::take(&mut rc.borrow_mut().entries);
        taken.len()
    }

    /// Number of links not run yet.
    pub(crate) fn len(&self) -> usize {
        self.list.get().map_or(0, |rc| rc.borrow().entries.len())
    }

    /// Whether no link is waiting to run.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.list
            .get()
            .is_none_or(|rc| rc.borrow().entries.is_empty())
    }

    /// How many links were ever registered: a waiter that records it when it starts waiting
    /// comes after the links with a smaller ordinal (greenlet joiners, see `greenlet.rs`).
    #[inline]
    pub(crate) fn next_ordinal(&self) -> u32 {
        self.list.get().map_or(0, |rc| rc.borrow().next_ordinal)
    }

    /// The ordinal of the next link to run.
    pub(crate) fn front_ordinal(&self) -> Option<u32> {
        self.list.get()?.borrow().entries.front().map(|e| e.ordinal)
    }

    /// Takes the next link to run.
    pub(crate) fn pop_front(&self) -> Option<Callback> {
        self.list
            .get()?
            .borrow_mut()
            .entries
            .pop_front()
            .map(|e| e.cb)
    }

    /// Marks a notification as started; `false` if one is scheduled or running already.
    pub(crate) fn begin_notify(&self) -> bool {
        let mut l = self.shared().borrow_mut();
        !std::mem::replace(&mut l.notifying, true)
    }

    /// Marks the notification as over.
    pub(crate) fn end_notify(&self) {
        if let Some(rc) = self.list.get() {
            rc.borrow_mut().notifying = false;
        }
    }

    /// Registers `f`; if the object is `ready` already, notifies (a link added after the fact
    /// still fires).
    pub(crate) fn add_or_fire(&self, f: Callback, ready: bool) -> LinkId {
        let id = self.add(f);
        if ready {
            self.fire_all();
        }
        id
    }

    /// Schedules the notification (one hub callback running every link in order), unless
    /// one is scheduled already or there is no link.
    #[inline]
    pub(crate) fn fire_all(&self) {
        if self.is_empty() {
            return;
        }
        self.fire_all_slow();
    }

    #[inline(never)]
    fn fire_all_slow(&self) {
        if !self.begin_notify() {
            return;
        }
        let rc = self.shared().clone();
        hub().schedule_callback(Box::new(move || loop {
            let next = {
                let mut l = rc.borrow_mut();
                match l.entries.pop_front() {
                    Some(e) => e.cb,
                    None => {
                        l.notifying = false;
                        return;
                    }
                }
            };
            hub().run_hub_callback(next);
        }));
    }
}

/// Something a greenlet can wait for with [`wait`](crate::wait()) and [`iwait`](crate::iwait):
/// greenlets, [`Event`](crate::Event)s, [`AsyncResult`](crate::AsyncResult)s
/// (gevent's objects with `rawlink`).
pub trait Waitable {
    /// Whether the object is ready now (the greenlet is dead, the event set, ...).
    fn ready(&self) -> bool;
    /// Registers `f` to run as a hub callback when the object becomes ready (once). If it is
    /// ready already, `f` is scheduled at once. `f` must not block.
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId;
    /// Removes a link that has not fired; `false` if it had fired or was unknown.
    fn unlink(&self, id: LinkId) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> LinkEntry {
        LinkEntry {
            id,
            ordinal: id as u32,
            cb: Box::new(|| {}),
        }
    }

    fn ids(e: &mut Entries) -> Vec<u64> {
        std::iter::from_fn(|| e.pop_front().map(|x| x.id)).collect()
    }

    #[test]
    fn the_inline_front_keeps_fifo_order_through_removals() {
        let mut e = Entries::default();
        assert!(e.is_empty() && e.front().is_none());
        for id in 1..=5 {
            e.push_back(entry(id));
        }
        assert_eq!(e.len(), 5);
        // The front (inline), one in the middle, the last, and one that is not there.
        assert_eq!(e.remove(1).map(|x| x.id), Some(1));
        assert_eq!(
            e.front().map(|x| x.id),
            Some(2),
            "the next one moves inline"
        );
        assert_eq!(e.remove(4).map(|x| x.id), Some(4));
        assert_eq!(e.remove(5).map(|x| x.id), Some(5));
        assert!(e.remove(9).is_none());
        e.push_back(entry(6));
        assert_eq!(e.len(), 3);
        assert_eq!(ids(&mut e), vec![2, 3, 6]);
        assert!(e.is_empty());
        // Emptied, it starts inline again.
        e.push_back(entry(7));
        assert!(e.rest.is_empty());
        assert_eq!(ids(&mut e), vec![7]);
    }
}
