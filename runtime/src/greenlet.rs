//! Greenlets: green threads on stackful coroutines (gevent's `greenlet.py`).
//!
//! # Mechanism
//!
//! A greenlet is a corosensei coroutine on a pooled [stack](crate::stack) plus the state the
//! hub needs: its id and name, its run state, what it is waiting on, a pending interrupt, its
//! joiners and links. [`spawn`] creates one and puts it at the back of the hub's run queue; it
//! does **not** run until the spawner blocks or yields, and greenlets start in FIFO order.
//!
//! The coroutine body calls the user's function inside `catch_unwind`. When it returns, the
//! value is stored; when it panics, the panic is the greenlet's *failure*: it is stored, logged
//! once through `log::error!` (like gevent's "... failed with ..." report) and returned by
//! [`Greenlet::get`]; it never reaches the hub.
//!
//! # Memory
//!
//! A greenlet is one heap block (its core, then its typed result) with a hand-kept reference
//! count: each [`Greenlet`] handle holds one, and so does the hub's live registry while the
//! greenlet is started and not finished. Freed blocks go to a per-hub cache by size class
//! (16-byte classes up to 1 KiB), so spawning costs no `malloc`/`free` in steady state; the
//! stack comes from the [stack pool](crate::stack) and, until the greenlet is reaped, is owned
//! by its core (the coroutine holds only a two-word view of it, so finishing a greenlet gives
//! the stack back without moving the coroutine out). A handle may outlive its hub: the block is
//! then freed to the allocator when the last handle goes. `EVERGREEN_BLOCK_CACHE=0` turns the
//! cache off, so that memory checkers see every freed greenlet (`scripts/valgrind-tests.sh`
//! does). A block's allocation exposes its provenance, and every pointer to a block is either
//! the allocator's own or one rebuilt from that exposed provenance (`Core::ptr`), never one
//! narrowed from a `&Core`, so widening it to the whole block and freeing through it are
//! sound.
//!
//! # Blocking calls and the return-address predictor
//!
//! A greenlet switch is a call on the resuming side and a return on the suspending side, so
//! the CPU's return-address predictor stays in step with the switches themselves. What it
//! cannot follow is a greenlet that, once resumed, *returns* from the function it parked in:
//! that return was predicted from the other context's calls and misses (measured here: about
//! 18 ns, a third of a spawn and join). So the blocking calls on hot paths (`join`, `get`,
//! `into_result`, `sleep`, `Queue::get`/`put`) are inlined all the way down to the switch;
//! the park then happens in the caller's own frame, and only a caller that wraps the call in
//! its own non-inlined function pays the miss.
//!
//! # Kill
//!
//! [`Greenlet::kill`] sets a pending interrupt on the victim and makes it runnable. When the
//! victim next runs, the blocking call it is parked in unwinds with a [`GreenletExit`]
//! payload (`std::panic::resume_unwind`, so no panic hook prints anything): every `Drop` on its
//! stack runs, like gevent's `finally` blocks. The greenlet then ends *successfully* with
//! [`Error::Killed`] as its `exception`, as `GreenletExit` counts as success in gevent.
//! A greenlet killed before it started never runs (its function is dropped unrun), and its
//! links still fire. Killing a dead greenlet, or twice, is harmless.
//!
//! # Unwinding and the thread's panic state
//!
//! Cleanup code may block while a greenlet unwinds (a `Drop` that waits, like a `finally` that
//! does I/O), so a greenlet can be suspended in the middle of its unwind while others run.
//! Rust's panic state is per OS thread, though: while one greenlet is suspended mid-unwind,
//! `std::thread::panicking()` is true for every greenlet. And a kill must never be raised
//! inside a `Drop` that runs during an unwind (an unwind escaping such a `Drop` aborts the
//! process). So evergreen tracks unwinding *per greenlet*: an unwind is recorded when it
//! starts (when an interrupt is raised, and by the panic hook for panics) and forgotten when
//! evergreen catches it, or as soon as the thread is seen not panicking at all. An interrupt
//! that cannot be delivered because its target is unwinding stays pending; the hub wakes the
//! target again once no unwind is in progress, and a timed wait that expires meanwhile reports
//! its timeout instead of waiting again.
//!
//! # Differences from gevent
//!
//! * `get()` of a killed greenlet returns `Err(Error::Killed)` (gevent returns the
//!   `GreenletExit` instance as the value); [`Greenlet::successful`] is still `true`.
//! * A kill (or `Timeout`) that arrives after the victim's wait was already completed (an item
//!   handed to it, say) stays pending and is delivered at its next blocking point, instead of
//!   dropping the item.
//! * `link` callbacks receive the greenlet; each runs in its own new greenlet, as gevent's
//!   `link` does, so it may block. [`Greenlet::rawlink`] runs on the hub and must not block.
//! * Code that catches panics inside a greenlet also catches `GreenletExit` (as a bare
//!   `except:` would): re-raise it with `resume_unwind`.

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell, UnsafeCell};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use corosensei::{Coroutine, Yielder};

use crate::error::{Error, GreenletExit};
use crate::hub::{hub, TimerAction};
use crate::stack::{GreenStack, StackBounds, StackView};
use crate::timeout::TimeoutExpired;
use crate::timer::TimerId;
use crate::waiter::{LinkId, Links, WaitFail, WaitList, Waitable};

/// A greenlet's coroutine. It holds only a view of its stack: the stack itself is owned by the
/// greenlet's core (`Core::stack_bounds`) while the coroutine
/// exists, and is rebuilt from there to go back to the pool (`Core::take_stack`).
pub(crate) type Coro = Coroutine<(), (), (), StackView>;
/// A greenlet's local values, by `Local` key.
pub(crate) type LocalMap = HashMap<usize, Box<dyn Any>>;
/// `joinall`'s outcome: the finished greenlets, or them and the first failure.
type JoinAll<T> = Result<Vec<Greenlet<T>>, (Vec<Greenlet<T>>, Error)>;
/// A pointer to a greenlet's core, for the hot paths (run queue, waiters). Valid while the
/// greenlet is registered with the hub (see `Hub::resume_greenlet`).
pub(crate) type CorePtr = std::ptr::NonNull<Core>;

/// `Core::live_slot` of a greenlet the live registry does not hold.
pub(crate) const NOT_LIVE: usize = usize::MAX;

/// Run state of a greenlet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Created, not started (`Greenlet::new`).
    New,
    /// Waiting for its `spawn_later` timer.
    Later,
    /// On the run queue.
    Runnable,
    /// Its code is running.
    Running,
    /// Blocked in a wait.
    Parked,
    /// Finished.
    Dead,
}

/// An interrupt delivered at a blocking point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Interrupt {
    Kill,
    /// A kill with a caller-chosen payload (`Greenlet::throw`), kept in the hub's side table
    /// (`Hub::thrown`) under the greenlet's id.
    Throw,
    /// `after_ns`: the timeout's duration in nanoseconds (kept small: this sits in every core).
    Timeout {
        id: u64,
        after_ns: u64,
    },
}

impl Interrupt {
    pub(crate) fn raise(self) -> ! {
        match self {
            Interrupt::Kill => resume_unwind(Box::new(GreenletExit)),
            Interrupt::Throw => {
                let _ = LAST_PANIC_LOCATION.try_with(|l| l.borrow_mut().take());
                let id = hub().current().id;
                let p = hub().thrown.borrow_mut().remove(&id);
                resume_unwind(p.unwrap_or_else(|| Box::new(GreenletExit)))
            }
            Interrupt::Timeout { id, after_ns } => resume_unwind(Box::new(TimeoutExpired {
                id,
                after: Duration::from_nanos(after_ns),
            })),
        }
    }
}

/// How a greenlet ended, for type-erased queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    No,
    Value,
    Killed,
    Failed,
}

/// The untyped part of a greenlet, shared by the hub and every handle.
///
/// A core is the first field of its greenlet's heap block (an `Inner<T>`, `repr(C)`), which is
/// reference-counted by hand: every [`GRef`] and [`Greenlet`] handle, and the hub's live
/// registry while the greenlet is alive, owns one count. `ops` are the block's type-erased
/// operations (what an `Rc<dyn Trait>` would give, without its layout arithmetic on every drop).
pub(crate) struct Core {
    refs: Cell<usize>,
    ops: &'static BlockOps,
    /// Its slot in the hub's live registry, or [`NOT_LIVE`] when the registry does not hold
    /// it (see [`in_live`](Self::in_live)).
    pub(crate) live_slot: Cell<usize>,
    pub(crate) id: u64,
    /// The rarely used fields (name, locals, `spawn_later` timer), made on first use: most
    /// greenlets never need them, and a spawn then initialises one word for all of them.
    extra: OnceCell<Box<Extra>>,
    pub(crate) is_root: bool,
    pub(crate) state: Cell<State>,
    pub(crate) ended: Cell<Ended>,
    pub(crate) coroutine: UnsafeCell<Option<Coro>>,
    pub(crate) yielder: Cell<*const Yielder<(), ()>>,
    pub(crate) interrupt: Cell<Option<Interrupt>>,
    /// Set when an unwind starts in this greenlet (an interrupt raised, or a panic seen by the
    /// hook); see [`Core::is_unwinding`].
    pub(crate) unwinding: Cell<u32>,
    /// How many times the libc hooks reported the pending interrupt (as `ECANCELED` or
    /// `ETIMEDOUT`, or a sleep cut short); reset when a new interrupt is set. See
    /// `Hub::hook_saw_interrupt`.
    pub(crate) hook_reports: Cell<u32>,
    pub(crate) deadline_hit: Cell<bool>,
    /// Set while it waits for a greenlet it resumed nested on its own stack to come back
    /// (see `Hub::run_nested`): it must not be resumed meanwhile.
    pub(crate) nesting: Cell<bool>,
    pub(crate) waiting_on: Cell<&'static str>,
    /// Its stack (set once, before the greenlet can run): for the overflow handler and canary
    /// checks, and to give the stack back.
    pub(crate) stack_bounds: Cell<StackBounds>,
    /// The generation of the hub that made this greenlet (and its stack).
    pub(crate) hub_generation: u64,
    /// Greenlets joining it; each waiter's slot holds `links.next_ordinal()` at the time it
    /// started waiting, so joiners and links are notified in registration order.
    pub(crate) joiners: WaitList<u32>,
    pub(crate) links: Links,
}

/// The rarely used part of a [`Core`], in a side record made on first use (a name given at
/// creation makes it at once). Once made it stays until the block is freed, so references
/// into it live as long as the core.
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) name: Option<Box<str>>,
    /// The `spawn_later` timer of a greenlet waiting to start.
    pub(crate) start_timer: Cell<Option<TimerId>>,
    pub(crate) locals: RefCell<Option<Box<LocalMap>>>,
}

impl Core {
    // Private, with two callers; each argument is a field written in place.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn new(
        ops: &'static BlockOps,
        id: u64,
        name: Option<Box<str>>,
        is_root: bool,
        stack_bounds: StackBounds,
        hub_generation: u64,
        refs: usize,
    ) -> Core {
        Core {
            refs: Cell::new(refs),
            ops,
            live_slot: Cell::new(NOT_LIVE),
            id,
            extra: match name {
                None => OnceCell::new(),
                Some(n) => OnceCell::from(Box::new(Extra {
                    name: Some(n),
                    ..Extra::default()
                })),
            },
            is_root,
            state: Cell::new(if is_root { State::Running } else { State::New }),
            ended: Cell::new(Ended::No),
            coroutine: UnsafeCell::new(None),
            yielder: Cell::new(std::ptr::null()),
            interrupt: Cell::new(None),
            unwinding: Cell::new(0),
            hook_reports: Cell::new(0),
            deadline_hit: Cell::new(false),
            nesting: Cell::new(false),
            waiting_on: Cell::new(""),
            stack_bounds: Cell::new(stack_bounds),
            hub_generation,
            joiners: WaitList::new(),
            links: Links::default(),
        }
    }

    /// Whether the hub's live registry holds it (and one of its counts).
    #[inline(always)]
    pub(crate) fn in_live(&self) -> bool {
        self.live_slot.get() != NOT_LIVE
    }

    /// Its rarely used fields, made now if they were not yet.
    #[inline]
    pub(crate) fn extra(&self) -> &Extra {
        self.extra.get_or_init(Box::default)
    }

    /// Its rarely used fields, if they were ever made.
    #[inline(always)]
    pub(crate) fn extra_if_made(&self) -> Option<&Extra> {
        self.extra.get().map(|e| &**e)
    }

    /// The name given at creation.
    #[inline]
    pub(crate) fn name(&self) -> Option<&str> {
        self.extra_if_made().and_then(|e| e.name.as_deref())
    }

    /// Whether it has greenlet-local values.
    #[inline(always)]
    fn has_locals(&self) -> bool {
        match self.extra_if_made() {
            Some(e) => e.locals.borrow().is_some(),
            None => false,
        }
    }

    /// Whether its code started running (always for the root): its coroutine body records
    /// its yielder as the first thing it does.
    #[inline]
    pub(crate) fn started(&self) -> bool {
        self.is_root || !self.yielder.get().is_null()
    }

    /// Whether its stack has no guard page (a canary instead); not for the root.
    #[inline(always)]
    pub(crate) fn unguarded(&self) -> bool {
        debug_assert!(!self.is_root);
        self.stack_bounds.get().guard == 0
    }

    /// Usable stack size in bytes (0 for the root).
    pub(crate) fn stack_size(&self) -> usize {
        self.stack_bounds.get().size()
    }

    /// A pointer to this core that may be used for its whole block: it takes the provenance
    /// the block's allocation exposed when it was made (see `Inner::alloc`), not the narrower
    /// one of `&self`, so widening it to the block and freeing through it are sound.
    #[inline]
    pub(crate) fn ptr(&self) -> CorePtr {
        let addr = (self as *const Core).addr();
        // SAFETY: `addr` is the address of `self`, so not null.
        unsafe { CorePtr::new_unchecked(std::ptr::with_exposed_provenance_mut(addr)) }
    }

    /// Whether an interrupt is pending and can be delivered now (not while unwinding).
    #[inline]
    pub(crate) fn interrupt_pending(&self) -> bool {
        self.interrupt.get().is_some() && !self.is_unwinding()
    }

    /// Whether *this* greenlet is unwinding, so an interrupt must not be raised in it now (an
    /// unwind escaping a `Drop` that runs during unwinding aborts the process).
    ///
    /// `std::thread::panicking()` cannot answer this alone: it is per OS thread, and a greenlet
    /// whose cleanup blocks during its unwinding leaves it set while other greenlets run. So an
    /// unwind is recorded per greenlet when it starts (when an interrupt is raised, and by the
    /// panic hook for panics), and forgotten as soon as the thread is seen not panicking.
    #[inline]
    pub(crate) fn is_unwinding(&self) -> bool {
        if self.unwinding.get() == 0 {
            return false;
        }
        if !std::thread::panicking() {
            self.unwinding.set(0);
            return false;
        }
        true
    }

    /// Records that an unwind starts in this greenlet.
    pub(crate) fn unwind_started(&self) {
        self.unwinding.set(self.unwinding.get().saturating_add(1));
    }

    /// Records that one of this greenlet's unwinds was caught by evergreen (a `Timeout` scope
    /// catching its own expiry).
    pub(crate) fn unwind_caught(&self) {
        self.unwinding.set(self.unwinding.get().saturating_sub(1));
    }

    /// Sets an interrupt; a kill takes precedence over a timeout, and an earlier timeout over a
    /// later one.
    pub(crate) fn set_interrupt(&self, i: Interrupt) {
        match (self.interrupt.get(), i) {
            (None, _) | (Some(Interrupt::Timeout { .. }), Interrupt::Kill | Interrupt::Throw) => {
                self.interrupt.set(Some(i));
                self.hook_reports.set(0);
            }
            _ => {}
        }
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = format!("#{}", self.id);
        if let Some(n) = self.name() {
            s.push_str(&format!(" '{n}'"));
        }
        let w = self.waiting_on.get();
        match self.state.get() {
            State::Parked if !w.is_empty() => s.push_str(&format!(" (waiting on {w})")),
            st => s.push_str(&format!(" ({})", state_name(st))),
        }
        s
    }

    pub(crate) fn check_canary(&self) {
        let info = self.stack_bounds.get();
        {
            let intact =
                // SAFETY: `bottom` is the lowest usable word of this greenlet's (unguarded)
                // stack.
                unsafe { std::ptr::read_volatile(info.bottom as *const u64) }
                    == crate::stack::CANARY;
            if !intact {
                eprintln!(
                    "evergreen: greenlet {} overflowed its {}-byte stack (canary clobbered; this \
                     hub runs without guard pages); raise EVERGREEN_STACK_SIZE or use \
                     Builder::stack_size. Aborting.",
                    self.describe(),
                    self.stack_size()
                );
                std::process::abort();
            }
        }
    }

    /// Drops the function of a greenlet that never started and returns its stack.
    #[cold]
    fn release_unstarted(&self) {
        let co = self.take_unstarted();
        self.release_coroutine(co);
    }

    /// Takes the coroutine of a greenlet that never started, without dropping it.
    fn take_unstarted(&self) -> Option<Coro> {
        // SAFETY: the greenlet is not running (it never started), so nothing else touches the
        // coroutine.
        unsafe { (*self.coroutine.get()).take() }
    }

    /// Leaks the coroutine (and its stack) of a greenlet that cannot be finished at hub
    /// teardown, so no code runs on it again.
    pub(crate) fn leak_coroutine(&self) {
        // SAFETY: called by `destroy` from the root while the greenlet is suspended.
        let co = unsafe { (*self.coroutine.get()).take() };
        std::mem::forget(co);
        self.state.set(State::Dead);
        // Its frames (and the waiters linked from them) stay in place: keep the core alive
        // too, so nothing that still points to it dangles.
        std::mem::forget(hub().unregister_live(self));
    }

    #[cold]
    fn drop_locals(&self, locals: Box<LocalMap>) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(locals))) {
            log::error!(
                "greenlet {}: dropping its greenlet-local values panicked (ignored): {}",
                self.describe_short(),
                panic_message(&*p)
            );
        }
    }

    /// Drops the greenlet's local values while it still runs (after its function returned):
    /// their `Drop` may block like any code of the greenlet, and a kill or `Timeout` that
    /// interrupts one is contained here (the next value is still dropped). Values made while
    /// dropping are dropped too.
    #[cold]
    #[inline(never)]
    fn drop_locals_running(&self) {
        loop {
            let Some(map) = self.extra().locals.borrow_mut().take() else {
                return;
            };
            for (_, v) in map.into_iter() {
                if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(v))) {
                    self.unwind_caught();
                    if !p.is::<GreenletExit>() && !p.is::<TimeoutExpired>() {
                        log::error!(
                            "greenlet {}: dropping a greenlet-local value panicked (ignored): {}",
                            self.describe_short(),
                            panic_message(&*p)
                        );
                    }
                }
            }
        }
    }

    /// Marks the greenlet dead, frees its locals, wakes joiners and schedules links.
    #[inline(always)]
    fn complete(&self, ended: Ended) {
        if self.has_locals() {
            self.mark_dead(ended);
            self.take_and_drop_locals();
            self.notify_ended();
        } else {
            self.complete_without_locals(ended);
        }
    }

    /// [`complete`](Self::complete) for a greenlet known to have no local values (its body
    /// dropped them, and ran no code since).
    #[inline(always)]
    fn complete_without_locals(&self, ended: Ended) {
        debug_assert!(!self.has_locals());
        self.mark_dead(ended);
        self.notify_ended();
    }

    /// The first half of [`complete`](Self::complete): the greenlet is dead, its interrupt
    /// forgotten.
    #[inline(always)]
    fn mark_dead(&self, ended: Ended) {
        self.ended.set(ended);
        // Its `unwinding` mark is left as it is: it is read only for the running greenlet
        // before it blocks or is killed while running, which a dead one never is again.
        self.state.set(State::Dead);
        if self.interrupt.get().is_some() {
            self.forget_interrupt();
        }
    }

    /// The last step of [`complete`](Self::complete): wakes joiners, or schedules the
    /// notification of links and joiners in registration order.
    #[inline(always)]
    fn notify_ended(&self) {
        if self.links.is_empty() {
            self.joiners.wake_all();
        } else {
            self.schedule_notify();
        }
    }

    /// Clears the pending interrupt of a greenlet that completed; a `throw`'s payload was
    /// never delivered, and is dropped.
    #[cold]
    #[inline(never)]
    fn forget_interrupt(&self) {
        if self.interrupt.take() == Some(Interrupt::Throw) {
            let p = hub().thrown.borrow_mut().remove(&self.id);
            drop(p);
        }
    }

    #[cold]
    #[inline(never)]
    fn take_and_drop_locals(&self) {
        let locals = self.extra().locals.borrow_mut().take();
        if let Some(l) = locals {
            self.drop_locals(l);
        }
    }

    /// Schedules the notification of its links and joiners (see [`notify_links`]), unless
    /// one is scheduled or running already.
    #[cold]
    fn schedule_notify(&self) {
        if self.links.begin_notify() {
            let g = GRef::from_core(self);
            hub().schedule_notify_links(g);
        }
    }

    /// Registers a raw link; notifies at once (as a hub callback) if it is dead already.
    pub(crate) fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        let id = self.links.add(f);
        if self.state.get() == State::Dead {
            self.schedule_notify();
        }
        id
    }
}

impl Core {
    /// Whether dropping this core would do nothing: every field that can own something is
    /// empty. It must name every such field of `Core` (the ones with drop glue: the coroutine,
    /// the side record of rarely used fields, and the links); the rest are plain values in `Cell`s and the
    /// joiners' list, which owns nothing (its nodes live on the waiters' stacks).
    #[inline(always)]
    fn owns_nothing(&self) -> bool {
        // SAFETY: called when the last count is gone: nothing else can touch the coroutine or
        // hold a borrow of the locals.
        unsafe {
            (*self.coroutine.get()).is_none()
                && self.extra.get().is_none()
                && self.links.is_unused()
        }
    }
}

impl Drop for Core {
    #[inline]
    fn drop(&mut self) {
        // A greenlet that ran has given its coroutine back already (see `Hub::reap`).
        if self.coroutine.get_mut().is_some() {
            self.release_unstarted();
        }
    }
}

impl Core {
    /// Drops the coroutine `co` of this greenlet, which never ran (`force_unwind` on an
    /// unstarted coroutine only drops its function), and gives its stack back to the hub that
    /// made it, if that hub still exists. The function's `Drop` is user code and may do
    /// anything.
    #[cold]
    fn release_coroutine(&self, co: Option<Coro>) {
        if let Some(mut co) = co {
            co.force_unwind();
            if co.done() {
                drop(co);
                // SAFETY: the coroutine that used the stack is gone; the stack is rebuilt
                // once, here (the coroutine slot was emptied by the caller).
                let st = unsafe { self.take_stack() };
                // Only the hub that made the stack may take it back.
                match crate::hub::try_hub() {
                    Some(h) if h.generation() == self.hub_generation => {
                        h.stacks.borrow_mut().put(st)
                    }
                    _ => std::mem::forget(st),
                }
            }
        }
    }

    /// Whether something besides the caller's count holds the greenlet (so giving up the
    /// caller's count cannot free it).
    #[inline(always)]
    pub(crate) fn has_other_counts(&self) -> bool {
        self.refs.get() > 1
    }

    /// Gives up one count that is not the last (see [`has_other_counts`](Self::has_other_counts)).
    ///
    /// # Safety
    ///
    /// The caller owns a count of this greenlet, and another count exists.
    #[inline(always)]
    pub(crate) unsafe fn release_count_not_last(&self) {
        debug_assert!(self.refs.get() > 1);
        self.refs.set(self.refs.get() - 1);
    }

    /// Whether its coroutine is still in its slot (it started or may start, and was not reaped).
    #[inline(always)]
    pub(crate) fn has_coroutine(&self) -> bool {
        // SAFETY: a read of the slot's discriminant while nothing else uses the coroutine
        // (called by the hub between resumes).
        unsafe { (*self.coroutine.get()).is_some() }
    }

    /// Whether its stack is a default-size one from a slab (not one with its own mapping).
    #[inline(always)]
    pub(crate) fn stack_from_slab(&self) -> bool {
        self.stack_bounds.get().own_mapping_len == 0
    }

    /// [`take_stack`](Self::take_stack) for a stack from a slab
    /// ([`stack_from_slab`](Self::stack_from_slab)).
    ///
    /// # Safety
    ///
    /// As for `take_stack`, and the stack is from a slab.
    #[inline(always)]
    pub(crate) unsafe fn take_slab_stack(&self) -> GreenStack {
        debug_assert!(self.stack_from_slab());
        // SAFETY: per the contract (the parts stored at spawn, rebuilt once).
        unsafe { GreenStack::from_parts(self.stack_bounds.get()) }
    }

    /// The stack its coroutine ran on, rebuilt to go back to the pool.
    ///
    /// # Safety
    ///
    /// Its coroutine is gone (taken and dropped, or finished and forgotten), and this is the
    /// only call for this greenlet: the core owned the stack, the caller owns it now.
    #[inline(always)]
    pub(crate) unsafe fn take_stack(&self) -> GreenStack {
        // SAFETY: per the contract, the parts stored at spawn by `into_parts`, rebuilt once.
        unsafe { GreenStack::from_parts(self.stack_bounds.get()) }
    }
}

/// Notifies a dead greenlet's links and joiners, in registration order, as gevent's
/// `_notify_links` does: raw links run here one at a time (a link unlinked by an earlier one
/// does not run; one added meanwhile does), and when a joiner's turn comes it is woken and the
/// rest of the notification is scheduled behind it, so it runs before the links registered
/// after it (gevent switches to it in the middle of the notification).
pub(crate) fn notify_links(g: GRef) {
    let core = g.core();
    loop {
        let link = core.links.front_ordinal();
        let joiner = core.joiners.with_front(|k| k.copied());
        let link_first = match (link, joiner) {
            (Some(o), Some(k)) => o < k,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if link_first {
            if let Some(cb) = core.links.pop_front() {
                hub().run_hub_callback(cb);
            }
        } else if joiner.is_some() {
            core.joiners.take_one();
            if core.links.is_empty() {
                core.joiners.wake_all();
                core.links.end_notify();
            } else {
                hub().schedule_notify_links(g);
            }
            return;
        } else {
            core.links.end_notify();
            return;
        }
    }
}

/// The state's name, as shown in run-info dumps and `LoopExit` messages.
pub(crate) fn state_name(s: State) -> &'static str {
    match s {
        State::New => "not started",
        State::Later => "scheduled to start later",
        State::Runnable => "runnable",
        State::Running => "running",
        State::Parked => "parked",
        State::Dead => "dead",
    }
}

/// A greenlet block's type-erased operations (one static table per result type).
pub(crate) struct BlockOps {
    /// Drops the block's contents and frees it; called when the last count goes.
    free: unsafe fn(CorePtr),
    /// Completes a greenlet that never started as killed.
    complete_killed: unsafe fn(&Core),
    /// The error it ended with, if any (`Killed` included).
    error: unsafe fn(&Core) -> Option<Error>,
    /// Completes a greenlet that never started as failed with a thrown payload.
    complete_thrown: unsafe fn(&Core, Box<dyn Any + Send>),
}

/// An owning, type-erased reference to a greenlet (or the root): one count of its block.
pub(crate) struct GRef(CorePtr);

impl GRef {
    /// A new count of a core that is alive (a live greenlet, the root, or one whose handle
    /// the caller holds).
    #[inline]
    pub(crate) fn from_core(core: &Core) -> GRef {
        let n = core.refs.get().wrapping_add(1);
        if n == 0 {
            // Only reachable by leaking counts on purpose (`mem::forget` of clones); as `Rc`
            // does, abort rather than let the count wrap into a use-after-free.
            std::process::abort();
        }
        core.refs.set(n);
        GRef(core.ptr())
    }

    /// Takes over a count that was given up (a new block's first count, or the live
    /// registry's).
    ///
    /// # Safety
    ///
    /// `p` must carry a count that nothing else will release.
    #[inline]
    pub(crate) unsafe fn adopt(p: CorePtr) -> GRef {
        GRef(p)
    }

    #[inline]
    pub(crate) fn core(&self) -> &Core {
        // SAFETY: this reference owns a count, so the block is alive.
        unsafe { self.0.as_ref() }
    }

    /// Completes a greenlet that never started as failed with `p`.
    pub(crate) fn complete_thrown(&self, p: Box<dyn Any + Send>) {
        let c = self.core();
        // SAFETY: `ops` belongs to the block `c` heads.
        unsafe { (c.ops.complete_thrown)(c, p) }
    }

    /// Completes a greenlet that never started as killed.
    pub(crate) fn complete_killed(&self) {
        let c = self.core();
        // SAFETY: `ops` belongs to the block `c` heads.
        unsafe { (c.ops.complete_killed)(c) }
    }

    /// The error it ended with, if any (`Killed` included).
    pub(crate) fn error(&self) -> Option<Error> {
        let c = self.core();
        // SAFETY: as above.
        unsafe { (c.ops.error)(c) }
    }

    /// Whether this is the only count of the greenlet (dropping it frees the greenlet).
    #[inline(always)]
    pub(crate) fn is_last(&self) -> bool {
        self.core().refs.get() == 1
    }

    /// Gives up this count as a raw pointer, for [`adopt`](Self::adopt) to take back.
    #[inline(always)]
    pub(crate) fn into_raw(self) -> CorePtr {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    /// Whether both refer to the same greenlet.
    pub(crate) fn ptr_eq(&self, other: &GRef) -> bool {
        self.0 == other.0
    }
}

impl Clone for GRef {
    #[inline]
    fn clone(&self) -> GRef {
        GRef::from_core(self.core())
    }
}

impl Drop for GRef {
    #[inline]
    fn drop(&mut self) {
        let c = self.core();
        let n = c.refs.get() - 1;
        c.refs.set(n);
        if n == 0 {
            // SAFETY: that was the last count: nothing else refers to the block.
            unsafe { (c.ops.free)(self.0) }
        }
    }
}

/// A greenlet's heap block: its core, then its typed result. `repr(C)` puts the core first,
/// so a `CorePtr` to it is also a pointer to the block.
#[repr(C)]
struct Inner<T> {
    core: Core,
    result: RefCell<Option<Result<T, Error>>>,
    payload: RefCell<Option<Box<dyn Any + Send>>>,
}

/// Aborts the process if dropped, which happens only when finishing a greenlet unwinds (the
/// happy path forgets it: no landing pad runs, unlike a `catch_unwind` frame). It holds
/// nothing (so the happy path stores nothing): the greenlet that finishes is the current one.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    #[cold]
    fn drop(&mut self) {
        let id = crate::hub::try_hub().map_or(0, |h| h.current().id);
        eprintln!("evergreen: greenlet #{id} panicked while finishing; aborting");
        std::process::abort();
    }
}

/// A pointer to a greenlet's own `Inner`, captured by its coroutine body.
struct InnerPtr<T>(*const Inner<T>);

impl<T: 'static> Inner<T> {
    const OPS: BlockOps = BlockOps {
        free: Self::free,
        complete_killed: Self::complete_killed,
        error: Self::error,
        complete_thrown: Self::complete_thrown,
    };

    /// Allocates an uninitialised block (from the hub's cache of freed blocks when it can).
    /// The caller writes it *after* allocating, so the few-hundred-byte value is built in
    /// place instead of on the stack and copied.
    #[inline(always)]
    fn alloc(hub: &crate::hub::Hub) -> std::ptr::NonNull<Inner<T>> {
        let p = hub
            .blocks
            .alloc(std::alloc::Layout::new::<Inner<T>>())
            .cast::<Inner<T>>();
        // Lets `Core::ptr` rebuild a pointer to the whole block from a `&Core`.
        let _ = p.as_ptr().expose_provenance();
        p
    }

    /// # Safety
    ///
    /// `p` heads an `Inner<T>` block whose last count is gone.
    ///
    /// The usual case is done here without a call (so without saving registers): a core that
    /// owns nothing, a result with nothing to drop (taken, or a value without drop glue), no
    /// panic payload, and room in the hub's block cache. Anything else goes to
    /// [`free_general`](Self::free_general), before anything was changed.
    unsafe fn free(p: CorePtr) {
        // SAFETY: per the contract.
        unsafe { Self::free_last(p, None) }
    }

    /// [`free`](Self::free), inlined (for a caller that knows the block's type), with this
    /// thread's hub if the caller has it at hand.
    ///
    /// # Safety
    ///
    /// As for `free`.
    #[inline(always)]
    unsafe fn free_last(p: CorePtr, hub: Option<&'static crate::hub::Hub>) {
        let inner = p.cast::<Inner<T>>().as_ptr();
        // SAFETY: per the contract, the block is initialised and nothing refers to it.
        let trivial = unsafe {
            (*inner).core.owns_nothing()
                && match &*(*inner).result.as_ptr() {
                    None => true,
                    Some(Ok(_)) => !std::mem::needs_drop::<T>(),
                    Some(Err(_)) => false,
                }
                && (*(*inner).payload.as_ptr()).is_none()
        };
        if trivial && BlockCache::free_if_room(p.cast(), std::alloc::Layout::new::<Inner<T>>(), hub)
        {
            return;
        }
        // SAFETY: per the contract.
        unsafe { Self::free_general(p) }
    }

    /// [`free`](Self::free) in every case.
    ///
    /// # Safety
    ///
    /// As for `free`.
    #[cold]
    #[inline(never)]
    unsafe fn free_general(p: CorePtr) {
        let p = p.cast::<Inner<T>>();
        let inner = p.as_ptr();
        // SAFETY: per the contract, the block is initialised and nothing refers to it. When
        // every field of the core that owns something is empty (the usual end of a greenlet:
        // its coroutine given back, no name, no links, no locals), dropping the core would do
        // nothing (`Core::drop` only acts on a coroutine), so only the result is dropped.
        unsafe {
            if (*inner).core.owns_nothing() {
                std::ptr::drop_in_place(std::ptr::addr_of_mut!((*inner).result));
                if (*(*inner).payload.as_ptr()).is_some() {
                    std::ptr::drop_in_place(std::ptr::addr_of_mut!((*inner).payload));
                }
            } else {
                std::ptr::drop_in_place(inner);
            }
        }
        BlockCache::free(p.cast(), std::alloc::Layout::new::<Inner<T>>());
    }

    /// # Safety
    ///
    /// `c` heads an `Inner<T>` block.
    unsafe fn block(c: &Core) -> &Inner<T> {
        // SAFETY: per the contract; `Inner` is `repr(C)` with the core first, and `c.ptr()`
        // carries the whole block's provenance (see `Core::ptr`).
        unsafe { c.ptr().cast::<Inner<T>>().as_ref() }
    }

    /// # Safety
    ///
    /// `c` heads an `Inner<T>` block.
    unsafe fn complete_killed(c: &Core) {
        // SAFETY: per `BlockOps`, `c` heads an `Inner<T>`.
        let me = unsafe { Self::block(c) };
        *me.result.borrow_mut() = Some(Err(Error::Killed));
        me.core.complete(Ended::Killed);
    }

    /// # Safety
    ///
    /// `c` heads an `Inner<T>` block.
    unsafe fn complete_thrown(c: &Core, p: Box<dyn Any + Send>) {
        // SAFETY: per `BlockOps`, `c` heads an `Inner<T>`.
        let me = unsafe { Self::block(c) };
        let msg = panic_message(&*p);
        *me.payload.borrow_mut() = Some(p);
        *me.result.borrow_mut() = Some(Err(Error::Panicked(msg)));
        me.core.complete(Ended::Failed);
    }

    /// # Safety
    ///
    /// `c` heads an `Inner<T>` block.
    unsafe fn error(c: &Core) -> Option<Error> {
        // SAFETY: as above.
        let me = unsafe { Self::block(c) };
        match &*me.result.borrow() {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

/// Freed greenlet blocks kept for reuse, by size class (a greenlet's block is a few hundred
/// bytes and is allocated on every spawn: this turns malloc/free into a vector push/pop).
/// Classes are multiples of 16 bytes (malloc's own granularity, so caching costs no memory
/// per greenlet) up to 1 KiB; larger or over-aligned blocks bypass it.
pub(crate) struct BlockCache {
    /// `Config::block_cache`: when off, blocks go straight back to the allocator.
    enabled: bool,
    lists: UnsafeCell<[Vec<std::ptr::NonNull<u8>>; BlockCache::CLASSES]>,
}

impl BlockCache {
    const CLASSES: usize = 64;
    const GRAIN: usize = 16;
    /// Blocks kept per class (a power of two: see `free_if_room`).
    const KEEP: usize = 256;

    pub(crate) fn new(enabled: bool) -> BlockCache {
        BlockCache {
            enabled,
            lists: UnsafeCell::new(std::array::from_fn(|_| Vec::new())),
        }
    }

    /// The class and the layout actually allocated for blocks of `layout`.
    #[inline(always)]
    fn class(layout: std::alloc::Layout) -> (Option<usize>, std::alloc::Layout) {
        let rounded = layout.size().div_ceil(Self::GRAIN) * Self::GRAIN;
        if layout.align() <= 16 && rounded <= Self::CLASSES * Self::GRAIN {
            let l = std::alloc::Layout::from_size_align(rounded, 16).expect("small layout");
            (Some(rounded / Self::GRAIN - 1), l)
        } else {
            (None, layout)
        }
    }

    #[inline(always)]
    fn alloc(&self, layout: std::alloc::Layout) -> std::ptr::NonNull<u8> {
        let (class, real) = Self::class(layout);
        // A disabled cache's lists stay empty (`free` never fills them), so no check here.
        if let Some(c) = class {
            // SAFETY: the cache belongs to this thread's hub and no reference into it outlives
            // `alloc` or `free`, which run no other code meanwhile (at most a vector grows,
            // through the global allocator, which must not call back into evergreen).
            if let Some(p) = unsafe { (*self.lists.get())[c].pop() } {
                return p;
            }
        }
        Self::alloc_fresh(real)
    }

    /// A new block of exactly `real` (a layout from `class`), from the allocator.
    fn alloc_fresh(real: std::alloc::Layout) -> std::ptr::NonNull<u8> {
        // SAFETY: `real` has a non-zero size (a block holds at least a core).
        let p = unsafe { std::alloc::alloc(real) };
        std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(real))
    }

    /// [`free`](Self::free) of a block whose contents were dropped (or own nothing) when
    /// this thread's hub's cache has room for it without growing: no call. `false` (nothing
    /// done) otherwise. `hub` is this thread's hub when the caller has it at hand.
    ///
    /// One check suffices: a list's capacity never exceeds [`KEEP`](Self::KEEP) (only `free`
    /// grows it, by pushing while shorter than `KEEP`, and vectors grow from 4 by doubling
    /// to at most `KEEP`, a power of two), and a disabled cache's lists have none.
    #[inline(always)]
    fn free_if_room(
        p: std::ptr::NonNull<u8>,
        layout: std::alloc::Layout,
        hub: Option<&'static crate::hub::Hub>,
    ) -> bool {
        let (class, _) = Self::class(layout);
        let (Some(c), Some(hub)) = (class, hub.or_else(crate::hub::try_hub)) else {
            return false;
        };
        // SAFETY: as in `alloc`.
        let list = unsafe { &mut (*hub.blocks.lists.get())[c] };
        let n = list.len();
        debug_assert!(list.capacity() <= Self::KEEP);
        if n < list.capacity() {
            // SAFETY: `n < capacity`: the slot is allocated and unused, and the new length
            // counts only initialised slots.
            unsafe {
                list.as_mut_ptr().add(n).write(p);
                list.set_len(n + 1);
            }
            return true;
        }
        false
    }

    /// Frees a block allocated by `alloc` with `layout`: into this thread's hub's cache if
    /// there is one and it has room, else to the allocator.
    #[inline(always)]
    fn free(p: std::ptr::NonNull<u8>, layout: std::alloc::Layout) {
        let (class, real) = Self::class(layout);
        if let (Some(c), Some(hub)) = (class, crate::hub::try_hub().filter(|h| h.blocks.enabled)) {
            // SAFETY: as in `alloc`.
            let list = unsafe { &mut (*hub.blocks.lists.get())[c] };
            if list.len() < Self::KEEP {
                list.push(p);
                return;
            }
        }
        // SAFETY: `p` was allocated by `alloc` with this very layout (`class` is a function
        // of the block type's layout alone).
        unsafe { std::alloc::dealloc(p.as_ptr(), real) }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        for (c, list) in self.lists.get_mut().iter_mut().enumerate() {
            let l = std::alloc::Layout::from_size_align((c + 1) * Self::GRAIN, 16)
                .expect("small layout");
            for p in list.drain(..) {
                // SAFETY: every cached block was allocated with its class's layout.
                unsafe { std::alloc::dealloc(p.as_ptr(), l) }
            }
        }
    }
}

/// A stack of `size` bytes (`None`: the default) when no warm one is at hand.
///
/// # Panics
///
/// If no stack can be allocated; the message names the limit and the fix.
#[cold]
#[inline(never)]
fn new_stack(hub: &crate::hub::Hub, size: Option<usize>) -> GreenStack {
    hub.stacks
        .borrow_mut()
        .get(size)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The root context's block: a core with no result.
pub(crate) fn new_root() -> GRef {
    // The root is made while the hub is being built: allocate directly (`free` may cache it).
    let (_, real) = BlockCache::class(std::alloc::Layout::new::<Inner<()>>());
    let p = BlockCache::alloc_fresh(real).cast::<Inner<()>>();
    // As in `Inner::alloc`.
    let _ = p.as_ptr().expose_provenance();
    let v = Inner::<()> {
        core: Core::new(
            &Inner::<()>::OPS,
            0,
            Some("root".into()),
            true,
            StackBounds::NONE,
            0,
            1,
        ),
        result: RefCell::new(None),
        payload: RefCell::new(None),
    };
    // SAFETY: fresh allocation of the right layout.
    unsafe { p.as_ptr().write(v) };
    // SAFETY: the block starts with one count, owned by the returned reference.
    unsafe { GRef::adopt(p.cast()) }
}

impl<T: 'static> Inner<T> {
    /// Finishes a greenlet whose value no handle can ever read (only the hub's registry
    /// holds it): the value is dropped here, on the greenlet's own stack, so its `Drop` may
    /// block, instead of later by the hub.
    #[cold]
    #[inline(never)]
    fn drop_unread(&self, v: T) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(v))) {
            self.core.unwind_caught();
            if !p.is::<GreenletExit>() && !p.is::<TimeoutExpired>() {
                log::error!(
                    "greenlet {}: dropping its unread result panicked (ignored): {}",
                    self.core.describe_short(),
                    panic_message(&*p)
                );
            }
        }
        let guard = AbortOnUnwind;
        *self.result.borrow_mut() = Some(Err(Error::ValueTaken));
        self.core.complete(Ended::Value);
        std::mem::forget(guard);
    }

    /// Called on the greenlet's own stack when its function returned or unwound.
    #[inline(always)]
    fn finish(&self, r: std::thread::Result<T>) {
        match r {
            Ok(v) => {
                debug_assert!(
                    self.result.try_borrow().is_ok_and(|r| r.is_none()),
                    "a greenlet's result is stored once"
                );
                // SAFETY: a valid slot, empty (a greenlet finishes once, and nothing else
                // stores a result of a greenlet that ran), so there is nothing to drop; and
                // not borrowed: the borrows of a result (`value`, `get`, `into_result`,
                // `exception`) end before they could switch, and run no user code on an empty
                // slot.
                unsafe { self.result.as_ptr().write(Some(Ok(v))) };
                // Its body dropped its locals just before, and ran no code since.
                self.core.complete_without_locals(Ended::Value);
            }
            Err(p) => self.finish_unwound(p),
        }
    }

    /// `finish` for a function that unwound: killed, an uncaught `Timeout`, or a panic.
    #[cold]
    #[inline(never)]
    fn finish_unwound(&self, p: Box<dyn Any + Send>) {
        let (res, ended) = if p.is::<GreenletExit>() {
            (Err(Error::Killed), Ended::Killed)
        } else if let Some(t) = p.downcast_ref::<TimeoutExpired>() {
            log::error!(
                "greenlet {} failed with: an uncaught Timeout of {:?}",
                self.core.describe_short(),
                t.after
            );
            (Err(Error::TimedOut(t.after)), Ended::Failed)
        } else {
            let msg = panic_message(&*p);
            let loc = LAST_PANIC_LOCATION
                .try_with(|l| l.borrow_mut().take())
                .ok()
                .flatten();
            let full = match loc {
                Some(l) => format!("{msg} (at {l})"),
                None => msg,
            };
            log::error!(
                "greenlet {} failed with: {full}",
                self.core.describe_short()
            );
            *self.payload.borrow_mut() = Some(p);
            (Err(Error::Panicked(full)), Ended::Failed)
        };
        *self.result.borrow_mut() = Some(res);
        self.core.complete(ended);
    }
}

impl Core {
    fn describe_short(&self) -> String {
        match self.name() {
            Some(n) => format!("#{} '{n}'", self.id),
            None => format!("#{}", self.id),
        }
    }
}

thread_local! {
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that keeps greenlet panics from being printed
/// twice: a panic inside a greenlet is reported once, by the greenlet's failure log line
/// (with the location the hook saw). Panics elsewhere go to the previous hook unchanged, and
/// a [`LoopExit`](crate::LoopExit) is printed with its full explanation.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(le) = info.payload().downcast_ref::<crate::error::LoopExit>() {
                let loc = info.location().map(|l| l.to_string()).unwrap_or_default();
                eprintln!("{le} (raised at {loc})");
                return;
            }
            if crate::hub::exists() {
                // Record that an unwind starts in the running greenlet (or the root).
                crate::hub::hub().current().unwind_started();
            }
            if crate::hub::in_greenlet() {
                let loc = info.location().map(|l| l.to_string());
                let _ = LAST_PANIC_LOCATION.try_with(|l| *l.borrow_mut() = loc);
                return;
            }
            prev(info)
        }));
    });
}

/// The message of a panic payload (`&str` or `String`), or a description of its type.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(l) = p.downcast_ref::<crate::error::LoopExit>() {
        l.to_string()
    } else if p.is::<GreenletExit>() {
        "GreenletExit".into()
    } else {
        "a panic with a non-string payload".into()
    }
}

/// A handle to a greenlet that returns a `T` (gevent's `Greenlet`).
///
/// Handles are cheap to clone and `!Send`: a greenlet belongs to the hub of the thread that
/// created it. Dropping every handle does not stop the greenlet; the hub keeps it alive until
/// it ends.
///
/// ```
/// let g = evergreen::spawn(|| 6 * 7);
/// assert_eq!(g.get(), Ok(42));
/// ```
pub struct Greenlet<T> {
    /// A count of an `Inner<T>` block.
    g: GRef,
    _result: PhantomData<T>,
}

impl<T> Clone for Greenlet<T> {
    fn clone(&self) -> Self {
        Greenlet {
            g: self.g.clone(),
            _result: PhantomData,
        }
    }
}

impl<T> Greenlet<T> {
    #[inline(always)]
    fn inner(&self) -> &Inner<T> {
        // SAFETY: a `Greenlet<T>` is only made for an `Inner<T>` block (in `create`), whose
        // core comes first (`repr(C)`); `g` holds a pointer with the whole block's provenance
        // (see `Core::ptr`) and a count that keeps the block alive.
        unsafe { self.g.0.cast::<Inner<T>>().as_ref() }
    }
}

impl<T> fmt::Debug for Greenlet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Greenlet({})", self.inner().core.describe())
    }
}

/// Spawns a greenlet running `f` (gevent's `gevent.spawn`). It starts after the current
/// greenlet blocks or yields, after the greenlets spawned before it.
pub fn spawn<T: 'static, F: FnOnce() -> T + 'static>(f: F) -> Greenlet<T> {
    Builder::new().spawn(f)
}

/// Spawns a greenlet that starts after `delay` (gevent's `spawn_later`).
pub fn spawn_later<T: 'static, F: FnOnce() -> T + 'static>(delay: Duration, f: F) -> Greenlet<T> {
    Builder::new().spawn_later(delay, f)
}

/// Configures a greenlet before it is created: its name and stack size.
///
/// ```
/// let g = evergreen::Builder::new().name("worker").stack_size(64 * 1024).spawn(|| 1);
/// assert_eq!(g.name(), Some("worker"));
/// g.join();
/// ```
#[derive(Debug, Default, Clone)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder with no name and the default stack size.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the greenlet (shown in logs, run-info dumps and overflow reports).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Sets the usable stack size in bytes (rounded up to a page, at least 16 KiB).
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Creates the greenlet without starting it (gevent's `Greenlet(f)`); see
    /// [`Greenlet::start`].
    ///
    /// # Panics
    ///
    /// If no stack can be allocated; the message names the limit and the fix.
    #[inline]
    pub fn create<T: 'static, F: FnOnce() -> T + 'static>(self, f: F) -> Greenlet<T> {
        self.create_on(hub(), f, 1)
    }

    /// [`create`](Self::create) on `hub`, this thread's hub. The block starts with `refs`
    /// counts: the returned handle's, plus (when 2) the live registry's, which the caller
    /// hands to [`Hub::register_live_adopted`](crate::hub::Hub::register_live_adopted)
    /// before anything else can see the greenlet.
    #[inline(always)]
    fn create_on<T: 'static, F: FnOnce() -> T + 'static>(
        self,
        hub: &'static crate::hub::Hub,
        f: F,
        refs: usize,
    ) -> Greenlet<T> {
        let warm = match self.stack_size {
            None => hub.stacks.borrow_mut().pop_warm(),
            Some(_) => None,
        };
        // From here the core owns the stack (see `Coro`). Taken apart on each path, so the
        // usual one keeps the warm stack's words in registers.
        let (view, bounds) = match warm {
            Some(s) => s.into_parts(),
            None => new_stack(hub, self.stack_size).into_parts(),
        };
        let id = hub.next_id();
        let named = self.name.is_some();
        let p = Inner::<T>::alloc(hub);
        // SAFETY: `p` is a fresh allocation with `Inner<T>`'s layout; it is written in place.
        unsafe {
            p.as_ptr().write(Inner::<T> {
                core: Core::new(
                    &Inner::<T>::OPS,
                    id,
                    self.name.map(String::into_boxed_str),
                    false,
                    bounds,
                    hub.generation(),
                    refs,
                ),
                result: RefCell::new(None),
                payload: RefCell::new(None),
            })
        };
        let g = Greenlet {
            // SAFETY: a new block starts with `refs` counts; this handle owns one, and the
            // caller the others (see above).
            g: unsafe { GRef::adopt(p.cast()) },
            _result: PhantomData,
        };
        let inner = g.inner();
        // The allocator's own pointer, not one derived from a reference.
        let me = InnerPtr(p.as_ptr() as *const Inner<T>);
        let co = Coro::with_stack(view, move |y: &Yielder<(), ()>, ()| {
            // SAFETY: the coroutine is owned by this very `Inner` and only runs while the hub
            // holds a count of it (the live registry, during `resume_greenlet`), so the
            // pointer is valid for the whole body.
            let me = unsafe { &*me.0 };
            // Also marks it started (see `Core::started`).
            me.core.yielder.set(y as *const _);
            let r = catch_unwind(AssertUnwindSafe(f));
            // Its locals, and a result no handle can read, are dropped here, on its own stack
            // while it still runs: their `Drop` may block, and may be interrupted.
            if me.core.has_locals() {
                me.core.drop_locals_running();
            }
            if std::mem::needs_drop::<T>() && me.core.refs.get() == 1 {
                if let Ok(v) = r {
                    me.drop_unread(v);
                    return;
                }
            }
            // Finishing only stores the result and wakes joiners; if even that unwinds (a
            // panicking logger?), the hub's bookkeeping cannot be trusted any more.
            let guard = AbortOnUnwind;
            me.finish(r);
            std::mem::forget(guard);
        });
        // SAFETY: the greenlet is new; nothing else can reach its coroutine yet, and the slot
        // holds `None` (nothing to drop).
        unsafe { inner.core.coroutine.get().write(Some(co)) };
        if named {
            if let (Some(m), Some(n)) = (hub.monitor(), inner.core.name()) {
                m.name(inner.core.id, n);
            }
        }
        g
    }

    /// Creates and starts the greenlet (see [`spawn`]).
    #[inline]
    pub fn spawn<T: 'static, F: FnOnce() -> T + 'static>(self, f: F) -> Greenlet<T> {
        let hub = hub();
        // Made with the registry's count as well as the handle's.
        let g = self.create_on(hub, f, 2);
        // What `start` does, without its checks: the greenlet was made just now, on this hub,
        // and is not the root.
        let core = &g.inner().core;
        // SAFETY: the block was made with two counts, the handle's and this one, which
        // nothing else owns; the greenlet is new, so not registered.
        unsafe { hub.register_live_adopted(core) };
        hub.schedule_new(core);
        g
    }

    /// Creates the greenlet and starts it after `delay` (see [`spawn_later`]).
    pub fn spawn_later<T: 'static, F: FnOnce() -> T + 'static>(
        self,
        delay: Duration,
        f: F,
    ) -> Greenlet<T> {
        let g = self.create(f);
        g.start_later(delay);
        g
    }
}

impl<T: 'static> Greenlet<T> {
    /// Creates a greenlet without starting it (gevent's `Greenlet(run)`).
    pub fn new<F: FnOnce() -> T + 'static>(f: F) -> Greenlet<T> {
        Builder::new().create(f)
    }

    fn gref(&self) -> GRef {
        self.g.clone()
    }

    /// Schedules the greenlet to start (gevent's `start`). No effect if it was already started
    /// or scheduled, or is dead. A greenlet created under a hub that has been
    /// [destroyed](crate::hub::destroy) since never runs: starting it completes it as killed,
    /// as the destruction would have.
    #[inline]
    pub fn start(&self) {
        if let Some(hub) = self.hub_to_start() {
            hub.register_live(self.gref());
            hub.unpark(&self.inner().core);
        }
    }

    /// The hub to start this greenlet on; `None` if it must not start: it was already started
    /// or scheduled, is dead, or was made under a hub destroyed since (it is then completed
    /// as killed, as the destruction would have).
    #[inline(always)]
    fn hub_to_start(&self) -> Option<&'static crate::hub::Hub> {
        let core = &self.inner().core;
        if core.state.get() != State::New {
            return None;
        }
        let hub = hub();
        if core.hub_generation != hub.generation() {
            kill_dyn(&self.g);
            return None;
        }
        Some(hub)
    }

    /// Schedules the greenlet to start after `delay` (gevent's `start_later`).
    pub fn start_later(&self, delay: Duration) {
        let Some(hub) = self.hub_to_start() else {
            return;
        };
        let core = &self.inner().core;
        let g = self.gref();
        hub.register_live(g.clone());
        core.state.set(State::Later);
        let t = hub.add_timer(hub.far_deadline(delay), TimerAction::Start(g));
        core.extra().start_timer.set(Some(t));
    }

    /// A small id, unique per hub (the root is 0).
    pub fn id(&self) -> u64 {
        self.inner().core.id
    }

    /// The name given with [`Builder::name`].
    pub fn name(&self) -> Option<&str> {
        self.inner().core.name()
    }

    /// Whether it has finished (gevent's `ready()`; same as [`dead`](Self::dead)).
    pub fn ready(&self) -> bool {
        self.inner().core.state.get() == State::Dead
    }

    /// Whether it has finished (gevent's `dead`).
    pub fn dead(&self) -> bool {
        self.ready()
    }

    /// Whether it was started (or scheduled with `start_later`) and has not finished: true as
    /// soon as [`spawn`]/[`start`](Self::start) returns, before it first runs (gevent's
    /// `started` and `bool(g)`).
    pub fn started(&self) -> bool {
        !matches!(self.inner().core.state.get(), State::New | State::Dead)
    }

    /// Whether it finished without failing; being killed counts as success, as in gevent.
    pub fn successful(&self) -> bool {
        matches!(self.inner().core.ended.get(), Ended::Value | Ended::Killed)
    }

    /// How it failed or was killed; `None` while running or after a normal return.
    pub fn exception(&self) -> Option<Error> {
        self.g.error()
    }

    /// Its value, if it returned one (clone).
    pub fn value(&self) -> Option<T>
    where
        T: Clone,
    {
        match &*self.inner().result.borrow() {
            Some(Ok(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// Moves out the panic payload of a failed greenlet (to `resume_unwind` it elsewhere).
    pub fn take_panic_payload(&self) -> Option<Box<dyn Any + Send>> {
        self.inner().payload.borrow_mut().take()
    }

    /// Blocks until the greenlet has finished (gevent's `join()`).
    #[inline(always)]
    pub fn join(&self) {
        join_core(&self.inner().core, None);
    }

    /// Blocks until the greenlet has finished or `timeout` passed; `true` if it finished.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        join_core(&self.inner().core, hub().deadline(timeout))
    }

    /// Blocks until the greenlet has finished and returns its value or how it failed
    /// (gevent's `get()`).
    #[inline(always)]
    pub fn get(&self) -> Result<T, Error>
    where
        T: Clone,
    {
        self.join();
        self.result_now()
    }

    /// Like [`get`](Self::get) with a timeout: `Err(Error::Timeout)` if it has not finished.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error>
    where
        T: Clone,
    {
        if self.join_timeout(timeout) {
            self.result_now()
        } else {
            Err(Error::Timeout(timeout))
        }
    }

    fn result_now(&self) -> Result<T, Error>
    where
        T: Clone,
    {
        match &*self.inner().result.borrow() {
            Some(r) => r.clone(),
            None => Err(Error::ValueTaken),
        }
    }

    /// Blocks until the greenlet has finished and moves its value out (no `Clone` needed).
    /// Later calls of `get`/`into_result` on other handles return [`Error::ValueTaken`].
    #[inline(always)]
    pub fn into_result(self) -> Result<T, Error> {
        // Fetched once, for the join and for freeing the block.
        let hub = hub();
        join_core_on(Some(hub), &self.inner().core, None);
        let inner = self.inner();
        let mut r = inner.result.borrow_mut();
        if !matches!(&*r, Some(Ok(_))) {
            drop(r);
            return self.into_result_not_value();
        }
        // The value is moved out in place and the slot marked empty, without moving the whole
        // result (`take` copies it out and matches it again).
        let v = match &*r {
            // SAFETY: the value is read once, and the slot is overwritten just below without
            // dropping it, so it is moved, not copied.
            Some(Ok(v)) => unsafe { std::ptr::read(v) },
            // SAFETY: checked just above.
            _ => unsafe { std::hint::unreachable_unchecked() },
        };
        // SAFETY: a valid slot whose value was moved out above: nothing to drop.
        unsafe { std::ptr::write(&mut *r, None) };
        drop(r);
        // This handle's count, given up here so that freeing the block (the usual case: the
        // last handle of a reaped greenlet) is inlined, with its result slot known empty.
        let me = std::mem::ManuallyDrop::new(self);
        let c = &me.inner().core;
        if c.has_other_counts() {
            // SAFETY: this handle owns a count, and another exists.
            unsafe { c.release_count_not_last() };
        } else {
            // SAFETY: that was the last count of an `Inner<T>` block: nothing refers to it.
            unsafe { Inner::<T>::free_last(me.g.0, Some(hub)) };
        }
        Ok(v)
    }

    /// [`into_result`](Self::into_result) when the result is not a value: an error (which
    /// stays for the other handles), or a value already taken.
    #[cold]
    #[inline(never)]
    fn into_result_not_value(self) -> Result<T, Error> {
        let mut r = self.inner().result.borrow_mut();
        match r.take() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => {
                // An error stays for the other handles.
                let out = e.clone();
                *r = Some(Err(e));
                Err(out)
            }
            None => Err(Error::ValueTaken),
        }
    }

    /// Kills the greenlet and blocks until it has finished (its cleanup ran). See the
    /// [module docs](self#kill).
    pub fn kill(&self) {
        self.kill_nowait();
        self.join();
    }

    /// Kills and waits at most `timeout`; `true` if it finished.
    pub fn kill_timeout(&self, timeout: Duration) -> bool {
        self.kill_nowait();
        self.join_timeout(timeout)
    }

    /// Delivers the kill and returns at once (gevent's `kill(block=False)`).
    pub fn kill_nowait(&self) {
        kill_dyn(&self.gref());
    }

    /// Kills it with `payload` instead of [`GreenletExit`] and returns at once (gevent's
    /// `kill(exception=..., block=False)` and `throw`): the payload unwinds the greenlet
    /// from its next blocking point (at once if it is the current greenlet), and the greenlet
    /// ends *failed* with [`Error::Panicked`] (the payload's text for a `&str` or `String`)
    /// unless the payload is a `GreenletExit`; [`take_panic_payload`](Self::take_panic_payload)
    /// gives the payload back. A greenlet that has not started never runs and ends the same
    /// way. If a kill is already pending, the first one wins.
    pub fn throw<E: Any + Send>(&self, payload: E) {
        kill_with_dyn(&self.gref(), Some(Box::new(payload)));
    }

    /// [`throw`](Self::throw), then waits until it has finished (gevent's
    /// `kill(exception=..., block=True)`).
    pub fn kill_with<E: Any + Send>(&self, payload: E) {
        self.throw(payload);
        self.join();
    }

    /// Calls `f(&greenlet)` in a new greenlet when this one finishes (gevent's `link`).
    /// Links run in registration order, also when added after death.
    pub fn link(&self, f: impl FnOnce(&Greenlet<T>) + 'static) -> LinkId {
        let me = self.clone();
        self.rawlink_box(Box::new(move || {
            spawn(move || f(&me));
        }))
    }

    /// Like [`link`](Self::link), only if it finished successfully (gevent's `link_value`).
    pub fn link_value(&self, f: impl FnOnce(&Greenlet<T>) + 'static) -> LinkId {
        self.link(move |g| {
            if g.successful() {
                f(g)
            }
        })
    }

    /// Like [`link`](Self::link), only if it failed (gevent's `link_exception`).
    pub fn link_exception(&self, f: impl FnOnce(&Greenlet<T>) + 'static) -> LinkId {
        self.link(move |g| {
            if !g.successful() {
                f(g)
            }
        })
    }

    /// Runs `f` on the hub when this greenlet finishes (gevent's `rawlink`). `f` must not
    /// block.
    pub fn rawlink(&self, f: impl FnOnce() + 'static) -> LinkId {
        self.rawlink_box(Box::new(f))
    }

    fn rawlink_box(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.inner().core.rawlink(f)
    }

    /// Removes a link that has not run yet (also one whose turn has not come in a
    /// notification that is running: a link may unlink a later one).
    pub fn unlink(&self, id: LinkId) -> bool {
        self.inner().core.links.remove(id)
    }

    /// Removes every link that has not run yet (gevent's `unlink_all`); returns how many.
    pub fn unlink_all(&self) -> usize {
        self.inner().core.links.clear()
    }

    /// Whether links are registered and not run yet (gevent's `has_links`).
    pub fn has_links(&self) -> bool {
        !self.inner().core.links.is_empty()
    }

    /// How many links are registered and not run yet.
    pub fn link_count(&self) -> usize {
        self.inner().core.links.len()
    }

    /// A type-erased handle.
    pub fn handle(&self) -> GreenletRef {
        GreenletRef { g: self.gref() }
    }
}

impl<T: 'static> Waitable for Greenlet<T> {
    fn ready(&self) -> bool {
        Greenlet::ready(self)
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.rawlink_box(f)
    }
    fn unlink(&self, id: LinkId) -> bool {
        Greenlet::unlink(self, id)
    }
}

#[inline(always)]
fn join_core(core: &Core, deadline: Option<Instant>) -> bool {
    join_core_on(None, core, deadline)
}

/// [`join_core`] with this thread's hub, if the caller has it at hand.
#[inline(always)]
fn join_core_on(
    hub: Option<&'static crate::hub::Hub>,
    core: &Core,
    deadline: Option<Instant>,
) -> bool {
    if core.state.get() == State::Dead {
        return true;
    }
    let after_links = core.links.next_ordinal();
    let hub = hub.unwrap_or_else(crate::hub::hub);
    match core
        .joiners
        .wait_on(hub, Some(after_links), deadline, "Greenlet::join")
    {
        Ok(_) => true,
        Err(WaitFail::Deadline(_)) => core.state.get() == State::Dead,
    }
}

/// Kill without waiting, for any greenlet.
pub(crate) fn kill_dyn(g: &GRef) {
    kill_with_dyn(g, None)
}

/// Kill without waiting, with a payload instead of `GreenletExit` (`throw`).
pub(crate) fn kill_with_dyn(g: &GRef, payload: Option<Box<dyn Any + Send>>) {
    let core = g.core();
    if core.is_root {
        log::warn!("evergreen: ignoring an attempt to kill the root context");
        return;
    }
    let interrupt = if payload.is_some() {
        Interrupt::Throw
    } else {
        Interrupt::Kill
    };
    match core.state.get() {
        State::Dead => {}
        State::Running => {
            // Killing oneself: gevent raises GreenletExit (or the exception) at once.
            if !core.is_unwinding() {
                core.unwind_started();
                resume_unwind(payload.unwrap_or_else(|| Box::new(GreenletExit)));
            }
            if let Some(p) = payload {
                hub().thrown.borrow_mut().insert(core.id, p);
            }
            core.set_interrupt(interrupt);
        }
        st if !core.started() => {
            let hub = hub();
            if let Some(t) = core.extra_if_made().and_then(|e| e.start_timer.take()) {
                // The action's count of this greenlet is not the last: `g` holds one.
                drop(hub.take_timer(t));
            }
            let co = core.take_unstarted();
            match payload {
                Some(p) if !p.is::<GreenletExit>() => g.complete_thrown(p),
                _ => g.complete_killed(),
            }
            // It leaves the live registry now (so `live_count` and the run-info dump no longer
            // show it); a queued one's registry count passes to its run-queue entry, which
            // releases it when the hub pops it (see `Hub::resume_greenlet`).
            let mut registered = hub.unregister_live(core);
            if st == State::Runnable {
                std::mem::forget(registered.take());
            }
            // Drop the unrun function last: its `Drop` is user code, and whatever it does to
            // this greenlet (start it, kill it) must find it dead.
            core.release_coroutine(co);
            drop(registered);
        }
        _ => {
            if core.interrupt.get().is_none() || interrupt == Interrupt::Kill {
                if let Some(p) = payload {
                    hub().thrown.borrow_mut().insert(core.id, p);
                }
            }
            core.set_interrupt(interrupt);
            hub().unpark(core);
        }
    }
}

/// A type-erased greenlet handle (what [`getcurrent`] returns; gevent's `getcurrent()`).
#[derive(Clone)]
pub struct GreenletRef {
    g: GRef,
}

impl fmt::Debug for GreenletRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GreenletRef({})", self.g.core().describe())
    }
}

impl PartialEq for GreenletRef {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl GreenletRef {
    /// Its id (0 for the root context).
    pub fn id(&self) -> u64 {
        self.g.core().id
    }
    /// Its name.
    pub fn name(&self) -> Option<&str> {
        self.g.core().name()
    }
    /// Whether this is the root context (code outside any greenlet).
    pub fn is_root(&self) -> bool {
        self.g.core().is_root
    }
    /// Whether it has finished.
    pub fn dead(&self) -> bool {
        self.g.core().state.get() == State::Dead
    }
    /// Whether it finished without failing (killed counts as success).
    pub fn successful(&self) -> bool {
        matches!(self.g.core().ended.get(), Ended::Value | Ended::Killed)
    }
    /// How it failed or was killed.
    pub fn exception(&self) -> Option<Error> {
        self.g.error()
    }
    /// Blocks until it has finished.
    pub fn join(&self) {
        join_core(self.g.core(), None);
    }
    /// Blocks until it has finished or `timeout` passed; `true` if it finished.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        join_core(self.g.core(), hub().deadline(timeout))
    }
    /// Kills it and waits until it has finished.
    pub fn kill(&self) {
        kill_dyn(&self.g);
        self.join();
    }
    /// Kills it without waiting.
    pub fn kill_nowait(&self) {
        kill_dyn(&self.g);
    }
}

impl Waitable for GreenletRef {
    fn ready(&self) -> bool {
        self.dead()
    }
    fn rawlink(&self, f: Box<dyn FnOnce()>) -> LinkId {
        self.g.core().rawlink(f)
    }
    fn unlink(&self, id: LinkId) -> bool {
        self.g.core().links.remove(id)
    }
}

/// The greenlet whose code is running; the root context outside any greenlet and in hub
/// callbacks (where gevent would return the hub).
pub fn getcurrent() -> GreenletRef {
    GreenletRef {
        g: hub().current_gref(),
    }
}

/// The id of the greenlet whose code is running (0 in the root context and in hub callbacks):
/// `getcurrent().id()` without making a handle (no reference count touched), for code that
/// only needs to know *who* is running, such as an actor checking who is asking it. gevent has
/// no separate call; `id(getcurrent())` plays the part.
pub fn getcurrent_id() -> u64 {
    hub().current().id
}

/// Kills every greenlet in `gs` without waiting (gevent's `killall(block=False)`).
pub fn killall_nowait<T: 'static>(gs: &[Greenlet<T>]) {
    for g in gs {
        g.kill_nowait();
    }
}

/// Kills every greenlet in `gs` and waits until all have finished (gevent's `killall`).
/// With a `timeout`, returns `false` if some were still alive when it passed.
pub fn killall<T: 'static>(gs: &[Greenlet<T>], timeout: Option<Duration>) -> bool {
    for g in gs {
        g.kill_nowait();
    }
    let deadline = timeout.and_then(|t| hub().deadline(t));
    for g in gs {
        let ok = match deadline {
            None => {
                g.join();
                true
            }
            Some(d) => {
                let left = d.saturating_duration_since(hub().now());
                g.join_timeout(left)
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Waits for every greenlet and returns them in the order they finished (gevent's
/// `joinall`).
pub fn joinall<T: 'static>(gs: &[Greenlet<T>]) -> Vec<Greenlet<T>> {
    joinall_inner(gs, None, false).unwrap_or_else(|(done, _)| done)
}

/// Waits for the greenlets until `timeout`; returns those that finished, in completion
/// order.
pub fn joinall_timeout<T: 'static>(gs: &[Greenlet<T>], timeout: Duration) -> Vec<Greenlet<T>> {
    joinall_inner(gs, Some(timeout), false).unwrap_or_else(|(done, _)| done)
}

/// Waits for the greenlets, but stops at the first one (in completion order) that failed and
/// returns its error (gevent's `joinall(raise_error=True)`). Killed greenlets are not
/// failures. With a timeout, returns the finished ones when it passes.
pub fn joinall_raise<T: 'static>(
    gs: &[Greenlet<T>],
    timeout: Option<Duration>,
) -> Result<Vec<Greenlet<T>>, Error> {
    joinall_inner(gs, timeout, true).map_err(|(_, e)| e)
}

fn joinall_inner<T: 'static>(
    gs: &[Greenlet<T>],
    timeout: Option<Duration>,
    raise: bool,
) -> JoinAll<T> {
    let mut done = Vec::with_capacity(gs.len());
    let objs: Vec<&dyn Waitable> = gs.iter().map(|g| g as &dyn Waitable).collect();
    for i in crate::wait::iwait(&objs, timeout) {
        let g = gs[i].clone();
        let failed = !g.successful();
        done.push(g);
        if raise && failed {
            let e = done
                .last()
                .and_then(|g| g.exception())
                .expect("failed greenlet");
            return Err((done, e));
        }
    }
    Ok(done)
}
