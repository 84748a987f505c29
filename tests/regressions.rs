//! One regression test per bug found in review, named after what it pins down.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Duration;

use common::{run, run_virtual};
use evergreen::net::{StreamServer, TcpListener, TcpStream};
use evergreen::{
    idle, sleep, spawn, with_timeout, Error, Event, Local, Pool, Queue, Semaphore, Timeout,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_panicking_greenlet_local_drop_does_not_corrupt_the_hub() {
    run(|| {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("Bomb::drop");
            }
        }
        let local = Rc::new(Local::new(|| Bomb));
        let l2 = local.clone();
        let g = spawn(move || {
            l2.with(|_| ());
            7
        });
        let linked = Rc::new(Cell::new(false));
        let lk = linked.clone();
        g.rawlink(move || lk.set(true));
        assert_eq!(g.get(), Ok(7));
        common::settle();
        assert!(linked.get(), "its links still fired");
        assert_eq!(spawn(|| 1).get(), Ok(1), "the hub is still usable");
    });
}

#[test]
fn destroy_from_a_hub_callback_is_refused() {
    run(|| {
        let refused = Rc::new(Cell::new(false));
        let r2 = refused.clone();
        evergreen::hub::run_callback(move || {
            r2.set(std::panic::catch_unwind(evergreen::hub::destroy).is_err());
        });
        common::settle();
        assert!(refused.get());
    });
}

#[test]
fn a_greenlet_leaked_by_destroy_leaves_no_dangling_waiter() {
    run(|| {
        let ev = Rc::new(Event::new());
        let e2 = ev.clone();
        struct BlockingCleanup(Rc<Event>);
        impl Drop for BlockingCleanup {
            fn drop(&mut self) {
                self.0.wait();
            }
        }
        let g = spawn(move || {
            let _d = BlockingCleanup(e2.clone());
            e2.wait();
        });
        sleep(Duration::ZERO);
        drop(g);
        evergreen::hub::destroy(); // the cleanup blocks forever: the greenlet is leaked
        assert_eq!(ev.waiter_count(), 1);
        let _junk: Vec<Vec<u64>> = (0..64).map(|_| vec![u64::MAX; 64]).collect();
        ev.set(); // wakes the leaked greenlet's waiter: must not touch freed memory
        sleep(ms(1));
    });
}

#[test]
fn a_kill_is_not_lost_after_the_victim_caught_its_own_timeout() {
    run(|| {
        let ev = Rc::new(Event::new());
        let e2 = ev.clone();
        let a = spawn(move || {
            let _ = with_timeout(ms(1), || sleep(Duration::from_secs(1)));
            e2.wait();
            "returned normally"
        });
        struct SlowCleanup;
        impl Drop for SlowCleanup {
            fn drop(&mut self) {
                sleep(ms(100));
            }
        }
        let c = spawn(|| {
            let _s = SlowCleanup;
            sleep(Duration::from_secs(10));
        });
        sleep(ms(10)); // a caught its timeout and waits; c sleeps
        c.kill_nowait();
        sleep(ms(5)); // c is suspended in the middle of its unwind
        assert!(a.kill_timeout(Duration::from_secs(5)), "the kill reached a");
        assert_eq!(a.get(), Err(Error::Killed));
        c.join();
        ev.set();
    });
}

#[test]
fn a_timed_wait_in_cleanup_returns_when_another_interrupt_is_pending() {
    run(|| {
        let returned = Rc::new(Cell::new(None));
        let r2 = returned.clone();
        struct Cleanup(Rc<Cell<Option<bool>>>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                self.0.set(Some(Event::new().wait_timeout(ms(100))));
            }
        }
        let g = spawn(move || {
            let _t = Timeout::start_new(ms(20));
            let _c = Cleanup(r2);
            sleep(Duration::from_secs(10));
        });
        sleep(ms(5));
        g.kill_nowait();
        assert!(g.join_timeout(Duration::from_secs(5)), "no endless spin");
        assert_eq!(returned.get(), Some(false), "the wait timed out normally");
    });
}

#[test]
fn a_greenlet_looping_on_idle_does_not_starve_io() {
    run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Rc::new(Cell::new(false));
        let s2 = stop.clone();
        let idler = spawn(move || {
            while !s2.get() {
                idle();
            }
        });
        let server = spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            b
        });
        let client = spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"ping").unwrap();
            s
        });
        let r = with_timeout(Duration::from_secs(5), || server.get());
        stop.set(true);
        assert_eq!(r, Ok(Ok(*b"ping")));
        idler.join();
        client.join();
    });
}

#[test]
fn stream_server_stop_from_its_own_handler_ends_serve_forever() {
    run(|| {
        let slot: Rc<RefCell<Option<StreamServer>>> = Rc::new(RefCell::new(None));
        let s2 = slot.clone();
        let stopped = Rc::new(Cell::new(None));
        let st2 = stopped.clone();
        let server = StreamServer::bind("127.0.0.1:0", move |_c, _p| {
            let srv = s2.borrow().clone().unwrap();
            st2.set(Some(srv.stop(Some(ms(50)))));
        })
        .unwrap();
        *slot.borrow_mut() = Some(server.clone());
        let addr = server.local_addr().unwrap();
        let client = spawn(move || TcpStream::connect(addr).map(|_| ()));
        let r = with_timeout(Duration::from_secs(5), || server.serve_forever());
        assert_eq!(r, Ok(()));
        client.join();
        sleep(ms(1));
        assert_eq!(
            stopped.get(),
            Some(0),
            "the handler finished its own stop() call"
        );
        slot.borrow_mut().take();
    });
}

#[test]
fn serve_forever_interrupted_stops_the_server() {
    run(|| {
        let server = StreamServer::bind("127.0.0.1:0", |_c, _p| ()).unwrap();
        let addr = server.local_addr().unwrap();
        let r = with_timeout(ms(20), || server.serve_forever());
        assert_eq!(r, Err(Error::Timeout(ms(20))));
        assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    });
}

#[test]
fn a_panicking_imap_input_reaches_the_consumer() {
    run(|| {
        let pool = Pool::new(2);
        let items = (0..5u32).inspect(|&i| {
            if i == 3 {
                panic!("bad input item")
            }
        });
        match pool.map(|x| x * 2, items) {
            Err(Error::Panicked(m)) => assert!(m.contains("bad input item"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        pool.join();
    });
}

#[test]
fn duration_max_means_no_deadline() {
    run_virtual(|| {
        let g = spawn(|| sleep(ms(5)));
        assert!(g.join_timeout(Duration::MAX));
        let s = Semaphore::new(1);
        assert!(s.acquire_timeout(Duration::MAX));
        let q: Queue<u8> = Queue::new();
        q.put(1).unwrap();
        assert_eq!(q.get_timeout(Duration::MAX), Ok(1));
        assert_eq!(with_timeout(Duration::MAX, || 5), Ok(5));
    });
}

#[test]
fn an_event_interval_of_zero_is_treated_as_one() {
    std::thread::spawn(|| {
        assert!(evergreen::config::set_config(evergreen::config::Config {
            event_interval: 0,
            ..Default::default()
        }));
        let g = spawn(|| 3);
        assert_eq!(g.get(), Ok(3));
        evergreen::hub::destroy();
    })
    .join()
    .unwrap();
}

#[test]
fn put_nowait_after_shutdown_says_shut_down() {
    run(|| {
        let q = Queue::new();
        q.shutdown(false);
        assert_eq!(q.put_nowait(1).map_err(|r| r.reason), Err(Error::ShutDown));
    });
}

#[test]
fn an_absurd_stack_size_is_a_clear_panic_not_a_crash() {
    run(|| {
        let r = std::panic::catch_unwind(|| {
            evergreen::Builder::new()
                .stack_size(usize::MAX)
                .spawn(|| ())
        });
        let p = r.unwrap_err();
        let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("stack") && msg.contains("limit"), "{msg}");
    });
}

#[test]
fn a_killed_unstarted_greenlet_whose_function_restarts_it_on_drop_stays_dead() {
    run(|| {
        // The unrun function's Drop starts (and kills again) the greenlet being killed: it
        // must find it dead, and no run-queue entry may outlive the greenlet.
        struct Restart(Rc<RefCell<Option<evergreen::Greenlet<u64>>>>);
        impl Drop for Restart {
            fn drop(&mut self) {
                if let Some(g) = self.0.borrow_mut().take() {
                    g.start();
                    g.kill_nowait();
                }
            }
        }
        let ran = Rc::new(Cell::new(0));
        let slot = Rc::new(RefCell::new(None));
        let r = Restart(slot.clone());
        let ran2 = ran.clone();
        let g = evergreen::Greenlet::new(move || {
            let _r = &r;
            ran2.set(ran2.get() + 1);
            1u64
        });
        *slot.borrow_mut() = Some(g.clone());
        g.kill_nowait();
        assert!(g.dead());
        assert_eq!(g.get(), Err(Error::Killed));
        drop(g);
        // A block freed too early would be reused here and run from a stale queue entry.
        let h = spawn(|| {
            sleep(ms(1));
            7u64
        });
        assert_eq!(h.get(), Ok(7));
        assert_eq!(ran.get(), 0, "the killed greenlet never ran");
        assert_eq!(evergreen::hub::live_count(), 0);
    });
}

#[test]
fn a_greenlet_made_before_its_hub_was_destroyed_never_runs() {
    std::thread::spawn(|| {
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let g = evergreen::Greenlet::new(move || {
            r.set(true);
            5u32
        });
        let later = evergreen::Greenlet::new(|| 6u32);
        evergreen::hub::destroy();
        // A new hub: these belong to the old one, whose stacks it must not take.
        g.start();
        later.start_later(ms(1));
        assert!(g.dead() && later.dead());
        assert_eq!(g.get(), Err(Error::Killed));
        assert_eq!(later.get(), Err(Error::Killed));
        assert!(!ran.get());
        for i in 0..100u32 {
            assert_eq!(spawn(move || i).get(), Ok(i));
        }
        assert_eq!(evergreen::hub::live_count(), 0);
        evergreen::hub::destroy();
    })
    .join()
    .unwrap();
}

// ---- Runtime hardening (issue 7) ------------------------------------------------------------

/// Item 1: `hub::destroy()` from code the hub runs on its behalf must be refused, never free
/// the hub under the loop's feet (valgrind saw invalid reads and writes).
#[test]
fn destroy_from_a_local_with_closure_is_refused() {
    run(|| {
        let local = Local::new(|| 0u8);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            local.with(|_| evergreen::hub::destroy())
        }));
        let msg = r
            .err()
            .map(|p| evergreen::debug::panic_message(&*p))
            .expect("destroy inside Local::with must be refused");
        assert!(msg.contains("destroy"), "{msg}");
        assert_eq!(spawn(|| 5).get(), Ok(5), "the hub is still usable");
    });
}

/// Item 1: a finished greenlet's result whose `Drop` calls `destroy()`.
#[test]
fn destroy_from_the_drop_of_a_finished_greenlets_result_is_refused() {
    run(|| {
        struct DestroyOnDrop(Rc<Cell<Option<bool>>>);
        impl Drop for DestroyOnDrop {
            fn drop(&mut self) {
                let refused = std::panic::catch_unwind(evergreen::hub::destroy).is_err();
                self.0.set(Some(refused));
            }
        }
        let refused = Rc::new(Cell::new(None));
        let r2 = refused.clone();
        drop(spawn(move || DestroyOnDrop(r2)));
        sleep(ms(1));
        assert_eq!(refused.get(), Some(true));
        assert_eq!(spawn(|| 5).get(), Ok(5), "the hub is still usable");
    });
}

/// Item 4: a greenlet-local value whose `Drop` blocks: the greenlet counts as running until
/// the drop is over, then finishes normally; a kill during the drop ends it (not main).
#[test]
fn a_blocking_greenlet_local_drop_delays_the_end_and_can_be_killed() {
    run_virtual(|| {
        struct SlowDrop(Rc<Cell<u32>>);
        impl Drop for SlowDrop {
            fn drop(&mut self) {
                sleep(ms(10));
                self.0.set(self.0.get() + 1);
            }
        }
        let dropped = Rc::new(Cell::new(0));
        let d2 = dropped.clone();
        let local = Rc::new(Local::new(move || SlowDrop(d2.clone())));
        let l2 = local.clone();
        let g = spawn(move || {
            l2.with(|_| ());
            7
        });
        sleep(ms(1));
        assert!(!g.ready() && !g.dead(), "still dropping its local");
        assert!(!g.join_timeout(ms(5)));
        assert!(g.join_timeout(ms(10)));
        assert_eq!(g.get(), Ok(7));
        assert_eq!(dropped.get(), 1);

        let l3 = local.clone();
        let g2 = spawn(move || {
            l3.with(|_| ());
            8
        });
        sleep(ms(1));
        assert!(!g2.dead());
        g2.kill(); // interrupts the drop; must not unwind main
        assert!(g2.dead() && g2.successful());
        assert_eq!(g2.get(), Ok(8), "its function had returned");
        assert_eq!(dropped.get(), 1, "the interrupted drop did not finish");
    });
}

/// Item 5: a result whose `Drop` blocks no longer makes an unrelated `sleep` of main panic:
/// a result no handle can read is dropped on the greenlet's own stack.
#[test]
fn a_blocking_drop_of_an_unread_result_runs_in_its_greenlet() {
    run_virtual(|| {
        struct SleepOnDrop(Rc<Cell<bool>>);
        impl Drop for SleepOnDrop {
            fn drop(&mut self) {
                sleep(ms(10));
                self.0.set(true);
            }
        }
        let done = Rc::new(Cell::new(false));
        let d2 = done.clone();
        drop(spawn(move || SleepOnDrop(d2)));
        let t0 = evergreen::hub::now();
        sleep(ms(50)); // used to panic with LoopExit
        assert_eq!(evergreen::hub::now() - t0, ms(50));
        assert!(done.get());
    });
}

/// Item 5: a result whose `Drop` panics is contained (logged), and leaves no timer armed.
#[test]
fn a_panicking_drop_of_a_result_does_not_escape_into_an_unrelated_call() {
    run_virtual(|| {
        struct PanicOnDrop;
        impl Drop for PanicOnDrop {
            fn drop(&mut self) {
                panic!("PanicOnDrop");
            }
        }
        drop(spawn(|| PanicOnDrop));
        sleep(ms(5)); // used to panic with "PanicOnDrop"
        assert_eq!(spawn(|| 1).get(), Ok(1));
    });
}

/// Item 6: a `Timeout` that outlives `hub::destroy()` must not cancel an unrelated timer of
/// the next hub when dropped.
#[test]
fn a_timeout_outliving_its_hub_cancels_nothing_in_the_next_hub() {
    run(|| {
        let t = Timeout::start_new(ms(500));
        evergreen::hub::destroy();
        let woke = Rc::new(Cell::new(false));
        let w2 = woke.clone();
        let g = spawn(move || {
            sleep(ms(5));
            w2.set(true);
        });
        sleep(Duration::ZERO); // the sleeper arms its timer
        drop(t);
        assert!(g.join_timeout(ms(2000)), "the sleeper never woke");
        assert!(woke.get());
    });
}

/// Item 11: synchronous fault signals cannot be handled as hub events.
#[test]
fn signal_handler_refuses_synchronous_fault_signals() {
    run(|| {
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            let e = evergreen::signal::signal_handler(sig, || {}).expect_err("refused");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("synchronous fault"), "{e}");
        }
    });
}

/// Item 16: a greenlet that caught a panic of its own is not "unwinding" any more: its
/// timeout fires on time while another greenlet's cleanup blocks mid-kill.
#[test]
fn a_caught_panic_does_not_delay_later_timeouts() {
    run_virtual(|| {
        struct SleepOnDrop;
        impl Drop for SleepOnDrop {
            fn drop(&mut self) {
                sleep(ms(500));
            }
        }
        let b = spawn(|| {
            let _cleanup = SleepOnDrop;
            sleep(Duration::from_secs(3600));
        });
        sleep(Duration::ZERO);
        let b2 = b.clone();
        let a = spawn(move || {
            let caught = std::panic::catch_unwind(|| panic!("caught on purpose"));
            assert!(caught.is_err());
            b2.kill_nowait();
            let t0 = evergreen::hub::now();
            let r = with_timeout(ms(10), || sleep(Duration::from_secs(1)));
            (r, evergreen::hub::now() - t0)
        });
        let (r, took) = a.get().unwrap();
        assert_eq!(r, Err(Error::Timeout(ms(10))));
        assert_eq!(took, ms(10));
        b.join();
    });
}

/// Item 19: the monitor reports the root context and hub callbacks holding the hub, not only
/// greenlets.
#[test]
fn the_monitor_reports_the_root_and_hub_callbacks_holding_the_hub() {
    run(|| {
        evergreen::monitor::start(ms(20));
        sleep(ms(1));
        let before = evergreen::monitor::reports();
        // Deliberately blocks the OS thread from the root, between two blocking calls.
        std::thread::sleep(ms(300));
        sleep(ms(1));
        let after_root = evergreen::monitor::reports();
        assert!(
            after_root > before,
            "the root holding the hub was not reported"
        );
        evergreen::hub::run_callback(|| std::thread::sleep(ms(300)));
        sleep(ms(1));
        assert!(
            evergreen::monitor::reports() > after_root,
            "a hub callback holding the hub was not reported"
        );
    });
}

/// Set in the child process of [`the_monitor_tells_without_a_logger`].
const MONITOR_CHILD: &str = "EVERGREEN_TEST_MONITOR_CHILD";

#[test]
fn monitor_child() {
    if std::env::var_os(MONITOR_CHILD).is_none() {
        return;
    }
    // No logger is installed in this process.
    evergreen::monitor::start(ms(20));
    let g = evergreen::Builder::new()
        .name("hog")
        .spawn(|| std::thread::sleep(ms(300)));
    g.join();
    evergreen::hub::destroy();
}

/// Item 19: without a `log` logger the monitor still tells, on stderr.
#[test]
fn the_monitor_tells_without_a_logger() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "monitor_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MONITOR_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("evergreen monitor: greenlet #")
            && stderr.contains("'hog' has held the hub"),
        "{stderr}"
    );
}

/// Sets its flag when dropped: shows that what holds it (a greenlet's value, a link's
/// captures) was released.
struct Flag(Rc<Cell<bool>>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn a_link_notification_still_queued_at_destroy_releases_its_greenlet() {
    // A finished greenlet with links queues its notification with a count of its own (a
    // tagged word in the run queue, not a boxed closure): dropping the queue at `destroy`
    // must release that count, freeing the greenlet and its value.
    run(|| {
        let dropped = Rc::new(Cell::new(false));
        let d2 = dropped.clone();
        let g = spawn(move || Flag(d2));
        let ran = Rc::new(Cell::new(false));
        let r2 = ran.clone();
        g.rawlink(move || r2.set(true));
        // The greenlet runs and ends; its notification is queued behind the root's wake-up.
        sleep(Duration::ZERO);
        assert!(g.dead());
        assert!(!ran.get(), "the notification has not run yet");
        drop(g);
        assert!(!dropped.get(), "the queued notification holds the greenlet");
        evergreen::hub::destroy();
        assert!(
            dropped.get(),
            "destroy released the queued notification's count"
        );
        assert!(
            !ran.get(),
            "destroy drops queued tasks without running them"
        );
    });
}

#[test]
fn a_notification_queued_while_destroy_drops_the_queue_is_released() {
    // Found in review: dropping what `destroy` took from the run queue runs user code; here a
    // link's captures link another dead greenlet, which queues its notification (owning a
    // count of it) into the queue `destroy` had just emptied. It must be released too.
    run(|| {
        struct Relink(Option<evergreen::Greenlet<Flag>>);
        impl Drop for Relink {
            fn drop(&mut self) {
                if let Some(g) = self.0.take() {
                    g.rawlink(|| {});
                }
            }
        }
        let dropped = Rc::new(Cell::new(false));
        let d2 = dropped.clone();
        let g2 = spawn(move || Flag(d2));
        let g1 = spawn(|| ());
        sleep(Duration::ZERO);
        assert!(g1.dead() && g2.dead());
        let r = Relink(Some(g2));
        g1.rawlink(move || drop(r));
        drop(g1);
        evergreen::hub::destroy();
        assert!(dropped.get(), "the count queued during destroy leaked");
    });
}

#[test]
fn wait_read_after_an_eagain_the_reactor_did_not_see_waits() {
    // Found in review: gevent's pattern read -> EAGAIN -> wait_read -> read, with a read the
    // reactor does not see (a raw read of a pipe). The reactor's flag still said readable from
    // the first byte's event, so wait_read returned at once, and the loop spun without ever
    // yielding. It asks the kernel now, and waits (here until its timeout).
    run_virtual(|| {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2(2) fills the two fds of a fresh pipe.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        let (r, w) = (fds[0], fds[1]);
        // SAFETY: write(2) of one byte from a valid buffer to our pipe.
        assert_eq!(unsafe { libc::write(w, b"a".as_ptr().cast(), 1) }, 1);
        evergreen::wait_read(r, Some(Duration::from_secs(1))).unwrap();
        let mut b = [0u8; 8];
        // SAFETY: read(2) into a valid buffer of its length, from our pipe.
        assert_eq!(unsafe { libc::read(r, b.as_mut_ptr().cast(), 8) }, 1);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::read(r, b.as_mut_ptr().cast(), 8) }, -1);
        let res = evergreen::wait_read(r, Some(Duration::from_millis(100)));
        assert_eq!(
            res.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::TimedOut),
            "wait_read returned although the pipe is empty"
        );
        // And it still returns at once when there is something to read.
        // SAFETY: as the first write.
        assert_eq!(unsafe { libc::write(w, b"b".as_ptr().cast(), 1) }, 1);
        evergreen::wait_read(r, Some(Duration::from_secs(1))).unwrap();
        // SAFETY: closing the two fds of our pipe, used by nothing else.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    });
}

#[test]
fn a_greenlet_spawned_and_killed_by_drops_during_destroy_is_released() {
    // Found in review: a drop during `destroy` spawns G (its queue entry is taken in the next
    // round, G still live, so the entry is skipped) and a later drop kills G: its registry
    // count passed to the entry already visited and G leaked, with everything it held.
    run(|| {
        struct Killer(Option<evergreen::Greenlet<()>>);
        impl Drop for Killer {
            fn drop(&mut self) {
                if let Some(g) = self.0.take() {
                    g.kill_nowait();
                }
            }
        }
        struct Spawner(Option<evergreen::Greenlet<()>>, Rc<Cell<bool>>);
        impl Drop for Spawner {
            fn drop(&mut self) {
                let g3 = self.0.take().unwrap();
                let g = spawn(|| ());
                let f = Flag(self.1.clone());
                g.rawlink(move || drop(f));
                let k = Killer(Some(g));
                g3.rawlink(move || drop(k));
            }
        }
        let dropped = Rc::new(Cell::new(false));
        let g1 = spawn(|| ());
        let g3 = spawn(|| ());
        sleep(Duration::ZERO);
        assert!(g1.dead() && g3.dead());
        let s = Spawner(Some(g3), dropped.clone());
        g1.rawlink(move || drop(s));
        drop(g1);
        evergreen::hub::destroy();
        assert!(dropped.get(), "the greenlet spawned during destroy leaked");
    });
}
