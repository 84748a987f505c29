//! # evergreen-actors
//!
//! Actors with OTP-grade supervision on the [`evergreen`] runtime. The gevent sample
//! this project grew from defines an actor as a greenlet with a FIFO inbox and a `receive`
//! loop, and asks what it lacks: "how should we manage fault tolerance? Do we have a
//! supervisor strategy? Who's monitoring that process?" This crate keeps the shape (an actor
//! is a greenlet pulling from a `VecDeque` inbox) and adds the answers, with Erlang/OTP's
//! semantics where they are the best available.
//!
//! ```
//! use std::time::Duration;
//! use evergreen_actors::{Actor, Ctx, Reply, ChildSpec, SupervisorSpec, Strategy};
//!
//! struct Counter(u64);
//! enum Msg { Add(u64), Get(Reply<u64>), Crash }
//!
//! impl Actor for Counter {
//!     type Msg = Msg;
//!     fn handle(&mut self, msg: Msg, _ctx: &mut Ctx<Self>) {
//!         match msg {
//!             Msg::Add(n) => self.0 += n,
//!             Msg::Get(r) => r.send(self.0),
//!             Msg::Crash => panic!("boom"),
//!         }
//!     }
//! }
//!
//! let sup = SupervisorSpec::new(Strategy::OneForOne)
//!     .intensity(3, Duration::from_secs(5))
//!     .child(ChildSpec::worker("counter", || Counter(0)))
//!     .spawn("app")
//!     .unwrap();
//! let c = sup.child::<Counter>("counter").unwrap();
//! c.tell(Msg::Add(5)).unwrap();
//! assert_eq!(c.ask(Msg::Get), Ok(5));
//! c.tell(Msg::Crash).unwrap();          // crashes; the supervisor restarts it
//! assert_eq!(c.ask(Msg::Get), Ok(0));   // same reference, fresh state
//! assert_eq!(c.stats().restarts, 1);
//! sup.shutdown(Duration::from_secs(1)).unwrap();
//! ```
//!
//! # Map
//!
//! | here | gevent sample | Erlang/OTP | Akka |
//! |---|---|---|---|
//! | [`Actor`] (`started`, `handle`, `handle_signal`, `stopped`) | `Actor` (`receive`) | `gen_server` (`init`, `handle_call`/`handle_cast`/`handle_info`, `terminate`) | `Actor` (`preStart`, `receive`, `postStop`) |
//! | [`spawn`], [`Builder`] | `Actor().start()` | `gen_server:start` | `actorOf(Props)` |
//! | [`ActorRef::tell`], [`try_tell`](ActorRef::try_tell) | `inbox.put` | `!`, `gen_server:cast` | `tell` / `!` |
//! | [`ActorRef::ask`], [`ask_timeout`](ActorRef::ask_timeout), [`Reply`] | — | `gen_server:call`, `reply/2` | `ask` / `?` |
//! | [`Mailbox`], [`Policy`] | the `Queue` inbox | (unbounded) | bounded mailboxes |
//! | [`ActorRef::stop`], [`kill`](ActorRef::kill), [`shutdown`](ActorRef::shutdown) | `greenlet.kill` | `gen_server:stop`, `exit(P, kill)`, shutdown timeout | `stop`, `PoisonPill`, `Kill` |
//! | [`Ctx::link`], [`Ctx::monitor`], [`Ctx::trap_exit`], [`Signal`] | `link` | `link`, `monitor`, `trap_exit`, `'EXIT'`/`'DOWN'` | `watch`, `Terminated` |
//! | [`ExitReason`] | — | exit reasons | — |
//! | [`SupervisorSpec`], [`ChildSpec`], [`Strategy`], [`Restart`], [`Shutdown`] | — | `supervisor` | `SupervisorStrategy` |
//! | [`Backoff`] | — | — | `BackoffSupervisor` |
//! | [`registry`] | — | `register`, `whereis` | actor paths |
//! | [`dead_letters`] | — | — | `DeadLetter` |
//! | [`Ctx::send_after`], [`Ctx::send_interval`], [`send_interval_with`](Ctx::send_interval_with) | — | `erlang:send_after`, `timer:send_interval` | timers |
//! | [`Builder::hibernate`], [`Ctx::hibernate`], [`hibernating`] | — | `erlang:hibernate/3`, gen_server's `hibernate` | — |
//! | [`Ctx::spawn_linked`] | `gevent.spawn` in `receive` | `spawn_link` | child actors' lifecycle |
//! | [`Stats`], [`format_tree`] | — | `sys:get_status`, observer | — |
//!
//! The semantic differences are named in each module: [`actor`](actor#differences-from-erlangotp-gen_server-and-akka)
//! and [`supervisor`](supervisor#differences-from-otp).
//!
//! Everything runs on the hub's thread: references are `Rc`-based and nothing is `Send`.
#![forbid(unsafe_code)]

pub mod actor;
pub mod dead_letters;
pub mod error;
pub mod registry;
pub mod supervisor;

pub use actor::{
    hibernating, set_hibernate_default, spawn, Actor, ActorHandle, ActorRef, AnyRef, Builder, Ctx,
    Mailbox, MonitorId, Policy, Reply, Signal, Stats,
};
pub use error::{Error, ExitReason};
pub use supervisor::{
    format_tree, Backoff, ChildInfo, ChildSpec, Restart, Shutdown, Strategy, SupMsg, Supervisor,
    SupervisorSpec,
};
