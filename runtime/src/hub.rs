//! The hub: one cooperative scheduler per OS thread (gevent's `hub.py`).
//!
//! # Mechanism
//!
//! The hub owns a FIFO *run queue* of tasks (a greenlet to resume, or a callback), a timer
//! heap, and a mio `Poll`. It is created lazily the first time a thread uses evergreen, and is
//! reached through a thread-local pointer.
//!
//! **Only the hub switches.** A greenlet that blocks *parks*: it records what it waits on and
//! suspends its coroutine, which returns control to the hub loop. Whatever later satisfies the
//! wait *unparks* it, which only pushes it on the run queue; the hub resumes it in turn.
//! Wake-ups never switch, so the code that wakes a greenlet keeps running until it blocks
//! itself, exactly as with gevent's `hub.loop.run_callback(waiter.switch)`.
//!
//! ```text
//!   greenlet A            hub loop (root stack)            greenlet B
//!   q.get() ──park──▶     pop B, resume B ───────────▶     q.put(x): hand x to A,
//!                                                           unpark A (push on queue)
//!                         ◀──────────────────────────────  B blocks / ends
//!   ◀──resume──           pop A, resume A
//!   returns x
//! ```
//!
//! **Taking the hub's next step in place.** When a greenlet switches out and the hub's next
//! task is another greenlet, the greenlet that switches out resumes it itself, nested on its
//! own stack, instead of first switching to the hub loop and the hub loop then resuming it: it
//! is the same task, taken from the same queue at the same budget, so the order of events is
//! exactly the hub loop's. When that greenlet switches out in turn and the first greenlet's
//! own turn is next, it just returns to it. A spawn + join, a yield between two greenlets and
//! a queue round trip so take two switches instead of four. Anything else the loop would do
//! (poll timers and I/O, run a callback, wake the root) is left to the loop: the chain of
//! nested greenlets suspends back to it. Each greenlet of such a chain keeps only the resume's
//! frame on its own stack (the nested one runs on its own stack), so chains as deep as there
//! are greenlets are fine.
//!
//! **The run queue** is a power-of-two ring of one-word tasks: a greenlet to resume is its
//! core's address, a callback is a marker whose closure waits in a side queue in the same
//! order, and a wake-up of the root carries the root's park sequence number. Queueing a
//! greenlet is one store; taking the next task is one load and a mask.
//!
//! **The live registry** is a vector of greenlet cores, each of which knows its slot
//! (registering is a push; unregistering moves the last member into the freed slot): it holds
//! one reference count of every greenlet that was started and has not finished (whether
//! queued, running or parked), so a greenlet outlives its handles for as long as it runs, and
//! [`destroy`] (which kills them in id order, the order they were made) and the run-info dump
//! can find every one of them.
//!
//! **Blocking from the root.** Code outside any greenlet (`main`) has no coroutine to suspend.
//! When it blocks, it runs the hub loop itself until its own wait is satisfied, the way
//! gevent's main greenlet switches into the hub. If the run queue is empty, no timer is
//! pending and no I/O is being waited for, nothing can ever satisfy the wait, and the call
//! panics with a [`LoopExit`] payload naming what it waited for and what was still parked.
//!
//! # Fairness policy
//!
//! * Wake-ups are FIFO: the run queue is a ring, and every primitive wakes its waiters in the
//!   order they started waiting.
//! * `sleep(Duration::ZERO)` really yields: the caller goes to the back of the run queue and
//!   runs again only after everything that was already runnable.
//! * I/O and timers are never starved: after at most [`Config::event_interval`] tasks (61 by
//!   default, tokio's number), the hub fires due timers and polls I/O without blocking, even if
//!   the run queue never empties (so a `Timeout` around `loop { sleep(ZERO) }` fires). When the
//!   run queue is empty the hub blocks in `epoll_wait` until the next timer.
//!
//! # Virtual clock
//!
//! A hub can run on a virtual clock ([`use_virtual_clock`], or `EVERGREEN_CLOCK=virtual`):
//! [`now`] starts at the real time of the switch and then advances only when every greenlet is
//! blocked, jumping straight to the next timer's deadline. Tests with timeouts then run
//! instantly and deterministically. I/O is still polled (without blocking) before each jump.
//!
//! # Differences from gevent
//!
//! * gevent's hub is itself a greenlet that the main greenlet switches to; here the hub loop
//!   runs on the thread's own stack, inside whichever root-level call is blocking. The
//!   observable order of events is the same.
//! * Callbacks scheduled on the hub (raw links, timer callbacks) must not block: a blocking
//!   call made there panics with a [`LoopExit`] payload, as gevent's
//!   `BlockingSwitchOutError` does.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::LoopExit;
use crate::greenlet::{BlockCache, Core, CorePtr, GRef, Interrupt, State};
use crate::stack::{self, StackPool};
use crate::timer::{TimerId, Timers};
use crate::waiter::WaitList;

/// A unit of work on the run queue.
pub(crate) enum Task {
    /// Start or resume a greenlet. The pointer is valid: a greenlet on the run queue is in
    /// the hub's live registry, which owns it (see `resume_greenlet`).
    Resume(CorePtr),
    /// Run a callback in hub context (it must not block).
    Callback(Box<dyn FnOnce()>),
    /// Wake the root context if it is still in the `sleep(ZERO)` with this sequence number.
    WakeRoot(u64),
    /// Run a finished greenlet's links and wake its joiners (`greenlet::notify_links`), in
    /// hub context: the callback every greenlet with links needs, queued without a boxed
    /// closure.
    NotifyLinks(GRef),
}

/// What a timer does when it fires.
pub(crate) enum TimerAction {
    /// A parked greenlet's deadline passed: flag it and wake it.
    Deadline(GRef),
    /// Deliver an interrupt (a scoped `Timeout`) to a greenlet.
    Interrupt(GRef, Interrupt),
    /// Start a greenlet made with `spawn_later`.
    Start(GRef),
    /// Run a callback in hub context.
    Callback(Box<dyn FnOnce()>),
}

/// What runs after a greenlet switches out (see `Hub::next_step`).
enum Next {
    /// The greenlet itself: it keeps running.
    Me,
    /// Another greenlet, resumed nested on this one's stack.
    Other(CorePtr),
    /// Whatever the hub loop decides: the greenlet suspends to it.
    Hub,
}

/// How a park ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Someone unparked the greenlet.
    Woken,
    /// The park's own deadline passed.
    Deadline,
    /// An interrupt (kill or scoped timeout) is pending; the caller must clean up and call
    /// [`Hub::deliver_interrupt`], unless its wait completed anyway.
    Interrupted,
}

/// The live registry: every started or scheduled greenlet that has not been reaped. A vector
/// of cores; each member's core knows its slot (`Core::live_slot`), so registering is a push
/// and unregistering moves the last member into the freed slot (no allocation in steady
/// state, no list links to keep). Each member's block has one count owned by the registry.
/// Its order is not kept: [`Hub::live_greenlets`] sorts by id.
///
/// Touched only by its hub's thread, in short methods that run no other code (at most the
/// vector grows through the global allocator), so no borrow of it is ever held across them.
struct Registry(std::cell::UnsafeCell<Vec<CorePtr>>);

/// The per-thread hub. See the [module docs](self).
pub struct Hub {
    pub(crate) config: Config,
    run_queue: RunQueue,
    /// The greenlet whose code is running (the root when none is). Always a live greenlet
    /// (owned by the registry) or the root (owned by `root`).
    current: Cell<CorePtr>,
    root: GRef,
    /// `root`'s core (cached: checked after every task).
    root_core: CorePtr,
    /// Set while a hub callback runs: blocking there is an error.
    in_callback: Cell<bool>,
    pub(crate) timers: RefCell<Timers<TimerAction>>,
    pub(crate) stacks: RefCell<StackPool>,
    live: Registry,
    /// Freed greenlet blocks for reuse.
    pub(crate) blocks: BlockCache,
    next_id: Cell<u64>,
    virtual_clock: Cell<Option<Instant>>,
    pub(crate) reactor: RefCell<crate::reactor::Reactor>,
    pub(crate) idle_waiters: WaitList<()>,
    monitor: std::cell::OnceCell<crate::monitor::MonitorHandle>,
    /// Distinguishes successive hubs of one thread (stacks go back to their own hub only).
    generation: u64,
    /// Greenlets whose pending interrupt could not be delivered because they looked like they
    /// were unwinding; re-woken once no unwind is in progress (see `deliver_interrupt`).
    declined: RefCell<Vec<GRef>>,
    /// Counts the root's parks, so a stale `WakeRoot` is ignored.
    root_park_seq: Cell<u64>,
    /// Tasks left before the hub must poll timers and I/O (the fairness policy).
    budget: Cell<u32>,
    /// Set while the root waits in [`wait_until_done`]: "nothing can wake it" then means it
    /// is done, not `LoopExit`.
    until_done: Cell<bool>,
    /// Payloads of pending `Greenlet::throw`s, by greenlet id (a side table: keeping a slot
    /// in every greenlet's core would cost every greenlet two words).
    pub(crate) thrown: RefCell<std::collections::HashMap<u64, Box<dyn Any + Send>>>,
    /// How many hub-loop runs, `Local::with` closures and teardowns are in progress: while
    /// non-zero, evergreen frames on the root's stack still use the hub, so [`destroy`] is
    /// refused.
    busy: Cell<u32>,
}

/// Counts one use of the hub in [`Hub::busy`] for as long as it lives (also when unwinding).
pub(crate) struct Busy<'a>(&'a Cell<u32>);

impl<'a> Busy<'a> {
    #[inline]
    pub(crate) fn enter(hub: &'a Hub) -> Busy<'a> {
        hub.busy.set(hub.busy.get() + 1);
        Busy(&hub.busy)
    }
}

impl Drop for Busy<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

thread_local! {
    static HUB: Cell<*const Hub> = const { Cell::new(std::ptr::null()) };
    static GUARD: HubGuard = const { HubGuard };
}

struct HubGuard;

impl Drop for HubGuard {
    fn drop(&mut self) {
        destroy();
    }
}

/// The run queue: a FIFO of tasks, touched only by its hub's thread.
///
/// Every task is one word in a power-of-two ring, so the hot operations (queueing a greenlet,
/// taking the next task) are a store or a load and a mask: a greenlet is its core's address
/// (cores are 8-aligned, so the low two bits are 0), a callback is a marker whose closure
/// waits, in the same order, in a side queue, and a wake-up of the root carries the root's
/// park sequence number.
struct RunQueue(std::cell::UnsafeCell<Ring>);

struct Ring {
    /// Capacity is a power of two (`mask + 1`). `head` and `tail` count tasks taken and
    /// queued (wrapping); the tasks are in slots `head & mask .. tail & mask`.
    buf: Box<[usize]>,
    mask: usize,
    head: usize,
    tail: usize,
    callbacks: VecDeque<Box<dyn FnOnce()>>,
}

const TAG_MASK: usize = 3;
const TAG_CALLBACK: usize = 1;
const TAG_WAKE_ROOT: usize = 2;
/// A [`Task::NotifyLinks`]: the core's address (8-aligned) with this tag, owning one count.
const TAG_NOTIFY: usize = 3;

/// Whether a root wake-up carrying `seq` (as packed in the run queue: the bits that fit in a
/// word after the tag) is for the root's park number `current`.
#[inline]
fn root_seq_matches(seq: u64, current: u64) -> bool {
    seq == current & (usize::MAX >> 2) as u64
}

impl RunQueue {
    fn new() -> RunQueue {
        RunQueue(std::cell::UnsafeCell::new(Ring {
            buf: vec![0; 64].into_boxed_slice(),
            mask: 63,
            head: 0,
            tail: 0,
            callbacks: VecDeque::new(),
        }))
    }

    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    fn ring(&self) -> &mut Ring {
        // SAFETY: the hub (and so this queue) is used by one thread only, every method below
        // ends its use of the ring before returning, and none runs user code meanwhile (at
        // most the buffer grows, through the global allocator, which must not call back into
        // evergreen), so no two of these references are ever alive at once.
        unsafe { &mut *self.0.get() }
    }

    #[inline(always)]
    fn push(&self, t: Task) {
        let r = self.ring();
        let word = match t {
            Task::Resume(p) => {
                debug_assert_eq!(p.as_ptr() as usize & TAG_MASK, 0);
                p.as_ptr() as usize
            }
            Task::Callback(f) => {
                r.callbacks.push_back(f);
                TAG_CALLBACK
            }
            // Keeps the low bits of the sequence number that fit (see `root_seq_matches`).
            Task::WakeRoot(seq) => ((seq as usize) << 2) | TAG_WAKE_ROOT,
            Task::NotifyLinks(g) => {
                let p = g.into_raw();
                debug_assert_eq!(p.as_ptr() as usize & TAG_MASK, 0);
                p.as_ptr() as usize | TAG_NOTIFY
            }
        };
        if r.tail.wrapping_sub(r.head) > r.mask {
            r.grow();
        }
        let i = r.tail & r.mask;
        // SAFETY: `i` is masked to the buffer's length, `mask + 1`.
        unsafe { *r.buf.get_unchecked_mut(i) = word };
        r.tail = r.tail.wrapping_add(1);
    }

    #[inline(always)]
    fn pop(&self) -> Option<Task> {
        self.pop_word().map(|w| self.task_of(w))
    }

    /// The next task's word, left in the queue.
    #[inline(always)]
    fn peek_word(&self) -> Option<usize> {
        let r = self.ring();
        if r.head == r.tail {
            return None;
        }
        // SAFETY: the index is masked to the buffer's length, `mask + 1`.
        Some(unsafe { *r.buf.get_unchecked(r.head & r.mask) })
    }

    /// Drops the next task's word, which the caller has read with
    /// [`peek_word`](Self::peek_word) and acts on itself.
    #[inline(always)]
    fn skip(&self) {
        let r = self.ring();
        debug_assert!(r.head != r.tail);
        r.head = r.head.wrapping_add(1);
    }

    /// Takes the next task's word (see [`task_of`](Self::task_of)). The hub loop resumes an
    /// untagged word (a greenlet) straight from it, without building a `Task` that would have
    /// to be kept for the unwinding path.
    #[inline(always)]
    fn pop_word(&self) -> Option<usize> {
        let r = self.ring();
        if r.head == r.tail {
            return None;
        }
        // SAFETY: the index is masked to the buffer's length, `mask + 1`.
        let word = unsafe { *r.buf.get_unchecked(r.head & r.mask) };
        r.head = r.head.wrapping_add(1);
        Some(word)
    }

    /// The task a word taken by [`pop_word`](Self::pop_word) stands for.
    #[inline(always)]
    fn task_of(&self, word: usize) -> Task {
        match word & TAG_MASK {
            // SAFETY: an untagged word is the non-null address of a core, pushed by `push`.
            0 => Task::Resume(unsafe { CorePtr::new_unchecked(word as *mut Core) }),
            TAG_CALLBACK => Task::Callback(
                self.ring()
                    .callbacks
                    .pop_front()
                    .expect("a callback marker has its callback"),
            ),
            TAG_WAKE_ROOT => Task::WakeRoot((word >> 2) as u64),
            // SAFETY: a `TAG_NOTIFY` word is a core's non-null address with the tag, carrying
            // the count its `GRef` gave up in `push`; it is taken from the queue once.
            _ => Task::NotifyLinks(unsafe {
                GRef::adopt(CorePtr::new_unchecked((word & !TAG_MASK) as *mut Core))
            }),
        }
    }

    #[inline(always)]
    fn is_empty(&self) -> bool {
        let r = self.ring();
        r.head == r.tail
    }

    /// Empties the queue, handing its tasks to the caller (who drops them after this access).
    fn take_all(&self) -> Vec<Task> {
        let r = self.ring();
        let mut v = Vec::with_capacity(r.tail.wrapping_sub(r.head));
        while let Some(t) = self.pop() {
            v.push(t);
        }
        v
    }
}

impl Ring {
    #[cold]
    fn grow(&mut self) {
        let len = self.tail.wrapping_sub(self.head);
        let mut buf = vec![0; self.buf.len() * 2].into_boxed_slice();
        for (k, slot) in buf.iter_mut().take(len).enumerate() {
            *slot = self.buf[self.head.wrapping_add(k) & self.mask];
        }
        self.buf = buf;
        self.mask = self.buf.len() - 1;
        self.head = 0;
        self.tail = len;
    }
}

/// Whether code on this thread runs in a greenlet now (not the root context, not a hub
/// callback). Safe to call from a signal handler: it only reads memory.
#[inline]
pub(crate) fn in_greenlet() -> bool {
    try_hub().is_some_and(|h| !h.current().is_root)
}

/// The running greenlet's stack bounds and identity, for the overflow handler (`None` outside
/// greenlets). Only reads memory, so it is async-signal-safe.
pub(crate) fn running_overflow_info() -> Option<crate::stack::OverflowInfo> {
    let p = HUB.try_with(|h| h.get()).ok()?;
    if p.is_null() {
        return None;
    }
    // SAFETY: as in `hub()`: the hub stays valid while the thread-local points to it, and
    // `current` points to a live greenlet or the root.
    let core = unsafe { (*p).current.get().as_ref() };
    if core.is_root {
        return None;
    }
    let b = core.stack_bounds.get();
    let (lo, hi) = b.overflow_range();
    let (name, name_len) = match core.name() {
        Some(n) => (n.as_ptr(), n.len()),
        None => (std::ptr::null(), 0),
    };
    Some(crate::stack::OverflowInfo {
        lo,
        hi,
        bottom: b.bottom,
        id: core.id,
        size: b.size(),
        name,
        name_len,
        unguarded: core.unguarded(),
    })
}

/// This thread's hub, if it exists (never creates one).
#[inline]
pub(crate) fn try_hub() -> Option<&'static Hub> {
    let p = HUB.with(|h| h.get());
    // SAFETY: as in `hub()`.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether this thread's hub exists.
pub fn exists() -> bool {
    !HUB.with(|h| h.get()).is_null()
}

/// This thread's hub, created on first use.
#[inline]
pub(crate) fn hub() -> &'static Hub {
    let p = HUB.with(|h| h.get());
    if p.is_null() {
        return create();
    }
    // SAFETY: the pointer was made by `Box::into_raw` in `create` and is only freed by
    // `destroy`, which nulls it first; the hub is only ever used by this thread. The 'static
    // lifetime does not escape the crate's internal use between those two points.
    unsafe { &*p }
}

#[cold]
fn create() -> &'static Hub {
    let mut config = crate::config::current();
    // `set_config` takes any values: keep the ones the loop depends on sane.
    config.event_interval = config.event_interval.max(1);
    stack::install_overflow_handler();
    crate::greenlet::install_panic_hook();
    let monitor = std::cell::OnceCell::new();
    if config.monitor {
        let _ = monitor.set(crate::monitor::MonitorHandle::start(
            config.monitor_threshold,
        ));
    }
    let root: GRef = crate::greenlet::new_root();
    let hub = Box::new(Hub {
        run_queue: RunQueue::new(),
        current: Cell::new(root.core().ptr()),
        root_core: root.core().ptr(),
        root,
        in_callback: Cell::new(false),
        timers: RefCell::new(Timers::default()),
        stacks: RefCell::new(StackPool::new(
            config.stack_size,
            config.stack_pool_max,
            config.guard_mode,
        )),
        live: Registry(std::cell::UnsafeCell::new(Vec::new())),
        blocks: BlockCache::new(config.block_cache),
        next_id: Cell::new(1),
        virtual_clock: Cell::new(config.virtual_clock.then(Instant::now)),
        reactor: RefCell::new(crate::reactor::Reactor::new()),
        idle_waiters: WaitList::new(),
        monitor,
        budget: Cell::new(config.event_interval),
        root_park_seq: Cell::new(0),
        generation: {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        },
        declined: RefCell::new(Vec::new()),
        busy: Cell::new(0),
        until_done: Cell::new(false),
        thrown: RefCell::new(std::collections::HashMap::new()),
        config,
    });
    let p = Box::into_raw(hub);
    HUB.with(|h| h.set(p));
    // Registers the thread-exit teardown.
    GUARD.with(|_| {});
    // SAFETY: just created above; see `hub()`.
    unsafe { &*p }
}

/// Tears down this thread's hub (gevent's `hub.destroy()`): every live greenlet is killed and
/// given the chance to run its cleanup (its `Drop`s run as it unwinds), then the hub is freed.
/// A later use of evergreen on this thread creates a fresh hub.
///
/// Runs automatically when the thread exits. Must be called from the root context, at top
/// level: not from a greenlet, a hub callback, a destructor that the hub runs (of a finished
/// greenlet's result, say) or a [`Local::with`](crate::Local::with) closure, since evergreen
/// frames there still use the hub.
///
/// # Panics
///
/// When called from anywhere else (the hub is never freed while it is in use).
pub fn destroy() {
    let p = HUB.with(|h| h.get());
    if p.is_null() {
        return;
    }
    {
        // SAFETY: see `hub()`; still valid until freed below.
        let hub = unsafe { &*p };
        assert!(
            hub.current().is_root && !hub.in_callback.get(),
            "evergreen::hub::destroy() must be called from the root context, outside any \
             greenlet and any hub callback"
        );
        assert!(
            hub.busy.get() == 0,
            "evergreen::hub::destroy() was called while the hub is running code on its behalf \
             (a destructor run by the hub loop, a Local::with closure, or destroy itself): \
             call it from the root context at top level"
        );
        let _busy = Busy::enter(hub);
        // Kill everything, repeatedly (a cleanup may spawn), running the queue without ever
        // blocking on timers or I/O.
        for _ in 0..16 {
            let victims: Vec<GRef> = hub.live_greenlets();
            if victims.is_empty() {
                break;
            }
            for g in &victims {
                crate::greenlet::kill_dyn(g);
            }
            while let Some(t) = hub.pop_task() {
                hub.run_task(t);
            }
        }
        let left = hub.live_greenlets();
        if !left.is_empty() {
            log::warn!(
                "evergreen: hub destroyed with {} greenlet(s) that did not finish after being \
                 killed (their cleanup blocked); their stacks are leaked: {}",
                left.len(),
                left.iter()
                    .map(|g| g.core().describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for g in left {
                g.core().leak_coroutine();
            }
        }
        // Dropping what is queued runs user code (a link's captures, a greenlet's value) that
        // may queue more: a link added to a dead greenlet queues its notification, which owns
        // a count of it. So repeat until a round finds nothing, or give up (leaking what is
        // left) after `ROUNDS` rounds of drops that keep queueing.
        const ROUNDS: usize = 100;
        for round in 0.. {
            // Greenlets spawned by the previous round's drops never run: killed now (they
            // have not started, so this only completes them, and a queued one's registry
            // count passes to its run-queue entry, taken below), not left for a later drop to
            // kill after their entry was visited. The ones leaked above have started.
            for g in hub.live_greenlets() {
                if !g.core().started() {
                    crate::greenlet::kill_dyn(&g);
                }
            }
            // Take them out first: dropping an action may touch the hub (an armed Timeout's
            // Drop cancels its timer, an IMap's Drop kills its feeder).
            let actions = hub.timers.borrow_mut().drain();
            let mut any = !actions.is_empty();
            hub.drop_on_hub(actions);
            let queued = hub.run_queue.take_all();
            any |= !queued.is_empty();
            for t in &queued {
                if let Task::Resume(p) = t {
                    // SAFETY: a queued greenlet is alive: registered, or killed before it
                    // started with its count owned by this entry.
                    let c = unsafe { p.as_ref() };
                    if c.state.get() == State::Dead && !c.in_live() {
                        // SAFETY: see `kill_dyn`: the entry owns that count.
                        hub.drop_on_hub(unsafe { GRef::adopt(*p) });
                    }
                }
            }
            hub.drop_on_hub(queued);
            let declined = std::mem::take(&mut *hub.declined.borrow_mut());
            any |= !declined.is_empty();
            hub.drop_on_hub(declined);
            if !any {
                break;
            }
            if round == ROUNDS {
                log::error!(
                    "evergreen: destroy: dropping queued tasks kept queueing more for {ROUNDS} \
                     rounds; the rest is dropped with the hub, outside it"
                );
                break;
            }
        }
    }
    HUB.with(|h| h.set(std::ptr::null()));
    // SAFETY: `p` came from `Box::into_raw` and the thread-local no longer points to it.
    drop(unsafe { Box::from_raw(p as *mut Hub) });
}

/// Runs the hub until nothing is left to run: no runnable greenlet, no pending timer and no
/// I/O being waited for (gevent's `gevent.wait()` with no objects). Greenlets parked on
/// something that nothing can set any more do not keep it waiting, as in gevent.
///
/// # Panics
///
/// When called from a greenlet or a hub callback (it would wait for itself).
pub fn wait_until_done() {
    let hub = hub();
    assert!(
        hub.current().is_root && !hub.in_callback.get(),
        "evergreen::hub::wait_until_done() waits for every greenlet: call it from the root \
         context, not from a greenlet or a hub callback"
    );
    if hub.until_done.replace(true) {
        return;
    }
    struct Reset<'a>(&'a Cell<bool>);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }
    let _reset = Reset(&hub.until_done);
    if hub.park(None, "wait_until_done") == Wake::Interrupted {
        // A `Timeout` of the root around the wait.
        hub.deliver_interrupt();
    }
}

/// Switches this thread's hub to the virtual clock (see the [module docs](self)). Returns
/// `false` if timers are already pending (switching then would reorder them).
pub fn use_virtual_clock() -> bool {
    let hub = hub();
    if hub.virtual_clock.get().is_some() {
        return true;
    }
    if !hub.timers.borrow().is_empty() {
        return false;
    }
    hub.virtual_clock.set(Some(Instant::now()));
    true
}

/// The hub's current time: the real monotonic clock, or the virtual clock if enabled.
pub fn now() -> Instant {
    hub().now()
}

/// The number of greenlets that are alive (started or scheduled, not yet dead) on this thread.
pub fn live_count() -> usize {
    if !exists() {
        return 0;
    }
    hub().live_len()
}

/// The number of timers pending on this thread's hub.
pub fn timer_count() -> usize {
    if !exists() {
        return 0;
    }
    hub().timers.borrow().len()
}

/// Runs `f` on the hub after `delay` (a libev timer watcher, as gevent's
/// `hub.loop.timer(...).start(f)`). `f` runs as a hub callback and must not block. Returns an
/// id for [`cancel_timer`].
///
/// A delay too large for `Instant` (such as `Duration::MAX`) is capped at about 100 years.
pub fn call_later(delay: Duration, f: impl FnOnce() + 'static) -> TimerId {
    let hub = hub();
    hub.add_timer(hub.far_deadline(delay), TimerAction::Callback(Box::new(f)))
}

/// Cancels a timer made by [`call_later`]; `true` if it had not fired. The callback is
/// dropped unrun, here.
pub fn cancel_timer(id: TimerId) -> bool {
    let action = hub().take_timer(id);
    action.is_some()
}

/// Runs `f` on the hub as a callback, after the tasks already queued (gevent's
/// `hub.loop.run_callback`). The callback must not block.
pub fn run_callback(f: impl FnOnce() + 'static) {
    hub().schedule_callback(Box::new(f));
}

impl Hub {
    /// The running greenlet's core.
    #[inline]
    pub(crate) fn current(&self) -> &Core {
        // SAFETY: `current` always points to the root (owned by `self.root`) or to a greenlet
        // that is running, hence registered in `live`, which owns it until it is reaped after
        // its coroutine returned, when `current` has already been switched back to the root.
        unsafe { self.current.get().as_ref() }
    }

    /// The root context's core.
    pub(crate) fn root_core(&self) -> &Core {
        self.root.core()
    }

    /// An owning handle to the running greenlet.
    pub(crate) fn current_gref(&self) -> GRef {
        GRef::from_core(self.current())
    }

    pub(crate) fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The instant `timeout` from now; `None` (no deadline: wait forever) if that is beyond
    /// what `Instant` can represent, e.g. for `Duration::MAX`.
    #[inline]
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.now().checked_add(timeout)
    }

    /// Like [`deadline`](Self::deadline), for timers that must exist: capped at ~100 years.
    pub(crate) fn far_deadline(&self, timeout: Duration) -> Instant {
        let cap = Duration::from_secs(100 * 365 * 24 * 3600);
        self.now() + timeout.min(cap)
    }

    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match self.virtual_clock.get() {
            Some(t) => t,
            None => Instant::now(),
        }
    }

    pub(crate) fn monitor(&self) -> Option<&crate::monitor::MonitorHandle> {
        self.monitor.get()
    }

    pub(crate) fn start_monitor(&self, threshold: Duration) {
        let _ = self
            .monitor
            .get_or_init(|| crate::monitor::MonitorHandle::start(threshold));
    }

    // ---- live registry ------------------------------------------------------------------

    /// Adds a greenlet to the live registry, which takes over `g`'s count.
    #[inline]
    pub(crate) fn register_live(&self, g: GRef) {
        // SAFETY: `g` owns a count, given up here (forgotten) to the registry.
        unsafe { self.register_live_adopted(g.core()) };
        std::mem::forget(g);
    }

    /// [`register_live`](Self::register_live) for a greenlet whose registry count was made
    /// with its block (`Builder::spawn`), without a handle for it.
    ///
    /// # Safety
    ///
    /// The caller gives the registry one count of `core` that it owns and that nothing else
    /// will release; `core` is not registered yet.
    #[inline(always)]
    pub(crate) unsafe fn register_live_adopted(&self, core: &Core) {
        debug_assert!(!core.in_live());
        // SAFETY: see `Registry`: no other reference to the vector exists now.
        let list = unsafe { &mut *self.live.0.get() };
        core.live_slot.set(list.len());
        list.push(core.ptr());
    }

    /// Removes a greenlet from the live registry and hands back the registry's count of it
    /// (`None` if it was not registered).
    #[inline]
    pub(crate) fn unregister_live(&self, core: &Core) -> Option<GRef> {
        if !core.in_live() {
            return None;
        }
        self.unlink_live(core);
        // SAFETY: the registry owned one count of every member; it is handed over.
        Some(unsafe { GRef::adopt(core.ptr()) })
    }

    /// Removes a registered greenlet from the live registry; the registry's count of it
    /// passes to the caller (who releases or hands it over). The last member moves into its
    /// slot (without a branch: when it is the last one itself, its slot is written and then
    /// cleared).
    #[inline(always)]
    fn unlink_live(&self, core: &Core) {
        debug_assert!(core.in_live());
        // SAFETY: see `Registry`: no other reference to the vector exists now.
        let list = unsafe { &mut *self.live.0.get() };
        let i = core.live_slot.get();
        let n = list.len() - 1;
        debug_assert!(i <= n && list[i] == core.ptr());
        // SAFETY: `core` is a member, so `i` is its slot and `n` the last one, both `< len`;
        // the last member is alive (the registry holds a count of it).
        unsafe {
            let last = *list.get_unchecked(n);
            *list.get_unchecked_mut(i) = last;
            last.as_ref().live_slot.set(i);
            list.set_len(n);
        }
        core.live_slot.set(crate::greenlet::NOT_LIVE);
    }

    /// How many greenlets are live.
    fn live_len(&self) -> usize {
        // SAFETY: see `Registry`.
        unsafe { (*self.live.0.get()).len() }
    }

    /// Every live greenlet, in id order (the order they were made).
    pub(crate) fn live_greenlets(&self) -> Vec<GRef> {
        // SAFETY: see `Registry`; members are alive (it owns a count of each), and making a
        // handle runs no other code.
        let mut v: Vec<GRef> = unsafe { &*self.live.0.get() }
            .iter()
            .map(|p| GRef::from_core(unsafe { p.as_ref() }))
            .collect();
        v.sort_by_key(|g| g.core().id);
        v
    }

    // ---- scheduling -----------------------------------------------------------------------

    /// Makes a parked or new greenlet runnable (FIFO). Idempotent; never switches.
    ///
    /// The greenlet must be registered (live) or the root.
    #[inline(always)]
    pub(crate) fn unpark(&self, core: &Core) {
        match core.state.get() {
            State::Parked | State::New | State::Later => {
                core.state.set(State::Runnable);
                if core.is_root {
                    // The root takes its turn in FIFO order too.
                    self.run_queue
                        .push(Task::WakeRoot(self.root_park_seq.get()));
                    return;
                }
                self.run_queue.push(Task::Resume(core.ptr()));
            }
            _ => {}
        }
    }

    /// Makes a greenlet that was just created (state `New`, registered, not the root)
    /// runnable: [`unpark`](Self::unpark) without its checks, for `spawn`.
    #[inline(always)]
    pub(crate) fn schedule_new(&self, core: &Core) {
        debug_assert!(core.state.get() == State::New && !core.is_root && core.in_live());
        core.state.set(State::Runnable);
        self.run_queue.push(Task::Resume(core.ptr()));
    }

    pub(crate) fn schedule_callback(&self, f: Box<dyn FnOnce()>) {
        self.run_queue.push(Task::Callback(f));
    }

    pub(crate) fn add_timer(&self, deadline: Instant, action: TimerAction) -> TimerId {
        self.timers.borrow_mut().insert(deadline, action)
    }

    /// Cancels a timer and hands its action back, for the caller to drop (it may hold the
    /// last reference to a finished greenlet, whose result's `Drop` is user code: it must not
    /// run inside a method of the hub).
    #[must_use = "the action is dropped by the caller, outside the hub"]
    pub(crate) fn take_timer(&self, id: TimerId) -> Option<TimerAction> {
        self.timers.borrow_mut().cancel(id)
    }

    /// Drops `v`, which may run user code (a finished greenlet's result, a timer's captured
    /// values), on behalf of the hub loop: as in a hub callback, blocking there fails with a
    /// `LoopExit` panic, and a panic is logged and contained instead of escaping from an
    /// unrelated blocking call of the root.
    #[cold]
    #[inline(never)]
    pub(crate) fn drop_on_hub<V>(&self, v: V) {
        let was = self.in_callback.replace(true);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(v)));
        self.in_callback.set(was);
        if let Err(p) = r {
            log::error!(
                "evergreen: a value dropped by the hub (a finished greenlet's result, or what a \
                 timer held) panicked in its Drop (ignored): {}",
                crate::greenlet::panic_message(&*p)
            );
        }
    }

    /// Releases a greenlet reference held by the hub: when it is the last one, the greenlet
    /// (and its result) is dropped as by [`drop_on_hub`](Self::drop_on_hub).
    #[inline(always)]
    pub(crate) fn release(&self, g: GRef) {
        if g.is_last() {
            self.drop_on_hub(g);
        } else {
            drop(g);
        }
    }

    fn pop_task(&self) -> Option<Task> {
        self.run_queue.pop()
    }

    // ---- parking --------------------------------------------------------------------------

    /// Parks the current greenlet until it is unparked, `deadline` passes, or an interrupt is
    /// pending. `what` names the wait for diagnostics.
    ///
    /// In the root context this runs the hub loop; if nothing can ever wake the root, it
    /// panics with [`LoopExit`].
    #[inline(always)]
    pub(crate) fn park(&self, deadline: Option<Instant>, what: &'static str) -> Wake {
        let core = self.current();
        if self.in_callback.get() {
            blocking_in_callback(what);
        }
        if core.interrupt_pending() {
            return Wake::Interrupted;
        }
        if core.unwinding.get() != 0 {
            // Forget an unwind that was caught by the greenlet's own code (see
            // `Core::is_unwinding`): checked at every park, while only this greenlet runs.
            core.is_unwinding();
        }
        let timer = deadline.map(|d| self.add_deadline(d));
        core.waiting_on.set(what);
        core.state.set(State::Parked);
        self.switch_out(core, what);
        let mut hit = false;
        if let Some(t) = timer {
            hit = core.deadline_hit.replace(false);
            if !hit {
                // The action holds a count of this (running) greenlet: never the last one.
                drop(self.take_timer(t));
            }
        }
        // An interrupt wins, unless it cannot be delivered now (the greenlet is unwinding) and
        // the deadline passed: then the deadline is reported, or the caller would wait again
        // on a deadline that has already passed, forever.
        if core.interrupt.get().is_some() && !(hit && core.is_unwinding()) {
            Wake::Interrupted
        } else if hit {
            Wake::Deadline
        } else {
            Wake::Woken
        }
    }

    /// Yields: the current greenlet goes to the back of the run queue (`sleep(ZERO)`).
    #[inline(always)]
    pub(crate) fn yield_now(&self) {
        let core = self.current();
        if self.in_callback.get() {
            blocking_in_callback("sleep(0)");
        }
        if core.interrupt_pending() {
            self.deliver_interrupt();
        }
        self.requeue_and_switch(core);
        if core.interrupt_pending() {
            self.deliver_interrupt();
        }
    }

    /// Yields like `sleep(0)`, but leaves a pending interrupt pending (for a call whose work
    /// is already done: the interrupt is delivered at the next blocking point, as when a
    /// completed wait wins over an interrupt).
    pub(crate) fn yield_keeping_interrupts(&self) {
        if self.in_callback.get() {
            return;
        }
        self.requeue_and_switch(self.current());
    }

    /// Puts the running greenlet (or the root) at the back of the run queue and switches out.
    #[inline(always)]
    fn requeue_and_switch(&self, core: &Core) {
        // Read once: the stores below could alias the core as far as the compiler knows.
        let is_root = core.is_root;
        if is_root {
            core.state.set(State::Parked);
            // `switch_out` makes this the root's park sequence number.
            let seq = self.root_park_seq.get() + 1;
            self.run_queue.push(Task::WakeRoot(seq));
        } else {
            core.state.set(State::Runnable);
            self.run_queue.push(Task::Resume(core.ptr()));
        }
        self.switch_out_as(core, is_root, "sleep(0)");
    }

    /// Delivers the pending interrupt of the current greenlet by unwinding its stack. Does
    /// nothing while this greenlet is already unwinding (an unwind escaping a `Drop` during
    /// unwinding would abort): the interrupt then stays pending for its next blocking point.
    pub(crate) fn deliver_interrupt(&self) {
        let core = self.current();
        if core.is_unwinding() {
            // Remember to wake it again once no unwind is in progress on this thread: its
            // "unwinding" mark may be stale (see `Core::is_unwinding`).
            if !core.is_root {
                let g = self.current_gref();
                let mut d = self.declined.borrow_mut();
                if !d.iter().any(|x| x.ptr_eq(&g)) {
                    d.push(g);
                }
            }
            return;
        }
        if let Some(i) = core.interrupt.take() {
            core.unwind_started();
            i.raise();
        }
    }

    /// Called by a libc hook that is about to report the current greenlet's pending interrupt
    /// (a kill or a scoped `Timeout`) as `ECANCELED`/`ETIMEDOUT`, or to cut a patched sleep
    /// short; returns how many times this interrupt was reported before.
    ///
    /// The hooks cannot unwind, so the interrupt is delivered only at the greenlet's next
    /// evergreen blocking point. Plain std code that ignores the error and calls the hooks
    /// again (a retry loop, `for c in listener.incoming()`) would then fail at once forever
    /// and spin, starving the hub. So the first report is immediate, and every later one of
    /// the same interrupt first parks the greenlet (uninterruptibly) for 1 ms, doubling up to
    /// 100 ms: such a loop keeps failing, but yields to the hub while it does, and the killer
    /// gets control back within its own timeout. The second report logs a warning naming the
    /// greenlet.
    pub(crate) fn hook_saw_interrupt(&self) -> u32 {
        let core = self.current();
        let n = core.hook_reports.get();
        core.hook_reports.set(n.saturating_add(1));
        if n == 1 {
            log::warn!(
                "evergreen: greenlet {} keeps making hooked calls with a {} pending; they fail \
                 with ECANCELED/ETIMEDOUT (or return from a sleep) and are slowed down, since \
                 the interrupt can only be delivered at an evergreen blocking point",
                core.describe(),
                match core.interrupt.get() {
                    Some(crate::greenlet::Interrupt::Timeout { .. }) => "Timeout",
                    _ => "kill",
                }
            );
        }
        if n >= 1 {
            let pause =
                Duration::from_millis(1u64 << (n - 1).min(7)).min(Duration::from_millis(100));
            self.park_uninterruptible(pause, "a hooked call, slowed down (interrupt pending)");
        }
        n
    }

    /// Parks the current greenlet for `d`, whatever interrupt is pending (for the hooks).
    pub(crate) fn park_uninterruptible(&self, d: Duration, what: &'static str) {
        let core = self.current();
        if self.in_callback.get() {
            blocking_in_callback(what);
        }
        let deadline = self.far_deadline(d);
        loop {
            let t = self.add_deadline(deadline);
            core.waiting_on.set(what);
            core.state.set(State::Parked);
            self.switch_out(core, what);
            if core.deadline_hit.replace(false) {
                return;
            }
            drop(self.take_timer(t));
            if self.now() >= deadline {
                return;
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn add_deadline(&self, d: Instant) -> TimerId {
        self.current().deadline_hit.set(false);
        self.add_timer(d, TimerAction::Deadline(self.current_gref()))
    }

    #[inline(always)]
    fn switch_out(&self, core: &Core, what: &'static str) {
        self.switch_out_as(core, core.is_root, what);
    }

    /// [`switch_out`](Self::switch_out) for a caller that has read `core.is_root` already.
    #[inline(always)]
    fn switch_out_as(&self, core: &Core, is_root: bool, what: &'static str) {
        if is_root {
            self.root_park_seq.set(self.root_park_seq.get() + 1);
            self.run_until_root_woken(what);
            core.state.set(State::Running);
        } else {
            match self.next_step(core) {
                Next::Me => return,
                Next::Other(next) => {
                    if self.run_nested(core, next) {
                        return;
                    }
                }
                Next::Hub => {}
            }
            let y = core.yielder.get();
            debug_assert!(!y.is_null(), "parking a greenlet that has not started");
            // SAFETY: `yielder` was set by the greenlet's own coroutine body, which is running
            // (we are on its stack), so the yielder it points to is alive.
            unsafe { (*y).suspend(()) };
            debug_assert_eq!(
                core.state.get(),
                State::Running,
                "greenlet #{} resumed in the wrong state while waiting on {what}",
                core.id
            );
        }
    }

    /// What the hub loop would do next, seen from `me`, the greenlet that is switching out
    /// (see [`run_nested`](Self::run_nested)): `me` itself is next (it is then taken off the
    /// run queue and running again, as if the hub had resumed it), another greenlet that can
    /// be resumed right here is next, or the hub loop must decide.
    #[inline(always)]
    fn next_step(&self, me: &Core) -> Next {
        let budget = self.budget.get();
        if budget == 0 {
            return Next::Hub;
        }
        let Some(word) = self.run_queue.peek_word() else {
            return Next::Hub;
        };
        if word == me.ptr().as_ptr() as usize {
            debug_assert_eq!(me.state.get(), State::Runnable);
            self.run_queue.skip();
            self.budget.set(budget - 1);
            me.state.set(State::Running);
            return Next::Me;
        }
        if word & TAG_MASK != 0 {
            return Next::Hub;
        }
        // SAFETY: an untagged word is the address of a registered greenlet's core (see
        // `resume_greenlet`).
        let next = unsafe { &*(word as *const Core) };
        if next.state.get() != State::Runnable || next.nesting.get() || self.monitor.get().is_some()
        {
            return Next::Hub;
        }
        // SAFETY: `word` is the non-null address of `next`.
        Next::Other(unsafe { CorePtr::new_unchecked(word as *mut Core) })
    }

    /// Runs, nested on the stack of `me` (the greenlet that is switching out), the tasks the
    /// hub loop would run next, for as long as they are greenlets that can be resumed from
    /// here ([`next_step`](Self::next_step) found one at the head of the run queue); returns
    /// `true` when `me` itself is next (taken off the run queue and running again), `false`
    /// when the hub loop must decide (`me` must then suspend to whoever resumed it).
    ///
    /// This is the hub loop's own step, taken without first switching to the hub: the same
    /// task is taken from the same queue at the same budget, so the order of events is exactly
    /// the hub's. It stops at anything the loop does differently from resuming a greenlet: a
    /// spent budget (timers and I/O are due), an empty queue, a callback, the root's turn, a
    /// greenlet that is not runnable (killed before it started), a greenlet that is itself
    /// waiting for a nested one to come back (an ancestor in this chain of nested resumes:
    /// the chain unwinds to it), or a monitor that watches each turn.
    ///
    /// So a spawn + join, a yield between two greenlets and a queue round trip take two
    /// switches instead of four, and no turn of the loop on the root's stack.
    #[inline(always)]
    fn run_nested(&self, me: &Core, first: CorePtr) -> bool {
        let me_ptr = me.ptr();
        let mut next = first;
        me.nesting.set(true);
        loop {
            // `next_step` saw it at the head of the queue and checked the budget.
            self.run_queue.skip();
            self.budget.set(self.budget.get() - 1);
            // SAFETY: `next_step` found it at the head of the run queue: a registered greenlet
            // (see `resume_greenlet`), runnable and not in this chain of nested resumes, so its
            // coroutine is suspended (or not started) and may be resumed from here.
            let core = unsafe { next.as_ref() };
            core.state.set(State::Running);
            self.current.set(next);
            // SAFETY: as in `resume_greenlet`, also for the coroutine being there.
            let co = unsafe { (*core.coroutine.get()).as_mut().unwrap_unchecked() };
            let done = co.resume(()).as_return().is_some();
            if core.unguarded() {
                core.check_canary();
            }
            if done {
                self.reap_as_hub(next);
            } else if core.state.get() == State::Running {
                debug_assert!(false, "greenlet #{} switched out while running", core.id);
                core.state.set(State::Parked);
            }
            self.current.set(me_ptr);
            match self.next_step(me) {
                Next::Other(p) => next = p,
                step => {
                    me.nesting.set(false);
                    return matches!(step, Next::Me);
                }
            }
        }
    }

    // ---- the loop -------------------------------------------------------------------------

    fn run_until_root_woken(&self, what: &'static str) {
        let _busy = Busy::enter(self);
        // SAFETY: the root core lives as long as the hub (owned by `self.root`).
        let root = unsafe { self.root_core.as_ref() };
        loop {
            // The budget is the hub's, not this call's: a root that keeps yielding returns
            // from here after every turn, and must not starve timers and I/O either.
            let budget = self.budget.get();
            if budget == 0 {
                self.budget.set(self.config.event_interval);
                self.poll_events(what);
                continue;
            }
            let Some(word) = self.run_queue.pop_word() else {
                self.budget.set(self.config.event_interval);
                self.poll_events(what);
                continue;
            };
            // Counted when taken (greenlets that run the next task nested, see
            // `run_nested`, count theirs the same way).
            self.budget.set(budget - 1);
            if word & TAG_MASK == 0 {
                // SAFETY: an untagged word is the non-null address of a core, pushed by
                // `RunQueue::push`.
                self.resume_greenlet(unsafe { CorePtr::new_unchecked(word as *mut Core) });
            } else {
                match self.run_queue.task_of(word) {
                    Task::WakeRoot(seq) => {
                        // The root's turn (a `sleep(0)` of the root, or a wake-up of it):
                        // stale markers from an earlier park carry an older sequence number.
                        if root_seq_matches(seq, self.root_park_seq.get())
                            && root.state.get() != State::Running
                        {
                            root.state.set(State::Runnable);
                            return;
                        }
                    }
                    t => self.run_task(t),
                }
            }
        }
    }

    #[inline]
    fn run_task(&self, task: Task) {
        match task {
            Task::Resume(g) => self.resume_greenlet(g),
            Task::Callback(f) => self.run_hub_callback(f),
            // Only `run_until_root_woken` acts on the root's markers; elsewhere (teardown)
            // the root is running and they are stale.
            Task::WakeRoot(_) => {}
            Task::NotifyLinks(g) => self.run_in_callback(move || crate::greenlet::notify_links(g)),
        }
    }

    pub(crate) fn run_hub_callback(&self, f: Box<dyn FnOnce()>) {
        self.run_in_callback(f);
    }

    /// Queues the notification of a finished greenlet's links and joiners.
    pub(crate) fn schedule_notify_links(&self, g: GRef) {
        self.run_queue.push(Task::NotifyLinks(g));
    }

    /// Runs `f` as a hub callback: flagged as one (it must not block), seen by the monitor,
    /// a panic logged and ignored.
    fn run_in_callback(&self, f: impl FnOnce()) {
        let was = self.in_callback.replace(true);
        if let Some(m) = self.monitor.get() {
            m.callback();
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if let Some(m) = self.monitor.get() {
            m.left();
        }
        self.in_callback.set(was);
        if let Err(p) = r {
            log::error!(
                "evergreen: a hub callback panicked (ignored): {}",
                crate::greenlet::panic_message(&*p)
            );
        }
    }

    #[inline(always)]
    fn resume_greenlet(&self, ptr: CorePtr) {
        // SAFETY: a greenlet on the run queue is registered in `live` (it is registered before
        // it is first made runnable, and unregistered only when reaped: after its coroutine
        // returned, when it was Running and so not queued, or here when it was killed before
        // it started while queued).
        let core = unsafe { ptr.as_ref() };
        if core.state.get() != State::Runnable {
            self.resume_not_runnable(ptr);
            return;
        }
        core.state.set(State::Running);
        self.current.set(ptr);
        if let Some(m) = self.monitor.get() {
            m.entered(core.id);
        }
        debug_assert!(core.has_coroutine());
        // SAFETY: the coroutine is only touched by the hub loop (here) and by `kill` of a
        // greenlet that has not started (never while it runs); no other reference exists. A
        // runnable greenlet has its coroutine: only a kill before it started (which makes it
        // dead), hub teardown (likewise) and reaping (after it returned) take it.
        let co = unsafe { (*core.coroutine.get()).as_mut().unwrap_unchecked() };
        let done = co.resume(()).as_return().is_some();
        if let Some(m) = self.monitor.get() {
            m.left();
        }
        self.current.set(self.root_core);
        if core.unguarded() {
            core.check_canary();
        }
        if done {
            self.reap(ptr);
        } else if core.state.get() == State::Running {
            // Suspended without saying why: only possible through a bug in evergreen.
            debug_assert!(false, "greenlet #{} switched out while running", core.id);
            core.state.set(State::Parked);
        }
    }

    /// A queued greenlet that is not runnable any more: one killed before it started.
    #[cold]
    #[inline(never)]
    fn resume_not_runnable(&self, ptr: CorePtr) {
        // SAFETY: as in `resume_greenlet`.
        let core = unsafe { ptr.as_ref() };
        if core.state.get() == State::Dead {
            // Killed before it started while queued: its entry owns the count the registry
            // held (see `kill_dyn`).
            debug_assert!(!core.in_live());
            // SAFETY: `kill_dyn` gave up the registry's count of it to this entry.
            self.release(unsafe { GRef::adopt(ptr) });
        } else {
            debug_assert!(false, "a queued greenlet in state {:?}", core.state.get());
        }
    }

    /// Frees a finished greenlet's stack and registry slot; the greenlet may be freed too, so
    /// nothing may use it after. (It takes a pointer, not a `&Core`: a reference argument
    /// would have to outlive the block.)
    ///
    /// The usual case is done here without a call (so, out of line in `reap_as_hub`, without
    /// saving registers): no monitor, a slab stack and room for it in the warm pool, a
    /// registered greenlet that a handle still holds (so it is not freed now). Anything else
    /// goes to [`reap_general`](Self::reap_general), before anything was changed.
    #[inline(always)]
    fn reap(&self, ptr: CorePtr) {
        if !self.reap_usual(ptr) {
            self.reap_general(ptr);
        }
    }

    /// [`reap`](Self::reap)'s usual case, done without a call; `false` (nothing done) in any
    /// other case. It runs no user code.
    #[inline(always)]
    fn reap_usual(&self, ptr: CorePtr) -> bool {
        // SAFETY: the registry still holds a count of it.
        let core = unsafe { ptr.as_ref() };
        // A greenlet that ran is registered: it was registered before it was first made
        // runnable, and only reaping (or a kill before it started, when it never runs)
        // unregisters it.
        debug_assert!(core.in_live());
        // Its coroutine was just resumed and returned (callers reap only then): still in its
        // slot.
        debug_assert!(core.has_coroutine());
        if self.monitor.get().is_none() && core.has_other_counts() && core.stack_from_slab() {
            if let Ok(mut pool) = self.stacks.try_borrow_mut() {
                if pool.has_warm_room() {
                    // SAFETY: see `resume_greenlet`; the coroutine has returned. A finished
                    // coroutine owns nothing (its stack is a view, see `Coro`): it is forgotten
                    // in place (the slot overwritten) rather than moved out and dropped.
                    unsafe { std::ptr::write(core.coroutine.get(), None) };
                    // SAFETY: the coroutine is gone, and only reaping takes a started
                    // greenlet's stack back (once: the slot is empty now).
                    pool.put_warm(unsafe { core.take_slab_stack() });
                    drop(pool);
                    // Registered (see above): its count passes to this call.
                    self.unlink_live(core);
                    // SAFETY: that count; a handle holds another (`has_other_counts`).
                    unsafe { core.release_count_not_last() };
                    return true;
                }
            }
        }
        false
    }

    /// [`reap`](Self::reap) in every case.
    #[cold]
    #[inline(never)]
    fn reap_general(&self, ptr: CorePtr) {
        // SAFETY: the registry still holds a count of it (released at the end).
        let core = unsafe { ptr.as_ref() };
        if core.name().is_some() {
            if let Some(m) = self.monitor.get() {
                m.forget(core.id);
            }
        }
        // SAFETY: see `resume_greenlet`; the coroutine has returned.
        let slot = unsafe { &mut *core.coroutine.get() };
        if let Some(co) = slot {
            debug_assert!(co.done());
            // A finished coroutine owns nothing (its stack is a view, see `Coro`): it is
            // forgotten in place rather than moved out and dropped, and its stack, which the
            // core owned, goes back to the pool.
            // SAFETY: `slot` is a valid, initialised slot; overwriting it forgets its value.
            unsafe { std::ptr::write(slot, None) };
            // SAFETY: the coroutine is gone, and only reaping takes a started greenlet's stack
            // back (once: the slot is empty now).
            self.stacks.borrow_mut().put(unsafe { core.take_stack() });
        }
        // Dropping the registry's handle may free the greenlet (and `core`), and drop its
        // result: user code, run as the hub.
        if let Some(g) = self.unregister_live(core) {
            self.release(g);
        }
    }

    /// [`reap`](Self::reap) for a greenlet that ended while resumed nested (see
    /// [`run_nested`](Self::run_nested)): out of line, so that the nested step inlined at
    /// every park stays small.
    #[inline(never)]
    fn reap_as_hub(&self, ptr: CorePtr) {
        // The usual case runs no user code, so who is current does not matter there.
        if self.reap_usual(ptr) {
            return;
        }
        // As in the hub loop: what reaping drops runs as the hub.
        self.current.set(self.root_core);
        self.reap_general(ptr);
    }

    /// Fires due timers, then polls I/O (blocking until the next timer if nothing is
    /// runnable), then fires due timers again. Detects `LoopExit`.
    fn poll_events(&self, what: &'static str) {
        if !self.declined.borrow().is_empty() && !std::thread::panicking() {
            // No unwind is in progress: greenlets whose interrupt was declined can take it.
            let gs = std::mem::take(&mut *self.declined.borrow_mut());
            for g in gs {
                let c = g.core();
                if c.state.get() == State::Parked && c.interrupt.get().is_some() {
                    self.unpark(c);
                }
                self.release(g);
            }
        }
        self.fire_due_timers();
        let runnable =
            !self.run_queue.is_empty() || self.root.core().state.get() == State::Runnable;
        if runnable {
            self.poll_io(Some(Duration::ZERO));
        } else {
            // Nothing runnable: block until I/O or the next timer.
            let next = self.timers.borrow_mut().next_deadline();
            let io_pending = self.reactor.borrow().has_waiters();
            if next.is_none() && !io_pending && self.idle_waiters.is_empty() {
                if self.until_done.get() {
                    // `wait_until_done`: nothing is left to run.
                    self.unpark(self.root.core());
                    return;
                }
                self.loop_exit(what);
            }
            if !self.idle_waiters.is_empty() {
                // Idle still means "after I/O was looked at" (gevent's idle watcher runs after
                // the loop polled), or a greenlet looping on idle() would starve I/O.
                self.poll_io(Some(Duration::ZERO));
                self.idle_waiters.wake_all_unit();
                return;
            }
            match (self.virtual_clock.get(), next) {
                (Some(_), Some(d)) => {
                    // Virtual time: see if I/O is ready right now, else jump to the deadline.
                    if self.poll_io(Some(Duration::ZERO)) == 0 {
                        self.virtual_clock.set(Some(d));
                    }
                }
                (_, next) => {
                    let timeout = next.map(|d| d.saturating_duration_since(self.now()));
                    if let Some(m) = self.monitor.get() {
                        m.idle();
                    }
                    self.poll_io(timeout);
                    if let Some(m) = self.monitor.get() {
                        m.left();
                    }
                }
            }
        }
        self.fire_due_timers();
    }

    fn poll_io(&self, timeout: Option<Duration>) -> usize {
        let (n, woken) = {
            let mut r = self.reactor.borrow_mut();
            let n = r.poll(timeout);
            (n, r.take_woken())
        };
        for g in &woken {
            // SAFETY: the reactor only holds greenlets parked in `wait_io`, which are alive;
            // their slots are cleared (by the wait's guard) before they can die.
            self.unpark(unsafe { g.as_ref() });
        }
        self.reactor.borrow_mut().give_back_woken(woken);
        n
    }

    fn fire_due_timers(&self) {
        if self.timers.borrow().is_empty() {
            return;
        }
        let now = self.now();
        loop {
            let a = self.timers.borrow_mut().pop_due(now);
            let Some(a) = a else { break };
            match a {
                TimerAction::Deadline(g) => {
                    if g.core().state.get() == State::Parked {
                        g.core().deadline_hit.set(true);
                        self.unpark(g.core());
                    }
                    self.release(g);
                }
                TimerAction::Interrupt(g, i) => {
                    let c = g.core();
                    if c.state.get() != State::Dead {
                        c.set_interrupt(i);
                        self.unpark(c);
                    }
                    self.release(g);
                }
                TimerAction::Start(g) => {
                    self.unpark(g.core());
                    self.release(g);
                }
                TimerAction::Callback(f) => self.run_hub_callback(f),
            }
        }
    }

    #[cold]
    fn loop_exit(&self, what: &'static str) -> ! {
        let msg = format!(
            "the root is waiting on {what}, and nothing can wake it: the run queue is empty, no \
             timer is pending and no I/O is awaited. {}",
            self.describe_parked()
        );
        // The root is running again (it is unwinding).
        self.root.core().state.set(State::Running);
        std::panic::panic_any(LoopExit(msg))
    }

    fn describe_parked(&self) -> String {
        let gs = self.live_greenlets();
        if gs.is_empty() {
            return "No greenlet is alive.".into();
        }
        let mut s = format!("{} greenlet(s) parked forever: ", gs.len());
        for (i, g) in gs.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            if i == 10 {
                let _ = write!(s, "... and {} more", gs.len() - 10);
                break;
            }
            s.push_str(&g.core().describe());
        }
        s
    }
}

#[cold]
fn blocking_in_callback(what: &'static str) -> ! {
    std::panic::panic_any(LoopExit(format!(
        "a blocking call ({what}) was made from a hub callback (a raw link or timer callback), \
         which runs on the hub and cannot block (gevent's BlockingSwitchOutError); use \
         `link` or `spawn` to run blocking code in a greenlet"
    )))
}

/// Whether the payload of a caught panic is a [`LoopExit`].
pub fn is_loop_exit(payload: &(dyn Any + Send)) -> bool {
    payload.downcast_ref::<LoopExit>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake core address (8-aligned, never dereferenced by the queue).
    fn fake(k: usize) -> CorePtr {
        CorePtr::new((8 * (k + 1)) as *mut Core).expect("non-null")
    }

    fn describe(t: Task) -> String {
        match t {
            Task::Resume(p) => format!("g{}", p.as_ptr() as usize / 8 - 1),
            Task::Callback(f) => {
                f();
                "cb".into()
            }
            Task::WakeRoot(s) => format!("root{s}"),
            // The fake count is given up, not released (the address is never dereferenced).
            Task::NotifyLinks(g) => format!("n{}", g.into_raw().as_ptr() as usize / 8 - 1),
        }
    }

    #[test]
    fn the_run_queue_is_fifo_across_kinds_wraparound_and_growth() {
        let q = RunQueue::new();
        let mut expected = std::collections::VecDeque::new();
        let mut k = 0;
        // Advance head past the start so that growth happens with a wrapped buffer.
        for round in 0..5 {
            for _ in 0..(50 + round * 40) {
                match k % 7 {
                    3 => {
                        q.push(Task::Callback(Box::new(|| {})));
                        expected.push_back("cb".to_string());
                    }
                    5 => {
                        q.push(Task::WakeRoot(k as u64));
                        expected.push_back(format!("root{k}"));
                    }
                    6 => {
                        // SAFETY: the fake count is never released: `describe` gives it up raw.
                        q.push(Task::NotifyLinks(unsafe { GRef::adopt(fake(k)) }));
                        expected.push_back(format!("n{k}"));
                    }
                    _ => {
                        q.push(Task::Resume(fake(k)));
                        expected.push_back(format!("g{k}"));
                    }
                }
                k += 1;
            }
            for _ in 0..30 {
                let t = q.pop().expect("queued");
                assert_eq!(Some(describe(t)), expected.pop_front());
            }
        }
        while let Some(t) = q.pop() {
            assert_eq!(Some(describe(t)), expected.pop_front());
        }
        assert!(expected.is_empty() && q.is_empty());
        assert!(q.ring().callbacks.is_empty());
    }

    #[test]
    fn root_wake_ups_compare_the_bits_the_queue_keeps() {
        assert!(root_seq_matches(7, 7));
        assert!(!root_seq_matches(6, 7));
        let big = u64::MAX - 3;
        let q = RunQueue::new();
        q.push(Task::WakeRoot(big));
        match q.pop() {
            Some(Task::WakeRoot(s)) => assert!(root_seq_matches(s, big)),
            _ => panic!("expected a root wake-up"),
        }
    }

    // ---- greenlets that run the next task nested (`run_nested`) -----------------------------

    type Log = std::rc::Rc<RefCell<Vec<String>>>;

    fn push(log: &Log, s: impl Into<String>) {
        log.borrow_mut().push(s.into());
    }

    /// Several greenlets taking turns: each turn nests the next greenlet on the stack of the
    /// one that yields, and the chain unwinds to an ancestor when its turn comes (through
    /// several levels); the order stays the run queue's FIFO order.
    #[test]
    fn nested_turns_keep_fifo_order_through_chains() {
        let log: Log = Default::default();
        let names = ["a", "b", "c", "d"];
        let gs: Vec<_> = names
            .iter()
            .map(|&n| {
                let log = log.clone();
                crate::spawn(move || {
                    for i in 0..150 {
                        push(&log, format!("{n}{i}"));
                        crate::sleep(Duration::ZERO);
                    }
                })
            })
            .collect();
        for g in &gs {
            g.join();
        }
        let expected: Vec<String> = (0..150)
            .flat_map(|i| names.iter().map(move |n| format!("{n}{i}")))
            .collect();
        assert_eq!(*log.borrow(), expected);
        assert_eq!(live_count(), 0);
    }

    /// Timers are fired exactly every `event_interval` tasks, also when the tasks are run
    /// nested by greenlets rather than by the hub loop: the budget is the hub loop's.
    #[test]
    fn nested_turns_keep_the_polling_points_of_the_hub_loop() {
        let log: Log = Default::default();
        let spinner = |name: &'static str| {
            let log = log.clone();
            crate::spawn(move || {
                for i in 0..100 {
                    push(&log, name);
                    if name == "a" && i == 40 {
                        // Task 80: after the first poll, before the second.
                        let l = log.clone();
                        call_later(Duration::ZERO, move || push(&l, "timer2"));
                    }
                    crate::sleep(Duration::ZERO);
                }
            })
        };
        let (a, b) = (spinner("a"), spinner("b"));
        let l = log.clone();
        call_later(Duration::ZERO, move || push(&l, "timer1"));
        a.join();
        b.join();
        let log = log.borrow();
        let at = |what: &str| log.iter().position(|s| s == what);
        let interval = hub().config.event_interval as usize;
        // Every task is one greenlet turn that logs once; the hub polls (and fires due timers)
        // after every `interval` tasks.
        assert_eq!(at("timer1"), Some(interval));
        assert_eq!(at("timer2"), Some(2 * interval + 1));
    }

    /// A greenlet resumed nested by a joiner kills that joiner (an ancestor in the chain):
    /// the joiner takes its turn when the nested greenlet is done, and unwinds at its next
    /// blocking point.
    #[test]
    fn a_nested_greenlet_can_kill_the_joiner_that_resumed_it() {
        let log: Log = Default::default();
        let l = log.clone();
        let joiner = crate::spawn(move || {
            let me = crate::getcurrent();
            let l2 = l.clone();
            let target = crate::spawn(move || {
                push(&l2, "target runs");
                me.kill_nowait();
                push(&l2, "target done");
                7
            });
            struct Cleanup(Log);
            impl Drop for Cleanup {
                fn drop(&mut self) {
                    push(&self.0, "joiner unwinds");
                }
            }
            let _c = Cleanup(l.clone());
            // The join was completed before the joiner ran again: it wins over the kill,
            // which is delivered at the next blocking point.
            let v = target.get();
            push(&l, format!("joiner got {v:?}"));
            crate::sleep(Duration::ZERO);
            push(&l, "not reached");
        });
        joiner.join();
        assert_eq!(joiner.exception(), Some(crate::Error::Killed));
        assert_eq!(
            *log.borrow(),
            [
                "target runs",
                "target done",
                "joiner got Ok(7)",
                "joiner unwinds"
            ]
        );
    }

    /// A long chain: every greenlet parks on one event and so resumes the next one nested;
    /// the chain is as deep as there are greenlets, and unwinds when the root's turn comes.
    #[test]
    fn thousands_of_nested_parks_unwind_cleanly() {
        let ev = std::rc::Rc::new(crate::Event::new());
        let n = 3000;
        let gs: Vec<_> = (0..n)
            .map(|i| {
                let ev = ev.clone();
                crate::spawn(move || {
                    ev.wait();
                    i
                })
            })
            .collect();
        crate::sleep(Duration::ZERO);
        assert_eq!(live_count(), n);
        ev.set();
        let sum: usize = gs
            .into_iter()
            .map(|g| g.into_result().expect("value"))
            .sum();
        assert_eq!(sum, n * (n - 1) / 2);
        assert_eq!(live_count(), 0);
    }
}
