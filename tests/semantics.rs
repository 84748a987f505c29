//! gevent semantics, ported: the ordering, kill, link, joinall, Event, Semaphore, Queue,
//! Channel, Timeout and Pool facts listed in DESIGN.md, each pinned down exactly.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::{run, run_virtual, DropCounter, Log};
use evergreen::{
    getcurrent, joinall, joinall_raise, sleep, spawn, spawn_later, with_timeout, AsyncResult,
    BoundedSemaphore, Builder, Channel, Error, Event, Greenlet, Group, LifoQueue, Pool,
    PriorityQueue, Queue, RLock, Semaphore, Timeout,
};

const ZERO: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// Scheduling order
// ---------------------------------------------------------------------------------------------

#[test]
fn spawn_does_not_run_until_the_spawner_blocks_and_starts_fifo() {
    run(|| {
        let log = Log::new();
        let gs: Vec<Greenlet<()>> = (1..=3)
            .map(|i| {
                let log = log.clone();
                spawn(move || log.push(format!("g{i}")))
            })
            .collect();
        log.push("spawner");
        // Started (gevent's `started`/`bool(g)`: true once `spawn` returns), not run yet.
        assert!(gs.iter().all(|g| g.started()));
        sleep(ZERO);
        assert_eq!(log.take(), ["spawner", "g1", "g2", "g3"]);
        joinall(&gs);
    });
}

#[test]
fn two_greenlets_alternate_on_sleep_zero() {
    run(|| {
        let log = Log::new();
        let mk = |n: &'static str| {
            let log = log.clone();
            spawn(move || {
                log.push(format!("{n}A"));
                sleep(ZERO);
                log.push(format!("{n}B"));
            })
        };
        let (a, b) = (mk("1"), mk("2"));
        a.join();
        b.join();
        assert_eq!(log.take(), ["1A", "2A", "1B", "2B"]);
    });
}

#[test]
fn sleep_zero_runs_after_everything_already_runnable() {
    run(|| {
        let log = Log::new();
        let l2 = log.clone();
        let a = spawn(move || {
            l2.push("a1");
            sleep(ZERO);
            l2.push("a2");
        });
        let l3 = log.clone();
        let b = spawn(move || l3.push("b"));
        let l4 = log.clone();
        let c = spawn(move || l4.push("c"));
        joinall(&[a, b, c]);
        assert_eq!(log.take(), ["a1", "b", "c", "a2"]);
    });
}

#[test]
fn a_sleep_zero_loop_does_not_starve_timers() {
    // Real clock on purpose: this is about the hub polling timers while the run queue never
    // empties.
    run(|| {
        let spins = Rc::new(std::cell::Cell::new(0u64));
        let s2 = spins.clone();
        let r = with_timeout(ms(10), move || loop {
            s2.set(s2.get() + 1);
            sleep(ZERO);
        });
        assert_eq!(r, Err(Error::Timeout(ms(10))));
        assert!(spins.get() > 0);
        // Also with another greenlet spinning beside it.
        let other = spawn(|| loop {
            sleep(ZERO)
        });
        let g = spawn(|| {
            with_timeout(ms(5), || loop {
                sleep(ZERO)
            })
        });
        assert_eq!(g.get(), Ok(Err(Error::Timeout(ms(5)))));
        other.kill();
    });
}

#[test]
fn timers_fire_in_deadline_order_then_creation_order() {
    run_virtual(|| {
        let log = Log::new();
        let mut gs = vec![];
        for (name, d) in [("c", 30), ("a", 10), ("b1", 20), ("b2", 20)] {
            let log = log.clone();
            gs.push(spawn(move || {
                sleep(ms(d));
                log.push(name);
            }));
        }
        joinall(&gs);
        assert_eq!(log.take(), ["a", "b1", "b2", "c"]);
    });
}

#[test]
fn spawn_later_starts_after_its_delay() {
    run_virtual(|| {
        let t0 = evergreen::hub::now();
        let g = spawn_later(ms(50), evergreen::hub::now);
        assert!(g.started(), "scheduled counts as started, as in gevent");
        let started_at = g.get().unwrap();
        assert_eq!(started_at - t0, ms(50));
    });
}

#[test]
fn virtual_clock_makes_long_timeouts_instant_and_exact() {
    run_virtual(|| {
        let wall = std::time::Instant::now();
        let t0 = evergreen::hub::now();
        sleep(Duration::from_secs(3600));
        assert_eq!(evergreen::hub::now() - t0, Duration::from_secs(3600));
        assert!(wall.elapsed() < Duration::from_secs(5));
    });
}

// ---------------------------------------------------------------------------------------------
// Greenlet results, failures, kill
// ---------------------------------------------------------------------------------------------

#[test]
fn a_panic_is_the_greenlets_failure_and_the_hub_survives() {
    run(|| {
        let bad: Greenlet<u32> = Builder::new().name("bad").spawn(|| panic!("boom {}", 7));
        let good = spawn(|| 5u32);
        match bad.get() {
            Err(Error::Panicked(m)) => assert!(m.contains("boom 7"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(bad.dead());
        assert!(!bad.successful());
        assert!(matches!(bad.exception(), Some(Error::Panicked(_))));
        assert!(bad.take_panic_payload().is_some());
        assert_eq!(good.get(), Ok(5));
        assert!(good.successful());
        assert_eq!(good.value(), Some(5));
        assert_eq!(good.exception(), None);
    });
}

#[test]
fn killing_a_greenlet_that_has_not_started_means_it_never_runs_and_its_links_fire() {
    run(|| {
        let ran = Rc::new(std::cell::Cell::new(false));
        let r2 = ran.clone();
        let dc = DropCounter::new();
        let tok = dc.token();
        let g = spawn(move || {
            let _t = tok;
            r2.set(true);
        });
        let linked = Rc::new(std::cell::Cell::new(0));
        let l2 = linked.clone();
        g.link(move |g| {
            assert!(g.dead());
            l2.set(l2.get() + 1);
        });
        g.kill();
        assert!(
            !ran.get(),
            "a greenlet killed before it started must never run"
        );
        assert_eq!(dc.count(), 1, "its function (and what it owns) was dropped");
        assert!(g.dead() && g.successful());
        assert_eq!(g.get(), Err(Error::Killed));
        g.kill(); // killing twice is harmless
        g.kill_nowait();
        common::settle();
        assert_eq!(linked.get(), 1);
    });
}

#[test]
fn killing_a_spawn_later_greenlet_cancels_its_start() {
    run_virtual(|| {
        let g = spawn_later(ms(10), || 1);
        g.kill();
        assert_eq!(evergreen::hub::timer_count(), 0);
        assert_eq!(g.get(), Err(Error::Killed));
    });
}

#[test]
fn blocking_kill_returns_after_the_victims_cleanup_ran() {
    run(|| {
        let dc = DropCounter::new();
        let log = Log::new();
        let (tok, l2) = (dc.token(), log.clone());
        let ev = Rc::new(Event::new());
        let e2 = ev.clone();
        let g = spawn(move || {
            let _t = tok;
            struct Cleanup(Log);
            impl Drop for Cleanup {
                fn drop(&mut self) {
                    self.0.push("cleanup");
                }
            }
            let _c = Cleanup(l2);
            e2.wait(); // never set
        });
        sleep(ZERO);
        assert!(g.started() && !g.dead());
        g.kill();
        log.push("kill returned");
        assert_eq!(log.take(), ["cleanup", "kill returned"]);
        assert_eq!(dc.count(), 1);
        assert!(g.successful(), "GreenletExit counts as success");
        assert_eq!(g.exception(), Some(Error::Killed));
        assert_eq!(ev.waiter_count(), 0, "the killed waiter was unlinked");
    });
}

#[test]
fn cleanup_that_blocks_while_being_killed_still_completes() {
    run_virtual(|| {
        let log = Log::new();
        let l2 = log.clone();
        let g = spawn(move || {
            struct SlowCleanup(Log);
            impl Drop for SlowCleanup {
                fn drop(&mut self) {
                    sleep(ms(5)); // gevent allows blocking in `finally`
                    self.0.push("slow cleanup done");
                }
            }
            let _c = SlowCleanup(l2);
            sleep(Duration::from_secs(100));
        });
        sleep(ZERO);
        g.kill();
        assert_eq!(log.take(), ["slow cleanup done"]);
    });
}

#[test]
fn a_greenlet_can_kill_itself() {
    run(|| {
        let dc = DropCounter::new();
        let tok = dc.token();
        let g: Greenlet<u32> = spawn(move || {
            let _t = tok;
            getcurrent().kill_nowait();
            unreachable!("killing oneself unwinds at once")
        });
        assert_eq!(g.get(), Err(Error::Killed));
        assert_eq!(dc.count(), 1);
    });
}

#[test]
fn kill_timeout_reports_whether_the_victim_finished() {
    run_virtual(|| {
        let g = spawn(|| {
            struct Stubborn;
            impl Drop for Stubborn {
                fn drop(&mut self) {
                    sleep(ms(50));
                }
            }
            let _s = Stubborn;
            sleep(Duration::from_secs(10));
        });
        sleep(ZERO);
        assert!(!g.kill_timeout(ms(10)));
        assert!(g.kill_timeout(ms(100)));
    });
}

#[test]
fn killall_kills_everyone_and_waits() {
    run(|| {
        let dc = DropCounter::new();
        let gs: Vec<Greenlet<()>> = (0..5)
            .map(|_| {
                let t = dc.token();
                spawn(move || {
                    let _t = t;
                    sleep(Duration::from_secs(3600));
                })
            })
            .collect();
        sleep(ZERO);
        assert!(evergreen::killall(&gs, None));
        assert_eq!(dc.count(), 5);
        assert!(gs.iter().all(|g| g.dead()));
    });
}

// ---------------------------------------------------------------------------------------------
// joinall, links
// ---------------------------------------------------------------------------------------------

#[test]
fn joinall_returns_greenlets_in_completion_order() {
    run_virtual(|| {
        let gs: Vec<Greenlet<u64>> = [30u64, 10, 20]
            .into_iter()
            .map(|d| {
                spawn(move || {
                    sleep(ms(d));
                    d
                })
            })
            .collect();
        let done: Vec<u64> = joinall(&gs).iter().map(|g| g.value().unwrap()).collect();
        assert_eq!(done, [10, 20, 30]);
    });
}

#[test]
fn joinall_raise_returns_the_earliest_finished_failure() {
    run_virtual(|| {
        let gs: Vec<Greenlet<u32>> = vec![
            spawn(|| {
                sleep(ms(30));
                panic!("late failure")
            }),
            spawn(|| {
                sleep(ms(10));
                panic!("early failure")
            }),
            spawn(|| {
                sleep(ms(5));
                1
            }),
        ];
        match joinall_raise(&gs, None) {
            Err(Error::Panicked(m)) => assert!(m.contains("early failure"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        // It returned at the first failure: the late one is still running.
        assert!(!gs[0].dead());
        gs[0].kill();
        // Killed greenlets are not failures.
        let k = vec![spawn(|| sleep(ms(1))), spawn(|| sleep(ms(1)))];
        k[0].kill();
        assert_eq!(joinall_raise(&k, None).map(|v| v.len()), Ok(2));
    });
}

#[test]
fn links_fire_in_registration_order_also_after_death_and_survive_a_failing_link() {
    run(|| {
        let log = Log::new();
        let g = spawn(|| 1);
        for i in 0..3 {
            let log = log.clone();
            g.link(move |_| {
                log.push(format!("link{i}"));
                if i == 1 {
                    panic!("a failing link");
                }
            });
        }
        g.join();
        common::settle();
        assert_eq!(log.take(), ["link0", "link1", "link2"]);
        // Raw links run on the hub, in registration order; `link` callbacks each start a new
        // greenlet (gevent's SpawnedLink), so a raw link registered after them runs first.
        let g = spawn(|| 2);
        for name in ["link", "raw1", "raw2"] {
            let l = log.clone();
            if name == "link" {
                g.link(move |_| l.push(name));
            } else {
                g.rawlink(move || l.push(name));
            }
        }
        g.join();
        common::settle();
        assert_eq!(log.take(), ["raw1", "raw2", "link"]);
        let l = log.clone();
        g.link(move |g| l.push(format!("late {:?}", g.value())));
        assert!(
            log.take().is_empty(),
            "links are scheduled, never run synchronously"
        );
        common::settle();
        assert_eq!(log.take(), ["late Some(2)"]);
    });
}

#[test]
fn link_value_and_link_exception_filter_on_success() {
    run(|| {
        let log = Log::new();
        let ok = spawn(|| 1);
        let bad: Greenlet<i32> = spawn(|| panic!("x"));
        for g in [&ok, &bad] {
            let (l1, l2) = (log.clone(), log.clone());
            g.link_value(move |g| l1.push(format!("value {}", g.id())));
            g.link_exception(move |g| l2.push(format!("exception {}", g.id())));
        }
        joinall(&[ok.clone(), bad.clone()]);
        common::settle();
        let mut got = log.take();
        got.sort();
        assert_eq!(
            got,
            [
                format!("exception {}", bad.id()),
                format!("value {}", ok.id())
            ]
        );
    });
}

#[test]
fn unlink_removes_a_link_before_it_fires() {
    run(|| {
        let log = Log::new();
        let g = spawn(|| ());
        let l = log.clone();
        let id = g.rawlink(move || l.push("should not run"));
        assert!(g.unlink(id));
        g.join();
        common::settle();
        assert!(log.take().is_empty());
    });
}

// ---------------------------------------------------------------------------------------------
// Event, AsyncResult
// ---------------------------------------------------------------------------------------------

#[test]
fn event_set_then_clear_still_wakes_every_current_waiter_in_wait_order() {
    run(|| {
        let ev = Rc::new(Event::new());
        let log = Log::new();
        let gs: Vec<Greenlet<()>> = (0..4)
            .map(|i| {
                let (ev, log) = (ev.clone(), log.clone());
                spawn(move || {
                    ev.wait();
                    log.push(format!("w{i}"));
                })
            })
            .collect();
        sleep(ZERO);
        assert_eq!(ev.waiter_count(), 4);
        ev.set();
        ev.clear();
        joinall(&gs);
        assert_eq!(log.take(), ["w0", "w1", "w2", "w3"]);
        assert!(!ev.is_set());
    });
}

#[test]
fn async_result_delivers_value_or_error_to_every_waiter() {
    run(|| {
        let r = Rc::new(AsyncResult::<String>::new());
        let gs: Vec<Greenlet<Result<String, Error>>> = (0..3)
            .map(|_| {
                let r = r.clone();
                spawn(move || r.get())
            })
            .collect();
        sleep(ZERO);
        assert_eq!(r.get_nowait(), Err(Error::Empty));
        r.set("v".into());
        for g in &gs {
            assert_eq!(g.get(), Ok(Ok("v".to_string())));
        }
        let e = AsyncResult::<u8>::new();
        e.set_exception(Error::Panicked("bad".into()));
        assert_eq!(e.get(), Err(Error::Panicked("bad".into())));
        assert!(e.ready() && !e.successful());
    });
}

// ---------------------------------------------------------------------------------------------
// Semaphore, RLock
// ---------------------------------------------------------------------------------------------

#[test]
fn semaphore_wakes_waiters_fifo_without_barging() {
    run(|| {
        let sem = Rc::new(Semaphore::new(1));
        sem.acquire();
        let log = Log::new();
        let gs: Vec<Greenlet<()>> = (0..3)
            .map(|i| {
                let (sem, log) = (sem.clone(), log.clone());
                spawn(move || {
                    sem.acquire();
                    log.push(format!("g{i}"));
                    sleep(ZERO);
                    sem.release();
                })
            })
            .collect();
        sleep(ZERO);
        assert_eq!(sem.waiter_count(), 3);
        sem.release();
        // The permit went to g0: a late non-blocking acquire cannot take it.
        assert!(!sem.acquire_nowait());
        joinall(&gs);
        assert_eq!(log.take(), ["g0", "g1", "g2"]);
        assert_eq!(sem.count(), 1);
    });
}

#[test]
fn bounded_semaphore_refuses_extra_releases() {
    run(|| {
        let s = BoundedSemaphore::new(2);
        assert_eq!(s.release(), Err(Error::ReleasedTooManyTimes));
        s.acquire();
        assert_eq!(s.release(), Ok(()));
        assert_eq!(s.count(), 2);
    });
}

#[test]
fn rlock_is_reentrant_and_owned() {
    run(|| {
        let l = Rc::new(RLock::new());
        l.acquire();
        l.acquire();
        let l2 = l.clone();
        let other = spawn(move || {
            assert_eq!(l2.release(), Err(Error::NotOwner));
            l2.acquire();
            let r = l2.release();
            assert_eq!(r, Ok(()));
            "got it"
        });
        sleep(ZERO);
        assert!(!other.dead(), "blocked while the root owns the lock");
        l.release().unwrap();
        sleep(ZERO);
        assert!(!other.dead(), "still owned once");
        l.release().unwrap();
        assert_eq!(other.get(), Ok("got it"));
        assert!(!l.locked());
    });
}

// ---------------------------------------------------------------------------------------------
// Queues and Channel
// ---------------------------------------------------------------------------------------------

#[test]
fn queue_getters_are_served_fifo_and_each_put_completes_exactly_one_get() {
    run(|| {
        let q = Rc::new(Queue::new());
        let gs: Vec<Greenlet<u32>> = (0..3)
            .map(|_| {
                let q = q.clone();
                spawn(move || q.get().unwrap())
            })
            .collect();
        sleep(ZERO);
        assert_eq!(q.getter_count(), 3);
        q.put(10).unwrap();
        assert_eq!(q.getter_count(), 2, "one put completes exactly one get");
        assert_eq!(q.qsize(), 0, "handed over directly");
        q.put(11).unwrap();
        q.put(12).unwrap();
        let got: Vec<u32> = gs.iter().map(|g| g.get().unwrap()).collect();
        assert_eq!(got, [10, 11, 12]);
    });
}

#[test]
fn a_getter_whose_timeout_fired_does_not_swallow_an_item() {
    run_virtual(|| {
        let q: Rc<Queue<u32>> = Rc::new(Queue::new());
        let q2 = q.clone();
        let timed = spawn(move || q2.get_timeout(ms(10)));
        let q3 = q.clone();
        let patient = spawn(move || q3.get());
        assert_eq!(timed.get(), Ok(Err(Error::Timeout(ms(10)))));
        q.put(1).unwrap();
        assert_eq!(patient.get(), Ok(Ok(1)));
        q.put(2).unwrap();
        assert_eq!(q.get_nowait(), Ok(2));
    });
}

#[test]
fn an_item_handed_over_wins_over_a_timeout_that_fires_before_the_getter_runs() {
    run_virtual(|| {
        let q: Rc<Queue<u32>> = Rc::new(Queue::new());
        let q2 = q.clone();
        let getter = spawn(move || with_timeout(ms(10), || q2.get()));
        sleep(ZERO);
        // Put from a timer callback at exactly the getter's deadline: the timeout timer was
        // created first, so it fires first, but the item handed over before the getter runs
        // again must not be lost either way.
        let q3 = q.clone();
        evergreen::hub::call_later(ms(10), move || q3.put_nowait(7).unwrap());
        let r = getter.get().unwrap();
        match r {
            Ok(Ok(v)) => assert_eq!(v, 7),
            Err(Error::Timeout(_)) => assert_eq!(q.get_nowait(), Ok(7), "the item is still there"),
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn a_putter_blocked_at_maxsize_continues_after_a_get() {
    run(|| {
        let q = Rc::new(Queue::bounded(1));
        q.put(1).unwrap();
        assert!(q.is_full());
        assert_eq!(
            q.put_nowait(9).map_err(|r| (r.item, r.reason)),
            Err((9, Error::Full))
        );
        let log = Log::new();
        let (q2, l2) = (q.clone(), log.clone());
        let putter = spawn(move || {
            q2.put(2).unwrap();
            l2.push("put 2 done");
        });
        sleep(ZERO);
        assert_eq!(q.putter_count(), 1);
        assert_eq!(q.get(), Ok(1));
        assert_eq!(q.qsize(), 1, "the blocked putter's item moved in");
        putter.join();
        assert_eq!(log.take(), ["put 2 done"]);
        assert_eq!(q.get(), Ok(2));
    });
}

#[test]
fn lifo_and_priority_orders() {
    run(|| {
        let l = LifoQueue::new();
        let p = PriorityQueue::new();
        for x in [2, 3, 1] {
            l.put(x).unwrap();
            p.put(x).unwrap();
        }
        let lo: Vec<i32> = (0..3).map(|_| l.get().unwrap()).collect();
        let po: Vec<i32> = (0..3).map(|_| p.get().unwrap()).collect();
        assert_eq!(lo, [1, 3, 2]);
        assert_eq!(po, [1, 2, 3]);
    });
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    run(|| {
        let q = Rc::new(Queue::new());
        for i in 0..3 {
            q.put(i).unwrap();
        }
        let log = Log::new();
        let (q2, l2) = (q.clone(), log.clone());
        let worker = spawn(move || {
            while let Ok(i) = q2.get_timeout(ms(50)) {
                l2.push(format!("work {i}"));
                sleep(ZERO);
                q2.task_done().unwrap();
            }
        });
        q.join();
        log.push("joined");
        assert_eq!(log.take(), ["work 0", "work 1", "work 2", "joined"]);
        assert_eq!(q.task_done(), Err(Error::TaskDoneTooManyTimes));
        worker.join();
    });
}

#[test]
fn queue_shutdown_drains_then_fails_and_wakes_blocked_getters_and_putters() {
    run(|| {
        let q = Rc::new(Queue::new());
        let q2 = q.clone();
        let getter = spawn(move || q2.get());
        sleep(ZERO);
        q.shutdown(false);
        assert_eq!(getter.get(), Ok(Err(Error::ShutDown)));
        assert_eq!(q.put(1).map_err(|r| r.reason), Err(Error::ShutDown));

        let b = Rc::new(Queue::bounded(1));
        b.put(1).unwrap();
        let b2 = b.clone();
        let putter = spawn(move || b2.put(2).map_err(|r| (r.item, r.reason)));
        sleep(ZERO);
        b.shutdown(false);
        assert_eq!(
            putter.get(),
            Ok(Err((2, Error::ShutDown))),
            "the item comes back"
        );
        assert_eq!(b.get(), Ok(1), "remaining items are still delivered");
        assert_eq!(b.get(), Err(Error::ShutDown));

        let c = Rc::new(Queue::new());
        c.put(1).unwrap();
        c.put(2).unwrap();
        c.shutdown(true);
        assert_eq!(c.qsize(), 0);
        assert_eq!(c.unfinished_tasks(), 0);
        c.join(); // returns at once
    });
}

#[test]
fn peek_waits_for_an_item_without_taking_it() {
    run(|| {
        let q = Rc::new(Queue::new());
        let q2 = q.clone();
        let peeker = spawn(move || q2.peek());
        sleep(ZERO);
        q.put("x".to_string()).unwrap();
        assert_eq!(peeker.get(), Ok(Ok("x".to_string())));
        assert_eq!(q.qsize(), 1);
    });
}

#[test]
fn channel_is_a_rendezvous() {
    run(|| {
        let ch = Rc::new(Channel::new());
        let log = Log::new();
        let (c2, l2) = (ch.clone(), log.clone());
        let putter = spawn(move || {
            c2.put(1).unwrap();
            l2.push("put returned");
        });
        sleep(ZERO);
        sleep(ZERO);
        assert!(
            log.take().is_empty(),
            "put blocks until a getter takes the item"
        );
        assert_eq!(ch.putter_count(), 1);
        assert_eq!(ch.get(), Ok(1));
        putter.join();
        assert_eq!(log.take(), ["put returned"]);
        assert_eq!(ch.put_nowait(5).map_err(|r| r.reason), Err(Error::Full));
        assert_eq!(ch.get_nowait(), Err(Error::Empty));
    });
}

// ---------------------------------------------------------------------------------------------
// Timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn nested_timeouts_the_outer_one_passes_through_inner_scopes() {
    run_virtual(|| {
        let log = Log::new();
        let l2 = log.clone();
        let outer = with_timeout(ms(10), move || {
            let inner = with_timeout(ms(1000), || sleep(Duration::from_secs(10)));
            l2.push(format!("inner returned {inner:?}")); // must not happen
        });
        assert_eq!(outer, Err(Error::Timeout(ms(10))));
        assert!(
            log.take().is_empty(),
            "the inner scope did not swallow the outer timeout"
        );

        // The inner one firing first is caught by the inner scope.
        let r = with_timeout(ms(1000), || {
            with_timeout(ms(10), || sleep(Duration::from_secs(10)))
        });
        assert_eq!(r, Ok(Err(Error::Timeout(ms(10)))));
    });
}

#[test]
fn timeout_start_new_interrupts_whatever_its_greenlet_blocks_on_and_runs_drops() {
    run_virtual(|| {
        let dc = DropCounter::new();
        let tok = dc.token();
        let ev = Event::new();
        let t = Timeout::start_new(ms(5));
        assert!(t.pending());
        let r = t.run(|| {
            let _t = tok;
            ev.wait();
        });
        assert_eq!(r, Err(Error::Timeout(ms(5))));
        assert_eq!(dc.count(), 1);
        assert_eq!(ev.waiter_count(), 0);
    });
}

#[test]
fn an_uncaught_timeout_ends_its_greenlet_as_a_failure() {
    run_virtual(|| {
        let g = spawn(|| {
            let _t = Timeout::start_new(ms(5));
            sleep(ms(100));
        });
        assert_eq!(g.get(), Err(Error::TimedOut(ms(5))));
        assert!(!g.successful());
    });
}

#[test]
fn a_cancelled_timeout_never_fires() {
    run_virtual(|| {
        let mut t = Timeout::start_new(ms(5));
        t.cancel();
        assert!(!t.pending());
        sleep(ms(10)); // would have been interrupted
        drop(t);
        let t2 = Timeout::start_new(ms(5));
        drop(t2);
        sleep(ms(10));
    });
}

// ---------------------------------------------------------------------------------------------
// Pool and Group
// ---------------------------------------------------------------------------------------------

#[test]
fn pool_spawn_blocks_while_full() {
    run(|| {
        let pool = Pool::new(2);
        let ev = Rc::new(Event::new());
        let log = Log::new();
        for i in 0..2 {
            let (ev, log) = (ev.clone(), log.clone());
            pool.spawn(move || {
                ev.wait();
                log.push(format!("done {i}"));
            });
        }
        assert_eq!(pool.free_count(), 0);
        assert!(pool.full());
        let hold = spawn(|| ());
        assert_eq!(pool.add(&hold, false), Err(Error::PoolFull));
        let (p2, l2) = (pool.clone(), log.clone());
        let spawner = spawn(move || {
            p2.spawn(|| ());
            l2.push("third spawned");
        });
        sleep(ZERO);
        assert!(log.take().is_empty(), "spawn blocks while the pool is full");
        ev.set();
        spawner.join();
        // Both members wake on the event; the first to finish frees the slot the spawner was
        // waiting for, which runs after the already-runnable second member.
        assert_eq!(log.take(), ["done 0", "done 1", "third spawned"]);
        pool.join();
        assert_eq!(pool.free_count(), 2);
        hold.join();
    });
}

#[test]
fn pool_imap_unordered_yields_in_completion_order_and_imap_in_input_order() {
    run_virtual(|| {
        let pool = Pool::new(3);
        let delays = vec![30u64, 10, 20];
        let unordered: Vec<u64> = pool
            .imap_unordered(
                |d| {
                    sleep(ms(d));
                    d
                },
                delays.clone(),
            )
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(unordered, [10, 20, 30]);
        let ordered: Vec<u64> = pool
            .imap(
                |d| {
                    sleep(ms(d));
                    d
                },
                delays,
            )
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ordered, [30, 10, 20]);
        pool.join();
    });
}

#[test]
fn errors_raised_inside_map_reach_the_consumer() {
    run(|| {
        let pool = Pool::new(2);
        let r = pool.map(
            |x: u32| {
                if x == 3 {
                    panic!("bad item {x}");
                }
                x
            },
            1..=5,
        );
        match r {
            Err(Error::Panicked(m)) => assert!(m.contains("bad item 3"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        let items: Vec<Result<u32, Error>> = pool
            .imap(|x: u32| if x == 2 { panic!("two") } else { x }, 1..=3)
            .collect();
        assert_eq!(items[0], Ok(1));
        assert!(matches!(&items[1], Err(Error::Panicked(m)) if m.contains("two")));
        assert_eq!(items[2], Ok(3));
        pool.join();
    });
}

#[test]
fn pool_runs_at_most_size_at_a_time() {
    run_virtual(|| {
        let pool = Pool::new(3);
        let running = Rc::new(std::cell::Cell::new(0usize));
        let peak = Rc::new(std::cell::Cell::new(0usize));
        let (r2, p2) = (running.clone(), peak.clone());
        let out = pool
            .map(
                move |i: u64| {
                    r2.set(r2.get() + 1);
                    p2.set(p2.get().max(r2.get()));
                    sleep(ms(1 + i % 4));
                    r2.set(r2.get() - 1);
                    i * 2
                },
                0..20,
            )
            .unwrap();
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.get(), 3);
        assert_eq!(pool.apply(|| 41 + 1), Ok(42));
        pool.join();
    });
}

#[test]
fn group_join_and_kill() {
    run(|| {
        let group = Group::new();
        let dc = DropCounter::new();
        for _ in 0..3 {
            let t = dc.token();
            group.spawn(move || {
                let _t = t;
                sleep(Duration::from_secs(3600));
            });
        }
        assert_eq!(group.len(), 3);
        sleep(ZERO);
        group.kill();
        assert!(group.is_empty());
        assert_eq!(dc.count(), 3);
        for i in 0..3 {
            group.spawn(move || i);
        }
        group.join();
        assert!(group.is_empty());
    });
}

// ---------------------------------------------------------------------------------------------
// wait / iwait, LoopExit, hub callbacks
// ---------------------------------------------------------------------------------------------

#[test]
fn iwait_yields_objects_as_they_become_ready() {
    run_virtual(|| {
        let ev = Rc::new(Event::new());
        let a = spawn(|| sleep(ms(20)));
        let e2 = ev.clone();
        let setter = spawn(move || {
            sleep(ms(10));
            e2.set();
        });
        let done = spawn(|| ());
        done.join();
        let objs: [&dyn evergreen::Waitable; 3] = [&a, &*ev, &done];
        let order: Vec<usize> = evergreen::iwait(&objs, None).collect();
        assert_eq!(order, [2, 1, 0]);
        let firsts = evergreen::wait(&objs, None, Some(1));
        assert_eq!(firsts.len(), 1);
        setter.join();
    });
}

#[test]
fn blocking_in_the_root_with_nothing_alive_is_loop_exit_not_a_hang() {
    run(|| {
        let ev = Event::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ev.wait()));
        let p = r.expect_err("must not return");
        assert!(evergreen::hub::is_loop_exit(&*p));
        let msg = p.downcast_ref::<evergreen::LoopExit>().unwrap().to_string();
        assert!(msg.contains("Event::wait"), "{msg}");
        // Names the parked greenlets too.
        let q: Rc<Queue<u8>> = Rc::new(Queue::new());
        let q2 = q.clone();
        let g = Builder::new().name("stuck-getter").spawn(move || q2.get());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.join()));
        let msg = r
            .unwrap_err()
            .downcast_ref::<evergreen::LoopExit>()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("stuck-getter") && msg.contains("Queue::get"),
            "{msg}"
        );
        g.kill();
        assert_eq!(ev.waiter_count(), 0);
    });
}

#[test]
fn blocking_inside_a_hub_callback_is_refused() {
    run(|| {
        let seen = Rc::new(std::cell::Cell::new(false));
        let s2 = seen.clone();
        evergreen::hub::run_callback(move || {
            let r = std::panic::catch_unwind(|| sleep(ms(1)));
            s2.set(r.is_err_and(|p| evergreen::hub::is_loop_exit(&*p)));
        });
        common::settle();
        assert!(seen.get());
    });
}

#[test]
fn run_info_names_every_live_greenlet_and_what_it_waits_on() {
    run(|| {
        let q: Rc<Queue<u8>> = Rc::new(Queue::new());
        let q2 = q.clone();
        let g = Builder::new().name("reader").spawn(move || q2.get());
        let s = Builder::new()
            .name("sleeper")
            .spawn(|| sleep(Duration::from_secs(60)));
        sleep(ZERO);
        let info = evergreen::debug::run_info();
        assert_eq!(info.len(), 2);
        assert_eq!(info[0].name.as_deref(), Some("reader"));
        assert_eq!(info[0].state, "parked");
        assert_eq!(info[0].waiting_on, "Queue::get");
        assert_eq!(info[1].waiting_on, "sleep");
        let dump = evergreen::debug::format_run_info();
        assert!(dump.contains("'reader': parked on Queue::get"), "{dump}");
        g.kill();
        s.kill();
    });
}

#[test]
fn hub_destroy_unwinds_every_parked_greenlet() {
    run(|| {
        let dc = DropCounter::new();
        let ev = Rc::new(Event::new());
        for _ in 0..10 {
            let (t, ev) = (dc.token(), ev.clone());
            spawn(move || {
                let _t = t;
                ev.wait();
            });
        }
        sleep(ZERO);
        let t = dc.token();
        spawn(move || {
            let _t = t; // never started
        });
        assert_eq!(evergreen::hub::live_count(), 11);
        evergreen::hub::destroy();
        assert_eq!(dc.count(), 11, "every greenlet's destructors ran");
        assert_eq!(evergreen::hub::live_count(), 0);
    });
}

#[test]
fn thread_exit_tears_down_the_hub_and_runs_destructors() {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = count.clone();
    std::thread::spawn(move || {
        struct D(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for D {
            fn drop(&mut self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        for _ in 0..3 {
            let d = D(c2.clone());
            spawn(move || {
                let _d = d;
                sleep(Duration::from_secs(3600));
            });
        }
        sleep(ZERO);
        // The thread ends with three greenlets parked.
    })
    .join()
    .unwrap();
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn greenlet_local_values_are_per_greenlet_and_dropped_at_death() {
    run(|| {
        let dc = DropCounter::new();
        let dc2 = dc.clone();
        let local = Rc::new(evergreen::Local::new(move || (dc2.token(), 0u32)));
        let gs: Vec<Greenlet<u32>> = (1..=3)
            .map(|i| {
                let local = local.clone();
                spawn(move || {
                    local.with(|v| v.1 += i);
                    sleep(ZERO);
                    local.with(|v| v.1)
                })
            })
            .collect();
        let vals: Vec<u32> = gs.iter().map(|g| g.get().unwrap()).collect();
        assert_eq!(vals, [1, 2, 3]);
        assert_eq!(
            dc.count(),
            3,
            "each greenlet's value was dropped when it died"
        );
    });
}

#[test]
fn monitor_reports_a_greenlet_that_holds_the_hub() {
    run(|| {
        evergreen::monitor::start(ms(20));
        let g = Builder::new().name("hog").spawn(|| {
            // Deliberately blocks the OS thread without yielding: the monitor's subject.
            std::thread::sleep(ms(200));
        });
        g.join();
        assert!(evergreen::monitor::reports() >= 1);
        let quick = spawn(|| {
            for _ in 0..100 {
                sleep(ZERO)
            }
        });
        let before = evergreen::monitor::reports();
        quick.join();
        assert_eq!(evergreen::monitor::reports(), before);
    });
}

#[test]
fn greenlet_handles_outlive_their_hub() {
    run(|| {
        let dc = DropCounter::new();
        let ev = Rc::new(Event::new());
        let done = spawn(|| 1);
        assert_eq!(done.get(), Ok(1));
        let (t, e) = (dc.token(), ev.clone());
        let parked = spawn(move || {
            let _t = t;
            e.wait();
            2
        });
        sleep(ZERO);
        let t = dc.token();
        let unstarted = spawn(move || {
            let _t = t;
            3
        });
        let copies = (done.clone(), parked.clone(), unstarted.clone());
        evergreen::hub::destroy();
        assert_eq!(
            dc.count(),
            2,
            "destroy unwound the parked one and dropped the unstarted one"
        );
        // The handles still answer, with no hub behind them.
        assert_eq!(done.get(), Ok(1));
        assert!(parked.dead() && unstarted.dead());
        assert_eq!(parked.get(), Err(Error::Killed));
        assert_eq!(unstarted.get(), Err(Error::Killed));
        drop((done, parked, unstarted));
        assert_eq!(
            copies.0.get(),
            Ok(1),
            "the other handles keep the greenlets alive"
        );
        drop(copies);
        // A fresh hub works.
        assert_eq!(spawn(|| 4).get(), Ok(4));
    });
}

#[test]
fn results_of_every_size_and_alignment_come_back_and_are_dropped_once() {
    #[derive(Clone, Debug, PartialEq)]
    #[repr(align(128))]
    struct OverAligned(u64);
    run(|| {
        let dc = DropCounter::new();
        for round in 0..3u64 {
            // Interleaved, so freed blocks of each size are reused by the next round.
            let small = spawn(move || round as u8);
            let medium = spawn(move || [round; 40]);
            let large = spawn(move || vec![round; 10]);
            let huge = spawn(move || [round; 300]); // a block bigger than any cached class
            let aligned = spawn(move || OverAligned(round));
            let (t1, t2) = (dc.token(), dc.token());
            let with_drop = spawn(move || t1);
            let never_taken = spawn(move || t2);
            assert_eq!(small.get(), Ok(round as u8));
            assert_eq!(medium.get(), Ok([round; 40]));
            assert_eq!(large.get(), Ok(vec![round; 10]));
            assert_eq!(huge.get(), Ok([round; 300]));
            let a = aligned.get().unwrap();
            assert_eq!(a, OverAligned(round));
            assert_eq!(&a as *const OverAligned as usize % 128, 0);
            let before = dc.count();
            drop(with_drop.into_result().unwrap());
            assert_eq!(
                dc.count(),
                before + 1,
                "a taken result drops where it is dropped"
            );
            never_taken.join();
            assert_eq!(
                dc.count(),
                before + 1,
                "an untaken result lives as long as a handle"
            );
            drop(never_taken);
            assert_eq!(
                dc.count(),
                before + 2,
                "and is dropped with the last handle"
            );
        }
    });
}

#[test]
fn getcurrent_id_names_the_running_greenlet_and_zero_for_the_root() {
    run(|| {
        assert_eq!(evergreen::getcurrent_id(), 0);
        let g = spawn(|| (evergreen::getcurrent_id(), getcurrent().id()));
        let h = spawn(evergreen::getcurrent_id);
        let (inside, via_ref) = g.clone().into_result().unwrap();
        assert_eq!(inside, g.id());
        assert_eq!(inside, via_ref);
        assert_eq!(h.clone().into_result().unwrap(), h.id());
        assert_ne!(g.id(), h.id());
        assert_eq!(evergreen::getcurrent_id(), 0);
    });
}
