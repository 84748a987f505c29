//! Scenarios from gevent's own test suite (test__greenlet, test__event, test__queue,
//! test__pool, test__local, test__api_timeout), where evergreen differed from gevent 26.9.
//! Each test asserts gevent's order or value exactly, under the virtual clock where time
//! matters.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::{run, run_virtual, Log};
use evergreen::{
    sleep, spawn, AsyncResult, Channel, Error, Event, Greenlet, Local, Pool, Timeout, Waitable,
};

const ZERO: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Item 1: test__api_timeout: `pending` is false once the timeout fired (and was delivered).
#[test]
fn timeout_pending_is_false_once_it_fired() {
    run_virtual(|| {
        let mut t = Timeout::new(ms(10));
        assert!(!t.pending(), "not started");
        t.start();
        assert!(t.pending());
        let r = t.run(|| sleep(ms(100)));
        assert_eq!(r, Err(Error::Timeout(ms(10))));
        let t = Timeout::start_new(ms(5));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sleep(ms(50))));
        assert!(r.is_err(), "the expiry was delivered");
        assert!(!t.pending(), "fired and delivered: no longer pending");
        let mut t2 = Timeout::start_new(ms(5));
        t2.cancel();
        assert!(!t2.pending(), "cancelled");
    });
}

/// Item 2: gevent issue 1520: two waiters, `set()`, then a third `wait()` from the setter: the
/// order is one, two, three.
#[test]
fn a_late_wait_on_a_set_event_runs_after_the_notified_waiters() {
    run(|| {
        let ev = Rc::new(Event::new());
        let log = Log::new();
        let waiters: Vec<Greenlet<()>> = (1..=2)
            .map(|i| {
                let (e, l) = (ev.clone(), log.clone());
                spawn(move || {
                    e.wait();
                    l.push(format!("{i}"));
                })
            })
            .collect();
        sleep(ZERO);
        let (e, l) = (ev.clone(), log.clone());
        let setter = spawn(move || {
            e.set();
            e.wait();
            l.push("3");
        });
        setter.join();
        evergreen::joinall(&waiters);
        assert_eq!(log.take(), ["1", "2", "3"]);
    });
}

/// Item 3: test__greenlet: a link that unlinks another, not yet run, link stops it (`rawlink` and
/// `link` on a greenlet, `rawlink` on an `AsyncResult`).
#[test]
fn a_link_can_unlink_a_later_link() {
    run(|| {
        let log = Log::new();
        let g = spawn(|| 1);
        let second: Rc<Cell<Option<evergreen::LinkId>>> = Rc::default();
        let (g2, s2, l1) = (g.clone(), second.clone(), log.clone());
        g.rawlink(move || {
            l1.push("first");
            assert!(g2.unlink(s2.get().unwrap()));
        });
        let l2 = log.clone();
        second.set(Some(g.rawlink(move || l2.push("second (unlinked)"))));
        let l3 = log.clone();
        g.link(move |_| l3.push("third"));
        g.join();
        sleep(ms(1));
        assert_eq!(log.take(), ["first", "third"]);

        let r = Rc::new(AsyncResult::<u8>::new());
        let second: Rc<Cell<Option<evergreen::LinkId>>> = Rc::default();
        let (r2, s2, l1) = (r.clone(), second.clone(), log.clone());
        r.rawlink(Box::new(move || {
            l1.push("a");
            assert!(r2.unlink(s2.get().unwrap()));
        }));
        let l2 = log.clone();
        second.set(Some(r.rawlink(Box::new(move || l2.push("b (unlinked)")))));
        r.set(1);
        sleep(ms(1));
        assert_eq!(log.take(), ["a"]);
    });
}

/// Item 4: test__greenlet: `started` (gevent's `bool(g)`) is true as soon as `spawn` returns.
#[test]
fn started_is_true_once_spawn_returns() {
    run(|| {
        let g = spawn(|| ());
        assert!(g.started() && !g.ready());
        let n: Greenlet<()> = Greenlet::new(|| ());
        assert!(!n.started());
        n.start();
        assert!(n.started());
        evergreen::joinall(&[g.clone(), n.clone()]);
        assert!(
            !g.started() && !n.started(),
            "false again once dead, as bool(g)"
        );
    });
}

/// Item 5: test__greenlet: links and joiners are notified in registration order, so the links
/// registered before a join have run when it returns (also for a greenlet joining).
#[test]
fn links_registered_before_a_join_have_run_when_it_returns() {
    run(|| {
        let log = Log::new();
        let g = spawn(|| sleep(ms(1)));
        let l = log.clone();
        g.rawlink(move || l.push("rawlink before"));
        let l = log.clone();
        g.link(move |_| l.push("link before"));
        let (g2, l2) = (g.clone(), log.clone());
        let joiner = spawn(move || {
            g2.join();
            l2.push("greenlet joiner");
        });
        sleep(ZERO); // the joiner starts waiting
        let l = log.clone();
        g.rawlink(move || l.push("rawlink after"));
        g.join();
        log.push("main joined");
        joiner.join();
        sleep(ms(1));
        assert_eq!(
            log.take(),
            [
                "rawlink before",
                "link before",
                "greenlet joiner",
                "rawlink after",
                "main joined"
            ]
        );
    });
}

/// Item 6: test__queue TestChannel: `put` returns only after the getter took the item and ran.
#[test]
fn channel_put_returns_after_the_getter_ran() {
    run(|| {
        let ch = Rc::new(Channel::new());
        let log = Log::new();
        let (c2, l2) = (ch.clone(), log.clone());
        let getter = spawn(move || {
            let v = c2.get().unwrap();
            l2.push(format!("got {v}"));
        });
        sleep(ZERO);
        ch.put(1).unwrap();
        log.push("put returned");
        getter.join();
        assert_eq!(log.take(), ["got 1", "put returned"]);
        assert!(ch.full() && ch.empty(), "gevent's Channel is both, always");
    });
}

/// Item 7: test__local: dropping a `Local` frees its values in greenlets that are still alive.
#[test]
fn dropping_a_local_frees_its_values_in_live_greenlets() {
    run(|| {
        let dc = common::DropCounter::new();
        let d2 = dc.clone();
        let local = Rc::new(Local::new(move || d2.token()));
        let ev = Rc::new(Event::new());
        let gs: Vec<Greenlet<()>> = (0..3)
            .map(|_| {
                let (l, e) = (local.clone(), ev.clone());
                spawn(move || {
                    l.with(|_| ());
                    drop(l);
                    e.wait();
                })
            })
            .collect();
        local.with(|_| ()); // the root's value
        sleep(ZERO);
        assert_eq!(dc.count(), 0);
        drop(local);
        assert_eq!(dc.count(), 4, "three greenlets' values and the root's");
        ev.set();
        evergreen::joinall(&gs);
    });
}

/// Item 8: test__pool test_reentrant: `apply` from a member of the same pool runs inline.
#[test]
fn pool_apply_from_a_member_runs_inline() {
    run(|| {
        let pool = Pool::new(1);
        let p2 = pool.clone();
        let g = pool.spawn(move || p2.apply(|| 21 * 2));
        assert_eq!(g.into_result(), Ok(Ok(42)));
        let p3 = pool.clone();
        let g = pool.spawn(move || p3.apply(|| -> u8 { panic!("inner") }));
        match g.into_result() {
            Ok(Err(Error::Panicked(m))) => assert!(m.contains("inner"), "{m}"),
            other => panic!("{other:?}"),
        }
    });
}

/// Item 9: test__pool: `Pool(0)` is valid and always full.
#[test]
fn a_pool_of_size_zero_is_always_full() {
    run_virtual(|| {
        let pool = Pool::new(0);
        assert!(pool.full());
        assert_eq!(pool.free_count(), 0);
        let g = Greenlet::new(|| ());
        assert_eq!(pool.add(&g, false), Err(Error::PoolFull));
        assert_eq!(pool.wait_available(Some(ms(10))), 0);
    });
}

/// Item 10: test__pool: after `kill()` the pool is empty, also while a `map` feeds it.
#[test]
fn pool_kill_while_imap_feeds_leaves_it_empty() {
    run(|| {
        let pool = Pool::new(2);
        let p2 = pool.clone();
        let consumer = spawn(move || {
            p2.imap(
                |x: u32| {
                    sleep(ms(1000));
                    x
                },
                0..100,
            )
            .count()
        });
        sleep(ms(1));
        assert_eq!(pool.len(), 2);
        pool.kill();
        assert!(pool.is_empty(), "{} member(s) left", pool.len());
        consumer.kill();
    });
}

/// Item 11: `live_count` and the run-info dump no longer count a greenlet killed while it was
/// still queued to start.
#[test]
fn a_greenlet_killed_while_queued_is_not_live() {
    run(|| {
        let before = evergreen::hub::live_count();
        let g = spawn(|| unreachable!("killed before it ran"));
        assert_eq!(evergreen::hub::live_count(), before + 1);
        g.kill();
        assert!(g.dead());
        assert_eq!(evergreen::hub::live_count(), before);
        assert!(evergreen::debug::run_info().iter().all(|i| i.id != g.id()));
        sleep(ZERO); // the hub pops the stale entry
        assert_eq!(evergreen::hub::live_count(), before);
    });
}

// ---- APIs added with gevent's names and semantics ---------------------------------------------

#[test]
fn greenlet_link_count_and_unlink_all() {
    run(|| {
        let g = spawn(|| sleep(ms(1)));
        assert!(!g.has_links());
        let ran = Rc::new(Cell::new(0));
        for _ in 0..3 {
            let r = ran.clone();
            g.rawlink(move || r.set(r.get() + 1));
        }
        assert!(g.has_links());
        assert_eq!(g.link_count(), 3);
        assert_eq!(g.unlink_all(), 3);
        assert_eq!(g.link_count(), 0);
        g.join();
        sleep(ms(1));
        assert_eq!(ran.get(), 0, "unlinked links never run");
    });
}

#[test]
fn throw_kills_with_a_caller_chosen_payload() {
    run_virtual(|| {
        let g = spawn(|| sleep(Duration::from_secs(10)));
        sleep(ZERO);
        g.throw("boom");
        g.join();
        assert!(!g.successful());
        assert_eq!(g.exception(), Some(Error::Panicked("boom".into())));
        let p = g.take_panic_payload().expect("the payload");
        assert_eq!(p.downcast_ref::<&str>(), Some(&"boom"));

        // Not started yet: it never runs, and fails the same way.
        let ran = Rc::new(Cell::new(false));
        let r2 = ran.clone();
        let g = spawn(move || r2.set(true));
        g.kill_with(String::from("not now"));
        assert!(!ran.get());
        assert_eq!(g.exception(), Some(Error::Panicked("not now".into())));

        // A GreenletExit payload is a plain kill.
        let g = spawn(|| sleep(Duration::from_secs(10)));
        sleep(ZERO);
        g.kill_with(evergreen::GreenletExit);
        assert!(g.successful());
        assert_eq!(g.exception(), Some(Error::Killed));
    });
}

#[test]
fn killall_nowait_returns_before_the_victims_die() {
    run(|| {
        let gs: Vec<Greenlet<()>> = (0..3)
            .map(|_| spawn(|| sleep(Duration::from_secs(10))))
            .collect();
        sleep(ZERO);
        evergreen::killall_nowait(&gs);
        assert!(gs.iter().all(|g| !g.dead()), "not delivered yet");
        evergreen::joinall(&gs);
        assert!(gs.iter().all(|g| g.dead() && g.successful()));
    });
}

#[test]
fn semaphores_and_rlocks_are_waitable_and_linkable() {
    run(|| {
        let sem = Rc::new(evergreen::Semaphore::new(0));
        let ev = Rc::new(Event::new());
        let s2 = sem.clone();
        let g = spawn(move || {
            sleep(ms(1));
            s2.release();
        });
        let ready = evergreen::wait(&[&*ev, &*sem], None, Some(1));
        assert_eq!(ready, vec![1], "the semaphore got a permit first");
        assert_eq!(sem.count(), 1, "waiting does not take the permit");
        g.join();

        let lock = Rc::new(evergreen::RLock::new());
        assert!(lock.acquire_nowait());
        assert!(lock.acquire_nowait(), "reentrant");
        let l2 = lock.clone();
        let other = spawn(move || l2.acquire_nowait());
        assert_eq!(other.get(), Ok(false), "owned by the root");
        let released = Rc::new(Cell::new(false));
        let r2 = released.clone();
        lock.rawlink(Box::new(move || r2.set(true)));
        lock.release().unwrap();
        sleep(ZERO);
        assert!(!released.get(), "still held once");
        lock.release().unwrap();
        sleep(ZERO);
        assert!(released.get(), "the link ran when it was released");
        assert!(Waitable::ready(&*lock));

        let b = evergreen::BoundedSemaphore::new(1);
        assert!(Waitable::ready(&b));
        b.acquire();
        assert!(!Waitable::ready(&b));
        b.release().unwrap();
    });
}

#[test]
fn pool_async_apis_add_with_timeout_killone_and_join_raise() {
    run_virtual(|| {
        let pool = Pool::new(2);
        let got = Rc::new(Cell::new(0));
        let g2 = got.clone();
        let g = pool.apply_async(|| 7, Some(Box::new(move |v| g2.set(v))));
        assert_eq!(g.get(), Ok(7));
        sleep(ms(1));
        assert_eq!(got.get(), 7, "the callback ran with the result");

        let m = pool.map_async(|x: u32| x * 2, 1..=3);
        assert_eq!(m.into_result(), Ok(Ok(vec![2, 4, 6])));

        let a = pool.spawn(|| sleep(ms(50)));
        let b = pool.spawn(|| sleep(ms(50)));
        let late = Greenlet::new(|| ());
        assert_eq!(pool.add_timeout(&late, ms(10)), Err(Error::PoolFull));
        pool.killone(&a.handle());
        assert!(a.dead() && !b.dead());
        assert_eq!(pool.add_timeout(&late, ms(10)), Ok(()));
        late.start();
        pool.join();

        let _ok = pool.spawn(|| ());
        let _bad = pool.spawn(|| -> () { panic!("member failed") });
        match pool.join_raise() {
            Err(Error::Panicked(m)) => assert!(m.contains("member failed"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(pool.is_empty());
    });
}

#[test]
fn imap_maxsize_holds_the_feeder_back() {
    run(|| {
        let pool = Pool::new(10);
        let started = Rc::new(Cell::new(0));
        let s2 = started.clone();
        let mut it = pool.imap_maxsize(
            move |x: u32| {
                s2.set(s2.get() + 1);
                x
            },
            0..20,
            3,
        );
        sleep(ms(1));
        assert_eq!(started.get(), 3, "at most 3 results started and not taken");
        assert_eq!(it.next(), Some(Ok(0)));
        sleep(ms(1));
        assert_eq!(started.get(), 4);
        let rest: Vec<u32> = it.map(|r| r.unwrap()).collect();
        assert_eq!(rest, (1..20).collect::<Vec<_>>());
    });
}

#[test]
fn wait_until_done_runs_until_nothing_is_left() {
    run_virtual(|| {
        let t0 = evergreen::hub::now();
        let done = Rc::new(Cell::new(0));
        for i in 1..=3u64 {
            let d = done.clone();
            spawn(move || {
                sleep(ms(10 * i));
                d.set(d.get() + 1);
            });
        }
        let ev = Rc::new(Event::new());
        let e2 = ev.clone();
        let stuck = spawn(move || e2.wait()); // nothing will set it: does not keep us waiting
        evergreen::hub::wait_until_done();
        assert_eq!(done.get(), 3);
        assert_eq!(evergreen::hub::now() - t0, ms(30));
        assert!(!stuck.dead());
        stuck.kill();
    });
}

#[test]
fn stream_server_stop_and_start_accepting() {
    use std::io::{Read, Write};
    run(|| {
        let server = evergreen::net::StreamServer::bind("127.0.0.1:0", |mut c, _| {
            let _ = c.write_all(b"hi");
        })
        .unwrap();
        server.start();
        let addr = server.local_addr().unwrap();
        assert!(server.is_accepting());
        server.stop_accepting();
        assert!(!server.is_accepting());
        let mut c = evergreen::net::TcpStream::connect(addr).unwrap(); // queued by the kernel
        c.set_read_timeout(Some(ms(50))).unwrap();
        let mut buf = [0u8; 2];
        let e = c.read(&mut buf).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "not accepted while stopped"
        );
        assert_eq!(server.accepted(), 0);
        server.start_accepting();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        assert_eq!(server.accepted(), 1);
        server.stop(None);
    });
}
