//! Shared test harness: the workspace's own (tests/common/mod.rs: every test on its own thread
//! with a fresh hub, under a wall-clock timeout, ending with a leak check), plus `Probe`, a
//! scriptable test actor.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod base;
pub use base::*;

use std::time::Duration;

use std::cell::RefCell;
use std::rc::Rc;

use evergreen::Event;
use evergreen_actors::{Actor, ActorRef, Ctx, ExitReason, Reply, Signal};

/// Whether this run tests hibernating actors: `EVERGREEN_ACTORS_HIBERNATE=1` makes every
/// actor a test spawns hibernate when idle (supervisors excepted), so that the whole suite
/// checks that a hibernated actor behaves as a parked one.
pub fn hibernate_all() -> bool {
    std::env::var("EVERGREEN_ACTORS_HIBERNATE").is_ok_and(|v| v == "1")
}

/// The workspace harness's `run` (real clock), plus the actors' leak check: no actor may
/// stay hibernated after the test.
pub fn run<F: FnOnce() + Send + 'static>(f: F) {
    base::run(wrap(f))
}

/// The workspace harness's `run_virtual` (virtual clock), plus the actors' leak check.
pub fn run_virtual<F: FnOnce() + Send + 'static>(f: F) {
    base::run_virtual(wrap(f))
}

fn wrap<F: FnOnce() + Send + 'static>(f: F) -> impl FnOnce() + Send + 'static {
    move || {
        if hibernate_all() {
            evergreen_actors::set_hibernate_default(true);
        }
        f();
        // Let activations that were woken at the very end run.
        evergreen::sleep(Duration::ZERO);
        assert_eq!(
            evergreen_actors::hibernating(),
            0,
            "hibernated actors outlived the test"
        );
    }
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Virtual time elapsed since `t0`.
pub fn since(t0: std::time::Instant) -> Duration {
    evergreen::hub::now() - t0
}

/// A scriptable test actor: it logs `start <id>` and `stop <id> <reason>` to its log.
pub struct Probe {
    pub id: String,
    pub log: Log,
    pub fail_start: bool,
    pub kept: Vec<Reply<u32>>,
    pub signals: Rc<RefCell<Vec<String>>>,
}

impl Probe {
    pub fn new(id: &str, log: &Log) -> Probe {
        Probe {
            id: id.to_string(),
            log: log.clone(),
            fail_start: false,
            kept: Vec::new(),
            signals: Rc::default(),
        }
    }
}

/// A closure a `Probe` runs with itself and its context.
pub type Script = Box<dyn FnOnce(&mut Probe, &mut Ctx<Probe>)>;

/// What a `Probe` can be told.
pub enum P {
    /// Answers `n`.
    Echo(u32, Reply<u32>),
    /// Logs the text.
    Note(String),
    /// Panics (in a tell).
    Crash,
    /// Panics while answering an ask.
    CrashAsk(Reply<u32>),
    /// Blocks on the event.
    Wait(Rc<Event>),
    /// Sleeps.
    Sleep(Duration),
    /// Keeps the reply without answering.
    Keep(Reply<u32>),
    /// Answers every kept reply with `n`.
    AnswerKept(u32),
    /// Drops the reply unanswered.
    Drop(Reply<u32>),
    /// Stops itself (Normal) after this message.
    Stop,
    /// Stops itself with this reason.
    StopWith(ExitReason),
    /// Runs a closure with the actor and its context.
    Run(Script),
}

impl Actor for Probe {
    type Msg = P;
    fn started(&mut self, _ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        self.log.push(format!("start {}", self.id));
        if self.fail_start {
            return Err(format!("{} refuses to start", self.id).into());
        }
        Ok(())
    }
    fn handle(&mut self, msg: P, ctx: &mut Ctx<Self>) {
        match msg {
            P::Echo(n, r) => r.send(n),
            P::Note(s) => self.log.push(format!("{} got {s}", self.id)),
            P::Crash => panic!("{} crashed on purpose", self.id),
            P::CrashAsk(_r) => panic!("{} crashed answering", self.id),
            P::Wait(ev) => ev.wait(),
            P::Sleep(d) => evergreen::sleep(d),
            P::Keep(r) => self.kept.push(r),
            P::AnswerKept(n) => {
                for r in self.kept.drain(..) {
                    r.send(n)
                }
            }
            P::Drop(r) => drop(r),
            P::Stop => ctx.stop(),
            P::StopWith(r) => ctx.stop_with(r),
            P::Run(f) => f(self, ctx),
        }
    }
    fn handle_signal(&mut self, signal: Signal, _ctx: &mut Ctx<Self>) {
        let s = match signal {
            Signal::Exit { from, reason } => {
                format!("exit {} {reason}", from.name().unwrap_or("?"))
            }
            Signal::Down { from, reason, .. } => {
                format!("down {} {reason}", from.name().unwrap_or("?"))
            }
        };
        self.signals.borrow_mut().push(s.clone());
        self.log.push(format!("{} signal {s}", self.id));
    }
    fn stopped(&mut self, reason: &ExitReason, _ctx: &mut Ctx<Self>) {
        self.log.push(format!("stop {} {reason}", self.id));
    }
}

/// Spawns a named probe.
pub fn probe(id: &str, log: &Log) -> ActorRef<Probe> {
    evergreen_actors::Builder::new()
        .name(id)
        .spawn(Probe::new(id, log))
        .expect("spawn probe")
}

/// Entries of the log that start with `prefix`.
pub fn grep(log: &Log, prefix: &str) -> Vec<String> {
    log.0
        .borrow()
        .iter()
        .filter(|s| s.starts_with(prefix))
        .cloned()
        .collect()
}
