//! The shared "honours its timeout" suite (gevent's generic timeout tests): one check, run
//! against every evergreen API that takes a timeout, under the virtual clock.
//!
//! For each API a [`Fixture`] sets up the object fresh, and four scenarios run on it:
//!
//! * **expires**: nothing satisfies the wait, so the call returns its timeout result (the exact
//!   error, `false`, or the rejected item) after *exactly* the timeout in hub time, leaves no
//!   waiter registered on the object and no timer on the hub;
//! * **satisfied**: another greenlet satisfies the wait halfway through, so the call returns
//!   success at that instant and its timer is cancelled at once;
//!
//! each from the root context and from inside a greenlet. Below the table are the queue
//! properties that make timeouts safe: a getter whose timeout fired never swallows a later
//! item, and a value handed over at the very instant the timeout would fire is never lost.

mod common;

use std::rc::Rc;
use std::time::Duration;

use evergreen::hub::{now, timer_count};
use evergreen::{
    iwait, joinall_raise, joinall_timeout, killall, sleep, spawn, wait, with_timeout, AsyncResult,
    BoundedSemaphore, Builder, Channel, Error, Event, Greenlet, LifoQueue, Pool, PriorityQueue,
    Queue, RLock, Rejected, Semaphore, Timeout, Waitable,
};

/// The timeout every scenario uses.
const T: Duration = Duration::from_millis(100);

/// How a call under test ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The API's success result (with the exact value expected).
    Success,
    /// The API's exact timeout result.
    TimedOut,
}

/// One API that takes a timeout, set up on a fresh object.
struct Fixture {
    /// Calls the API once with the given timeout and classifies its result; any result
    /// that is neither the exact success nor the exact timeout result panics.
    call: Box<dyn Fn(Duration) -> Outcome>,
    /// Satisfies the wait; run from another greenlet. `None` for `sleep`.
    satisfy: Option<Box<dyn FnOnce()>>,
    /// Asserts that no waiter is left registered on the object.
    no_waiters: Box<dyn Fn()>,
    /// Releases the fixture's helper greenlets and joins them, so nothing outlives the test.
    finish: Box<dyn FnOnce()>,
}

impl Fixture {
    fn new(call: impl Fn(Duration) -> Outcome + 'static) -> Fixture {
        Fixture {
            call: Box::new(call),
            satisfy: None,
            no_waiters: Box::new(|| {}),
            finish: Box::new(|| {}),
        }
    }
    fn satisfy(mut self, f: impl FnOnce() + 'static) -> Fixture {
        self.satisfy = Some(Box::new(f));
        self
    }
    fn no_waiters(mut self, f: impl Fn() + 'static) -> Fixture {
        self.no_waiters = Box::new(f);
        self
    }
    fn finish(mut self, f: impl FnOnce() + 'static) -> Fixture {
        self.finish = Box::new(f);
        self
    }
}

/// `true` → success, `false` → timed out (APIs that return whether they succeeded).
fn flag(ok: bool) -> Outcome {
    if ok {
        Outcome::Success
    } else {
        Outcome::TimedOut
    }
}

/// Classifies `Result<T, Error>`: `Ok(expected)` or exactly `Err(Error::Timeout(t))`.
fn exact<V: PartialEq + std::fmt::Debug>(r: Result<V, Error>, expected: V, t: Duration) -> Outcome {
    match r {
        Ok(v) if v == expected => Outcome::Success,
        Err(Error::Timeout(d)) if d == t => Outcome::TimedOut,
        other => panic!("expected Ok({expected:?}) or Err(Timeout({t:?})), got {other:?}"),
    }
}

// ---- the scenarios ----------------------------------------------------------------------------

/// Nothing satisfies the wait: the timeout result after exactly `T`, no waiter, no timer.
fn expires(make: fn() -> Fixture) {
    let f = make();
    assert_eq!(timer_count(), 0, "the fixture's set-up left a timer");
    let t0 = now();
    let out = (f.call)(T);
    let elapsed = now() - t0;
    assert_eq!(
        out,
        Outcome::TimedOut,
        "the call did not report its timeout"
    );
    assert_eq!(
        elapsed, T,
        "the timeout did not fire after exactly {T:?} of hub time"
    );
    assert_eq!(timer_count(), 0, "a timer outlived the timed-out call");
    (f.no_waiters)();
    (f.finish)();
}

/// Another greenlet satisfies the wait after `T / 2`: success at that instant, and the call's
/// timer is cancelled right away.
fn satisfied(make: fn() -> Fixture) {
    let mut f = make();
    let Some(satisfy) = f.satisfy.take() else {
        return;
    };
    assert_eq!(timer_count(), 0, "the fixture's set-up left a timer");
    let helper = Builder::new().name("satisfier").spawn(move || {
        sleep(T / 2);
        satisfy();
    });
    let t0 = now();
    let out = (f.call)(T);
    let elapsed = now() - t0;
    assert_eq!(out, Outcome::Success, "the call did not succeed");
    assert_eq!(
        elapsed,
        T / 2,
        "the call did not return when it was satisfied"
    );
    assert_eq!(timer_count(), 0, "the call's timer was not cancelled");
    (f.no_waiters)();
    helper.join();
    assert!(
        helper.successful(),
        "the satisfier failed: {:?}",
        helper.exception()
    );
    (f.finish)();
}

/// Runs a scenario inside a greenlet and re-raises its failure in the root.
fn in_greenlet(scenario: fn(fn() -> Fixture), make: fn() -> Fixture) {
    let g = Builder::new()
        .name("timeout-suite")
        .spawn(move || scenario(make));
    if let Err(e) = g.get() {
        panic!("scenario failed inside a greenlet: {e}");
    }
}

fn run_all_scenarios(make: fn() -> Fixture) {
    common::run_virtual(move || {
        expires(make);
        satisfied(make);
        in_greenlet(expires, make);
        in_greenlet(satisfied, make);
    });
}

// ---- helpers for the fixtures -----------------------------------------------------------------

/// Spawns a greenlet that blocks on `ev` and returns `value`; lets it start and park.
fn blocked_on<V: 'static>(ev: &Rc<Event>, value: V) -> Greenlet<V> {
    let ev = ev.clone();
    let g = spawn(move || {
        ev.wait();
        value
    });
    common::settle();
    assert!(!g.ready() && g.started(), "the helper did not park");
    g
}

/// Blocks in its `Drop` until `release` is set: a kill victim whose cleanup blocks.
struct BlockingCleanup(Rc<Event>);

impl Drop for BlockingCleanup {
    fn drop(&mut self) {
        self.0.wait();
    }
}

/// A greenlet parked forever (until killed) whose cleanup then blocks until `release` is set.
fn stubborn_victim(release: &Rc<Event>) -> Greenlet<()> {
    let release = release.clone();
    let g = Builder::new().name("stubborn victim").spawn(move || {
        let _cleanup = BlockingCleanup(release);
        Event::new().wait();
    });
    common::settle();
    assert!(!g.ready() && g.started(), "the victim did not park");
    g
}

// ---- the fixtures: one per API ----------------------------------------------------------------

fn greenlet_join_timeout() -> Fixture {
    let ev = Rc::new(Event::new());
    let g = blocked_on(&ev, ());
    let (g2, ev2) = (g.clone(), ev.clone());
    Fixture::new(move |t| flag(g.join_timeout(t)))
        .satisfy(move || ev.set())
        .finish(move || {
            ev2.set();
            g2.join();
        })
}

fn greenlet_get_timeout() -> Fixture {
    let ev = Rc::new(Event::new());
    let g = blocked_on(&ev, 9u32);
    let (g2, ev2) = (g.clone(), ev.clone());
    Fixture::new(move |t| exact(g.get_timeout(t), 9, t))
        .satisfy(move || ev.set())
        .finish(move || {
            ev2.set();
            assert_eq!(g2.get(), Ok(9));
        })
}

fn greenlet_kill_timeout() -> Fixture {
    let release = Rc::new(Event::new());
    let v = stubborn_victim(&release);
    let (v2, r2) = (v.clone(), release.clone());
    Fixture::new(move |t| flag(v.kill_timeout(t)))
        .satisfy(move || release.set())
        .finish(move || {
            r2.set();
            v2.join();
            assert_eq!(v2.exception(), Some(Error::Killed));
        })
}

fn greenlet_ref_join_timeout() -> Fixture {
    let ev = Rc::new(Event::new());
    let g = blocked_on(&ev, ());
    let h = g.handle();
    let ev2 = ev.clone();
    Fixture::new(move |t| flag(h.join_timeout(t)))
        .satisfy(move || ev.set())
        .finish(move || {
            ev2.set();
            g.join();
        })
}

fn event_wait_timeout() -> Fixture {
    let ev = Rc::new(Event::new());
    let (e1, e2) = (ev.clone(), ev.clone());
    Fixture::new(move |t| flag(ev.wait_timeout(t)))
        .satisfy(move || e1.set())
        .no_waiters(move || assert_eq!(e2.waiter_count(), 0, "Event waiter left behind"))
}

fn async_result_get_timeout() -> Fixture {
    let r = Rc::new(AsyncResult::<u32>::new());
    let r1 = r.clone();
    Fixture::new(move |t| exact(r.get_timeout(t), 5, t)).satisfy(move || r1.set(5))
}

fn async_result_wait_timeout() -> Fixture {
    let r = Rc::new(AsyncResult::<u32>::new());
    let (r1, r2) = (r.clone(), r.clone());
    Fixture::new(move |t| flag(r.wait_timeout(t)))
        .satisfy(move || r1.set(5))
        .finish(move || {
            if r2.ready() {
                assert_eq!(r2.get_nowait(), Ok(5));
            } else {
                assert_eq!(r2.get_nowait(), Err(Error::Empty));
            }
        })
}

fn semaphore_acquire_timeout() -> Fixture {
    let s = Rc::new(Semaphore::new(0));
    let (s1, s2, s3) = (s.clone(), s.clone(), s.clone());
    Fixture::new(move |t| flag(s.acquire_timeout(t)))
        .satisfy(move || s1.release())
        .no_waiters(move || assert_eq!(s2.waiter_count(), 0, "Semaphore waiter left behind"))
        .finish(move || assert_eq!(s3.count(), 0, "a permit was lost or duplicated"))
}

fn semaphore_wait_timeout() -> Fixture {
    let s = Rc::new(Semaphore::new(0));
    let (s1, s2) = (s.clone(), s.clone());
    Fixture::new(move |t| match s.wait_timeout(Some(t)) {
        0 => Outcome::TimedOut,
        1 => Outcome::Success,
        n => panic!("Semaphore::wait_timeout returned {n}"),
    })
    .satisfy(move || s1.release())
    .finish(move || assert!(s2.count() <= 1))
}

fn bounded_semaphore_acquire_timeout() -> Fixture {
    let s = Rc::new(BoundedSemaphore::new(1));
    assert!(s.acquire_nowait());
    let (s1, s2) = (s.clone(), s.clone());
    Fixture::new(move |t| flag(s.acquire_timeout(t)))
        .satisfy(move || s1.release().expect("release below the bound"))
        .finish(move || {
            // Whoever holds the one permit gives it back; a second release is refused.
            assert_eq!(s2.count(), 0);
            assert_eq!(s2.release(), Ok(()));
            assert_eq!(s2.release(), Err(Error::ReleasedTooManyTimes));
        })
}

fn rlock_acquire_timeout_held_by_another() -> Fixture {
    let lock = Rc::new(RLock::new());
    let release = Rc::new(Event::new());
    let holder = {
        let (lock, release) = (lock.clone(), release.clone());
        let g = Builder::new().name("lock holder").spawn(move || {
            lock.acquire();
            release.wait();
            lock.release().expect("the holder owns the lock");
        });
        common::settle();
        g
    };
    assert!(lock.locked());
    let (r1, r2, l2) = (release.clone(), release.clone(), lock.clone());
    Fixture::new(move |t| {
        let got = lock.acquire_timeout(t);
        if got {
            lock.release()
                .expect("the caller owns the lock it acquired");
        }
        flag(got)
    })
    .satisfy(move || r1.set())
    .finish(move || {
        r2.set();
        holder.join();
        assert!(holder.successful());
        assert!(!l2.locked());
    })
}

fn queue_get_timeout() -> Fixture {
    let q = Rc::new(Queue::<u32>::new());
    let (q1, q2, q3) = (q.clone(), q.clone(), q.clone());
    Fixture::new(move |t| exact(q.get_timeout(t), 42, t))
        .satisfy(move || q1.put(42).expect("put"))
        .no_waiters(move || assert_eq!(q2.getter_count(), 0, "Queue getter left behind"))
        .finish(move || assert!(q3.is_empty()))
}

fn queue_put_timeout_bounded_full() -> Fixture {
    let q = Rc::new(Queue::<u32>::bounded(1));
    q.put(1).expect("room for one");
    let (q1, q2, q3) = (q.clone(), q.clone(), q.clone());
    Fixture::new(move |t| match q.put_timeout(7, t) {
        Ok(()) => Outcome::Success,
        Err(Rejected {
            item: 7,
            reason: Error::Timeout(d),
        }) if d == t => Outcome::TimedOut,
        Err(other) => {
            panic!("expected Rejected {{ item: 7, reason: Timeout({t:?}) }}, got {other:?}")
        }
    })
    .satisfy(move || assert_eq!(q1.get(), Ok(1)))
    .no_waiters(move || assert_eq!(q2.putter_count(), 0, "Queue putter left behind"))
    .finish(move || {
        // Exactly one item is queued: the first one, or 7 if it was put.
        assert_eq!(q3.qsize(), 1);
        let item = q3.get_nowait().expect("one item");
        assert!(item == 1 || item == 7, "unexpected item {item}");
    })
}

fn queue_peek_timeout() -> Fixture {
    let q = Rc::new(Queue::<u32>::new());
    let (q1, q2) = (q.clone(), q.clone());
    Fixture::new(move |t| exact(q.peek_timeout(t), 3, t))
        .satisfy(move || q1.put(3).expect("put"))
        .finish(move || {
            // peek does not take the item.
            match q2.qsize() {
                0 => {}
                1 => assert_eq!(q2.get_nowait(), Ok(3)),
                n => panic!("{n} items after a peek"),
            }
        })
}

fn queue_join_timeout() -> Fixture {
    let q = Rc::new(Queue::<u32>::new());
    q.put(1).expect("put");
    let (q1, q2) = (q.clone(), q.clone());
    Fixture::new(move |t| flag(q.join_timeout(t)))
        .satisfy(move || {
            assert_eq!(q1.get(), Ok(1));
            q1.task_done().expect("one task");
        })
        .finish(move || {
            if q2.unfinished_tasks() == 1 {
                assert_eq!(q2.get_nowait(), Ok(1));
                q2.task_done().expect("one task");
            }
            assert_eq!(q2.unfinished_tasks(), 0);
        })
}

fn priority_queue_get_timeout() -> Fixture {
    let q = Rc::new(PriorityQueue::<u32>::new());
    let (q1, q2) = (q.clone(), q.clone());
    Fixture::new(move |t| exact(q.get_timeout(t), 4, t))
        .satisfy(move || q1.put(4).expect("put"))
        .no_waiters(move || assert_eq!(q2.getter_count(), 0))
}

fn lifo_queue_get_timeout() -> Fixture {
    let q = Rc::new(LifoQueue::<u32>::new());
    let (q1, q2) = (q.clone(), q.clone());
    Fixture::new(move |t| exact(q.get_timeout(t), 4, t))
        .satisfy(move || q1.put(4).expect("put"))
        .no_waiters(move || assert_eq!(q2.getter_count(), 0))
}

fn channel_get_timeout() -> Fixture {
    let ch = Rc::new(Channel::<u32>::new());
    let (c1, c2) = (ch.clone(), ch.clone());
    Fixture::new(move |t| exact(ch.get_timeout(t), 8, t))
        .satisfy(move || c1.put(8).expect("a getter is waiting"))
        .no_waiters(move || {
            assert_eq!(c2.getter_count(), 0, "Channel getter left behind");
            assert_eq!(c2.putter_count(), 0);
        })
}

fn channel_put_timeout() -> Fixture {
    let ch = Rc::new(Channel::<u32>::new());
    let (c1, c2) = (ch.clone(), ch.clone());
    Fixture::new(move |t| match ch.put_timeout(8, t) {
        Ok(()) => Outcome::Success,
        Err(Rejected {
            item: 8,
            reason: Error::Timeout(d),
        }) if d == t => Outcome::TimedOut,
        Err(other) => {
            panic!("expected Rejected {{ item: 8, reason: Timeout({t:?}) }}, got {other:?}")
        }
    })
    .satisfy(move || assert_eq!(c1.get(), Ok(8)))
    .no_waiters(move || {
        assert_eq!(c2.putter_count(), 0, "Channel putter left behind");
        assert_eq!(
            c2.get_nowait(),
            Err(Error::Empty),
            "the item stayed in the channel"
        );
    })
}

/// A pool of one whose member blocks on the returned event.
fn full_pool() -> (Pool, Rc<Event>, Greenlet<()>) {
    let pool = Pool::new(1);
    let ev = Rc::new(Event::new());
    let e = ev.clone();
    let member = pool.spawn(move || e.wait());
    common::settle();
    assert!(pool.full());
    (pool, ev, member)
}

fn pool_join_timeout() -> Fixture {
    let (pool, ev, member) = full_pool();
    let (p2, ev2) = (pool.clone(), ev.clone());
    Fixture::new(move |t| flag(pool.join_timeout(t)))
        .satisfy(move || ev.set())
        .finish(move || {
            ev2.set();
            p2.join();
            assert!(member.ready() && p2.is_empty());
        })
}

fn pool_wait_available() -> Fixture {
    let (pool, ev, member) = full_pool();
    let (p2, ev2) = (pool.clone(), ev.clone());
    Fixture::new(move |t| match pool.wait_available(Some(t)) {
        0 => Outcome::TimedOut,
        1 => Outcome::Success,
        n => panic!("Pool::wait_available returned {n}"),
    })
    .satisfy(move || ev.set())
    .finish(move || {
        ev2.set();
        p2.join();
        assert!(member.ready());
        assert_eq!(p2.free_count(), 1);
    })
}

fn iwait_timeout() -> Fixture {
    let ev = Rc::new(Event::new());
    let (e1, e2) = (ev.clone(), ev.clone());
    Fixture::new(move |t| {
        let objs: [&dyn Waitable; 1] = [&*ev];
        let got: Vec<usize> = iwait(&objs, Some(t)).collect();
        match got.as_slice() {
            [] => Outcome::TimedOut,
            [0] => Outcome::Success,
            other => panic!("iwait yielded {other:?}"),
        }
    })
    .satisfy(move || e1.set())
    .no_waiters(move || assert_eq!(e2.waiter_count(), 0))
}

fn wait_timeout() -> Fixture {
    let a = Rc::new(Event::new());
    let b = Rc::new(AsyncResult::<u8>::new());
    let (a1, b1) = (a.clone(), b.clone());
    Fixture::new(move |t| {
        let objs: [&dyn Waitable; 2] = [&*a, &*b];
        match wait(&objs, Some(t), None).as_slice() {
            [] => Outcome::TimedOut,
            [1, 0] => Outcome::Success,
            other => panic!("wait returned {other:?}"),
        }
    })
    .satisfy(move || {
        b1.set(1);
        a1.set();
    })
}

fn joinall_timeout_case() -> Fixture {
    let ev = Rc::new(Event::new());
    let gs = vec![blocked_on(&ev, 1u8), blocked_on(&ev, 2u8)];
    let (gs2, ev2) = (gs.clone(), ev.clone());
    Fixture::new(move |t| {
        let done = joinall_timeout(&gs, t);
        match done.len() {
            0 => Outcome::TimedOut,
            2 => Outcome::Success,
            n => panic!("joinall_timeout returned {n} greenlets"),
        }
    })
    .satisfy(move || ev.set())
    .finish(move || {
        ev2.set();
        for g in &gs2 {
            g.join();
        }
    })
}

fn joinall_raise_timeout() -> Fixture {
    let ev = Rc::new(Event::new());
    let gs = vec![blocked_on(&ev, 1u8), blocked_on(&ev, 2u8)];
    let (gs2, ev2) = (gs.clone(), ev.clone());
    Fixture::new(move |t| match joinall_raise(&gs, Some(t)) {
        Ok(done) if done.is_empty() => Outcome::TimedOut,
        Ok(done) if done.len() == 2 => Outcome::Success,
        other => panic!("joinall_raise returned {other:?}"),
    })
    .satisfy(move || ev.set())
    .finish(move || {
        ev2.set();
        for g in &gs2 {
            g.join();
        }
    })
}

/// A victim that dies at once when killed.
fn plain_victim() -> Greenlet<()> {
    let g = spawn(|| Event::new().wait());
    common::settle();
    g
}

fn killall_timeout() -> Fixture {
    let release = Rc::new(Event::new());
    // The plain victim comes first: a kill delivered while another victim is suspended in
    // its blocking cleanup is lost (see `a_kill_is_not_lost_while_another_victims_cleanup_blocks`).
    let vs = vec![plain_victim(), stubborn_victim(&release)];
    let (vs2, r2) = (vs.clone(), release.clone());
    Fixture::new(move |t| flag(killall(&vs, Some(t))))
        .satisfy(move || release.set())
        .finish(move || {
            r2.set();
            for v in &vs2 {
                v.join();
                assert_eq!(v.exception(), Some(Error::Killed));
            }
        })
}

fn with_timeout_case() -> Fixture {
    let ev = Rc::new(Event::new());
    let (e1, e2) = (ev.clone(), ev.clone());
    Fixture::new(move |t| match with_timeout(t, || ev.wait()) {
        Ok(()) => Outcome::Success,
        Err(Error::Timeout(d)) if d == t => Outcome::TimedOut,
        Err(other) => panic!("with_timeout returned {other:?}"),
    })
    .satisfy(move || e1.set())
    .no_waiters(move || assert_eq!(e2.waiter_count(), 0, "the interrupted waiter stayed linked"))
}

fn timeout_start_new_run() -> Fixture {
    let q = Rc::new(Queue::<u32>::new());
    let (q1, q2) = (q.clone(), q.clone());
    Fixture::new(move |t| {
        let timeout = Timeout::start_new(t);
        assert!(timeout.pending());
        match timeout.run(|| q.get()) {
            Ok(Ok(6)) => Outcome::Success,
            Err(Error::Timeout(d)) if d == t => Outcome::TimedOut,
            other => panic!("Timeout::run returned {other:?}"),
        }
    })
    .satisfy(move || q1.put(6).expect("put"))
    .no_waiters(move || assert_eq!(q2.getter_count(), 0, "the interrupted getter stayed linked"))
}

fn sleep_case() -> Fixture {
    Fixture::new(|t| {
        sleep(t);
        Outcome::TimedOut
    })
}

/// One test per API, each running the four scenarios.
macro_rules! honours_timeout {
    ($($name:ident => $make:ident;)*) => {
        mod honours_timeout {
            use super::*;
            $(
                #[test]
                fn $name() {
                    run_all_scenarios(super::$make);
                }
            )*
        }
    };
}

honours_timeout! {
    greenlet_join_timeout => greenlet_join_timeout;
    greenlet_get_timeout => greenlet_get_timeout;
    greenlet_kill_timeout_cleanup_blocks => greenlet_kill_timeout;
    greenlet_ref_join_timeout => greenlet_ref_join_timeout;
    event_wait_timeout => event_wait_timeout;
    async_result_get_timeout => async_result_get_timeout;
    async_result_wait_timeout => async_result_wait_timeout;
    semaphore_acquire_timeout => semaphore_acquire_timeout;
    semaphore_wait_timeout => semaphore_wait_timeout;
    bounded_semaphore_acquire_timeout => bounded_semaphore_acquire_timeout;
    rlock_acquire_timeout_held_by_another => rlock_acquire_timeout_held_by_another;
    queue_get_timeout => queue_get_timeout;
    queue_put_timeout_bounded_full => queue_put_timeout_bounded_full;
    queue_peek_timeout => queue_peek_timeout;
    queue_join_timeout => queue_join_timeout;
    priority_queue_get_timeout => priority_queue_get_timeout;
    lifo_queue_get_timeout => lifo_queue_get_timeout;
    channel_get_timeout => channel_get_timeout;
    channel_put_timeout => channel_put_timeout;
    pool_join_timeout => pool_join_timeout;
    pool_wait_available => pool_wait_available;
    iwait_with_timeout => iwait_timeout;
    wait_with_timeout => wait_timeout;
    joinall_timeout => joinall_timeout_case;
    joinall_raise_with_timeout => joinall_raise_timeout;
    killall_with_timeout_cleanup_blocks => killall_timeout;
    with_timeout => with_timeout_case;
    timeout_start_new_run => timeout_start_new_run;
    sleep => sleep_case;
}

// ---- a timed-out getter never swallows an item -------------------------------------------------

/// Every kind of getter that timed out is off its wait list: what comes later is not lost.
fn expired_waiters_do_not_swallow() {
    let q = Queue::<u32>::new();
    assert_eq!(q.get_timeout(T), Err(Error::Timeout(T)));
    assert_eq!(q.getter_count(), 0);
    q.put(1).expect("put");
    assert_eq!(
        q.get_nowait(),
        Ok(1),
        "the expired getter swallowed the item"
    );

    // A scoped Timeout that interrupts a get unlinks the getter too.
    assert_eq!(with_timeout(T, || q.get()), Err(Error::Timeout(T)));
    assert_eq!(q.getter_count(), 0);
    q.put(2).expect("put");
    assert_eq!(
        q.get_nowait(),
        Ok(2),
        "the interrupted getter swallowed the item"
    );

    // A channel getter that timed out is no rendezvous partner any more.
    let ch = Channel::<u32>::new();
    assert_eq!(ch.get_timeout(T), Err(Error::Timeout(T)));
    assert_eq!(
        ch.put_nowait(3),
        Err(Rejected {
            item: 3,
            reason: Error::Full
        })
    );

    // An acquirer that timed out does not absorb a later release.
    let s = Semaphore::new(0);
    assert!(!s.acquire_timeout(T));
    s.release();
    assert_eq!(s.count(), 1, "the expired acquirer absorbed the permit");
    assert!(s.acquire_nowait());
    assert_eq!(timer_count(), 0);
}

#[test]
fn expired_waiters_do_not_swallow_later_items_from_root() {
    common::run_virtual(expired_waiters_do_not_swallow);
}

#[test]
fn expired_waiters_do_not_swallow_later_items_from_greenlet() {
    common::run_virtual(|| {
        let g = spawn(expired_waiters_do_not_swallow);
        if let Err(e) = g.get() {
            panic!("{e}");
        }
    });
}

#[test]
fn next_getter_gets_the_item_an_expired_getter_did_not_take() {
    common::run_virtual(|| {
        let q = Rc::new(Queue::<u32>::new());
        let impatient = {
            let q = q.clone();
            spawn(move || q.get_timeout(T))
        };
        let patient = {
            let q = q.clone();
            spawn(move || q.get())
        };
        common::settle();
        assert_eq!(q.getter_count(), 2);
        assert_eq!(impatient.get(), Ok(Err(Error::Timeout(T))));
        assert_eq!(q.getter_count(), 1, "the expired getter is still linked");
        q.put(7).expect("put");
        assert_eq!(patient.get(), Ok(Ok(7)));
        assert!(q.is_empty());
    });
}

// ---- a value handed over at the instant the timeout fires --------------------------------------

/// What one same-instant race gave the waiter, and what was left in the object afterwards.
#[derive(Debug, PartialEq, Eq)]
struct Race {
    /// The waiter got the value.
    waiter_got_it: bool,
    /// The value was left in the object (queued item, permit, set flag).
    left_over: bool,
}

/// Runs one race at a single virtual instant: a helper greenlet sleeps `T` and then hands a
/// value over with `give`, while the current context calls `take(T)`. When `giver_first`,
/// the helper's timer is armed before the waiter's (so it fires first at the shared
/// deadline); else after.
fn race(
    giver_first: bool,
    give: impl FnOnce() + 'static,
    take: impl FnOnce(Duration) -> bool,
    left_over: impl FnOnce() -> bool,
) -> Race {
    let t0 = now();
    let giver = if giver_first {
        let g = spawn(move || {
            sleep(T);
            give();
        });
        sleep(Duration::ZERO); // the giver arms its timer now, at t0
        g
    } else {
        // Armed one step later, still at t0: spawned greenlets start after we block.
        spawn(move || {
            sleep(T);
            give();
        })
    };
    let got = take(T);
    assert_eq!(
        now() - t0,
        T,
        "the race was not decided at the shared instant"
    );
    giver.join();
    assert!(giver.successful(), "giver failed: {:?}", giver.exception());
    let r = Race {
        waiter_got_it: got,
        left_over: left_over(),
    };
    assert!(
        r.waiter_got_it != r.left_over,
        "the value was {} ({r:?})",
        if r.waiter_got_it {
            "duplicated"
        } else {
            "lost"
        }
    );
    assert_eq!(timer_count(), 0);
    r
}

/// Races every kind of hand-off against a timeout at the same instant; returns whether the
/// waiter won each one.
fn same_instant_races(giver_first: bool) -> Vec<(&'static str, bool)> {
    let mut won = Vec::new();

    let q = Rc::new(Queue::<u32>::new());
    let (q1, q2) = (q.clone(), q.clone());
    let r = race(
        giver_first,
        move || q1.put(1).expect("put"),
        |t| match q.get_timeout(t) {
            Ok(1) => true,
            Err(Error::Timeout(d)) if d == t => false,
            other => panic!("Queue::get_timeout returned {other:?}"),
        },
        move || q2.get_nowait() == Ok(1),
    );
    won.push(("Queue::get_timeout", r.waiter_got_it));

    let ch = Rc::new(Channel::<u32>::new());
    let c1 = ch.clone();
    let left = Rc::new(std::cell::Cell::new(false));
    let l1 = left.clone();
    let r = race(
        giver_first,
        move || match c1.put_nowait(2) {
            Ok(()) => {}
            Err(Rejected {
                item: 2,
                reason: Error::Full,
            }) => l1.set(true),
            Err(other) => panic!("Channel::put_nowait returned {other:?}"),
        },
        |t| match ch.get_timeout(t) {
            Ok(2) => true,
            Err(Error::Timeout(d)) if d == t => false,
            other => panic!("Channel::get_timeout returned {other:?}"),
        },
        move || left.get(),
    );
    won.push(("Channel::get_timeout", r.waiter_got_it));

    let s = Rc::new(Semaphore::new(0));
    let (s1, s2) = (s.clone(), s.clone());
    let r = race(
        giver_first,
        move || s1.release(),
        |t| s.acquire_timeout(t),
        move || s2.acquire_nowait(),
    );
    won.push(("Semaphore::acquire_timeout", r.waiter_got_it));

    // A set flag is not consumed: "left over" means the waiter missed it.
    let ev = Rc::new(Event::new());
    let e1 = ev.clone();
    let missed = Rc::new(std::cell::Cell::new(false));
    let m1 = missed.clone();
    let r = race(
        giver_first,
        move || e1.set(),
        |t| {
            let got = ev.wait_timeout(t);
            m1.set(!got);
            assert_eq!(ev.waiter_count(), 0);
            got
        },
        move || missed.get(),
    );
    won.push(("Event::wait_timeout", r.waiter_got_it));

    let a = Rc::new(AsyncResult::<u32>::new());
    let a1 = a.clone();
    let missed = Rc::new(std::cell::Cell::new(false));
    let m1 = missed.clone();
    let r = race(
        giver_first,
        move || a1.set(3),
        |t| {
            let got = match a.get_timeout(t) {
                Ok(3) => true,
                Err(Error::Timeout(d)) if d == t => false,
                other => panic!("AsyncResult::get_timeout returned {other:?}"),
            };
            m1.set(!got);
            got
        },
        move || missed.get(),
    );
    won.push(("AsyncResult::get_timeout", r.waiter_got_it));

    // A scoped Timeout whose expiry arrives after the get was completed: the item wins and
    // the expiry is withdrawn (it must not hit a later blocking point).
    let q = Rc::new(Queue::<u32>::new());
    let (q1, q2) = (q.clone(), q.clone());
    let r = race(
        giver_first,
        move || q1.put(4).expect("put"),
        |t| match with_timeout(t, || q.get()) {
            Ok(Ok(4)) => true,
            Err(Error::Timeout(d)) if d == t => false,
            other => panic!("with_timeout(get) returned {other:?}"),
        },
        move || q2.get_nowait() == Ok(4),
    );
    won.push(("with_timeout(Queue::get)", r.waiter_got_it));
    // No stale expiry: a later sleep runs its full length.
    let t0 = now();
    sleep(T);
    assert_eq!(
        now() - t0,
        T,
        "a withdrawn Timeout expiry interrupted a later sleep"
    );

    won
}

fn all_won(won: &[(&'static str, bool)]) -> Vec<&'static str> {
    won.iter().filter(|(_, w)| !w).map(|(n, _)| *n).collect()
}

#[test]
fn handover_at_the_timeout_instant_wins_in_a_greenlet() {
    common::run_virtual(|| {
        let g = spawn(|| same_instant_races(true));
        let won = g.get().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            all_won(&won),
            Vec::<&str>::new(),
            "the waiter lost these races"
        );
    });
}

#[test]
fn timeout_first_at_the_same_instant_loses_nothing_in_a_greenlet() {
    common::run_virtual(|| {
        let g = spawn(|| same_instant_races(false));
        g.get().unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn handover_at_the_timeout_instant_loses_nothing_from_root() {
    common::run_virtual(|| {
        same_instant_races(true);
        same_instant_races(false);
    });
}

/// Runtime bug: the root context jumps the run queue. At the shared instant the giver's
/// (older) timer fires first and the giver is queued, then the root's deadline fires; the hub
/// loop returns to the root as soon as it is runnable, before the queued giver runs, so the
/// root times out and the value goes to the queue (nothing is lost, but the hand-off does not
/// win as it does for a greenlet waiter, and wake-ups are not FIFO).
#[test]
fn handover_at_the_timeout_instant_wins_from_root() {
    common::run_virtual(|| {
        let won = same_instant_races(true);
        assert_eq!(
            all_won(&won),
            Vec::<&str>::new(),
            "the root lost these races"
        );
    });
}

// ---- timeouts and kills while another greenlet's cleanup blocks ---------------------------------

/// Runtime bug: while one killed greenlet is suspended in a blocking `Drop` (mid-unwind),
/// `std::thread::panicking()` is true for the whole thread, so the hub refuses to deliver
/// any other interrupt: the second victim's kill is not raised, it parks again with the kill
/// pending, and nothing wakes it once the first victim's cleanup ends.
#[test]
fn a_kill_is_not_lost_while_another_victims_cleanup_blocks() {
    common::run_virtual(|| {
        let release = Rc::new(Event::new());
        let stubborn = stubborn_victim(&release);
        let plain = plain_victim();
        let all_dead = killall(&[stubborn.clone(), plain.clone()], Some(T));
        assert!(!all_dead, "the stubborn victim's cleanup is still blocked");
        assert!(plain.dead(), "the plain victim's kill was not delivered");
        release.set();
        stubborn.join();
        plain.join();
    });
}

/// Runtime bug (same cause): a scoped timeout in the root does not fire while a killed
/// greenlet is suspended in its blocking cleanup; its expiry is swallowed, and once the
/// cleanup ends the root waits forever (LoopExit).
#[test]
fn a_timeout_fires_while_another_victims_cleanup_blocks() {
    common::run_virtual(|| {
        let release = Rc::new(Event::new());
        let stubborn = stubborn_victim(&release);
        stubborn.kill_nowait();
        common::settle();
        assert!(!stubborn.dead(), "its cleanup blocks");
        let r = release.clone();
        let rescuer = evergreen::spawn_later(2 * T, move || r.set());
        let t0 = now();
        let res = with_timeout(T, || Event::new().wait());
        assert_eq!(res, Err(Error::Timeout(T)));
        assert_eq!(now() - t0, T);
        rescuer.join();
        stubborn.join();
    });
}
