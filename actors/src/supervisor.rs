//! Supervisors (OTP's `supervisor` behaviour): start children in order, restart them by a
//! strategy, give up and escalate when they fail too often, stop them in reverse order.
//!
//! # Mechanism
//!
//! A supervisor is itself an actor ([`Supervisor`]). Its children are actor cells whose
//! *parent* is the supervisor: when a child's incarnation ends, the child does not exit for
//! good but tells its supervisor (a message on the supervisor's own mailbox, like OTP's
//! `{'EXIT', Pid, Reason}` to a supervisor trapping exits). The supervisor then decides:
//!
//! * **restart or not**: `Permanent` always, `Transient` unless the exit was orderly
//!   (`Normal`/`Shutdown`), `Temporary` never. A child that is not restarted exits for good
//!   (its links and monitors fire).
//! * **intensity**: every restart is recorded with its time; the ones older than the period
//!   are forgotten (a true sliding window, OTP's rule: more than `intensity` restarts within
//!   `period` and the supervisor gives up). Giving up stops the supervisor with
//!   [`ExitReason::Escalated`] after stopping its children; its own supervisor then decides
//!   about it.
//! * **strategy**: `OneForOne` restarts the child; `OneForAll` stops all the other children
//!   (in reverse start order) and restarts all of them (in start order); `RestForOne` does
//!   that for the children started after the failed one; `SimpleOneForOne` is one-for-one
//!   over children added at run time ([`ActorRef::start_child`]).
//! * **backoff** (optional, [`Backoff`]): the restart waits `base · 2ⁿ` (capped, with
//!   jitter) after the n-th consecutive failure of that child; a child that ran for
//!   `reset_after` counts from zero again. While it waits, the child's mailbox keeps
//!   accepting messages.
//!
//! A restart runs a new incarnation on the *same* cell, so every [`ActorRef`] to a child stays
//! valid across restarts, including when a whole subtree is restarted by an ancestor. Starts
//! are synchronous, like OTP's: a child counts as started when its `started` hook returned,
//! and the next child starts only then.
//!
//! # Differences from OTP
//!
//! * Giving up exits with [`ExitReason::Escalated`] (naming the child and its last reason)
//!   instead of `shutdown`, so that every kind of parent, `Transient` included, reacts.
//! * Backoff between restarts does not exist in OTP (it restarts at once); Akka's
//!   `BackoffSupervisor` has it. Without a [`Backoff`], restarts are immediate, as in OTP.
//! * Children keep their reference and their queued messages across restarts (Akka's
//!   behaviour); OTP children get a new pid and an empty mailbox.
//! * `SimpleOneForOne` children are stopped in reverse start order, one by one (OTP stops
//!   them concurrently).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::actor::{
    start_incarnation, Actor, ActorRef, AnyRef, Base, Builder, Cell, CellDyn, Ctx, Reply,
    StartSignal, Status,
};
use crate::error::{panic_message, Error, ExitReason};

/// How a supervisor restarts its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Stop all the others (reverse order), restart all (start order).
    OneForAll,
    /// Stop the children started after the failed one (reverse order), restart it and them.
    RestForOne,
    /// One-for-one over children added at run time, all from the caller's specs.
    SimpleOneForOne,
}

impl Strategy {
    fn erlang_name(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
            Strategy::SimpleOneForOne => "simple_one_for_one",
        }
    }
}

/// When a child is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal exit (not `Normal`/`Shutdown`).
    Transient,
    /// Never.
    Temporary,
}

/// How a child is stopped by its supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Killed at once (OTP's `brutal_kill`); `stopped` does not run.
    BrutalKill,
    /// Asked to stop; killed if it has not finished after this long.
    Timeout(Duration),
    /// Asked to stop, waited for as long as it takes (the default for supervisors).
    Infinity,
}

/// Exponential backoff between restarts of a child.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before the first restart.
    pub base: Duration,
    /// The cap.
    pub max: Duration,
    /// Random reduction, a fraction in `[0, 1]`: the delay is multiplied by
    /// `1 - jitter·r` with `r` uniform in `[0, 1)`, so it never exceeds the exponential value.
    pub jitter: f64,
    /// A child that ran at least this long before failing starts from `base` again.
    pub reset_after: Duration,
}

impl Backoff {
    /// `base · 2ⁿ` up to `max`, jitter 0.2, reset after `10 · max`.
    pub fn exponential(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            jitter: 0.2,
            reset_after: max.saturating_mul(10),
        }
    }

    /// Sets the jitter fraction (clamped to `[0, 1]`).
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Sets the stable period after which the exponent resets.
    pub fn reset_after(mut self, d: Duration) -> Backoff {
        self.reset_after = d;
        self
    }

    /// The delay after `failures` earlier consecutive failures, for a random `r` in `[0, 1)`.
    pub fn delay(&self, failures: u32, r: f64) -> Duration {
        let exp = self
            .base
            .checked_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        exp.mul_f64((1.0 - self.jitter * r.clamp(0.0, 1.0)).max(0.0))
    }
}

/// A child's cell and whether its `started` hook succeeded.
type Started = (Rc<dyn CellDyn>, Result<(), String>);

trait ChildStart {
    /// Starts (or restarts, on `existing`) the child under `parent`; waits for `started`.
    /// `Err` when no cell could be made.
    fn start(
        &self,
        existing: Option<Rc<dyn CellDyn>>,
        parent: &Rc<Cell<Supervisor>>,
        id: &str,
    ) -> Result<Started, Error>;
}

struct WorkerStart<F> {
    factory: F,
    builder: Builder,
}

impl<A: Actor, F: Fn() -> A + 'static> ChildStart for WorkerStart<F> {
    fn start(
        &self,
        existing: Option<Rc<dyn CellDyn>>,
        parent: &Rc<Cell<Supervisor>>,
        id: &str,
    ) -> Result<Started, Error> {
        let cell: Rc<Cell<A>> = match existing.and_then(|c| c.as_any().downcast::<Cell<A>>().ok()) {
            Some(c) => c,
            None => {
                let mut b = self.builder.clone();
                if !b.has_name() {
                    b = b.name(id);
                }
                b.make_cell::<A>()?
            }
        };
        cell.base
            .with_extras(|e| e.parent = Some(Rc::downgrade(parent)));
        let actor = match catch_unwind(AssertUnwindSafe(&self.factory)) {
            Ok(a) => a,
            Err(p) => {
                let m = format!("its factory panicked: {}", panic_message(&*p));
                cell.base.set_status(Status::Restarting);
                return Ok((cell, Err(m)));
            }
        };
        let sig = Rc::new(StartSignal::default());
        start_incarnation(&cell, actor, Some(sig.clone()));
        let r = sig.wait();
        Ok((cell, r))
    }
}

/// A child's specification (OTP's child spec): an id, how to make the actor, when to restart
/// it and how to stop it. Cloning shares the factory.
#[derive(Clone)]
pub struct ChildSpec {
    id: Rc<str>,
    restart: Restart,
    shutdown: Shutdown,
    supervisor: bool,
    start: Rc<dyn ChildStart>,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl ChildSpec {
    /// A worker made by `factory` at every (re)start; `Permanent`, stopped with a 5 s
    /// timeout (OTP's defaults), unbounded mailbox, named `id`.
    pub fn worker<A: Actor>(id: impl Into<String>, factory: impl Fn() -> A + 'static) -> ChildSpec {
        Self::with_builder(id, Builder::new(), factory)
    }

    /// Like [`worker`](Self::worker) with spawn options (mailbox, registration, timing; the
    /// name defaults to `id`).
    pub fn with_builder<A: Actor>(
        id: impl Into<String>,
        builder: Builder,
        factory: impl Fn() -> A + 'static,
    ) -> ChildSpec {
        let id: String = id.into();
        ChildSpec {
            id: id.into(),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            supervisor: false,
            start: Rc::new(WorkerStart { factory, builder }),
        }
    }

    /// A nested supervisor; `Permanent`, stopped with `Infinity` (OTP's defaults).
    pub fn supervisor(id: impl Into<String>, spec: SupervisorSpec) -> ChildSpec {
        let mut c = Self::with_builder(id, Builder::new().no_hibernation(), move || {
            Supervisor::new(spec.clone())
        });
        c.shutdown = Shutdown::Infinity;
        c.supervisor = true;
        c
    }

    /// Sets when it is restarted.
    pub fn restart(mut self, r: Restart) -> ChildSpec {
        self.restart = r;
        self
    }

    /// Sets how it is stopped.
    pub fn shutdown(mut self, s: Shutdown) -> ChildSpec {
        self.shutdown = s;
        self
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A supervisor's specification (OTP's `{SupFlags, ChildSpecs}`).
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    backoff: Option<Backoff>,
    children: Vec<ChildSpec>,
    seed: Option<u64>,
}

impl SupervisorSpec {
    /// A supervisor with `strategy`, intensity 1 restart per 5 s (OTP's defaults), no
    /// backoff and no children yet.
    pub fn new(strategy: Strategy) -> SupervisorSpec {
        SupervisorSpec {
            strategy,
            intensity: 1,
            period: Duration::from_secs(5),
            backoff: None,
            children: Vec::new(),
            seed: None,
        }
    }

    /// At most `restarts` restarts within any `period` (OTP's `intensity` and `period`).
    pub fn intensity(mut self, restarts: u32, period: Duration) -> SupervisorSpec {
        self.intensity = restarts;
        self.period = period;
        self
    }

    /// Waits between restarts (see [`Backoff`]).
    pub fn backoff(mut self, b: Backoff) -> SupervisorSpec {
        self.backoff = Some(b);
        self
    }

    /// Seeds the jitter's random numbers (for reproducible delays).
    pub fn seed(mut self, seed: u64) -> SupervisorSpec {
        self.seed = Some(seed);
        self
    }

    /// Adds a child; children start in the order added.
    pub fn child(mut self, c: ChildSpec) -> SupervisorSpec {
        self.children.push(c);
        self
    }

    /// Starts the supervisor and its children (in order), waiting until all have started.
    /// If one fails, those started are stopped (in reverse order) and the error names it.
    pub fn spawn(self, name: impl Into<String>) -> Result<ActorRef<Supervisor>, Error> {
        self.check()?;
        let cell = Builder::new()
            .name(name)
            .no_hibernation()
            .make_cell::<Supervisor>()?;
        let sig = Rc::new(StartSignal::default());
        start_incarnation(&cell, Supervisor::new(self), Some(sig.clone()));
        match sig.wait() {
            Ok(()) => Ok(ActorRef(cell)),
            Err(m) => Err(Error::StartFailed(format!(
                "supervisor {}: {m}",
                cell.base.label()
            ))),
        }
    }

    fn check(&self) -> Result<(), Error> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.children {
            if !seen.insert(c.id.clone()) {
                return Err(Error::Invalid(format!(
                    "two children have the id {:?}",
                    c.id
                )));
            }
        }
        if self.strategy == Strategy::SimpleOneForOne && !self.children.is_empty() {
            return Err(Error::Invalid(
                "a SimpleOneForOne supervisor starts with no children; add them with \
                 start_child"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    Running,
    Backoff(u64),
    Stopped,
}

struct Child {
    spec: ChildSpec,
    cell: Option<Rc<dyn CellDyn>>,
    state: ChildState,
    failures: u32,
    started_at: Instant,
}

/// A supervisor's state that outlives its incarnations (kept on its cell), read by the tree
/// dump.
pub(crate) struct Shared {
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    children: RefCell<Vec<Child>>,
    restarts: RefCell<VecDeque<Instant>>,
}

/// What a supervisor knows about one child ([`ActorRef::children`]).
#[derive(Clone, Debug)]
pub struct ChildInfo {
    /// Its id.
    pub id: String,
    /// Its reference (absent if it never started).
    pub actor: Option<AnyRef>,
    /// `running`, `backoff` (waiting to restart) or `stopped`.
    pub state: &'static str,
    /// Whether it is a supervisor.
    pub supervisor: bool,
    /// Its restart type.
    pub restart: Restart,
}

/// The supervisor actor. Spawn one with [`SupervisorSpec::spawn`] or as a child with
/// [`ChildSpec::supervisor`]; talk to it through [`ActorRef<Supervisor>`]'s methods.
pub struct Supervisor {
    spec: SupervisorSpec,
    shared: Option<Rc<Shared>>,
    rng: fastrand::Rng,
    next_group: u64,
}

/// The supervisor's messages (opaque: use the methods of [`ActorRef<Supervisor>`]).
pub struct SupMsg(Req);

enum Req {
    Exited {
        id: u64,
        incarnation: u32,
        reason: ExitReason,
    },
    RestartDue(u64),
    Start(ChildSpec, Reply<Result<AnyRef, Error>>),
    Terminate(String, Reply<Result<(), Error>>),
}

/// Called by a child's incarnation when it ends.
pub(crate) fn child_exited(
    parent: &Rc<Cell<Supervisor>>,
    id: u64,
    incarnation: u32,
    reason: ExitReason,
) {
    parent.push_unbounded(
        SupMsg(Req::Exited {
            id,
            incarnation,
            reason,
        }),
        None,
    );
}

impl Supervisor {
    fn new(spec: SupervisorSpec) -> Supervisor {
        let rng = match spec.seed {
            Some(s) => fastrand::Rng::with_seed(s),
            None => fastrand::Rng::new(),
        };
        Supervisor {
            spec,
            shared: None,
            rng,
            next_group: 1,
        }
    }

    fn shared(&self) -> &Rc<Shared> {
        self.shared.as_ref().expect("supervisor started")
    }

    fn child_index(&self, id: u64) -> Option<usize> {
        self.shared()
            .children
            .borrow()
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|x| x.base().id == id))
    }

    /// Starts child `i`; `Err` names it if it failed.
    fn start_child_at(&mut self, ctx: &Ctx<Self>, i: usize) -> Result<(), String> {
        let (spec, existing) = {
            let ch = self.shared().children.borrow();
            (ch[i].spec.clone(), ch[i].cell.clone())
        };
        let restarting = existing.is_some();
        let r = spec.start.start(existing, &ctx.me().0, &spec.id);
        let mut ch = self.shared().children.borrow_mut();
        let c = &mut ch[i];
        c.started_at = evergreen::hub::now();
        match r {
            Ok((cell, res)) => {
                if restarting {
                    cell.base().restarts.set(cell.base().restarts.get() + 1);
                }
                let inc = cell.base().incarnation();
                let id = cell.base().id;
                c.cell = Some(cell.clone());
                c.state = ChildState::Running;
                match res {
                    Ok(()) => Ok(()),
                    Err(m) => {
                        // A factory that panicked started no incarnation: report the exit
                        // ourselves (a failed `started` has reported it already).
                        if cell.base().status() == Status::Restarting
                            && cell.base().greenlet().is_none()
                            && m.starts_with("its factory panicked")
                        {
                            drop(ch);
                            child_exited(&ctx.me().0, id, inc, ExitReason::StartFailed(m.clone()));
                        }
                        Err(format!("child {:?} failed to start: {m}", spec.id))
                    }
                }
            }
            Err(e) => {
                c.state = ChildState::Stopped;
                Err(format!("child {:?} could not be created: {e}", spec.id))
            }
        }
    }

    /// Stops a running child (by its shutdown spec) without making its exit final.
    fn terminate_at(&self, i: usize) {
        let (cell, shutdown) = {
            let mut ch = self.shared().children.borrow_mut();
            let c = &mut ch[i];
            if c.state != ChildState::Running {
                if let ChildState::Backoff(_) = c.state {
                    c.state = ChildState::Stopped;
                }
                return;
            }
            c.state = ChildState::Stopped;
            (c.cell.clone(), c.spec.shutdown)
        };
        if let Some(cell) = cell {
            let t = match shutdown {
                Shutdown::BrutalKill => Some(Duration::ZERO),
                Shutdown::Timeout(d) => Some(d),
                Shutdown::Infinity => None,
            };
            Base::shutdown_incarnation(&cell, ExitReason::Shutdown, t);
        }
    }

    /// Records a restart; `false` if that exceeds the intensity (OTP's `add_restart`).
    fn add_restart(&self) -> bool {
        let now = evergreen::hub::now();
        let sh = self.shared();
        let mut r = sh.restarts.borrow_mut();
        r.push_back(now);
        if let Some(threshold) = now.checked_sub(sh.period) {
            while r.front().is_some_and(|t| *t < threshold) {
                r.pop_front();
            }
        }
        r.len() as u32 <= sh.intensity
    }

    fn on_exit(&mut self, ctx: &mut Ctx<Self>, id: u64, incarnation: u32, reason: ExitReason) {
        let Some(i) = self.child_index(id) else {
            return;
        };
        let (restart_type, cell, child_id) = {
            let mut ch = self.shared().children.borrow_mut();
            let c = &mut ch[i];
            let Some(cell) = c.cell.clone() else { return };
            if c.state != ChildState::Running || cell.base().incarnation() != incarnation {
                return; // an exit we caused, or an old incarnation's
            }
            c.state = ChildState::Stopped;
            (c.spec.restart, cell, c.spec.id.clone())
        };
        let restart = match restart_type {
            Restart::Permanent => true,
            Restart::Transient => !reason.is_normal(),
            Restart::Temporary => false,
        };
        if !restart {
            cell.finalize(reason);
            if restart_type == Restart::Temporary || self.spec.strategy == Strategy::SimpleOneForOne
            {
                self.shared().children.borrow_mut().remove(i);
            }
            return;
        }
        if !self.add_restart() {
            let sh = self.shared();
            log::error!(
                "supervisor {}: child {child_id:?} exited ({reason}); more than {} restart(s) in \
                 {:?}: giving up",
                ctx.me().0.base.label(),
                sh.intensity,
                sh.period
            );
            ctx.stop_with(ExitReason::Escalated(format!(
                "child {child_id:?} exited ({reason}) more than {} time(s) in {:?}",
                sh.intensity, sh.period
            )));
            return;
        }
        log::warn!(
            "supervisor {}: child {child_id:?} exited ({reason}); restarting ({})",
            ctx.me().0.base.label(),
            self.spec.strategy.erlang_name()
        );
        let n = self.shared().children.borrow().len();
        let group: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne | Strategy::SimpleOneForOne => vec![i],
            Strategy::OneForAll => {
                for j in (0..n).rev() {
                    if j != i {
                        self.terminate_at(j);
                    }
                }
                (0..n).collect()
            }
            Strategy::RestForOne => {
                for j in (i + 1..n).rev() {
                    self.terminate_at(j);
                }
                (i..n).collect()
            }
        };
        // Temporary children stopped by the strategy are not restarted: their exit is final.
        let mut restart_ids = Vec::new();
        let mut finals = Vec::new();
        {
            let ch = self.shared().children.borrow();
            for &j in &group {
                let c = &ch[j];
                if j != i && c.spec.restart == Restart::Temporary {
                    finals.push(j);
                } else if let Some(cell) = &c.cell {
                    restart_ids.push(cell.base().id);
                }
            }
        }
        for &j in finals.iter().rev() {
            let c = self.shared().children.borrow_mut().remove(j);
            if let Some(cell) = c.cell {
                let r = cell.base().last_reason().unwrap_or(ExitReason::Shutdown);
                cell.finalize(r);
            }
        }
        let delay = self.backoff_for(id);
        let group_key = self.next_group;
        self.next_group += 1;
        {
            let mut ch = self.shared().children.borrow_mut();
            for c in ch.iter_mut() {
                if c.cell
                    .as_ref()
                    .is_some_and(|x| restart_ids.contains(&x.base().id))
                {
                    c.state = ChildState::Backoff(group_key);
                }
            }
        }
        if delay.is_zero() {
            self.restart_group(ctx, group_key);
        } else {
            ctx.send_after(
                format!("restart-{group_key}"),
                delay,
                SupMsg(Req::RestartDue(group_key)),
            );
        }
    }

    fn backoff_for(&mut self, id: u64) -> Duration {
        let Some(b) = self.spec.backoff else {
            return Duration::ZERO;
        };
        let Some(i) = self.child_index(id) else {
            return Duration::ZERO;
        };
        let now = evergreen::hub::now();
        let r = self.rng.f64();
        let sh = self.shared().clone();
        let mut ch = sh.children.borrow_mut();
        let c = &mut ch[i];
        if now.saturating_duration_since(c.started_at) >= b.reset_after {
            c.failures = 0;
        }
        let d = b.delay(c.failures, r);
        c.failures = c.failures.saturating_add(1);
        d
    }

    fn restart_group(&mut self, ctx: &mut Ctx<Self>, key: u64) {
        let mut i = 0;
        loop {
            let due = {
                let ch = self.shared().children.borrow();
                if i >= ch.len() {
                    break;
                }
                ch[i].state == ChildState::Backoff(key)
            };
            if due && self.start_child_at(ctx, i).is_err() {
                // Its exit is on our mailbox; the strategy runs again from there.
                break;
            }
            i += 1;
        }
    }

    fn stop_children(&mut self) {
        let Some(sh) = self.shared.clone() else {
            return;
        };
        let n = sh.children.borrow().len();
        for i in (0..n).rev() {
            self.terminate_at(i);
        }
        if self.spec.strategy == Strategy::SimpleOneForOne {
            let gone: Vec<Child> = std::mem::take(&mut *sh.children.borrow_mut());
            for c in gone.into_iter().rev() {
                if let Some(cell) = c.cell {
                    cell.base().with_extras(|e| e.parent = None);
                    let r = cell.base().last_reason().unwrap_or(ExitReason::Shutdown);
                    cell.finalize(r);
                }
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;

    fn started(&mut self, ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        let cell = ctx.me().0.clone();
        let shared = match cell.base.tree() {
            Some(s) => s,
            None => {
                let s = Rc::new(Shared {
                    strategy: self.spec.strategy,
                    intensity: self.spec.intensity,
                    period: self.spec.period,
                    children: RefCell::new(
                        self.spec
                            .children
                            .iter()
                            .map(|spec| Child {
                                spec: spec.clone(),
                                cell: None,
                                state: ChildState::Stopped,
                                failures: 0,
                                started_at: evergreen::hub::now(),
                            })
                            .collect(),
                    ),
                    restarts: RefCell::new(VecDeque::new()),
                });
                let s2 = s.clone();
                cell.base.with_extras(|e| {
                    e.tree = Some(s.clone());
                    e.on_final.push(Box::new(move |_r: &ExitReason| {
                        let gone: Vec<Child> = std::mem::take(&mut *s2.children.borrow_mut());
                        for c in gone.into_iter().rev() {
                            if let Some(cell) = c.cell {
                                cell.base().with_extras(|e| e.parent = None);
                                match cell.base().greenlet() {
                                    // It finalizes itself when it ends (no parent now).
                                    Some(g) => g.kill_nowait(),
                                    // Hibernated: killed (and finalized) here.
                                    None if cell.base().is_asleep() => cell.kill_asleep(),
                                    None => {
                                        let r = cell
                                            .base()
                                            .last_reason()
                                            .unwrap_or(ExitReason::Shutdown);
                                        cell.finalize(r);
                                    }
                                }
                            }
                        }
                    }));
                });
                s
            }
        };
        shared.restarts.borrow_mut().clear();
        self.shared = Some(shared);
        let n = self.shared().children.borrow().len();
        for i in 0..n {
            if let Err(m) = self.start_child_at(ctx, i) {
                for j in (0..i).rev() {
                    self.terminate_at(j);
                }
                return Err(m.into());
            }
        }
        Ok(())
    }

    fn handle(&mut self, msg: SupMsg, ctx: &mut Ctx<Self>) {
        match msg.0 {
            Req::Exited {
                id,
                incarnation,
                reason,
            } => self.on_exit(ctx, id, incarnation, reason),
            Req::RestartDue(key) => self.restart_group(ctx, key),
            Req::Start(spec, reply) => {
                let exists = self
                    .shared()
                    .children
                    .borrow()
                    .iter()
                    .any(|c| c.spec.id == spec.id);
                if exists {
                    reply.send(Err(Error::Invalid(format!(
                        "supervisor {} already has a child {:?}",
                        ctx.me().0.base.label(),
                        spec.id
                    ))));
                    return;
                }
                self.shared().children.borrow_mut().push(Child {
                    spec,
                    cell: None,
                    state: ChildState::Stopped,
                    failures: 0,
                    started_at: evergreen::hub::now(),
                });
                let i = self.shared().children.borrow().len() - 1;
                match self.start_child_at(ctx, i) {
                    Ok(()) => {
                        let cell = self.shared().children.borrow()[i].cell.clone();
                        reply.send(Ok(AnyRef::from_cell(cell.expect("started child"))));
                    }
                    Err(m) => {
                        // A child that cannot start is not kept (OTP returns the error).
                        let c = self.shared().children.borrow_mut().remove(i);
                        if let Some(cell) = c.cell {
                            cell.base().with_extras(|e| e.parent = None);
                            let r = cell
                                .base()
                                .last_reason()
                                .unwrap_or(ExitReason::StartFailed(m.clone()));
                            cell.finalize(r);
                        }
                        reply.send(Err(Error::StartFailed(m)));
                    }
                }
            }
            Req::Terminate(id, reply) => {
                let i = self
                    .shared()
                    .children
                    .borrow()
                    .iter()
                    .position(|c| *c.spec.id == *id);
                let Some(i) = i else {
                    reply.send(Err(Error::Invalid(format!(
                        "supervisor {} has no child {id:?}",
                        ctx.me().0.base.label()
                    ))));
                    return;
                };
                self.terminate_at(i);
                let c = self.shared().children.borrow_mut().remove(i);
                if let Some(cell) = c.cell {
                    cell.base().with_extras(|e| e.parent = None);
                    let r = cell.base().last_reason().unwrap_or(ExitReason::Shutdown);
                    cell.finalize(r);
                }
                reply.send(Ok(()));
            }
        }
    }

    fn stopped(&mut self, _reason: &ExitReason, _ctx: &mut Ctx<Self>) {
        self.stop_children();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Killed (its `stopped` did not run): kill the children still running, in reverse
        // order, as OTP's links would.
        let Some(sh) = self.shared.clone() else {
            return;
        };
        let running: Vec<Rc<dyn CellDyn>> = sh
            .children
            .borrow()
            .iter()
            .rev()
            .filter(|c| c.state == ChildState::Running)
            .filter_map(|c| c.cell.clone())
            .collect();
        for c in running {
            Base::kill_incarnation(&c, true);
        }
        for c in sh.children.borrow_mut().iter_mut() {
            if c.state == ChildState::Running {
                c.state = ChildState::Stopped;
            }
        }
    }
}

impl ActorRef<Supervisor> {
    /// Adds and starts a child (OTP's `start_child`), waiting until it has started. For a
    /// `SimpleOneForOne` supervisor this is the only way to add children.
    pub fn start_child(&self, spec: ChildSpec) -> Result<AnyRef, Error> {
        self.ask(|r| SupMsg(Req::Start(spec, r)))?
    }

    /// [`start_child`](Self::start_child) for a worker, returning its typed reference.
    pub fn start_worker<A: Actor>(
        &self,
        id: impl Into<String>,
        factory: impl Fn() -> A + 'static,
    ) -> Result<ActorRef<A>, Error> {
        let a = self.start_child(ChildSpec::worker(id, factory))?;
        a.downcast::<A>()
            .ok_or_else(|| Error::Invalid("child of an unexpected type".into()))
    }

    /// Stops a child and removes it (OTP's `terminate_child` + `delete_child`).
    pub fn terminate_child(&self, id: &str) -> Result<(), Error> {
        let id = id.to_string();
        self.ask(|r| SupMsg(Req::Terminate(id, r)))?
    }

    /// The child with this id, if it is an `A` (valid across its restarts).
    pub fn child<A: Actor>(&self, id: &str) -> Option<ActorRef<A>> {
        let sh = self.0.base.tree()?;
        let ch = sh.children.borrow();
        let c = ch.iter().find(|c| *c.spec.id == *id)?;
        AnyRef::from_cell(c.cell.clone()?).downcast::<A>()
    }

    /// Every child, in start order (OTP's `which_children`).
    pub fn children(&self) -> Vec<ChildInfo> {
        let Some(sh) = self.0.base.tree() else {
            return Vec::new();
        };
        let ch = sh.children.borrow();
        ch.iter()
            .map(|c| ChildInfo {
                id: c.spec.id.to_string(),
                actor: c.cell.clone().map(AnyRef::from_cell),
                state: state_name(c.state),
                supervisor: c.spec.supervisor,
                restart: c.spec.restart,
            })
            .collect()
    }

    /// The supervision tree under this supervisor, as text (see [`format_tree`]).
    pub fn dump(&self) -> String {
        format_tree(&self.any())
    }
}

fn state_name(s: ChildState) -> &'static str {
    match s {
        ChildState::Running => "running",
        ChildState::Backoff(_) => "backoff",
        ChildState::Stopped => "stopped",
    }
}

/// A text dump of the supervision tree rooted at `root` (in the style of
/// `evergreen::debug::format_run_info`): one line per actor with its counters.
///
/// ```text
/// supervisor 'app' one_for_one (restarts 1/3 in 5s) running, handled 4
/// ├── worker 'db' running: handled 10, mailbox 0 (high 3), restarts 1
/// └── supervisor 'fetchers' simple_one_for_one (restarts 0/1 in 5s) running, handled 2
///     └── worker 'fetch-1' running: handled 1, mailbox 0 (high 1), restarts 0
/// ```
pub fn format_tree(root: &AnyRef) -> String {
    let mut s = String::new();
    write_node(&mut s, root.cell(), "", "", None);
    s
}

fn write_node(
    s: &mut String,
    cell: &Rc<dyn CellDyn>,
    first: &str,
    rest: &str,
    child_state: Option<&str>,
) {
    let b = cell.base();
    let st = b.stats(cell.mailbox_len());
    let status = match child_state {
        Some("backoff") => "backoff",
        _ => st.status,
    };
    match b.tree() {
        Some(sh) => {
            let now = evergreen::hub::now();
            let recent = sh
                .restarts
                .borrow()
                .iter()
                .filter(|t| now.checked_sub(sh.period).is_none_or(|th| **t >= th))
                .count();
            let _ = writeln!(
                s,
                "{first}supervisor {} {} (restarts {recent}/{} in {:?}) {status}, handled {}, restarts {}",
                b.label(),
                sh.strategy.erlang_name(),
                sh.intensity,
                sh.period,
                st.handled,
                st.restarts,
            );
            type Kid = (Option<Rc<dyn CellDyn>>, String, &'static str);
            let kids: Vec<Kid> = sh
                .children
                .borrow()
                .iter()
                .map(|c| (c.cell.clone(), c.spec.id.to_string(), state_name(c.state)))
                .collect();
            let n = kids.len();
            for (k, (cell, id, state)) in kids.into_iter().enumerate() {
                let last = k + 1 == n;
                let f = format!("{rest}{}", if last { "└── " } else { "├── " });
                let r = format!("{rest}{}", if last { "    " } else { "│   " });
                match cell {
                    Some(c) => write_node(s, &c, &f, &r, Some(state)),
                    None => {
                        let _ = writeln!(s, "{f}child {id:?} (never started)");
                    }
                }
            }
        }
        None => {
            let time = st
                .handler_time
                .map(|d| format!(", in handler {d:?}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{first}worker {} {status}: handled {}, mailbox {} (high {}), restarts {}{time}",
                b.label(),
                st.handled,
                st.mailbox_len,
                st.high_water,
                st.restarts,
            );
        }
    }
}
