//! Actors: the definition, the mailbox, `tell`/`ask`, the lifecycle, links, monitors and keyed
//! timers.
//!
//! # Mechanism
//!
//! An actor is a *cell* and, while it runs, one greenlet (an *incarnation*) pulling from the
//! cell's mailbox, as in the gevent sample: `loop { msg = inbox.get(); self.receive(msg) }`.
//! The cell holds two lanes:
//!
//! * the **user lane**, an inline `VecDeque` of the actor's own message type, bare (no boxing,
//!   no envelope: the tokens of asks and timer messages wait in a side lane, tagged with their
//!   message's place in the sequence), unbounded or bounded with a [`Policy`];
//! * the **system lane**, unbounded, for stop requests and exit/down signals. The loop reads
//!   it before every user message, so a full mailbox never delays supervision.
//!
//! When both lanes are empty the incarnation parks on a doorbell (a rendezvous [`Channel`]); a
//! tell pushes and, only if the actor is parked, rings it (a busy actor costs a tell one push
//! and one flag test). Until a message first wakes it from sleep, a parked actor has no
//! greenlet: see [lazy start](#hibernation-the-dispatcher-and-lazy-start).
//! A `Block` mailbox that is full parks its tellers on a FIFO [`Semaphore`]: each message the
//! actor takes hands one reserved slot to the longest-waiting teller, so a late teller cannot
//! take the place of one that waited (no barging).
//!
//! The cell outlives its incarnations: a supervisor restarts an actor by running a new
//! incarnation (a fresh actor value from its factory) on the same cell, so an [`ActorRef`]
//! stays valid across restarts and the queued messages are kept (the message that was being
//! handled when it failed is dropped; its asker gets an error). An actor exits *for good* when
//! it is not supervised and its incarnation ends, or when its supervisor decides not to
//! restart it; only then do links and monitors fire, queued asks fail with
//! [`Error::Dead`], leftovers become dead letters and its name is unregistered.
//!
//! # Asks
//!
//! [`ActorRef::ask`] builds the message around a [`Reply`] handle and waits on a reply slot
//! (reused from a per-thread cache, so a steady stream of asks allocates nothing). The slot is
//! also the envelope's pointer, which is how the loop knows it is handling an ask: a panic
//! then goes to the asker as [`Error::Panicked`] and the actor lives on (OTP would crash the
//! server and the caller); a panic while handling a tell crashes the actor. The asker is
//! registered with the callee while it waits, so a callee that exits for good fails the ask at
//! once with its reason, even if the reply handle was handed to another greenlet. A reply
//! that comes after the timeout is dropped (a dead letter), a reply handle dropped unanswered
//! fails the ask at once, and an actor asking itself gets [`Error::SelfAsk`].
//!
//! An ask also fails at once with [`Error::LoopExit`] when it would close a cycle of waits:
//! the callee is (transitively) waiting in an ask, or in a blocking tell, on the caller
//! (gen_server's `call` deadlock: `a` calls `b` while `b` calls `a`). The error names every
//! actor of the cycle. Only waits of actors' own greenlets count: a greenlet the callee
//! spawned may ask the caller freely.
//!
//! # Hibernation, the dispatcher and lazy start
//!
//! An actor built with [`Builder::hibernate`] (or one that calls [`Ctx::hibernate`]) does not
//! park when its mailbox is empty: it *hibernates*, as Erlang's `erlang:hibernate/3` and
//! gen_server's `hibernate` return. Its state goes into the cell and it gives its greenlet up
//! (a mailbox buffer over 256 bytes is freed too). The next message, signal, stop request or
//! timer starts an *activation* that resumes the same incarnation, with the same state, from
//! the mailbox loop.
//!
//! * Activations run on the **dispatcher**: one greenlet that runs the ready actors'
//!   activations in turn, each until it hibernates again or ends, so waking (or spawning)
//!   100,000 hibernating actors takes one greenlet and one stack, not one each, and a message
//!   between two hibernating actors costs no switch. It yields to the other greenlets every
//!   64 activations, and ends when no actor is ready (after one yield, so that a stream of
//!   asks does not make a greenlet per ask).
//! * A handler (or hook) that blocks keeps the dispatcher's greenlet: the greenlet becomes
//!   that actor's own, for the rest of its activation, and a new dispatcher takes the ready
//!   actors. (A hub callback, queued once per stretch of dispatching while other actors are
//!   ready, sees that the dispatcher is suspended inside an activation.) Killing, or waiting
//!   for, an actor that runs on the dispatcher hands the greenlet over first, so a kill
//!   unwinds that actor only. Such a greenlet is named `actor dispatcher` in the runtime's
//!   dumps, not after the actor.
//! * Everything else is unchanged: the incarnation, its links, monitors, `trap_exit`, timers,
//!   registration, counters and supervisor; `stop` runs `stopped` (the activation handles the
//!   stop request); [`ActorRef::kill`] of a hibernated actor has no greenlet to unwind: its
//!   state is dropped and it exits with [`ExitReason::Killed`] at once.
//! * A hibernated actor that nobody references is kept alive (by its cell), like a parked
//!   greenlet: its timers and links may still wake it. [`hibernating`] counts them.
//!
//! **The default: parked, started lazily.** Hibernation is off by default, as in Erlang: an
//! actor that handles a steady stream one message at a time (a hop of a ping-pong, an ask
//! round trip) is fastest parked on a greenlet of its own, one switch per wake-up, with no
//! state to move in and out of the cell (an activation costs about as much as a switch, and
//! a hop between two hibernating actors measured 449 instructions against 274 parked). But a
//! parked actor *starts lazily*: spawned, it is asleep; its first activation (`started` and
//! the messages queued by then) runs on the dispatcher, and when idle it sleeps there. Only a
//! user message (a tell, an ask, a timer message) that wakes it from sleep gives it a greenlet
//! of its own, where it parks from then on. A stop request, an exit or a down signal is
//! handled on the dispatcher. So an actor spawned, told one message and stopped never takes a
//! greenlet or a stack (spawning 100,000 parked actors used to touch a fresh stack each: page
//! faults were most of the cost), and an idle actor that was never woken again holds no stack
//! (a few hundred bytes, not a stack page). Supervisors start eagerly, on their own greenlet.
//! The tradeoff: until its second wake-up, a parked actor behaves as a hibernating one
//! ([`Stats::hibernated`] is `true`, [`hibernating`] counts it).
//!
//! Hibernate ([`Builder::hibernate`], [`set_hibernate_default`]) for many mostly idle actors
//! that each wake now and then: each wake-up then costs an activation on the dispatcher
//! instead of a switch, and no idle actor ever holds a stack.
//!
//! # Differences from Erlang/OTP (gen_server) and Akka
//!
//! * Links and monitors see an actor's *final* exit, not each restart: the reference is stable
//!   across restarts (as Akka's `ActorRef`; an Erlang restart makes a new pid).
//! * The `stopped` hook (OTP's `terminate/2`, Akka's `postStop`) runs on every exit except a
//!   kill, also when an exit signal from a link ends the actor (OTP skips `terminate` there
//!   unless the process traps exits).
//! * `ask` waits without a limit (`gen_server:call` defaults to 5 s); `ask_timeout` takes one.
//! * Exit and down signals are delivered to [`Actor::handle_signal`], not as mailbox messages,
//!   because the mailbox is typed.
//! * Timer messages bypass the mailbox bound (they cannot block in a timer callback), and an
//!   interval timer does not queue a new tick while its previous one is still queued.
//! * A hibernated actor resumes at its mailbox loop (Erlang's resumes at a function given to
//!   `hibernate/3`), and [`Ctx::hibernate`] waits for the mailbox to be empty.
//! * [`Ctx::spawn_linked`] links one way: the greenlet dies with the incarnation, but its own
//!   failure does not end the actor (Erlang's `spawn_link` links both ways).

use std::any::Any;
use std::cell::{Cell as StdCell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use evergreen::timer::TimerId;
use evergreen::{Channel, Event, Greenlet, Semaphore};

use crate::dead_letters::{self, Reason as DlReason};
use crate::error::{is_kill, panic_message, Error, ExitReason};
use crate::supervisor::{self, Supervisor};

/// An actor: state plus a handler for one message type, run one message at a time.
///
/// ```
/// use evergreen_actors::{spawn, Actor, Ctx, Reply};
///
/// struct Counter(u64);
/// enum Msg { Add(u64), Get(Reply<u64>) }
///
/// impl Actor for Counter {
///     type Msg = Msg;
///     fn handle(&mut self, msg: Msg, _ctx: &mut Ctx<Self>) {
///         match msg {
///             Msg::Add(n) => self.0 += n,
///             Msg::Get(r) => r.send(self.0),
///         }
///     }
/// }
///
/// let c = spawn(Counter(0));
/// c.tell(Msg::Add(2)).unwrap();
/// assert_eq!(c.ask(Msg::Get), Ok(2));
/// c.stop();
/// c.join().unwrap();
/// ```
pub trait Actor: Sized + 'static {
    /// The one message type of its mailbox.
    type Msg: 'static;

    /// Runs first in each incarnation, before any message (OTP's `init/1`, Akka's
    /// `preStart`). An error (or a panic) ends the incarnation with
    /// [`ExitReason::StartFailed`]; `stopped` is then not called.
    fn started(&mut self, ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        let _ = ctx;
        Ok(())
    }

    /// Handles one message (OTP's `handle_call`/`handle_cast`, the sample's `receive`).
    /// It may block (the actor's greenlet parks; others run).
    fn handle(&mut self, msg: Self::Msg, ctx: &mut Ctx<Self>);

    /// Handles an exit signal from a link (only while trapping exits, see
    /// [`Ctx::trap_exit`]) or a down signal from a monitor. The default ignores them.
    fn handle_signal(&mut self, signal: Signal, ctx: &mut Ctx<Self>) {
        let _ = (signal, ctx);
    }

    /// Runs when an incarnation ends, with the reason (OTP's `terminate/2`), except when it
    /// was killed or failed to start.
    fn stopped(&mut self, reason: &ExitReason, ctx: &mut Ctx<Self>) {
        let _ = (reason, ctx);
    }
}

/// A signal from a link or monitor, given to [`Actor::handle_signal`].
#[derive(Clone, Debug)]
pub enum Signal {
    /// A linked actor exited for good (delivered only while trapping exits; Erlang's
    /// `{'EXIT', Pid, Reason}`).
    Exit {
        /// The actor that exited.
        from: AnyRef,
        /// Its exit reason.
        reason: ExitReason,
    },
    /// A monitored actor exited for good (Erlang's `{'DOWN', Ref, process, Pid, Reason}`).
    Down {
        /// The monitor that fired.
        monitor: MonitorId,
        /// The actor that exited.
        from: AnyRef,
        /// Its exit reason.
        reason: ExitReason,
    },
}

/// Identifies a monitor ([`Ctx::monitor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MonitorId(u64);

/// What a bounded mailbox does with a tell when it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The teller blocks (FIFO) until there is room; `try_tell` fails with `Full`.
    Block,
    /// The tell fails at once with [`Error::Full`], handing the message back.
    Fail,
    /// The new message is dropped (a dead letter); the tell succeeds.
    DropNewest,
    /// The oldest queued message is dropped (a dead letter; an ask fails with `Full`) to make
    /// room; the tell succeeds.
    DropOldest,
}

/// A mailbox's shape: unbounded, or bounded with a [`Policy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    cap: usize,
    policy: Policy,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox::unbounded()
    }
}

impl Mailbox {
    /// No bound: a tell never blocks and never fails while the actor lives.
    pub const fn unbounded() -> Mailbox {
        Mailbox {
            cap: usize::MAX,
            policy: Policy::Block,
        }
    }

    /// At most `capacity` queued user messages; when full, `policy` applies. A capacity of
    /// 0 is rejected when the actor is spawned.
    pub const fn bounded(capacity: usize, policy: Policy) -> Mailbox {
        Mailbox {
            cap: capacity,
            policy,
        }
    }

    /// The bound, if any.
    pub fn capacity(&self) -> Option<usize> {
        (self.cap != usize::MAX).then_some(self.cap)
    }

    /// The policy applied when full.
    pub fn policy(&self) -> Policy {
        self.policy
    }
}

/// Per-actor counters ([`ActorRef::stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Messages handled (user messages, asks and timer messages), over all incarnations.
    pub handled: u64,
    /// User messages queued now.
    pub mailbox_len: usize,
    /// The most user messages ever queued at once.
    pub high_water: usize,
    /// How many times a supervisor restarted it.
    pub restarts: u32,
    /// Time spent in `handle`, if measured ([`Builder::measure_time`]); measuring costs two
    /// clock reads per message, more than a message itself, so it is off by default.
    pub handler_time: Option<Duration>,
    /// `running`, `restarting` (awaiting its supervisor) or `dead`.
    pub status: &'static str,
    /// Whether it is asleep now, without a greenlet: hibernated (see [`Builder::hibernate`]),
    /// or a parked actor not yet woken from its first sleep (see
    /// [lazy start](self#hibernation-the-dispatcher-and-lazy-start)).
    pub hibernated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    Restarting,
    Dead,
}

/// A message and, for asks and timer messages, its token.
pub(crate) struct Envelope<M> {
    msg: M,
    token: Option<Rc<dyn Token>>,
    /// Whether the token is an ask's (known where it is made: the loop then needs no call
    /// through the token to tell an ask from a timer).
    ask: bool,
}

/// What the loop needs to know about an envelope's token (an ask's reply slot, or a timer).
pub(crate) trait Token {
    fn is_ask(&self) -> bool;
    /// A timer message: whether its timer is still armed (not cancelled or replaced).
    fn live(&self) -> bool {
        true
    }
    /// A timer message was taken from the mailbox.
    fn taken(&self) {}
    /// An ask: completes it with `e` if it is still pending (`force`: also over the error a
    /// dropped reply handle left, which the asker has not read yet).
    fn fail(&self, e: Error, force: bool) {
        let _ = (e, force);
    }
    /// An ask whose handler returned without answering or dropping the reply (it handed the
    /// handle on): registers it with the callee, so that the callee's final exit fails it.
    fn still_pending(&self) -> bool {
        false
    }
    /// Marks it as registered with the callee.
    fn set_registered(&self) {}
}

/// A system-lane entry.
pub(crate) enum Sys {
    Stop(ExitReason),
    Exit(AnyRef, ExitReason),
    Down(MonitorId, AnyRef, ExitReason),
}

/// Runs when an actor exits for good (a supervisor finalizes its children).
pub(crate) type FinalHook = Box<dyn FnOnce(&ExitReason)>;

/// Bookkeeping most actors never use, allocated on first use.
#[derive(Default)]
pub(crate) struct Extras {
    links: Vec<Weak<dyn CellDyn>>,
    monitors: Vec<(MonitorId, Weak<dyn CellDyn>)>,
    exited: Option<Rc<Event>>,
    /// The last incarnation's exit reason (final once the status is `Dead`).
    reason: Option<ExitReason>,
    registered: Option<String>,
    timers: Vec<TimerEntry>,
    pub(crate) parent: Option<Weak<Cell<Supervisor>>>,
    pub(crate) on_final: Vec<FinalHook>,
    pub(crate) tree: Option<Rc<supervisor::Shared>>,
    trap_exit: bool,
    /// Asks waiting on this actor (failed at once if it exits for good).
    asks: Vec<Rc<dyn Token>>,
    /// Time spent in `handle`, when measured.
    busy_ns: u64,
    /// Greenlets spawned with [`Ctx::spawn_linked`]: killed when the incarnation ends.
    linked: Vec<evergreen::GreenletRef>,
    /// The system lane but an inline first stop request with no text ([`Base::sys_first`]).
    sys: VecDeque<Sys>,
}

struct TimerEntry {
    key: String,
    token: Rc<TimerToken>,
    id: TimerId,
}

/// Where tellers of a full `Block` mailbox wait: the semaphore that hands them slots, and
/// their greenlet ids in the same FIFO order (for the blocked-tell cycle check).
struct Space {
    sem: Semaphore,
    waiting: RefCell<VecDeque<u64>>,
}

/// Hands a roused (or newly spawned) hibernating actor to the dispatcher, starting one if
/// there is none.
fn schedule_activation(cell: Rc<dyn CellDyn>) {
    READY.with(|r| r.borrow_mut().push_back(cell));
    if DISPATCHER_ID.with(StdCell::get) == 0 {
        start_dispatcher();
    } else if DISPATCHING.with(StdCell::get) && !WATCH.with(StdCell::get) {
        // The dispatcher is in a handler (this one, or one that blocked): if it blocks, or
        // has blocked, the ready actor must not wait for it.
        arm_watch();
    }
}

/// Starts a dispatcher greenlet for the actors in `READY`.
#[cold]
#[inline(never)]
fn start_dispatcher() {
    let g = evergreen::Builder::new()
        .name("actor dispatcher")
        .create(dispatch);
    DISPATCHER_ID.with(|d| d.set(g.id()));
    DISPATCHER.with(|d| *d.borrow_mut() = Some(g.clone()));
    g.start();
}

/// Queues the watch: a hub callback, run only once the running greenlet switches away. If the
/// dispatcher is then still inside an actor's run, that actor blocked in a handler (or hook):
/// the dispatcher's greenlet becomes that actor's own, and a new dispatcher takes the ready
/// actors. One callback per stretch of dispatching, not one per message.
#[cold]
#[inline(never)]
fn arm_watch() {
    WATCH.with(|w| w.set(true));
    evergreen::hub::run_callback(|| {
        let _ = WATCH.try_with(|w| w.set(false));
        if DISPATCHING.try_with(StdCell::get).unwrap_or(false) {
            hand_over();
        }
    });
}

/// The dispatcher's greenlet stays with the actor it is running (blocked in a handler, or
/// wanted as a greenlet: to wait for it or kill it); a new dispatcher takes the ready actors.
#[cold]
#[inline(never)]
fn hand_over() {
    DISPATCHING.with(|d| d.set(false));
    DISPATCHER_ID.with(|d| d.set(0));
    let old = DISPATCHER.with(|d| d.borrow_mut().take());
    drop(old);
    if READY.with(|r| !r.borrow().is_empty()) {
        start_dispatcher();
    }
}

/// Whether greenlet `gid` is the dispatcher.
fn is_dispatcher(gid: u64) -> bool {
    gid != 0 && DISPATCHER_ID.with(StdCell::get) == gid
}

/// A hibernating actor keeps an empty mailbox buffer of at most this many bytes.
const KEEP_BYTES: usize = 256;

/// How many activations the dispatcher runs before it yields to the other greenlets.
const DISPATCH_BUDGET: u32 = 64;

/// The dispatcher's body: runs the ready actors' activations in turn, each until it
/// hibernates again or ends, on this one greenlet; yields every [`DISPATCH_BUDGET`]
/// activations; ends when none is ready (after one yield, so that an actor woken again at
/// once, as by a stream of asks, does not cost a new greenlet each time).
fn dispatch() {
    let me = evergreen::getcurrent_id();
    let Some(g) = DISPATCHER.with(|d| d.borrow().clone()) else {
        return;
    };
    // Resigns however the dispatcher ends (also if it is killed while yielding).
    struct Resign(u64);
    impl Drop for Resign {
        fn drop(&mut self) {
            if is_dispatcher(self.0) {
                let _ = DISPATCHING.try_with(|d| d.set(false));
                let _ = DISPATCHER_ID.try_with(|d| d.set(0));
                let _ = DISPATCHER.try_with(|d| d.borrow_mut().take());
                if READY.try_with(|r| !r.borrow().is_empty()).unwrap_or(false) {
                    start_dispatcher();
                }
            }
        }
    }
    let _resign = Resign(me);
    let mut budget = DISPATCH_BUDGET;
    let mut lingered = false;
    loop {
        let (next, more) = READY.with(|r| {
            let mut r = r.borrow_mut();
            let next = r.pop_front();
            (next, !r.is_empty())
        });
        let Some(cell) = next else {
            if lingered {
                return;
            }
            lingered = true;
            evergreen::sleep(Duration::ZERO);
            continue;
        };
        lingered = false;
        if more && !WATCH.with(StdCell::get) {
            arm_watch();
        }
        DISPATCHING.with(|d| d.set(true));
        cell.run_here(&g);
        if !is_dispatcher(me) {
            // Handed over: this greenlet was that actor's; the new dispatcher has the rest.
            return;
        }
        DISPATCHING.with(|d| d.set(false));
        budget -= 1;
        if budget == 0 {
            budget = DISPATCH_BUDGET;
            evergreen::sleep(Duration::ZERO);
        }
    }
}

/// How many actors of this thread are asleep now, without a greenlet (hibernated, or parked
/// actors not yet woken from their first sleep; asleep, or woken and waiting for the
/// dispatcher): with the runtime's `live_count`, what a leak check counts.
pub fn hibernating() -> usize {
    HIBERNATING.with(StdCell::get)
}

/// Sets whether actors spawned on this thread from now on hibernate when idle, unless their
/// [`Builder::hibernate`] says otherwise (default: off, as Erlang processes). Supervisors
/// never hibernate.
pub fn set_hibernate_default(on: bool) {
    HIBERNATE_DEFAULT.with(|h| h.set(on));
}

/// What greenlet `g` waits for, if it waits in an ask or a blocking tell: the greenlet of
/// the actor it waits on, and whether it asks.
fn waits_for(g: u64) -> Option<(u64, bool)> {
    let asked = ASKING.with(|a| {
        a.borrow()
            .iter()
            .rev()
            .find(|e| e.0 == g)
            .map(|e| e.1.base().gid.get())
    });
    if let Some(t) = asked {
        return Some((t, true));
    }
    BLOCKED.with(|bl| bl.borrow().iter().find(|e| e.0 == g).map(|e| (e.1, false)))
}

/// The label of the actor whose greenlet is `g`, as the waits on it know it.
fn label_of_gid(g: u64) -> Option<String> {
    let l = ASKING.with(|a| {
        a.borrow()
            .iter()
            .find(|e| e.1.base().gid.get() == g)
            .map(|e| e.1.base().label())
    });
    l.or_else(|| BLOCKED.with(|bl| bl.borrow().iter().find(|e| e.1 == g).map(|e| e.2.clone())))
}

/// If the caller (greenlet `me`) waiting on `target` would close a cycle of waits (the
/// target waits, in an ask or a blocking tell, on an actor that waits ... on the caller),
/// the caller's label and the cycle in words: "'a' asks 'b', 'b' asks 'a'". `how`: "asks"
/// or "tells".
fn wait_cycle(target: &Base, me: u64, how: &str) -> Option<(String, String)> {
    let n = ASKING.with(|a| a.borrow().len()) + BLOCKED.with(|b| b.borrow().len());
    if n == 0 {
        return None;
    }
    // First by ids only (no allocation); words only for a cycle.
    let mut g = target.gid.get();
    let mut hops = Vec::new();
    for _ in 0..=n {
        if g == 0 {
            return None;
        }
        let (next, asks) = waits_for(g)?;
        hops.push((g, next, asks));
        if next == me {
            let mine = label_of_gid(me).unwrap_or_else(|| format!("greenlet {me}"));
            let mut words = vec![format!("{mine} {how} {}", target.label())];
            for (from, to, asks) in hops {
                let from = if from == target.gid.get() {
                    target.label()
                } else {
                    label_of_gid(from).unwrap_or_else(|| format!("greenlet {from}"))
                };
                let to = if to == me {
                    mine.clone()
                } else {
                    label_of_gid(to).unwrap_or_else(|| format!("greenlet {to}"))
                };
                words.push(format!(
                    "{from} {} {to}",
                    if asks { "asks" } else { "tells" }
                ));
            }
            return Some((mine, words.join(", ")));
        }
        g = next;
    }
    None
}

/// Forgets that greenlet `g` is blocked telling a full mailbox.
fn unblocked(g: u64) {
    let _ = BLOCKED.try_with(|bl| {
        let mut bl = bl.borrow_mut();
        if let Some(p) = bl.iter().position(|e| e.0 == g) {
            bl.swap_remove(p);
        }
    });
}

/// The untyped part of a cell.
pub(crate) struct Base {
    pub(crate) id: u64,
    /// Boxed once more: 8 bytes in the cell, not 16 (most actors have no name).
    #[allow(clippy::box_collection)] // the thin pointer is the point
    name: Option<Box<String>>,
    status: StdCell<Status>,
    /// Where the incarnation is: running a message (`RUN`), parked on `wake` (`PARKED`),
    /// hibernated without a greenlet (`ASLEEP`), or hibernated with an activation on its way
    /// (`ROUSED`).
    park: StdCell<u8>,
    /// Whether the actor hibernates whenever its mailbox is empty ([`Builder::hibernate`]).
    hibernate: bool,
    /// Whether a parked (not hibernating) actor starts lazily: born asleep, it runs on the
    /// dispatcher, without a greenlet, until a user message wakes it from sleep; it then gets
    /// a greenlet of its own and parks from then on. (Supervisors start eagerly.)
    lazy: bool,
    /// Whether the hibernated incarnation has not started yet (`started` is still to run):
    /// kept here, among the other flags, rather than beside the state in [`Asleep`].
    starting: StdCell<bool>,
    /// Whether the current activation started on the dispatcher: there it cannot park, and
    /// hibernates when idle instead.
    on_dispatcher: StdCell<bool>,
    /// While asleep, the cell keeps itself alive (no greenlet holds it): a timer or a link
    /// may still wake it, as they would a parked greenlet.
    keep: StdCell<Option<Rc<dyn CellDyn>>>,
    /// The doorbell the idle incarnation waits on: rung (`put_nowait`) only while the actor
    /// waits, so the item goes straight to it. A rendezvous [`Channel`]: its `put_nowait` is
    /// one hand-over to the waiting getter (a `Queue`'s also tests for shutdown, counts
    /// unfinished items and peekers: 35 instructions more per wake-up), and its `get`
    /// inlines all the way down to the park, as a `Queue`'s: a greenlet that returns from the
    /// function it parked in pays a return-address misprediction on every wake-up (see the
    /// runtime's greenlet docs).
    ///
    /// Made on the first park: an actor that hibernates whenever idle never parks.
    wake: OnceCell<Box<Channel<()>>>,
    /// How many system-lane entries (stop requests, exit and down signals) wait, in
    /// `sys_first` and [`Extras::sys`]: the loop tests only this count before each message.
    sys_len: StdCell<u32>,
    /// The system lane's first entry if it is a stop request with a reason that carries no
    /// text (`Normal` or `Shutdown`), kept inline as one byte ([`STOP_NONE`], [`STOP_NORMAL`],
    /// [`STOP_SHUTDOWN`]): most actors only ever get that one (exit and down signals come to
    /// actors with links or monitors, which have [`Extras`]), and it then costs no allocation
    /// and no room for a whole [`ExitReason`]. The other entries wait in [`Extras::sys`].
    sys_first: StdCell<u8>,
    policy: Policy,
    /// The mailbox's capacity less the slots handed to blocked tellers that have not pushed
    /// yet (Block policy): a message is queued at once while the mailbox holds fewer (one
    /// test per tell, not an addition and a test).
    room: StdCell<usize>,
    space: Option<Box<Space>>,
    gid: StdCell<u64>,
    incarnation: StdCell<u32>,
    greenlet: RefCell<Option<Greenlet<()>>>,
    handled: StdCell<u64>,
    hwm: StdCell<usize>,
    pub(crate) restarts: StdCell<u32>,
    measure: bool,
    pub(crate) extras: RefCell<Option<Box<Extras>>>,
}

/// `Base::sys_first`: no inline stop request.
const STOP_NONE: u8 = 0;
/// `Base::sys_first`: a stop request with [`ExitReason::Normal`].
const STOP_NORMAL: u8 = 1;
/// `Base::sys_first`: a stop request with [`ExitReason::Shutdown`].
const STOP_SHUTDOWN: u8 = 2;

/// The inline stop request `code` (`Base::sys_first`) as a system-lane entry.
#[inline(always)]
fn inline_stop(code: u8) -> Option<Sys> {
    match code {
        STOP_NONE => None,
        STOP_NORMAL => Some(Sys::Stop(ExitReason::Normal)),
        _ => Some(Sys::Stop(ExitReason::Shutdown)),
    }
}

/// `Base::park`: handling messages (or blocked in a handler).
const RUN: u8 = 0;
/// `Base::park`: parked on its doorbell, mailbox empty.
const PARKED: u8 = 1;
/// `Base::park`: hibernated, no greenlet.
const ASLEEP: u8 = 2;
/// `Base::park`: hibernated, its activation scheduled (queued for the dispatcher, or its own
/// greenlet made and not yet running).
const ROUSED: u8 = 3;

thread_local! {
    /// Roused hibernated actors waiting for the dispatcher, in order.
    static READY: RefCell<VecDeque<Rc<dyn CellDyn>>> = const { RefCell::new(VecDeque::new()) };
    /// The dispatcher greenlet, if there is one.
    static DISPATCHER: RefCell<Option<Greenlet<()>>> = const { RefCell::new(None) };
    /// The dispatcher's greenlet id (0: there is none).
    static DISPATCHER_ID: StdCell<u64> = const { StdCell::new(0) };
    /// Whether the dispatcher is inside an actor's activation.
    static DISPATCHING: StdCell<bool> = const { StdCell::new(false) };
    /// Whether the dispatcher's watch callback is queued.
    static WATCH: StdCell<bool> = const { StdCell::new(false) };
    /// Hibernated incarnations (asleep or roused, not yet running again).
    static HIBERNATING: StdCell<usize> = const { StdCell::new(0) };
    /// Whether actors spawned without an explicit [`Builder::hibernate`] hibernate.
    static HIBERNATE_DEFAULT: StdCell<bool> = const { StdCell::new(false) };
    static NEXT_ID: StdCell<u64> = const { StdCell::new(1) };
    static NEXT_MONITOR: StdCell<u64> = const { StdCell::new(1) };
    /// How many actors' greenlets run actor code now (not parked): while none does, the
    /// caller of an ask is not an actor and its wait cannot close a cycle, so it is not
    /// registered in `ASKING`.
    static RUNNING: StdCell<u32> = const { StdCell::new(0) };
    /// Greenlets of actors waiting in an ask: (asker gid, callee).
    static ASKING: RefCell<Vec<(u64, Rc<dyn CellDyn>)>> = const { RefCell::new(Vec::new()) };
    /// Greenlets blocked telling a full `Block` mailbox: (teller gid, target gid, target label).
    static BLOCKED: RefCell<Vec<(u64, u64, String)>> = const { RefCell::new(Vec::new()) };
}

impl Base {
    /// A blank base (id 0, unnamed, unbounded mailbox, not started): [`Cell::new`] fills it
    /// in where it lies, in the cell's `Rc` allocation.
    #[inline(always)]
    fn blank() -> Base {
        let mailbox = Mailbox::unbounded();
        Base {
            id: 0,
            name: None,
            status: StdCell::new(Status::Running),
            park: StdCell::new(RUN),
            hibernate: false,
            lazy: false,
            on_dispatcher: StdCell::new(false),
            starting: StdCell::new(false),
            keep: StdCell::new(None),
            wake: OnceCell::new(),
            sys_len: StdCell::new(0),
            sys_first: StdCell::new(STOP_NONE),
            policy: mailbox.policy,
            room: StdCell::new(mailbox.cap),
            space: None,
            gid: StdCell::new(0),
            incarnation: StdCell::new(0),
            greenlet: RefCell::new(None),
            handled: StdCell::new(0),
            hwm: StdCell::new(0),
            restarts: StdCell::new(0),
            measure: false,
            extras: RefCell::new(None),
        }
    }

    /// Fills in a [`blank`](Self::blank) base: a new id, and the options.
    #[inline(always)]
    fn fill(
        &mut self,
        name: Option<String>,
        mailbox: Mailbox,
        measure: bool,
        hibernate: bool,
        lazy: bool,
    ) {
        self.id = NEXT_ID.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        if let Some(name) = name {
            self.name = Some(Box::new(name));
        }
        self.hibernate = hibernate;
        self.lazy = lazy && !hibernate;
        self.policy = mailbox.policy;
        self.room.set(mailbox.cap);
        if mailbox.cap != usize::MAX && mailbox.policy == Policy::Block {
            self.space = Some(Box::new(Space {
                sem: Semaphore::new(0),
                waiting: RefCell::new(VecDeque::new()),
            }));
        }
        self.measure = measure;
    }

    /// The actor's name, or `#id`.
    pub(crate) fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("'{n}'"),
            None => format!("#{}", self.id),
        }
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref().map(String::as_str)
    }

    pub(crate) fn status(&self) -> Status {
        self.status.get()
    }

    pub(crate) fn set_status(&self, s: Status) {
        self.status.set(s)
    }

    pub(crate) fn incarnation(&self) -> u32 {
        self.incarnation.get()
    }

    pub(crate) fn with_extras<R>(&self, f: impl FnOnce(&mut Extras) -> R) -> R {
        let mut e = self.extras.borrow_mut();
        f(e.get_or_insert_with(Default::default))
    }

    fn peek_extras<R>(&self, f: impl FnOnce(Option<&Extras>) -> R) -> R {
        f(self.extras.borrow().as_deref())
    }

    pub(crate) fn final_reason(&self) -> Option<ExitReason> {
        if self.status.get() != Status::Dead {
            return None;
        }
        Some(
            self.peek_extras(|e| e.and_then(|e| e.reason.clone()))
                .unwrap_or(ExitReason::Normal),
        )
    }

    pub(crate) fn last_reason(&self) -> Option<ExitReason> {
        self.peek_extras(|e| e.and_then(|e| e.reason.clone()))
            .or_else(|| self.final_reason())
    }

    /// Records the last incarnation's exit reason. A `Normal` exit of an actor without
    /// bookkeeping allocates none: no recorded reason reads as `Normal`.
    #[inline]
    fn set_reason(&self, reason: &ExitReason) {
        if matches!(reason, ExitReason::Normal) && self.extras.borrow().is_none() {
            return;
        }
        self.record_reason(reason);
    }

    /// The rest of [`set_reason`](Self::set_reason): an exit that is not `Normal`, or an actor
    /// with bookkeeping.
    #[cold]
    #[inline(never)]
    fn record_reason(&self, reason: &ExitReason) {
        let mut e = self.extras.borrow_mut();
        match e.as_deref_mut() {
            Some(e) => e.reason = Some(reason.clone()),
            None if *reason == ExitReason::Normal => {}
            None => {
                e.get_or_insert_with(Default::default).reason = Some(reason.clone());
            }
        }
    }

    pub(crate) fn registered_name(&self) -> Option<String> {
        self.peek_extras(|e| e.and_then(|e| e.registered.clone()))
    }

    pub(crate) fn set_registered_name(&self, n: Option<String>) {
        self.with_extras(|e| e.registered = n);
    }

    pub(crate) fn tree(&self) -> Option<Rc<supervisor::Shared>> {
        self.peek_extras(|e| e.and_then(|e| e.tree.clone()))
    }

    /// Wakes the incarnation if it is idle; `user`: for a user message (not a system-lane
    /// entry).
    #[inline(always)]
    fn wake_up(&self, user: bool) {
        match self.park.get() {
            RUN | ROUSED => {}
            PARKED => {
                self.park.set(RUN);
                if let Some(w) = self.wake.get() {
                    let _ = w.put_nowait(());
                }
            }
            _ => self.rouse(user),
        }
    }

    /// Wakes a hibernated actor: its activation goes to the dispatcher, or, for a lazily
    /// started parked actor woken by a user message, runs on a greenlet of its own (where it
    /// parks from then on).
    #[cold]
    #[inline(never)]
    fn rouse(&self, user: bool) {
        self.park.set(ROUSED);
        if let Some(me) = self.keep.take() {
            if user && self.lazy {
                me.activate_own();
            } else {
                schedule_activation(me);
            }
        }
    }

    /// Whether the incarnation is hibernated (no greenlet; maybe an activation on its way).
    pub(crate) fn is_asleep(&self) -> bool {
        matches!(self.park.get(), ASLEEP | ROUSED) && self.greenlet.borrow().is_none()
    }

    pub(crate) fn push_sys(&self, s: Sys) {
        if self.status.get() == Status::Dead {
            return;
        }
        let code = match &s {
            Sys::Stop(ExitReason::Normal) => STOP_NORMAL,
            Sys::Stop(ExitReason::Shutdown) => STOP_SHUTDOWN,
            _ => STOP_NONE,
        };
        if code != STOP_NONE && self.sys_len.get() == 0 {
            self.sys_first.set(code);
            // A stop request without text owns nothing: forgetting it skips a call to its
            // drop glue (which would only test that).
            std::mem::forget(s);
        } else {
            self.with_extras(|e| e.sys.push_back(s));
        }
        self.sys_len.set(self.sys_len.get() + 1);
        self.wake_up(false);
    }

    /// The running incarnation's greenlet. If it runs on the dispatcher, the dispatcher's
    /// greenlet becomes its own first (a new dispatcher takes the others): whoever waits for
    /// it, or kills it, then deals with this actor only.
    pub(crate) fn greenlet(&self) -> Option<Greenlet<()>> {
        let g = self.greenlet.borrow().clone()?;
        if is_dispatcher(g.id()) {
            hand_over();
        }
        Some(g)
    }

    fn is_current(&self) -> bool {
        let gid = self.gid.get();
        gid != 0 && evergreen::getcurrent_id() == gid
    }

    pub(crate) fn stats(&self, mailbox_len: usize) -> Stats {
        Stats {
            handled: self.handled.get(),
            mailbox_len,
            high_water: self.hwm.get(),
            restarts: self.restarts.get(),
            handler_time: self
                .measure
                .then(|| Duration::from_nanos(self.peek_extras(|e| e.map_or(0, |e| e.busy_ns)))),
            status: match self.status.get() {
                Status::Running => "running",
                Status::Restarting => "restarting",
                Status::Dead => "dead",
            },
            hibernated: self.is_asleep() || self.park.get() == ROUSED,
        }
    }

    /// Stops the running incarnation: a stop request, then a kill once `timeout` passed
    /// (`None`: wait as long as it takes; `Some(ZERO)`: kill at once). Returns its reason.
    pub(crate) fn shutdown_incarnation(
        cell: &Rc<dyn CellDyn>,
        reason: ExitReason,
        timeout: Option<Duration>,
    ) -> Option<ExitReason> {
        let this = cell.base();
        let kill_now = timeout.is_some_and(|t| t.is_zero());
        let g = if this.is_asleep() {
            if kill_now {
                // Nothing to unwind: it is just dead (killed).
                cell.clone().kill_asleep();
                return this.last_reason();
            }
            // The stop request wakes it; its activation is made now, so that there is a
            // greenlet to wait for (and to kill if it takes too long).
            this.push_sys(Sys::Stop(reason));
            cell.clone().activate_now();
            this.greenlet()?
        } else {
            let g = this.greenlet()?;
            if !kill_now {
                this.push_sys(Sys::Stop(reason));
            }
            g
        };
        match timeout {
            Some(t) if t.is_zero() => g.kill(),
            Some(t) => {
                if !g.join_timeout(t) {
                    g.kill();
                }
            }
            None => g.join(),
        }
        this.last_reason()
    }

    /// Kills the running incarnation (see [`ActorRef::kill`]); `wait`: until it has ended.
    pub(crate) fn kill_incarnation(cell: &Rc<dyn CellDyn>, wait: bool) {
        let b = cell.base();
        if let Some(g) = b.greenlet() {
            if !wait || b.is_current() {
                g.kill_nowait();
            } else {
                g.kill();
            }
        } else if b.is_asleep() {
            cell.clone().kill_asleep();
        }
    }
}

/// The type-erased view of a cell.
pub(crate) trait CellDyn: 'static {
    fn base(&self) -> &Base;
    fn as_any(self: Rc<Self>) -> Rc<dyn Any>;
    fn as_dyn(self: Rc<Self>) -> Rc<dyn CellDyn>;
    fn mailbox_len(&self) -> usize;
    /// Makes the exit final: see [`Cell::finalize`].
    fn finalize(self: Rc<Self>, reason: ExitReason);
    /// Makes a greenlet of its own for a roused (or asleep) actor's activation now.
    fn activate_now(self: Rc<Self>);
    /// Runs a roused actor's activation on the dispatcher (greenlet `g`), until it hibernates
    /// again or ends; nothing if it was killed or activated already.
    fn run_here(self: Rc<Self>, g: &Greenlet<()>);
    /// Makes a greenlet of its own for a roused actor's activation.
    fn activate_own(self: Rc<Self>);
    /// Kills a hibernated incarnation: there is no greenlet to unwind; its state is dropped
    /// and it ends with [`ExitReason::Killed`].
    fn kill_asleep(self: Rc<Self>);
}

/// A FIFO whose first item is kept inline: an actor that holds one message at a time (a
/// hop of a ping-pong, an ask, the one message of a short-lived actor) never allocates a
/// buffer, nor touches one.
struct Lane<T> {
    first: Option<T>,
    /// The items after `first` (while it is taken and these remain, new items go here too).
    rest: VecDeque<T>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            first: None,
            rest: VecDeque::new(),
        }
    }
}

impl<T> Lane<T> {
    #[inline(always)]
    fn push_back(&mut self, v: T) {
        if self.rest.is_empty() && self.first.is_none() {
            self.first = Some(v);
        } else {
            self.rest.push_back(v);
        }
    }

    /// [`push_back`](Self::push_back) given the lane's length (the caller has it already).
    #[inline(always)]
    fn push_back_len(&mut self, len: usize, v: T) {
        if len == 0 {
            // `first` is empty (the lane is): nothing to drop.
            let none = self.first.replace(v);
            debug_assert!(none.is_none());
            std::mem::forget(none);
        } else {
            self.rest.push_back(v);
        }
    }

    #[inline]
    fn pop_front(&mut self) -> Option<T> {
        if self.first.is_some() {
            return self.first.take();
        }
        self.rest.pop_front()
    }

    #[inline]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// The front item.
    #[inline]
    fn front(&self) -> Option<&T> {
        self.first.as_ref().or_else(|| self.rest.front())
    }

    /// Frees the buffer of an empty lane if it holds more than `max_bytes`.
    fn shrink_if_empty(&mut self, max_bytes: usize) {
        if self.rest.is_empty() && self.rest.capacity() * std::mem::size_of::<T>() > max_bytes {
            self.rest = VecDeque::new();
        }
    }
}

impl<T> IntoIterator for Lane<T> {
    type Item = T;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<T>, std::collections::vec_deque::IntoIter<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// The user lane: the messages in one [`Lane`] of bare `M`, and the few tokens (asks' reply
/// slots, timers') beside them, each tagged with its message's place in the sequence. A tell
/// costs the mailbox `size_of::<M>()` bytes, not that plus a token slot (16 bytes more per
/// queued message: a mailbox of millions of messages touches half the memory).
///
/// A message without a token is pushed with no bookkeeping at all, and popped with one
/// countdown (`ahead`): no sequence number is kept per push or pop.
struct UserLane<M> {
    msgs: Lane<M>,
    /// `(sequence number of the message, its token)`, in sequence order. The numbers count
    /// from an origin of their own: only their differences, and `ahead`, matter.
    /// With each token, whether it is an ask's.
    tokens: Lane<(u64, bool, Rc<dyn Token>)>,
    /// How many messages are ahead of the first token's message (while there is no token, a
    /// count down from `u64::MAX` that never gets to 0).
    ahead: u64,
    /// Whether the last token taken is an ask's.
    last_ask: bool,
}

impl<M> Default for UserLane<M> {
    fn default() -> Self {
        UserLane {
            msgs: Lane::default(),
            tokens: Lane::default(),
            ahead: u64::MAX,
            last_ask: false,
        }
    }
}

impl<M> UserLane<M> {
    #[inline(always)]
    fn push_back(&mut self, env: Envelope<M>) {
        if let Some(t) = env.token {
            self.push_token(t, env.ask);
        }
        self.msgs.push_back(env.msg);
    }

    /// [`push_back`](Self::push_back) given the lane's length.
    #[inline(always)]
    fn push_back_len(&mut self, len: usize, msg: M, token: Option<Rc<dyn Token>>, ask: bool) {
        if let Some(t) = token {
            self.push_token(t, ask);
        }
        self.msgs.push_back_len(len, msg);
    }

    /// Files the token of the message about to be pushed.
    #[inline]
    fn push_token(&mut self, t: Rc<dyn Token>, ask: bool) {
        let len = self.msgs.len() as u64;
        let seq = match self.tokens.front() {
            // The front message's number is the first token's less the messages ahead of it.
            Some((first, _, _)) => *first - self.ahead + len,
            None => {
                self.ahead = len;
                len
            }
        };
        self.tokens.push_back((seq, ask, t));
    }

    #[inline]
    fn pop_front(&mut self) -> Option<Envelope<M>> {
        let (msg, token) = self.pop_msg()?;
        let ask = token.is_some() && self.last_ask;
        Some(Envelope { msg, token, ask })
    }

    /// Pops the front message and its token; whether that is an ask's is in `last_ask` (read
    /// only when there is a token: the common pop carries nothing more than the message).
    #[inline(always)]
    fn pop_msg(&mut self) -> Option<(M, Option<Rc<dyn Token>>)> {
        let msg = self.msgs.pop_front()?;
        let token = if self.ahead == 0 {
            self.take_token()
        } else {
            self.ahead -= 1;
            None
        };
        Some((msg, token))
    }

    /// Takes the first token (its message was just popped).
    #[inline]
    fn take_token(&mut self) -> Option<Rc<dyn Token>> {
        let (seq, ask, t) = self.tokens.pop_front()?;
        self.ahead = self
            .tokens
            .front()
            .map_or(u64::MAX, |(next, _, _)| *next - seq - 1);
        self.last_ask = ask;
        Some(t)
    }

    #[inline]
    fn len(&self) -> usize {
        self.msgs.len()
    }

    fn shrink_if_empty(&mut self, max_bytes: usize) {
        self.msgs.shrink_if_empty(max_bytes);
        self.tokens.shrink_if_empty(max_bytes);
    }
}

impl<M> Iterator for UserLane<M> {
    type Item = Envelope<M>;
    fn next(&mut self) -> Option<Envelope<M>> {
        self.pop_front()
    }
}

/// An actor's cell: the untyped part and its typed user lane.
pub(crate) struct Cell<A: Actor> {
    pub(crate) base: Base,
    user: RefCell<UserLane<A::Msg>>,
    /// The state of a hibernated incarnation (and, if it has not started, its start signal).
    asleep: RefCell<Option<Asleep<A>>>,
}

/// A hibernated incarnation: the actor's state (whether `started` is still to run is
/// [`Base::starting`]).
struct Asleep<A> {
    actor: A,
    /// The supervisor's start signal, if `started` is still to run (see [`Base::starting`]).
    signal: Option<Rc<StartSignal>>,
}

/// A blank cell, for [`Cell::new`] to fill in.
impl<A: Actor> Default for Cell<A> {
    #[inline(always)]
    fn default() -> Self {
        Cell {
            base: Base::blank(),
            user: RefCell::new(UserLane::default()),
            asleep: RefCell::new(None),
        }
    }
}

impl<A: Actor> CellDyn for Cell<A> {
    fn base(&self) -> &Base {
        &self.base
    }
    fn as_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
    fn as_dyn(self: Rc<Self>) -> Rc<dyn CellDyn> {
        self
    }
    fn mailbox_len(&self) -> usize {
        self.user.borrow().len()
    }
    fn finalize(self: Rc<Self>, reason: ExitReason) {
        Cell::finalize(&self, reason)
    }
    fn activate_now(self: Rc<Self>) {
        let keep = if self.base.park.get() == ASLEEP {
            self.base.park.set(ROUSED);
            self.base.keep.take()
        } else {
            None
        };
        self.activate();
        drop(keep);
    }
    fn activate_own(self: Rc<Self>) {
        self.activate();
    }
    fn run_here(self: Rc<Self>, g: &Greenlet<()>) {
        let b = &self.base;
        if b.park.get() != ROUSED || b.greenlet.borrow().is_some() {
            // Killed, or activated on a greenlet of its own, while it waited.
            return;
        }
        let Some(Asleep { actor, signal }) = self.asleep.borrow_mut().take() else {
            return;
        };
        let start = b.starting.replace(false).then_some(signal);
        HIBERNATING.with(|h| h.set(h.get() - 1));
        b.park.set(RUN);
        b.gid.set(g.id());
        *b.greenlet.borrow_mut() = Some(g.clone());
        b.on_dispatcher.set(true);
        run_incarnation(self, actor, start);
    }
    fn kill_asleep(self: Rc<Self>) {
        let b = &self.base;
        let Some(asleep) = self.asleep.borrow_mut().take() else {
            return;
        };
        HIBERNATING.with(|h| h.set(h.get() - 1));
        b.park.set(RUN);
        let keep = b.keep.take();
        b.starting.set(false);
        if let Some(s) = &asleep.signal {
            s.done(Err("killed before it started".into()));
        }
        // Its own cleanup may block (as a killed greenlet's unwinding may).
        let _ = catch_unwind(AssertUnwindSafe(move || drop(asleep)));
        incarnation_ended(&self, ExitReason::Killed);
        drop(keep);
    }
}

impl<A: Actor> Cell<A> {
    /// Makes a greenlet of its own for a roused actor's activation (not the dispatcher: the
    /// caller wants a greenlet to wait for, or to kill).
    fn activate(self: &Rc<Self>) {
        let b = &self.base;
        if b.park.get() != ROUSED || b.greenlet.borrow().is_some() || self.asleep.borrow().is_none()
        {
            // Killed, or activated already.
            return;
        }
        let mut builder = evergreen::Builder::new();
        if let Some(n) = &b.name {
            builder = builder.name(&**n);
        }
        let guard = Activation(Some(self.clone()));
        let g = builder.create(move || resume(guard));
        b.gid.set(g.id());
        *b.greenlet.borrow_mut() = Some(g.clone());
        g.start();
    }

    #[inline(always)]
    pub(crate) fn new(
        name: Option<String>,
        mailbox: Mailbox,
        measure: bool,
        hibernate: bool,
        lazy: bool,
    ) -> Rc<Cell<A>> {
        // Built in place: `Rc::default` writes the blank cell straight into the allocation
        // (`Rc::new` would build it on the stack and copy it in: a call to `memcpy` of the
        // whole cell, 64 instructions per spawn).
        let mut cell: Rc<Cell<A>> = Rc::default();
        Rc::get_mut(&mut cell)
            .expect("a new cell is not shared")
            .base
            .fill(name, mailbox, measure, hibernate, lazy);
        cell
    }

    /// The incarnation hibernates (its mailbox is empty): its state goes into the cell, its
    /// greenlet ends (the stack goes back to the pool), and the cell keeps itself alive.
    fn fall_asleep(self: &Rc<Self>, actor: A) {
        let b = &self.base;
        *self.asleep.borrow_mut() = Some(Asleep {
            actor,
            signal: None,
        });
        HIBERNATING.with(|h| h.set(h.get() + 1));
        // Give the mailbox's buffers back too (Erlang's hibernate shrinks the heap), unless
        // they are small: an actor woken for one message at a time would otherwise allocate
        // and free its mailbox on every wake-up.
        self.user.borrow_mut().shrink_if_empty(KEEP_BYTES);
        b.gid.set(0);
        let g = b.greenlet.borrow_mut().take();
        b.park.set(ASLEEP);
        b.keep.set(Some(self.clone()));
        drop(g);
    }

    /// Pushes a message past the bound and policy (timer messages, supervisor notices).
    pub(crate) fn push_unbounded(&self, msg: A::Msg, token: Option<Rc<dyn Token>>) -> bool {
        if self.base.status.get() == Status::Dead {
            return false;
        }
        let mut q = self.user.borrow_mut();
        q.push_back(Envelope {
            msg,
            token,
            ask: false,
        });
        let len = q.len();
        drop(q);
        if len > self.base.hwm.get() {
            self.base.hwm.set(len);
        }
        self.base.wake_up(true);
        true
    }

    /// Queues an envelope under the mailbox's policy. `block`: whether a full `Block` mailbox
    /// may block the caller, and until when. Inlined into `tell` and `ask`: a call costs the
    /// fast path as much again (saving registers, passing the envelope and the result).
    #[inline(always)]
    fn enqueue(
        &self,
        msg: A::Msg,
        token: Option<Rc<dyn Token>>,
        block: Option<Option<Instant>>,
    ) -> Result<(), (Error, Envelope<A::Msg>)> {
        let b = &self.base;
        if b.status.get() == Status::Dead {
            return Err(self.dead(Envelope {
                ask: token.is_some(),
                msg,
                token,
            }));
        }
        let mut q = self.user.borrow_mut();
        let len = q.len();
        if len < b.room.get() {
            let ask = token.is_some();
            q.push_back_len(len, msg, token, ask);
            drop(q);
            if len >= b.hwm.get() {
                b.hwm.set(len + 1);
            }
            b.wake_up(true);
            return Ok(());
        }
        drop(q);
        // (Only an ask comes with a token here.)
        self.enqueue_full(
            Envelope {
                ask: token.is_some(),
                msg,
                token,
            },
            block,
        )
    }

    #[cold]
    fn dead(&self, env: Envelope<A::Msg>) -> (Error, Envelope<A::Msg>) {
        let r = self.base.final_reason().unwrap_or(ExitReason::Normal);
        dead_letters::record(
            || self.base.label(),
            DlReason::DeadTarget,
            std::any::type_name::<A::Msg>(),
        );
        (Error::Dead(r, ()), env)
    }

    #[cold]
    #[inline(never)]
    fn enqueue_full(
        &self,
        env: Envelope<A::Msg>,
        block: Option<Option<Instant>>,
    ) -> Result<(), (Error, Envelope<A::Msg>)> {
        let b = &self.base;
        match b.policy {
            Policy::Fail => Err((Error::Full(()), env)),
            Policy::DropNewest => {
                self.overflow(env);
                Ok(())
            }
            Policy::DropOldest => {
                let old = {
                    let mut q = self.user.borrow_mut();
                    let old = q.pop_front();
                    q.push_back(env);
                    old
                };
                b.wake_up(true);
                if let Some(old) = old {
                    self.overflow(old);
                }
                Ok(())
            }
            Policy::Block => {
                let Some(deadline) = block else {
                    return Err((Error::Full(()), env));
                };
                if let Err(text) = self.check_cycle() {
                    return Err((Error::LoopExit(text, ()), env));
                }
                let space = b.space.as_ref().expect("Block mailbox has a semaphore");
                let me = evergreen::getcurrent_id();
                BLOCKED.with(|bl| bl.borrow_mut().push((me, b.gid.get(), b.label())));
                space.waiting.borrow_mut().push_back(me);
                // Unregisters the wait however it ends (handed a slot, timed out, killed).
                struct Unblock<'a>(u64, &'a Space);
                impl Drop for Unblock<'_> {
                    fn drop(&mut self) {
                        unblocked(self.0);
                        let mut w = self.1.waiting.borrow_mut();
                        if let Some(p) = w.iter().position(|g| *g == self.0) {
                            w.remove(p);
                        }
                    }
                }
                let guard = Unblock(me, space);
                let got = match deadline {
                    None => {
                        space.sem.acquire();
                        true
                    }
                    Some(d) => {
                        let left = d.saturating_duration_since(evergreen::hub::now());
                        space.sem.acquire_timeout(left)
                    }
                };
                drop(guard);
                if !got {
                    let left = deadline
                        .map(|d| d.saturating_duration_since(evergreen::hub::now()))
                        .unwrap_or_default();
                    return Err((Error::Timeout(left), env));
                }
                // A slot was reserved for us.
                b.room.set(b.room.get() + 1);
                if b.status.get() == Status::Dead {
                    return Err(self.dead(env));
                }
                let mut q = self.user.borrow_mut();
                q.push_back(env);
                let len = q.len();
                drop(q);
                if len > b.hwm.get() {
                    b.hwm.set(len);
                }
                b.wake_up(true);
                Ok(())
            }
        }
    }

    /// Refuses to block when the wait could never end: the caller is this actor, or the
    /// target is (transitively) blocked telling or asking the caller.
    fn check_cycle(&self) -> Result<(), String> {
        let b = &self.base;
        let my_id = evergreen::getcurrent_id();
        if b.gid.get() != 0 && b.gid.get() == my_id {
            return Err(format!(
                "actor {} told itself with its own mailbox full (policy Block); it would wait \
                 for itself forever",
                b.label()
            ));
        }
        match wait_cycle(b, my_id, "tells") {
            None => Ok(()),
            Some((mine, chain)) => Err(format!(
                "{mine} cannot tell {} with its mailbox full (policy Block): the tellers are \
                 blocked on each other ({chain}); nothing could ever make room",
                b.label(),
            )),
        }
    }

    #[cold]
    fn overflow(&self, env: Envelope<A::Msg>) {
        dead_letters::record(
            || self.base.label(),
            DlReason::Overflow,
            std::any::type_name::<A::Msg>(),
        );
        if let Some(t) = &env.token {
            t.fail(Error::Full(()), false);
        }
        drop(env);
    }

    /// Called by the loop after taking a user message: hands a slot to a blocked teller.
    #[inline]
    fn took_one(&self) {
        if let Some(space) = &self.base.space {
            if space.sem.waiter_count() > 0 {
                self.base.room.set(self.base.room.get().saturating_sub(1));
                // The longest waiter gets the slot: it is no longer blocked.
                if let Some(g) = space.waiting.borrow_mut().pop_front() {
                    unblocked(g);
                }
                space.sem.release();
            }
        }
    }

    /// The actor exits for good: fails what waits on it, drops what is queued, notifies links
    /// and monitors, unregisters its name. Never blocks. The incarnation must have ended.
    pub(crate) fn finalize(self: &Rc<Self>, reason: ExitReason) {
        let b = &self.base;
        if b.status.get() == Status::Dead {
            return;
        }
        b.status.set(Status::Dead);
        b.set_reason(&reason);
        // Most actors have no bookkeeping, nothing queued and nothing waiting: then this is
        // all there is to do.
        let mut extras = b.extras.borrow_mut().as_deref_mut().map(|e| Notify {
            links: std::mem::take(&mut e.links),
            monitors: std::mem::take(&mut e.monitors),
            exited: e.exited.clone(),
            registered: e.registered.take(),
            on_final: std::mem::take(&mut e.on_final),
            asks: std::mem::take(&mut e.asks),
        });
        if b.sys_len.get() != 0 {
            let sys = b
                .extras
                .borrow_mut()
                .as_deref_mut()
                .map(|e| std::mem::take(&mut e.sys));
            b.sys_first.set(STOP_NONE);
            b.sys_len.set(0);
            drop(sys);
        }
        // Queued user messages: asks fail with the reason, tells become dead letters.
        let queued = {
            let mut q = self.user.borrow_mut();
            (q.len() != 0).then(|| std::mem::take(&mut *q))
        };
        if let Some(queued) = queued {
            for env in queued {
                match &env.token {
                    Some(t) if t.is_ask() => t.fail(Error::Dead(reason.clone(), ()), false),
                    Some(_) => {}
                    None => dead_letters::record(
                        || b.label(),
                        DlReason::Leftover,
                        std::any::type_name::<A::Msg>(),
                    ),
                }
                drop(env);
            }
        }
        // Asks waiting on a reply handle held elsewhere.
        if let Some(n) = &mut extras {
            for t in std::mem::take(&mut n.asks) {
                t.fail(Error::Dead(reason.clone(), ()), false);
            }
        }
        // Blocked tellers: each gets a slot and finds the actor dead.
        if let Some(space) = &b.space {
            for _ in 0..space.sem.waiter_count() {
                b.room.set(b.room.get().saturating_sub(1));
                if let Some(g) = space.waiting.borrow_mut().pop_front() {
                    unblocked(g);
                }
                space.sem.release();
            }
        }
        if let Some(n) = extras {
            self.notify(n, &reason);
        }
    }

    /// The exit's bookkeeping part of [`finalize`](Self::finalize): the name is unregistered,
    /// links and monitors fire, final hooks run, joiners wake.
    #[cold]
    #[inline(never)]
    fn notify(self: &Rc<Self>, n: Notify, reason: &ExitReason) {
        let b = &self.base;
        let me = AnyRef(self.clone());
        if let Some(name) = n.registered {
            crate::registry::remove_exited(&name, b.id);
        }
        for l in n.links {
            if let Some(peer) = l.upgrade() {
                peer.base().with_extras(|e| {
                    e.links
                        .retain(|w| w.upgrade().is_some_and(|c| c.base().id != b.id))
                });
                peer.base().push_sys(Sys::Exit(me.clone(), reason.clone()));
            }
        }
        for (id, w) in n.monitors {
            if let Some(watcher) = w.upgrade() {
                watcher
                    .base()
                    .push_sys(Sys::Down(id, me.clone(), reason.clone()));
            }
        }
        for f in n.on_final {
            f(reason);
        }
        if let Some(ev) = n.exited {
            ev.set();
        }
    }
}

/// What an exit takes from an actor's [`Extras`] to notify.
struct Notify {
    links: Vec<Weak<dyn CellDyn>>,
    monitors: Vec<(MonitorId, Weak<dyn CellDyn>)>,
    exited: Option<Rc<Event>>,
    registered: Option<String>,
    on_final: Vec<FinalHook>,
    asks: Vec<Rc<dyn Token>>,
}

/// A reference to an actor: cheap to clone, valid across restarts, usable from any greenlet
/// (and from `main`) of the hub's thread.
pub struct ActorRef<A: Actor>(pub(crate) Rc<Cell<A>>);

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef(self.0.clone())
    }
}

impl<A: Actor> PartialEq for ActorRef<A> {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl<A: Actor> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ActorRef({} {:?})",
            self.0.base.label(),
            self.0.base.status()
        )
    }
}

/// Something that names an actor: an [`ActorRef`] or an [`AnyRef`].
pub trait ActorHandle {
    /// The type-erased reference.
    fn any_ref(&self) -> AnyRef;
}

impl<A: Actor> ActorHandle for ActorRef<A> {
    fn any_ref(&self) -> AnyRef {
        AnyRef(self.0.clone())
    }
}

impl ActorHandle for AnyRef {
    fn any_ref(&self) -> AnyRef {
        self.clone()
    }
}

impl<A: Actor> ActorRef<A> {
    /// Queues `msg` (Erlang's `!`, OTP's `cast`, Akka's `tell`). With a full `Block` mailbox
    /// it blocks until there is room; otherwise it never blocks. On failure the message comes
    /// back in the error: [`Error::Dead`] (the actor exited for good), [`Error::Full`]
    /// (policy `Fail`), [`Error::LoopExit`] (blocking could never end).
    #[inline]
    pub fn tell(&self, msg: A::Msg) -> Result<(), Error<A::Msg>> {
        self.0
            .enqueue(msg, None, Some(None))
            .map_err(|(e, env)| with_msg(e, env.msg))
    }

    /// Like [`tell`](Self::tell) but never blocks: a full `Block` mailbox gives
    /// [`Error::Full`].
    #[inline]
    pub fn try_tell(&self, msg: A::Msg) -> Result<(), Error<A::Msg>> {
        self.0
            .enqueue(msg, None, None)
            .map_err(|(e, env)| with_msg(e, env.msg))
    }

    /// Sends the message made by `make` around a [`Reply`] and waits for the answer
    /// (OTP's `gen_server:call` with `infinity`; see the [module docs](self#asks)). Fails at
    /// once if the actor exits for good, drops the reply, panics answering, or is the caller.
    #[inline(always)]
    pub fn ask<R: 'static>(&self, make: impl FnOnce(Reply<R>) -> A::Msg) -> Result<R, Error> {
        self.ask_inner(make, None)
    }

    /// [`ask`](Self::ask) with a timeout (covering a wait for mailbox room too):
    /// [`Error::Timeout`] when it passes, and an answer that comes later is dropped.
    pub fn ask_timeout<R: 'static>(
        &self,
        make: impl FnOnce(Reply<R>) -> A::Msg,
        timeout: Duration,
    ) -> Result<R, Error> {
        self.ask_inner(make, Some(timeout))
    }

    // Inlined into the caller, so that the asker parks in its own frame: returning from a
    // function it parked in would cost a return-address misprediction per ask.
    #[inline(always)]
    fn ask_inner<R: 'static>(
        &self,
        make: impl FnOnce(Reply<R>) -> A::Msg,
        timeout: Option<Duration>,
    ) -> Result<R, Error> {
        let b = &self.0.base;
        // A parked actor is not the caller: skip the lookup of the current greenlet then.
        if b.park.get() == RUN {
            let me = evergreen::getcurrent_id();
            if b.gid.get() == me && me != 0 {
                return Err(Error::SelfAsk);
            }
            // A busy callee may be waiting on the caller (gen_server:call's deadlock).
            if let Some((mine, chain)) = wait_cycle(b, me, "asks") {
                return Err(Error::LoopExit(
                    format!(
                        "{mine} cannot ask {}: the actors would wait for each other forever \
                         ({chain})",
                        b.label()
                    ),
                    (),
                ));
            }
        }
        let deadline = timeout.and_then(|t| evergreen::hub::now().checked_add(t));
        let slot = Slot::<R>::take(b.id);
        let token: Rc<dyn Token> = slot.clone();
        let msg = make(Reply {
            slot: Some(slot.clone()),
        });
        if let Err((e, env)) = self.0.enqueue(msg, Some(token), Some(deadline)) {
            drop(env);
            slot.state.set(ABANDONED);
            return Err(match e {
                Error::Timeout(_) => Error::Timeout(timeout.unwrap_or_default()),
                e => e,
            });
        }
        // Unregisters the ask, and abandons it if the wait unwinds (a kill).
        struct Waiting<'a, R: 'static> {
            base: &'a Base,
            slot: &'a Rc<Slot<R>>,
            /// The asker's gid, if it is registered in `ASKING`.
            asking: Option<u64>,
        }
        impl<R: 'static> Drop for Waiting<'_, R> {
            #[inline(always)]
            fn drop(&mut self) {
                // The common case: an ask from outside any actor, answered in its handler.
                if self.asking.is_none() && !self.slot.registered.get() {
                    if self.slot.state.get() == PENDING {
                        self.slot.state.set(ABANDONED);
                    }
                    return;
                }
                self.unregister();
            }
        }
        impl<R: 'static> Waiting<'_, R> {
            #[cold]
            #[inline(never)]
            fn unregister(&mut self) {
                if let Some(me) = self.asking {
                    let _ = ASKING.try_with(|a| {
                        let mut a = a.borrow_mut();
                        if let Some(p) = a.iter().rposition(|e| e.0 == me) {
                            a.swap_remove(p);
                        }
                    });
                }
                let me = Rc::as_ptr(self.slot) as *const ();
                if !self.slot.registered.get() {
                    if self.slot.state.get() == PENDING {
                        self.slot.state.set(ABANDONED);
                    }
                    return;
                }
                self.base.with_extras(|e| {
                    let asks = &mut e.asks;
                    if let Some(p) = asks.iter().rposition(|t| Rc::as_ptr(t) as *const () == me) {
                        asks.swap_remove(p);
                    }
                });
                if self.slot.state.get() == PENDING {
                    self.slot.state.set(ABANDONED);
                }
            }
        }
        // Only an actor's own greenlet can be part of a cycle of waits; while no actor runs,
        // the caller is none.
        let asking = (RUNNING.with(StdCell::get) != 0).then(|| {
            let me = evergreen::getcurrent_id();
            ASKING.with(|a| a.borrow_mut().push((me, self.0.clone())));
            me
        });
        let waiting = Waiting {
            base: b,
            slot: &slot,
            asking,
        };
        let done = if slot.state.get() != PENDING {
            true // completed while queueing (evicted by a DropOldest mailbox)
        } else {
            slot.waiting.set(true);
            match timeout {
                None => {
                    let _ = slot.bell.get();
                    true
                }
                Some(t) => {
                    let left = deadline
                        .map(|d| d.saturating_duration_since(evergreen::hub::now()))
                        .unwrap_or(t);
                    slot.bell.get_timeout(left).is_ok()
                }
            }
        };
        drop(waiting);
        if !done {
            return Err(Error::Timeout(timeout.unwrap_or_default()));
        }
        let r = slot
            .value
            .borrow_mut()
            .take()
            .unwrap_or(Err(Error::ReplyDropped));
        Slot::give_back(slot);
        r
    }

    /// Asks the actor to stop after the message it is handling (OTP's `gen_server:stop`,
    /// reason `normal`); returns at once. Queued asks then fail with [`Error::Dead`].
    pub fn stop(&self) {
        self.0.base.push_sys(Sys::Stop(ExitReason::Normal));
    }

    /// Like [`stop`](Self::stop) with a reason of your choice.
    pub fn stop_with(&self, reason: ExitReason) {
        self.0.base.push_sys(Sys::Stop(reason));
    }

    /// Kills the running incarnation (unwinds its greenlet at its current or next blocking
    /// point; `stopped` does not run) and waits until it has ended. Cannot be trapped. A
    /// hibernated incarnation has no greenlet to unwind: its state is dropped here and it
    /// ends at once with [`ExitReason::Killed`].
    pub fn kill(&self) {
        Base::kill_incarnation(&self.0.clone().as_dyn(), true);
    }

    /// Stops the actor and waits at most `timeout` for it to finish its current message and
    /// its `stopped` hook, then kills it (OTP's shutdown timeout). Returns how the
    /// incarnation ended; [`Error::Invalid`] if called by the actor itself.
    pub fn shutdown(&self, timeout: Duration) -> Result<ExitReason, Error> {
        if self.0.base.is_current() {
            return Err(Error::Invalid(format!(
                "actor {} cannot wait for its own shutdown; use Ctx::stop",
                self.0.base.label()
            )));
        }
        Ok(
            Base::shutdown_incarnation(&self.0.clone().as_dyn(), ExitReason::Normal, Some(timeout))
                .or_else(|| self.0.base.last_reason())
                .unwrap_or(ExitReason::Normal),
        )
    }

    /// Waits until the actor has exited for good and returns why (a monitor for code that is
    /// not an actor). [`Error::Invalid`] if called by the actor itself.
    pub fn join(&self) -> Result<ExitReason, Error> {
        self.any_ref().join()
    }

    /// [`join`](Self::join) with a timeout.
    pub fn join_timeout(&self, timeout: Duration) -> Result<ExitReason, Error> {
        self.any_ref().join_timeout(timeout)
    }

    /// Its counters.
    pub fn stats(&self) -> Stats {
        self.0.base.stats(self.0.user.borrow().len())
    }

    /// The type-erased reference.
    pub fn any(&self) -> AnyRef {
        AnyRef(self.0.clone())
    }

    /// Its unique id (per thread).
    pub fn id(&self) -> u64 {
        self.0.base.id
    }

    /// Its name.
    pub fn name(&self) -> Option<&str> {
        self.0.base.name()
    }

    /// Whether it has exited for good.
    pub fn is_dead(&self) -> bool {
        self.0.base.status() == Status::Dead
    }

    /// Its final exit reason, once it has exited for good.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.0.base.final_reason()
    }
}

fn with_msg<M>(e: Error, m: M) -> Error<M> {
    match e {
        Error::Dead(r, ()) => Error::Dead(r, m),
        Error::Full(()) => Error::Full(m),
        Error::LoopExit(s, ()) => Error::LoopExit(s, m),
        Error::Timeout(d) => Error::Timeout(d),
        Error::SelfAsk => Error::SelfAsk,
        Error::ReplyDropped => Error::ReplyDropped,
        Error::Panicked(s) => Error::Panicked(s),
        Error::StartFailed(s) => Error::StartFailed(s),
        Error::AlreadyRegistered(s) => Error::AlreadyRegistered(s),
        Error::Invalid(s) => Error::Invalid(s),
    }
}

/// A type-erased actor reference (for links, monitors, signals, the registry, supervisors).
#[derive(Clone)]
pub struct AnyRef(pub(crate) Rc<dyn CellDyn>);

impl fmt::Debug for AnyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AnyRef({})", self.0.base().label())
    }
}

impl PartialEq for AnyRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.base().id == other.0.base().id
    }
}

impl AnyRef {
    pub(crate) fn from_cell(c: Rc<dyn CellDyn>) -> AnyRef {
        AnyRef(c)
    }

    pub(crate) fn cell(&self) -> &Rc<dyn CellDyn> {
        &self.0
    }

    /// The typed reference, if the actor is an `A`.
    pub fn downcast<A: Actor>(&self) -> Option<ActorRef<A>> {
        self.0
            .clone()
            .as_any()
            .downcast::<Cell<A>>()
            .ok()
            .map(ActorRef)
    }

    /// Its unique id.
    pub fn id(&self) -> u64 {
        self.0.base().id
    }

    /// Its name.
    pub fn name(&self) -> Option<&str> {
        self.0.base().name()
    }

    /// Whether it has exited for good.
    pub fn is_dead(&self) -> bool {
        self.0.base().status() == Status::Dead
    }

    /// Its final exit reason, once it has exited for good.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.0.base().final_reason()
    }

    /// See [`ActorRef::stop`].
    pub fn stop(&self) {
        self.0.base().push_sys(Sys::Stop(ExitReason::Normal));
    }

    /// See [`ActorRef::kill`].
    pub fn kill(&self) {
        Base::kill_incarnation(&self.0, true);
    }

    /// See [`ActorRef::stats`].
    pub fn stats(&self) -> Stats {
        self.0.base().stats(self.0.mailbox_len())
    }

    /// See [`ActorRef::join`].
    pub fn join(&self) -> Result<ExitReason, Error> {
        self.join_inner(None)
    }

    /// See [`ActorRef::join_timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<ExitReason, Error> {
        self.join_inner(Some(timeout))
    }

    fn join_inner(&self, timeout: Option<Duration>) -> Result<ExitReason, Error> {
        let b = self.0.base();
        if let Some(r) = b.final_reason() {
            return Ok(r);
        }
        if b.is_current() {
            return Err(Error::Invalid(format!(
                "actor {} cannot wait for its own exit",
                b.label()
            )));
        }
        let ev = b.with_extras(|e| {
            e.exited
                .get_or_insert_with(|| Rc::new(Event::new()))
                .clone()
        });
        match timeout {
            None => ev.wait(),
            Some(t) => {
                if !ev.wait_timeout(t) {
                    return Err(Error::Timeout(t));
                }
            }
        }
        Ok(b.final_reason().unwrap_or(ExitReason::Normal))
    }
}

// ---------------------------------------------------------------------------------------
// Replies

const PENDING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;
/// Completed by a dropped reply handle; a later, more precise error may replace it.
const SOFT: u8 = 3;

struct Slot<R> {
    state: StdCell<u8>,
    value: RefCell<Option<Result<R, Error>>>,
    /// The asker's doorbell (rung only while it waits); a rendezvous `Channel`
    /// because its `get` inlines down to the park (see `Base::wake`).
    bell: Channel<()>,
    /// Whether the asker waits on the bell.
    waiting: StdCell<bool>,
    /// Whether it is in the callee's registry of asks answered elsewhere.
    registered: StdCell<bool>,
    /// The callee's id, for late-reply dead letters.
    to: StdCell<u64>,
}

thread_local! {
    /// The last slot given back: a caller that asks again takes it back with one type test
    /// (a steady stream of asks of one reply type never searches `SLOTS`).
    static SLOT1: StdCell<Option<Rc<dyn Any>>> = const { StdCell::new(None) };
    /// More free slots, of any reply types.
    static SLOTS: RefCell<Vec<Rc<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

impl<R: 'static> Slot<R> {
    #[inline(always)]
    fn take(to: u64) -> Rc<Slot<R>> {
        let cached = match SLOT1.with(StdCell::take).map(|s| s.downcast::<Slot<R>>()) {
            Some(Ok(s)) => Some(s),
            other => {
                if let Some(Err(s)) = other {
                    SLOT1.with(|c| c.set(Some(s)));
                }
                Self::take_slow()
            }
        };
        match cached {
            Some(s) => {
                s.state.set(PENDING);
                s.waiting.set(false);
                s.registered.set(false);
                s.to.set(to);
                s
            }
            None => Rc::new(Slot {
                state: StdCell::new(PENDING),
                value: RefCell::new(None),
                bell: Channel::new(),
                waiting: StdCell::new(false),
                registered: StdCell::new(false),
                to: StdCell::new(to),
            }),
        }
    }

    #[cold]
    #[inline(never)]
    fn take_slow() -> Option<Rc<Slot<R>>> {
        SLOTS.with(|s| {
            let mut s = s.borrow_mut();
            let p = s.iter().rposition(|x| x.is::<Slot<R>>())?;
            s.swap_remove(p).downcast::<Slot<R>>().ok()
        })
    }

    #[inline(always)]
    fn give_back(s: Rc<Slot<R>>) {
        if Rc::strong_count(&s) == 1 && Rc::weak_count(&s) == 0 {
            let _ = SLOT1.try_with(|c| {
                if let Some(old) = c.replace(Some(s)) {
                    Self::give_back_slow(old);
                }
            });
        }
    }

    #[cold]
    #[inline(never)]
    fn give_back_slow(old: Rc<dyn Any>) {
        let _ = SLOTS.try_with(|c| {
            let mut c = c.borrow_mut();
            if c.len() < 32 {
                c.push(old);
            }
        });
    }

    #[inline(always)]
    fn complete(&self, r: Result<R, Error>, state: u8) {
        *self.value.borrow_mut() = Some(r);
        self.state.set(state);
        if self.waiting.replace(false) {
            let _ = self.bell.put_nowait(());
        }
    }
}

impl<R: 'static> Token for Slot<R> {
    fn is_ask(&self) -> bool {
        true
    }
    fn still_pending(&self) -> bool {
        self.state.get() == PENDING
    }
    fn set_registered(&self) {
        self.registered.set(true);
    }
    fn fail(&self, e: Error, force: bool) {
        match self.state.get() {
            PENDING => self.complete(Err(e), DONE),
            SOFT if force => self.complete(Err(e), DONE),
            _ => {}
        }
    }
}

/// The handle an ask's message carries: answer with [`send`](Reply::send). Dropping it
/// unanswered fails the ask at once with [`Error::ReplyDropped`]. It may be kept or handed to
/// another greenlet to answer later.
pub struct Reply<R: 'static> {
    slot: Option<Rc<Slot<R>>>,
}

impl<R: 'static> fmt::Debug for Reply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

impl<R: 'static> Reply<R> {
    /// Answers the ask. An answer after the asker gave up (timeout, kill) is dropped and
    /// counted as a dead letter.
    #[inline]
    pub fn send(mut self, value: R) {
        let slot = self.slot.take().expect("a reply is sent once");
        match slot.state.get() {
            PENDING => slot.complete(Ok(value), DONE),
            _ => {
                let to = slot.to.get();
                dead_letters::record(
                    || format!("#{to}"),
                    DlReason::LateReply,
                    std::any::type_name::<R>(),
                );
            }
        }
    }

    /// Whether the asker still waits (it has not timed out or been killed).
    pub fn is_waiting(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.state.get() == PENDING)
    }
}

impl<R: 'static> Drop for Reply<R> {
    // Inlined: a reply that was sent leaves nothing to do, and a call would cost more than
    // the test.
    #[inline(always)]
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.dropped_unsent();
        }
    }
}

impl<R: 'static> Reply<R> {
    /// Dropped without an answer: fails the ask at once.
    #[cold]
    #[inline(never)]
    fn dropped_unsent(&mut self) {
        if let Some(s) = self.slot.take() {
            if s.state.get() == PENDING {
                s.complete(Err(Error::ReplyDropped), SOFT);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Timers

struct TimerToken {
    live: StdCell<bool>,
    queued: StdCell<u32>,
    interval: bool,
}

impl Token for TimerToken {
    fn is_ask(&self) -> bool {
        false
    }
    fn live(&self) -> bool {
        self.live.get()
    }
    fn taken(&self) {
        self.queued.set(self.queued.get().saturating_sub(1));
    }
}

fn cancel_timers(base: &Base) {
    let timers = match base.extras.borrow_mut().as_deref_mut() {
        Some(e) => std::mem::take(&mut e.timers),
        None => return,
    };
    for t in timers {
        t.token.live.set(false);
        evergreen::hub::cancel_timer(t.id);
    }
}

fn arm_once<A: Actor>(
    cell: Weak<Cell<A>>,
    token: Rc<TimerToken>,
    delay: Duration,
    msg: A::Msg,
) -> TimerId {
    evergreen::hub::call_later(delay, move || {
        let Some(cell) = cell.upgrade() else { return };
        if !token.live.get() {
            return;
        }
        token.queued.set(token.queued.get() + 1);
        cell.push_unbounded(msg, Some(token));
    })
}

fn arm_interval<A: Actor, F: FnMut() -> A::Msg + 'static>(
    cell: Weak<Cell<A>>,
    token: Rc<TimerToken>,
    period: Duration,
    mut make: F,
) -> TimerId {
    evergreen::hub::call_later(period, move || {
        let Some(c) = cell.upgrade() else { return };
        if !token.live.get() {
            return;
        }
        if token.queued.get() == 0 {
            // A callback on the hub must not unwind: a panicking `make` ends its timer.
            match catch_unwind(AssertUnwindSafe(&mut make)) {
                Ok(msg) => {
                    token.queued.set(1);
                    c.push_unbounded(msg, Some(token.clone()));
                }
                Err(p) => {
                    log::error!(
                        "actor {}: an interval timer's message maker panicked (the timer is \
                         stopped): {}",
                        c.base.label(),
                        panic_message(&*p)
                    );
                    token.live.set(false);
                    c.base
                        .with_extras(|e| e.timers.retain(|t| !Rc::ptr_eq(&t.token, &token)));
                    return;
                }
            }
        }
        let id = arm_interval(cell.clone(), token.clone(), period, make);
        c.base.with_extras(|e| {
            if let Some(t) = e.timers.iter_mut().find(|t| Rc::ptr_eq(&t.token, &token)) {
                t.id = id;
            }
        });
    })
}

// ---------------------------------------------------------------------------------------
// The context

/// What a handler can do besides changing its state: reach itself, stop, link, monitor, and
/// set keyed timers. One per incarnation.
pub struct Ctx<A: Actor> {
    me: ActorRef<A>,
    stop: Option<ExitReason>,
    hibernate: bool,
}

impl<A: Actor> Ctx<A> {
    /// A reference to this actor.
    pub fn myself(&self) -> ActorRef<A> {
        self.me.clone()
    }

    /// This actor's reference, borrowed.
    pub fn me(&self) -> &ActorRef<A> {
        &self.me
    }

    /// Which incarnation this is (1 for the first start, +1 per restart).
    pub fn incarnation(&self) -> u32 {
        self.me.0.base.incarnation()
    }

    /// Stops the actor with reason `Normal` once the current message is handled.
    pub fn stop(&mut self) {
        self.stop = Some(ExitReason::Normal);
    }

    /// Stops the actor with `reason` once the current message is handled.
    pub fn stop_with(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }

    /// Hibernates the actor as soon as its mailbox is empty (after this message, or after
    /// the messages already queued), once: Erlang's `erlang:hibernate/3`, gen_server's
    /// `{noreply, State, hibernate}`. The greenlet ends and its stack goes back to the
    /// runtime's pool; the actor keeps only its state and mailbox, and the next message or
    /// signal runs it on a new greenlet. See [`Builder::hibernate`] to hibernate whenever
    /// idle, and the [module docs](self#hibernation-the-dispatcher-and-lazy-start).
    pub fn hibernate(&mut self) {
        self.hibernate = true;
    }

    /// Turns trapping of exit signals on or off (Erlang's `process_flag(trap_exit, ...)`):
    /// while on, a linked actor's exit comes to [`Actor::handle_signal`] as
    /// [`Signal::Exit`] instead of ending this actor. A kill cannot be trapped.
    pub fn trap_exit(&mut self, on: bool) {
        self.me.0.base.with_extras(|e| e.trap_exit = on);
    }

    /// Links this actor with `other`, both ways (Erlang's `link/1`): when either exits for good
    /// with a reason other than `Normal`, the other exits with the same reason, unless it
    /// traps exits. Linking to an actor that already exited delivers its exit at once.
    pub fn link(&mut self, other: &impl ActorHandle) {
        let other = other.any_ref();
        let me = self.me.0.clone().as_dyn();
        if other.0.base().id == me.base().id {
            return;
        }
        if let Some(r) = other.exit_reason() {
            me.base().push_sys(Sys::Exit(other, r));
            return;
        }
        let already = me.base().with_extras(|e| {
            e.links
                .iter()
                .any(|w| w.upgrade().is_some_and(|c| c.base().id == other.id()))
        });
        if already {
            return;
        }
        me.base()
            .with_extras(|e| e.links.push(Rc::downgrade(&other.0)));
        other
            .0
            .base()
            .with_extras(|e| e.links.push(Rc::downgrade(&me)));
    }

    /// Removes a link (Erlang's `unlink/1`).
    pub fn unlink(&mut self, other: &impl ActorHandle) {
        let other = other.any_ref();
        let my_id = self.me.0.base.id;
        let other_id = other.id();
        self.me.0.base.with_extras(|e| {
            e.links
                .retain(|w| w.upgrade().is_some_and(|c| c.base().id != other_id))
        });
        other.0.base().with_extras(|e| {
            e.links
                .retain(|w| w.upgrade().is_some_and(|c| c.base().id != my_id))
        });
    }

    /// Monitors `other` (Erlang's `monitor/2`): when it exits for good, this actor gets
    /// [`Signal::Down`]; at once if it already has.
    pub fn monitor(&mut self, other: &impl ActorHandle) -> MonitorId {
        let other = other.any_ref();
        let id = MonitorId(NEXT_MONITOR.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        }));
        let me = self.me.0.clone().as_dyn();
        match other.exit_reason() {
            Some(r) => me.base().push_sys(Sys::Down(id, other, r)),
            None => other
                .0
                .base()
                .with_extras(|e| e.monitors.push((id, Rc::downgrade(&me)))),
        }
        id
    }

    /// Removes a monitor (Erlang's `demonitor/1`); `false` if it had fired or was unknown.
    pub fn demonitor(&mut self, other: &impl ActorHandle, id: MonitorId) -> bool {
        other.any_ref().0.base().with_extras(|e| {
            let before = e.monitors.len();
            e.monitors.retain(|(m, _)| *m != id);
            before != e.monitors.len()
        })
    }

    /// Sends `msg` to this actor after `delay`, under `key`; an earlier timer with that key
    /// is replaced. A cancelled or replaced timer's message is never handled, even if it
    /// was already queued. All timers are cancelled when the incarnation ends.
    pub fn send_after(&mut self, key: impl Into<String>, delay: Duration, msg: A::Msg) {
        let key = key.into();
        self.cancel_timer(&key);
        let token = Rc::new(TimerToken {
            live: StdCell::new(true),
            queued: StdCell::new(0),
            interval: false,
        });
        let id = arm_once(Rc::downgrade(&self.me.0), token.clone(), delay, msg);
        self.me
            .0
            .base
            .with_extras(|e| e.timers.push(TimerEntry { key, token, id }));
    }

    /// Sends a clone of `msg` to this actor every `period`, under `key` (replacing an earlier
    /// timer with that key). A tick is skipped while the previous one is still queued. For a
    /// message that is not `Clone`, see [`send_interval_with`](Self::send_interval_with).
    pub fn send_interval(&mut self, key: impl Into<String>, period: Duration, msg: A::Msg)
    where
        A::Msg: Clone,
    {
        self.send_interval_with(key, period, move || msg.clone());
    }

    /// Sends the message `make` produces to this actor every `period`, under `key` (replacing
    /// an earlier timer with that key): [`send_interval`](Self::send_interval) for messages
    /// that are not `Clone` (they may carry a fresh [`Reply`], an `Rc` to new state, ...).
    /// `make` runs on the hub when a tick is due, only if the tick is queued (not while the
    /// previous one is still queued, nor once the timer is cancelled); it must not block. The
    /// cancel guarantee is the same: a cancelled or replaced timer's message is never handled.
    pub fn send_interval_with<F>(&mut self, key: impl Into<String>, period: Duration, make: F)
    where
        F: FnMut() -> A::Msg + 'static,
    {
        let key = key.into();
        self.cancel_timer(&key);
        let token = Rc::new(TimerToken {
            live: StdCell::new(true),
            queued: StdCell::new(0),
            interval: true,
        });
        let period = period.max(Duration::from_micros(1));
        let id = arm_interval(Rc::downgrade(&self.me.0), token.clone(), period, make);
        self.me
            .0
            .base
            .with_extras(|e| e.timers.push(TimerEntry { key, token, id }));
    }

    /// Spawns a greenlet tied to this incarnation (OTP's `spawn_link` from a process, for
    /// the linked process's side): it is killed when the incarnation ends, however it ends:
    /// a stop, a kill (also of a hibernated actor), a crash, or a restart by the supervisor
    /// (the next incarnation never sees it). A plain [`evergreen::spawn`] in a handler
    /// outlives all of that.
    ///
    /// The kill is delivered when the incarnation ends, without waiting: the greenlet unwinds
    /// at its next blocking point (its `Drop`s run). The link goes one way: the greenlet's
    /// own failure does not affect the actor (join the returned handle, or tell the actor,
    /// to learn about it). It may outlive one message, and hibernation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use evergreen_actors::{spawn, Actor, Ctx};
    ///
    /// struct Fetcher;
    /// impl Actor for Fetcher {
    ///     type Msg = &'static str;
    ///     fn handle(&mut self, url: &'static str, ctx: &mut Ctx<Self>) {
    ///         let me = ctx.myself();
    ///         ctx.spawn_linked(move || {
    ///             evergreen::sleep(Duration::from_millis(10)); // the fetch
    ///             let _ = me.tell("done");
    ///         });
    ///         let _ = url;
    ///     }
    /// }
    ///
    /// let f = spawn(Fetcher);
    /// f.tell("http://example.com/").unwrap();
    /// evergreen::sleep(Duration::ZERO);
    /// f.kill(); // the fetch greenlet dies with it
    /// ```
    #[doc(alias = "spawn_link")]
    pub fn spawn_linked<T: 'static, F: FnOnce() -> T + 'static>(
        &mut self,
        f: F,
    ) -> evergreen::Greenlet<T> {
        let g = evergreen::spawn(f);
        let h = g.handle();
        self.me.0.base.with_extras(|e| {
            // Forget the finished ones now and then (amortized O(1) per spawn).
            let n = e.linked.len();
            if n >= 16 && n.is_power_of_two() {
                e.linked.retain(|g| !g.dead());
            }
            e.linked.push(h);
        });
        g
    }

    /// Cancels the timer under `key`; its message, if already queued, is discarded. `false`
    /// if there was none.
    pub fn cancel_timer(&mut self, key: &str) -> bool {
        let t = self.me.0.base.with_extras(|e| {
            let p = e.timers.iter().position(|t| t.key == key)?;
            Some(e.timers.swap_remove(p))
        });
        match t {
            Some(t) => {
                t.token.live.set(false);
                evergreen::hub::cancel_timer(t.id);
                true
            }
            None => false,
        }
    }

    /// Whether a timer is armed under `key`.
    pub fn has_timer(&self, key: &str) -> bool {
        self.me
            .0
            .base
            .peek_extras(|e| e.is_some_and(|e| e.timers.iter().any(|t| t.key == key)))
    }
}

/// Kills the greenlets the incarnation spawned with [`Ctx::spawn_linked`] (without waiting).
fn kill_linked(base: &Base) {
    let linked = match base.extras.borrow_mut().as_deref_mut() {
        Some(e) => std::mem::take(&mut e.linked),
        None => return,
    };
    if linked.is_empty() {
        return;
    }
    let me = evergreen::getcurrent_id();
    for g in linked {
        if g.dead() {
            continue;
        }
        if g.id() == me {
            // One of them killed its own actor: it dies too, but not in the middle of this
            // bookkeeping.
            evergreen::hub::run_callback(move || g.kill_nowait());
        } else {
            g.kill_nowait();
        }
    }
}

/// Removes a delivered one-shot timer from the table.
fn timer_delivered(base: &Base, token: &Rc<dyn Token>) {
    let p = Rc::as_ptr(token) as *const ();
    base.with_extras(|e| {
        e.timers
            .retain(|t| t.token.interval || Rc::as_ptr(&t.token) as *const () != p)
    });
}

// ---------------------------------------------------------------------------------------
// Spawning and the loop

/// Options for spawning an actor: name, mailbox, registration, timing.
#[derive(Clone, Debug, Default)]
pub struct Builder {
    name: Option<String>,
    mailbox: Mailbox,
    register: bool,
    measure: bool,
    hibernate: Option<bool>,
    /// Starts with a greenlet at once (supervisors), not lazily.
    eager: bool,
}

impl Builder {
    /// Defaults: unnamed, unbounded mailbox.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the actor (and its greenlet: the name shows in dumps, logs and `LoopExit`s).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Sets the mailbox.
    pub fn mailbox(mut self, mailbox: Mailbox) -> Builder {
        self.mailbox = mailbox;
        self
    }

    /// Registers the actor under its name ([`registry`](crate::registry)).
    pub fn register(mut self) -> Builder {
        self.register = true;
        self
    }

    /// Measures the time spent in `handle` (see [`Stats::handler_time`]).
    pub fn measure_time(mut self, on: bool) -> Builder {
        self.measure = on;
        self
    }

    /// Whether the actor hibernates whenever its mailbox is empty (default: off, or what
    /// [`set_hibernate_default`] set): see the [module docs](self#hibernation-the-dispatcher-and-lazy-start). An idle
    /// hibernated actor holds no greenlet and no stack, only its state and mailbox; each
    /// wake-up from an empty mailbox costs a greenlet (on a pooled, warm stack) instead of a
    /// switch to a parked one.
    pub fn hibernate(mut self, on: bool) -> Builder {
        self.hibernate = Some(on);
        self
    }

    pub(crate) fn no_hibernation(mut self) -> Builder {
        self.hibernate = Some(false);
        self.eager = true;
        self
    }

    pub(crate) fn has_name(&self) -> bool {
        self.name.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.mailbox.cap == 0 {
            return Err(Error::Invalid(format!(
                "mailbox capacity 0 for actor {}: a bounded mailbox needs room for at least \
                 one message",
                self.name.as_deref().unwrap_or("(unnamed)")
            )));
        }
        if self.register && self.name.is_none() {
            return Err(Error::Invalid(
                "Builder::register needs a name (Builder::name)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn make_cell<A: Actor>(&self) -> Result<Rc<Cell<A>>, Error> {
        self.validate()?;
        let hibernate = self
            .hibernate
            .unwrap_or_else(|| HIBERNATE_DEFAULT.with(StdCell::get));
        let cell = Cell::<A>::new(
            self.name.clone(),
            self.mailbox,
            self.measure,
            hibernate,
            !self.eager,
        );
        if self.register {
            let name = self.name.as_deref().unwrap_or_default();
            crate::registry::register(name, &AnyRef(cell.clone()))?;
        }
        Ok(cell)
    }

    /// Spawns the actor: it starts (runs `started`) when the caller next blocks or yields, as
    /// a greenlet would, on the dispatcher (see the [module docs](self#hibernation-the-dispatcher-and-lazy-start));
    /// a supervisor on a greenlet of its own.
    pub fn spawn<A: Actor>(self, actor: A) -> Result<ActorRef<A>, Error> {
        let cell = self.make_cell::<A>()?;
        start_incarnation(&cell, actor, None);
        Ok(ActorRef(cell))
    }
}

/// Spawns `actor` with an unbounded mailbox (see [`Builder`] for the options).
pub fn spawn<A: Actor>(actor: A) -> ActorRef<A> {
    let hibernate = HIBERNATE_DEFAULT.with(StdCell::get);
    let cell = Cell::<A>::new(None, Mailbox::unbounded(), false, hibernate, true);
    start_incarnation(&cell, actor, None);
    ActorRef(cell)
}

/// Completion of a synchronous start (supervisors wait for `started` to return).
#[derive(Default)]
pub(crate) struct StartSignal {
    ev: Event,
    result: RefCell<Option<Result<(), String>>>,
}

impl StartSignal {
    fn done(&self, r: Result<(), String>) {
        if self.result.borrow().is_none() {
            *self.result.borrow_mut() = Some(r);
            self.ev.set();
        }
    }

    pub(crate) fn wait(&self) -> Result<(), String> {
        self.ev.wait();
        self.result
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Err("the start was interrupted".into()))
    }
}

/// Ends the incarnation's bookkeeping if its greenlet is dropped before it ever ran (killed
/// right after spawning).
struct NotRun<A: Actor> {
    cell: Option<Rc<Cell<A>>>,
    signal: Option<Rc<StartSignal>>,
}

impl<A: Actor> Drop for NotRun<A> {
    fn drop(&mut self) {
        if let Some(s) = self.signal.take() {
            s.done(Err("killed before it started".into()));
        }
        if let Some(cell) = self.cell.take() {
            incarnation_ended(&cell, ExitReason::Killed);
        }
    }
}

pub(crate) fn start_incarnation<A: Actor>(
    cell: &Rc<Cell<A>>,
    actor: A,
    signal: Option<Rc<StartSignal>>,
) {
    let b = &cell.base;
    b.incarnation.set(b.incarnation.get() + 1);
    b.status.set(Status::Running);
    if b.hibernate || b.lazy {
        // Born asleep: the activation that runs `started` is scheduled like any other, so
        // that spawning many actors at once does not take a stack each.
        *cell.asleep.borrow_mut() = Some(Asleep { actor, signal });
        b.starting.set(true);
        HIBERNATING.with(|h| h.set(h.get() + 1));
        b.park.set(ROUSED);
        schedule_activation(cell.clone());
        return;
    }
    let guard = NotRun {
        cell: Some(cell.clone()),
        signal,
    };
    let mut builder = evergreen::Builder::new();
    if let Some(n) = &b.name {
        builder = builder.name(&**n);
    }
    let g = builder.create(move || run(guard, actor));
    b.gid.set(g.id());
    *b.greenlet.borrow_mut() = Some(g.clone());
    g.start();
}

/// An activation of a hibernated actor: ends the incarnation as killed if its greenlet is
/// dropped before it ran.
struct Activation<A: Actor>(Option<Rc<Cell<A>>>);

impl<A: Actor> Drop for Activation<A> {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take() {
            cell.base.gid.set(0);
            let g = cell.base.greenlet.borrow_mut().take();
            cell.kill_asleep();
            drop(g);
        }
    }
}

/// The body of an activation: wakes the hibernated incarnation and runs it.
fn resume<A: Actor>(mut guard: Activation<A>) {
    let cell = guard.0.take().expect("activation cell");
    drop(guard);
    let Some(Asleep { actor, signal }) = cell.asleep.borrow_mut().take() else {
        return;
    };
    let start = cell.base.starting.replace(false).then_some(signal);
    HIBERNATING.with(|h| h.set(h.get() - 1));
    cell.base.park.set(RUN);
    cell.base.on_dispatcher.set(false);
    run_incarnation(cell, actor, start);
}

/// Counts an actor's greenlet in `RUNNING` while it runs actor code.
struct Running;

impl Running {
    #[inline]
    fn enter() -> Running {
        RUNNING.with(|r| r.set(r.get() + 1));
        Running
    }
}

impl Drop for Running {
    #[inline]
    fn drop(&mut self) {
        let _ = RUNNING.try_with(|r| r.set(r.get() - 1));
    }
}

/// Uncounts an actor's greenlet from `RUNNING` while it is parked (also if the park unwinds).
struct Parked;

impl Parked {
    #[inline]
    fn enter() -> Parked {
        RUNNING.with(|r| r.set(r.get() - 1));
        Parked
    }
}

impl Drop for Parked {
    #[inline]
    fn drop(&mut self) {
        let _ = RUNNING.try_with(|r| r.set(r.get() + 1));
    }
}

enum Outcome {
    /// Ended with a reason; `stopped` runs.
    Stopped(ExitReason),
    /// `started` failed.
    StartFailed(String),
    /// The mailbox is empty and the actor hibernates.
    Hibernate,
}

fn run<A: Actor>(mut guard: NotRun<A>, actor: A) {
    let cell = guard.cell.take().expect("incarnation cell");
    let signal = guard.signal.take();
    drop(guard);
    run_incarnation(cell, actor, Some(signal));
}

/// Runs an incarnation (`start`: `Some` if `started` is still to run) until it ends or
/// hibernates.
fn run_incarnation<A: Actor>(
    cell: Rc<Cell<A>>,
    mut actor: A,
    start: Option<Option<Rc<StartSignal>>>,
) {
    let mut ctx = Ctx {
        me: ActorRef(cell.clone()),
        stop: None,
        hibernate: false,
    };
    let _running = Running::enter();
    let starting = start.is_some();
    let signal = start.flatten();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        body(&cell, &mut actor, &mut ctx, starting, signal.as_deref())
    }));
    let reason = match outcome {
        Ok(Outcome::Hibernate) => {
            drop(ctx);
            cell.fall_asleep(actor);
            return;
        }
        Ok(Outcome::Stopped(r)) => {
            let r2 = catch_unwind(AssertUnwindSafe(|| actor.stopped(&r, &mut ctx)));
            match r2 {
                Ok(()) => r,
                Err(p) if is_kill(&*p) => ExitReason::Killed,
                Err(p) => {
                    log::error!(
                        "actor {}: its stopped hook panicked: {}",
                        cell.base.label(),
                        panic_message(&*p)
                    );
                    r
                }
            }
        }
        Ok(Outcome::StartFailed(m)) => ExitReason::StartFailed(m),
        Err(p) if is_kill(&*p) => ExitReason::Killed,
        Err(p) => ExitReason::Panicked(panic_message(&*p)),
    };
    if let Some(s) = &signal {
        s.done(Err(reason.to_string()));
    }
    if let ExitReason::Panicked(m) = &reason {
        log::error!("actor {} crashed: {m}", cell.base.label());
    }
    // The actor's own cleanup may block (a supervisor stops its children); a kill during it
    // ends the cleanup.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(actor)));
    drop(ctx);
    incarnation_ended(&cell, reason);
}

/// Runs `started`; `Some` if the incarnation ends there.
fn start<A: Actor>(
    actor: &mut A,
    ctx: &mut Ctx<A>,
    signal: Option<&StartSignal>,
) -> Option<Outcome> {
    match catch_unwind(AssertUnwindSafe(|| actor.started(ctx))) {
        Ok(Ok(())) => {
            if let Some(s) = signal {
                s.done(Ok(()));
            }
        }
        Ok(Err(e)) => {
            let m = e.to_string();
            if let Some(s) = signal {
                s.done(Err(m.clone()));
            }
            return Some(Outcome::StartFailed(m));
        }
        Err(p) if is_kill(&*p) => resume_unwind(p),
        Err(p) => {
            let m = panic_message(&*p);
            if let Some(s) = signal {
                s.done(Err(m.clone()));
            }
            return Some(Outcome::StartFailed(m));
        }
    }
    ctx.stop.take().map(Outcome::Stopped)
}

fn body<A: Actor>(
    cell: &Rc<Cell<A>>,
    actor: &mut A,
    ctx: &mut Ctx<A>,
    starting: bool,
    signal: Option<&StartSignal>,
) -> Outcome {
    if starting {
        if let Some(o) = start(actor, ctx, signal) {
            return o;
        }
    }
    let b = &cell.base;
    // Whether the incarnation hibernates when idle rather than park (the activation's place
    // does not change while it runs).
    let sleeps = b.hibernate || b.on_dispatcher.get();
    // Whether taking a message is all there is to it: no blocked tellers to hand a slot to
    // (no `Block` mailbox), no time in handler measured.
    let plain = b.space.is_none() && !b.measure;
    loop {
        // The system lane first.
        let sys = if b.sys_len.get() == 0 {
            None
        } else {
            b.sys_len.set(b.sys_len.get() - 1);
            let first = inline_stop(b.sys_first.replace(STOP_NONE));
            first.or_else(|| {
                b.extras
                    .borrow_mut()
                    .as_deref_mut()
                    .and_then(|e| e.sys.pop_front())
            })
        };
        if let Some(s) = sys {
            if let Some(r) = on_sys(b, actor, ctx, s) {
                return Outcome::Stopped(r);
            }
            if let Some(r) = ctx.stop.take() {
                return Outcome::Stopped(r);
            }
            continue;
        }
        let Some((msg, token)) = cell.user.borrow_mut().pop_msg() else {
            if sleeps || ctx.hibernate {
                // (An actor cannot park on the dispatcher: a lazily started one sleeps until
                // a user message gives it a greenlet of its own.)
                return Outcome::Hibernate;
            }
            b.park.set(PARKED);
            let parked = Parked::enter();
            let _ = b.wake.get_or_init(|| Box::new(Channel::new())).get();
            drop(parked);
            b.park.set(RUN);
            continue;
        };
        let t0 = if plain {
            None
        } else {
            cell.took_one();
            b.measure.then(evergreen::hub::now)
        };
        match token {
            None => {
                b.handled.set(b.handled.get() + 1);
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| actor.handle(msg, ctx))) {
                    if is_kill(&*p) {
                        resume_unwind(p);
                    }
                    return Outcome::Stopped(ExitReason::Panicked(panic_message(&*p)));
                }
            }
            // (Apart: the plain message's path then carries no token across the handler.)
            Some(t) => match handle_with_token(cell, actor, ctx, msg, t) {
                Next::Go => {}
                Next::Skip => continue,
                Next::Stop(o) => return o,
            },
        }
        if let Some(t0) = t0 {
            let d = evergreen::hub::now().saturating_duration_since(t0);
            b.with_extras(|e| e.busy_ns = e.busy_ns.saturating_add(d.as_nanos() as u64));
        }
        if ctx.stop.is_some() {
            return Outcome::Stopped(ctx.stop.take().expect("a stop request"));
        }
    }
}

/// What the loop does after a message with a token.
enum Next {
    /// Goes on as after any message handled.
    Go,
    /// Takes the next message at once (a cancelled timer's message was dropped).
    Skip,
    /// Ends the incarnation.
    Stop(Outcome),
}

/// Handles a message that came with a token: an ask's (the reply slot is failed if the
/// handler panics, registered with the callee if the reply handle was handed on) or a timer's
/// (dropped if the timer was cancelled or replaced since).
#[inline(always)]
fn handle_with_token<A: Actor>(
    cell: &Rc<Cell<A>>,
    actor: &mut A,
    ctx: &mut Ctx<A>,
    msg: A::Msg,
    t: Rc<dyn Token>,
) -> Next {
    let b = &cell.base;
    if !cell.user.borrow().last_ask {
        t.taken();
        if !t.live() {
            return Next::Skip;
        }
        timer_delivered(b, &t);
        drop(t);
        b.handled.set(b.handled.get() + 1);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| actor.handle(msg, ctx))) {
            if is_kill(&*p) {
                resume_unwind(p);
            }
            return Next::Stop(Outcome::Stopped(ExitReason::Panicked(panic_message(&*p))));
        }
    } else {
        b.handled.set(b.handled.get() + 1);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| actor.handle(msg, ctx))) {
            if is_kill(&*p) {
                t.fail(Error::Dead(ExitReason::Killed, ()), true);
                resume_unwind(p);
            }
            let m = panic_message(&*p);
            log::warn!(
                "actor {} panicked answering an ask (the asker gets the error; the actor lives \
                 on): {m}",
                b.label()
            );
            t.fail(Error::Panicked(m), true);
        } else if t.still_pending() {
            // The reply handle was handed on: the callee's final exit must fail it.
            t.set_registered();
            b.with_extras(|e| e.asks.push(t));
        }
    }
    Next::Go
}

fn on_sys<A: Actor>(b: &Base, actor: &mut A, ctx: &mut Ctx<A>, s: Sys) -> Option<ExitReason> {
    let signal = match s {
        Sys::Stop(r) => return Some(r),
        Sys::Exit(from, reason) => {
            let trap = b.peek_extras(|e| e.is_some_and(|e| e.trap_exit));
            if !trap {
                return (reason != ExitReason::Normal).then_some(reason);
            }
            Signal::Exit { from, reason }
        }
        Sys::Down(monitor, from, reason) => Signal::Down {
            monitor,
            from,
            reason,
        },
    };
    match catch_unwind(AssertUnwindSafe(|| actor.handle_signal(signal, ctx))) {
        Ok(()) => None,
        Err(p) if is_kill(&*p) => resume_unwind(p),
        Err(p) => Some(ExitReason::Panicked(panic_message(&*p))),
    }
}

/// An incarnation has ended: cancel its timers, then let its supervisor decide, or make the
/// exit final.
pub(crate) fn incarnation_ended<A: Actor>(cell: &Rc<Cell<A>>, reason: ExitReason) {
    let b = &cell.base;
    if b.extras.borrow().is_none() {
        // No bookkeeping (most actors): no timers to cancel, no linked greenlets to kill, no
        // parent to tell, and a `Normal` reason has nothing to record. One test, not one
        // look at the extras for each.
        b.gid.set(0);
        b.park.set(RUN);
        let g = b.greenlet.borrow_mut().take();
        drop(g);
        if !matches!(reason, ExitReason::Normal) {
            b.set_reason(&reason);
        }
        cell.finalize(reason);
        return;
    }
    cancel_timers(b);
    kill_linked(b);
    b.gid.set(0);
    b.park.set(RUN);
    let g = b.greenlet.borrow_mut().take();
    drop(g);
    b.set_reason(&reason);
    let parent = b.peek_extras(|e| e.and_then(|e| e.parent.as_ref().and_then(Weak::upgrade)));
    match parent {
        Some(p) if p.base.status() != Status::Dead => {
            b.status.set(Status::Restarting);
            supervisor::child_exited(&p, b.id, b.incarnation.get(), reason);
        }
        _ => cell.finalize(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token that only says which message it came with.
    struct Tag(u32);
    impl Token for Tag {
        fn is_ask(&self) -> bool {
            true
        }
    }

    fn tag_of(t: &Option<Rc<dyn Token>>) -> Option<u32> {
        // The only tokens these tests push are `Tag`s; find which one by address.
        t.as_ref().map(|t| {
            let p = Rc::as_ptr(t) as *const Tag;
            // (The newest entry: a freed tag's address may be reused.)
            TAGS.with(|v| {
                v.borrow()
                    .iter()
                    .rev()
                    .find(|(q, _)| *q == p)
                    .map(|(_, n)| *n)
            })
            .expect("a known tag")
        })
    }

    thread_local! {
        static TAGS: RefCell<Vec<(*const Tag, u32)>> = const { RefCell::new(Vec::new()) };
    }

    fn env(n: u32, with_token: bool) -> Envelope<u32> {
        let token = with_token.then(|| {
            let t = Rc::new(Tag(n));
            TAGS.with(|v| v.borrow_mut().push((Rc::as_ptr(&t), t.0)));
            t as Rc<dyn Token>
        });
        Envelope {
            msg: n,
            token,
            // Tokens of even messages are asks', of odd ones timers'.
            ask: with_token && n % 2 == 0,
        }
    }

    #[test]
    fn the_user_lane_gives_each_message_back_with_its_own_token() {
        // Tokens on some messages only, pushes and pops interleaved so the inline first slot,
        // the buffer and the token lane's own inline slot all take turns; every message must
        // come back in order with exactly the token it was pushed with, and whether that is an
        // ask's.
        let mut lane = UserLane::<u32>::default();
        let mut expect = VecDeque::new();
        let mut next = 0u32;
        let mut popped = 0;
        for round in 0..200u32 {
            let pushes = (round * 7) % 5 + 1;
            for _ in 0..pushes {
                let with_token = next % 3 == 0 || next % 11 == 4;
                // Both pushes: the general one and tell's and ask's (given the length).
                let e = env(next, with_token);
                if next % 4 < 2 {
                    lane.push_back(e);
                } else {
                    let len = lane.len();
                    lane.push_back_len(len, e.msg, e.token, e.ask);
                }
                expect.push_back((next, with_token));
                next += 1;
            }
            let pops = (round * 3) % 6;
            for _ in 0..pops {
                let got = lane.pop_front();
                let want = expect.pop_front();
                match (got, want) {
                    (None, None) => {}
                    (Some(e), Some((n, with_token))) => {
                        assert_eq!(e.msg, n);
                        assert_eq!(tag_of(&e.token), with_token.then_some(n), "message {n}");
                        assert_eq!(e.ask, with_token && n % 2 == 0, "message {n}");
                        popped += 1;
                    }
                    (g, w) => panic!("lane gave {:?}, expected {w:?}", g.map(|e| e.msg)),
                }
                assert_eq!(lane.len(), expect.len());
            }
        }
        // What is left comes out through the iterator (a stopping actor's leftovers).
        let rest: Vec<(u32, Option<u32>, bool)> =
            lane.map(|e| (e.msg, tag_of(&e.token), e.ask)).collect();
        let want: Vec<(u32, Option<u32>, bool)> = expect
            .into_iter()
            .map(|(n, t)| (n, t.then_some(n), t && n % 2 == 0))
            .collect();
        assert_eq!(rest, want);
        assert!(popped > 100);
    }
}
