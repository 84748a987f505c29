//! # evergreen
//!
//! gevent's model in Rust: **greenlets** (green threads on stackful corosensei coroutines)
//! driven by one cooperative scheduler per OS thread, the **hub**, over a mio reactor. Code is
//! written in plain blocking style; whenever a greenlet would block, it parks and the hub runs
//! another one.
//!
//! ```
//! use std::rc::Rc;
//! use std::time::Duration;
//! use evergreen::{spawn, sleep, with_timeout, Queue, Error};
//!
//! let q = Rc::new(Queue::new());
//! let producer = {
//!     let q = q.clone();
//!     spawn(move || for i in 0..3 { q.put(i).unwrap(); sleep(Duration::from_millis(1)); })
//! };
//! let got: Vec<i32> = (0..3).map(|_| q.get().unwrap()).collect();
//! assert_eq!(got, vec![0, 1, 2]);
//! producer.join();
//! assert_eq!(with_timeout(Duration::from_millis(5), || q.get()), Err(Error::Timeout(Duration::from_millis(5))));
//! ```
//!
//! # Implementation
//!
//! * [`hub`]: the scheduler. A FIFO run queue, a timer heap, a mio poll. Only the hub
//!   switches: blocking parks the greenlet (suspends its coroutine back to the hub loop);
//!   wake-ups only enqueue. Blocking from `main` runs the hub loop until the wait is satisfied,
//!   or panics with [`LoopExit`] when nothing could ever satisfy it.
//! * [`waiter`]: the one park/unpark primitive (a FIFO of waiters pinned on the waiting
//!   stacks, with direct hand-off) that every blocking object is built on.
//! * [`stack`]: pooled stacks with guard pages, 64 per mapping (`MADV_GUARD_INSTALL` keeps
//!   100k+ greenlets under Linux's default `vm.max_map_count`), and a `SIGSEGV` handler that
//!   names the greenlet whose stack overflowed.
//! * Kill and scoped [`Timeout`]s unwind the victim's stack from its blocking point, so every
//!   `Drop` runs.
//! * [`reactor`]: each fd registered once with epoll (edge-triggered), readiness kept until an
//!   operation reports `WouldBlock`; one reader and one writer per fd. [`net`] builds sockets on
//!   it; [`monkey`] makes *unmodified* blocking code (std, socket2, the `mysql` crate) use it.
//!
//! # gevent → evergreen
//!
//! | gevent | evergreen | semantic differences |
//! |---|---|---|
//! | `gevent.spawn`, `spawn_later` | [`spawn`], [`spawn_later`], [`Builder`] | typed result `T`; name and stack size set on the `Builder` |
//! | `Greenlet(run)`, `start`, `start_later` | [`Greenlet::new`], [`Greenlet::start`], [`Greenlet::start_later`] | |
//! | `g.join(timeout)` | [`Greenlet::join`], [`Greenlet::join_timeout`] (returns whether it finished) | |
//! | `g.get()` | [`Greenlet::get`] (`T: Clone`), [`Greenlet::into_result`] | a killed greenlet gives `Err(Error::Killed)`, not the `GreenletExit` value |
//! | `g.kill(exception, block, timeout)`, `g.throw` | [`Greenlet::kill`], [`Greenlet::kill_timeout`], [`Greenlet::kill_nowait`], [`Greenlet::kill_with`], [`Greenlet::throw`] | a kill arriving after the victim's wait completed is delivered at its next blocking point |
//! | `GreenletExit` | [`GreenletExit`] (unwinding payload), [`Error::Killed`] | counts as success, as in gevent |
//! | `gevent.killall(block)`, `joinall` | [`killall`], [`killall_nowait`], [`joinall`], [`joinall_timeout`], [`joinall_raise`] | |
//! | `g.link`, `link_value`, `link_exception`, `rawlink`, `unlink`, `unlink_all`, `has_links` | same names on [`Greenlet`], and [`Greenlet::link_count`] | links and joiners notified in registration order, one at a time |
//! | `ready()`, `successful()`, `dead`, `value`, `exception` | same names | `exception()` is an [`Error`] |
//! | `gevent.getcurrent()` | [`getcurrent`] | returns the root context in hub callbacks (gevent: the hub) |
//! | `id(gevent.getcurrent())` | [`getcurrent_id`] | the greenlet's small id, no handle made |
//! | `gevent.sleep`, `sleep(0)`, `idle`, `gevent.wait()` | [`sleep`], `sleep(Duration::ZERO)`, [`idle`], [`hub::wait_until_done`] | |
//! | `Timeout`, `Timeout.start_new`, `with_timeout` | [`Timeout`], [`Timeout::start_new`], [`Timeout::run`], [`with_timeout`] | the expiry is always [`TimeoutExpired`]; caught by `run`/`with_timeout` |
//! | `Event`, `AsyncResult` | [`Event`], [`AsyncResult`] | `AsyncResult::get_nowait` on an empty result is `Err(Error::Empty)` |
//! | `Semaphore`, `BoundedSemaphore`, `RLock` | [`Semaphore`], [`BoundedSemaphore`], [`RLock`] (all [`Waitable`]) | strict FIFO hand-off: no barging |
//! | `Queue`, `JoinableQueue`, `LifoQueue`, `PriorityQueue`, `Channel` | [`Queue`] (joinable), [`LifoQueue`], [`PriorityQueue`], [`Channel`] | `maxsize=0` is not unbounded: use `Queue::new` / `Channel`; `shutdown` as in Python 3.13 |
//! | `gevent.wait`, `iwait` | [`wait()`], [`iwait`] | return indices into the slice given |
//! | `Group`, `Pool`, `PoolFull` | [`Group`], [`Pool`], [`Error::PoolFull`] | |
//! | `gevent.local.local` | [`Local`] | one typed value per greenlet, made by an initialiser |
//! | `LoopExit` | [`LoopExit`] panic payload, printed with what was pending | |
//! | `ConcurrentObjectUseError`, `BlockingSwitchOutError` | [`Error::ConcurrentObjectUse`], a [`LoopExit`] panic | |
//! | `hub.destroy()` | [`hub::destroy`] | also runs at thread exit |
//! | `gevent.util.format_run_info` | [`debug::format_run_info`], [`debug::run_info`] | |
//! | `config.monitor_thread`, `max_blocking_time` | [`monitor`], `EVERGREEN_MONITOR`, `EVERGREEN_MONITOR_THRESHOLD_MS` | |
//! | `gevent._config` | [`config`], `EVERGREEN_*` variables | |
//! | `gevent.socket` (`create_connection`, `socket`) | [`net::TcpStream`], [`net::TcpListener`], [`net::UdpSocket`], [`net::UnixStream`], [`net::UnixListener`] | `std::io::Read`/`Write`; per-direction timeouts give `io::ErrorKind::TimedOut`; `close()` wakes a blocked greenlet with `EBADF` |
//! | `gevent.server.StreamServer` | [`net::StreamServer`] (TLS with the `tls` feature) | `stop(timeout)` returns how many handlers it had to kill |
//! | `gevent.resolver` | [`net::dns`] | a stub resolver of its own (hosts file, UDP, TCP on truncation); no nsswitch |
//! | `gevent.socket.wait_read`, `wait_write` | [`wait_read`], [`wait_write`] | may return spuriously; retry the operation |
//! | `gevent.monkey.patch_all`, `patch_socket`, `patch_time`, `is_anything_patched`, `get_original` | [`monkey::patch_all`], [`monkey::patch_socket`], [`monkey::patch_time`], [`monkey::is_patched`], [`monkey::original`] | works at the libc level (`#[no_mangle]` hooks); glibc-internal calls (`getaddrinfo`) are not covered |
//! | `gevent.signal_handler` | [`signal::signal_handler`] | keep the returned handle; dropping it unregisters |
//!
//! Everything is single-threaded: handles are `!Send`, and each OS thread that uses evergreen
//! gets its own hub.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod debug;
pub mod error;
pub mod event;
pub mod greenlet;
pub mod hub;
pub mod local;
pub mod lock;
pub mod monitor;
pub mod monkey;
pub mod net;
pub mod pool;
pub mod queue;
pub mod reactor;
pub mod signal;
pub mod stack;
pub mod timeout;
pub mod timer;
pub mod wait;
pub mod waiter;

pub use error::{Error, GreenletExit, LoopExit, Rejected};
pub use event::{AsyncResult, Event};
pub use greenlet::{
    getcurrent, getcurrent_id, joinall, joinall_raise, joinall_timeout, killall, killall_nowait,
    spawn, spawn_later, Builder, Greenlet, GreenletRef,
};
pub use local::Local;
pub use lock::{BoundedSemaphore, RLock, Semaphore, SemaphoreGuard};
pub use pool::{Group, IMap, Pool};
pub use queue::{BaseQueue, Channel, Fifo, Lifo, LifoQueue, Priority, PriorityQueue, Queue, Store};
pub use reactor::{wait_read, wait_write};
pub use timeout::{idle, sleep, with_timeout, Timeout, TimeoutExpired};
pub use wait::{iwait, wait, IWait};
pub use waiter::{LinkId, Waitable};
