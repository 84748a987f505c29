//! Actors without supervisors: mailbox policies, tell/ask semantics, lifecycle, links,
//! monitors, timers, registry, dead letters, counters. Every test runs on the virtual clock
//! with the leak check (no greenlet or timer outlives it).

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use evergreen::Event;
use evergreen_actors::dead_letters::{self, Reason as DlReason};
use evergreen_actors::{
    registry, spawn, Actor, Builder, Ctx, Error, ExitReason, Mailbox, Policy, Reply,
};

fn bounded(id: &str, log: &Log, cap: usize, policy: Policy) -> evergreen_actors::ActorRef<Probe> {
    Builder::new()
        .name(id)
        .mailbox(Mailbox::bounded(cap, policy))
        .spawn(Probe::new(id, log))
        .unwrap()
}

#[test]
fn tell_and_ask_in_order() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        for i in 0..3 {
            a.tell(P::Note(format!("m{i}"))).unwrap();
        }
        assert_eq!(a.ask(|r| P::Echo(7, r)), Ok(7));
        assert_eq!(
            grep(&log, "a got"),
            vec!["a got m0", "a got m1", "a got m2"]
        );
        assert_eq!(a.stats().handled, 4);
        a.stop();
        assert_eq!(a.join(), Ok(ExitReason::Normal));
        assert_eq!(log.take().last().unwrap(), "stop a normal");
    });
}

#[test]
fn policy_block_blocks_the_teller_fifo_and_try_tell_fails() {
    run_virtual(|| {
        let log = Log::new();
        let a = bounded("a", &log, 2, Policy::Block);
        let gate = Rc::new(Event::new());
        a.tell(P::Wait(gate.clone())).unwrap();
        settle(); // the actor takes Wait and blocks; its mailbox is empty
        a.tell(P::Note("1".into())).unwrap();
        a.tell(P::Note("2".into())).unwrap();
        // Full: try_tell hands the message back.
        match a.try_tell(P::Note("x".into())) {
            Err(Error::Full(P::Note(s))) => assert_eq!(s, "x"),
            other => panic!("expected Full with the message back, got {other:?}"),
        }
        // Two blocked tellers, in order.
        let t3 = {
            let a = a.clone();
            evergreen::spawn(move || a.tell(P::Note("3".into())).is_ok())
        };
        let t4 = {
            let a = a.clone();
            evergreen::spawn(move || a.tell(P::Note("4".into())).is_ok())
        };
        settle();
        assert!(
            !t3.dead() && !t4.dead(),
            "tellers block while the mailbox is full"
        );
        assert_eq!(a.stats().mailbox_len, 2);
        gate.set();
        assert_eq!(t3.get(), Ok(true));
        assert_eq!(t4.get(), Ok(true));
        assert_eq!(a.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(
            grep(&log, "a got"),
            vec!["a got 1", "a got 2", "a got 3", "a got 4"]
        );
        assert_eq!(a.stats().high_water, 2, "the bound held");
        a.stop();
        a.join().unwrap();
    });
}

#[test]
fn policy_fail_hands_the_message_back() {
    run_virtual(|| {
        let log = Log::new();
        let a = bounded("a", &log, 1, Policy::Fail);
        let gate = Rc::new(Event::new());
        a.tell(P::Wait(gate.clone())).unwrap();
        settle();
        a.tell(P::Note("1".into())).unwrap();
        match a.tell(P::Note("2".into())) {
            Err(Error::Full(P::Note(s))) => assert_eq!(s, "2"),
            other => panic!("expected Full, got {other:?}"),
        }
        gate.set();
        settle(); // the actor drains "1"
        assert_eq!(a.ask(|r| P::Echo(1, r)), Ok(1));
        assert_eq!(grep(&log, "a got"), vec!["a got 1"]);
        a.stop();
        a.join().unwrap();
    });
}

#[test]
fn policy_drop_newest_drops_the_new_message_as_a_dead_letter() {
    run_virtual(|| {
        let log = Log::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sub = {
            let seen = seen.clone();
            dead_letters::subscribe(move |d| seen.borrow_mut().push(d.clone()))
        };
        let a = bounded("a", &log, 2, Policy::DropNewest);
        let gate = Rc::new(Event::new());
        a.tell(P::Wait(gate.clone())).unwrap();
        settle();
        for i in 1..=3 {
            a.tell(P::Note(format!("{i}"))).unwrap();
        }
        gate.set();
        settle(); // drained (a stop would be handled before queued messages)
        a.stop();
        a.join().unwrap();
        assert_eq!(grep(&log, "a got"), vec!["a got 1", "a got 2"]);
        let seen = seen.borrow();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].reason, DlReason::Overflow);
        assert_eq!(seen[0].to, "'a'");
        assert!(
            seen[0].message_type.ends_with("P"),
            "{}",
            seen[0].message_type
        );
        assert!(dead_letters::unsubscribe(sub));
    });
}

#[test]
fn policy_drop_oldest_evicts_the_oldest_and_fails_an_evicted_ask() {
    run_virtual(|| {
        let log = Log::new();
        let a = bounded("a", &log, 2, Policy::DropOldest);
        let gate = Rc::new(Event::new());
        a.tell(P::Wait(gate.clone())).unwrap();
        settle();
        let asker = {
            let a = a.clone();
            evergreen::spawn(move || a.ask(|r| P::Echo(9, r)))
        };
        settle(); // the ask is queued
        let before = dead_letters::count();
        a.tell(P::Note("1".into())).unwrap();
        a.tell(P::Note("2".into())).unwrap(); // evicts the ask
        a.tell(P::Note("3".into())).unwrap(); // evicts 1
        assert_eq!(asker.get(), Ok(Err(Error::Full(()))));
        assert_eq!(dead_letters::count() - before, 2);
        gate.set();
        settle();
        a.stop();
        a.join().unwrap();
        assert_eq!(grep(&log, "a got"), vec!["a got 2", "a got 3"]);
    });
}

#[test]
fn zero_capacity_is_rejected_with_a_clear_error() {
    run_virtual(|| {
        let log = Log::new();
        let r = Builder::new()
            .name("z")
            .mailbox(Mailbox::bounded(0, Policy::Block))
            .spawn(Probe::new("z", &log));
        match r {
            Err(Error::Invalid(m)) => assert!(m.contains("capacity 0") && m.contains('z'), "{m}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    });
}

#[test]
fn tell_to_a_dead_actor_hands_the_message_back_with_the_reason() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.stop_with(ExitReason::Error("done".into()));
        assert_eq!(a.join(), Ok(ExitReason::Error("done".into())));
        let before = dead_letters::count();
        match a.tell(P::Note("late".into())) {
            Err(Error::Dead(ExitReason::Error(m), P::Note(s))) => {
                assert_eq!(m, "done");
                assert_eq!(s, "late");
            }
            other => panic!("expected Dead, got {other:?}"),
        }
        assert_eq!(dead_letters::count(), before + 1);
    });
}

#[test]
fn ask_to_a_dead_actor_fails_at_once() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.stop();
        a.join().unwrap();
        let t0 = evergreen::hub::now();
        assert_eq!(
            a.ask_timeout(|r| P::Echo(1, r), Duration::from_secs(60)),
            Err(Error::Dead(ExitReason::Normal, ()))
        );
        assert_eq!(since(t0), Duration::ZERO);
    });
}

#[test]
fn ask_fails_at_once_when_the_callee_dies_while_it_waits() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.tell(P::Sleep(Duration::from_secs(10))).unwrap();
        // The ask is queued behind the sleep; the callee is killed after 1 s.
        let killer = {
            let a = a.clone();
            evergreen::spawn(move || {
                evergreen::sleep(Duration::from_secs(1));
                a.kill();
            })
        };
        let t0 = evergreen::hub::now();
        let r = a.ask_timeout(|r| P::Echo(1, r), Duration::from_secs(60));
        assert_eq!(r, Err(Error::Dead(ExitReason::Killed, ())));
        assert_eq!(
            since(t0),
            Duration::from_secs(1),
            "failed at the death, not the timeout"
        );
        killer.join();
        assert!(
            grep(&log, "stop a").is_empty(),
            "stopped does not run on kill"
        );
    });
}

#[test]
fn ask_fails_when_the_callee_dies_holding_the_reply_elsewhere() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        // The callee hands the reply to a greenlet that never answers.
        let holder: Rc<RefCell<Option<Reply<u32>>>> = Rc::default();
        let h2 = holder.clone();
        let asker = {
            let a = a.clone();
            evergreen::spawn(move || {
                a.ask(move |r| {
                    P::Run(Box::new(move |_, _| {
                        *h2.borrow_mut() = Some(r);
                    }))
                })
            })
        };
        settle();
        assert!(holder.borrow().is_some());
        a.stop_with(ExitReason::Error("gone".into()));
        assert_eq!(
            asker.get(),
            Ok(Err(Error::Dead(ExitReason::Error("gone".into()), ())))
        );
        drop(holder.borrow_mut().take());
    });
}

#[test]
fn late_replies_are_dropped_as_dead_letters() {
    run_virtual(|| {
        let log = Log::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sub = {
            let seen = seen.clone();
            dead_letters::subscribe(move |d| seen.borrow_mut().push(d.reason))
        };
        let a = probe("a", &log);
        let t0 = evergreen::hub::now();
        assert_eq!(
            a.ask_timeout(P::Keep, ms(100)),
            Err(Error::Timeout(ms(100)))
        );
        assert_eq!(since(t0), ms(100));
        // The answer comes after the timeout: dropped, counted.
        a.tell(P::AnswerKept(5)).unwrap();
        assert_eq!(
            a.ask(|r| P::Echo(6, r)),
            Ok(6),
            "the next ask gets its own answer"
        );
        assert_eq!(*seen.borrow(), vec![DlReason::LateReply]);
        dead_letters::unsubscribe(sub);
        a.stop();
        a.join().unwrap();
    });
}

#[test]
fn a_dropped_reply_handle_fails_the_ask_at_once() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        let t0 = evergreen::hub::now();
        assert_eq!(
            a.ask_timeout(P::Drop, Duration::from_secs(30)),
            Err(Error::ReplyDropped)
        );
        assert_eq!(since(t0), Duration::ZERO);
        assert_eq!(a.ask(|r| P::Echo(2, r)), Ok(2), "the actor lives on");
        a.stop();
        a.join().unwrap();
    });
}

#[test]
fn an_actor_asking_itself_gets_an_error_not_a_hang() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        let got: Rc<RefCell<Option<Result<u32, Error>>>> = Rc::default();
        let g2 = got.clone();
        a.tell(P::Run(Box::new(move |_, ctx| {
            *g2.borrow_mut() = Some(ctx.myself().ask(|r| P::Echo(1, r)));
        })))
        .unwrap();
        assert_eq!(a.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(*got.borrow(), Some(Err(Error::SelfAsk)));
        a.stop();
        a.join().unwrap();
    });
}

#[test]
fn panic_in_ask_goes_to_the_caller_panic_in_tell_crashes() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        match a.ask(P::CrashAsk) {
            Err(Error::Panicked(m)) => assert!(m.contains("a crashed answering"), "{m}"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        assert_eq!(
            a.ask(|r| P::Echo(3, r)),
            Ok(3),
            "alive after a panic in an ask"
        );
        a.tell(P::Crash).unwrap();
        match a.join() {
            Ok(ExitReason::Panicked(m)) => assert!(m.contains("a crashed on purpose"), "{m}"),
            other => panic!("expected a crash, got {other:?}"),
        }
        assert_eq!(
            log.take().last().unwrap(),
            "stop a panicked: a crashed on purpose"
        );
    });
}

#[test]
fn stop_after_the_current_message_then_queued_asks_fail_with_dead() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.tell(P::Sleep(ms(10))).unwrap();
        a.tell(P::Note("queued".into())).unwrap();
        let asker = {
            let a = a.clone();
            evergreen::spawn(move || a.ask(|r| P::Echo(1, r)))
        };
        settle();
        a.stop();
        assert_eq!(asker.get(), Ok(Err(Error::Dead(ExitReason::Normal, ()))));
        assert_eq!(a.join(), Ok(ExitReason::Normal));
        assert!(
            grep(&log, "a got").is_empty(),
            "queued messages are not handled after stop"
        );
    });
}

#[test]
fn the_first_stop_request_wins_whatever_its_reason() {
    // The first stop request of a reason without text is kept inline, others are queued:
    // either way the first one queued is the one taken.
    run_virtual(|| {
        for (first, second) in [
            (ExitReason::Normal, ExitReason::Error("second".into())),
            (ExitReason::Error("first".into()), ExitReason::Normal),
            (ExitReason::Shutdown, ExitReason::Normal),
            (ExitReason::Error("first".into()), ExitReason::Shutdown),
        ] {
            let log = Log::new();
            let a = probe("a", &log);
            a.stop_with(first.clone());
            a.stop_with(second);
            assert_eq!(a.join(), Ok(first));
        }
    });
}

#[test]
fn shutdown_escalates_stop_to_kill_after_the_timeout() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.tell(P::Sleep(Duration::from_secs(100))).unwrap();
        settle();
        let t0 = evergreen::hub::now();
        assert_eq!(a.shutdown(ms(250)), Ok(ExitReason::Killed));
        assert_eq!(since(t0), ms(250));
        assert!(
            grep(&log, "stop a").is_empty(),
            "killed: stopped did not run"
        );
        assert_eq!(a.exit_reason(), Some(ExitReason::Killed));
        // A cooperative actor stops within the timeout, with its hook.
        let b = probe("b", &log);
        b.tell(P::Sleep(ms(10))).unwrap();
        settle();
        let t0 = evergreen::hub::now();
        assert_eq!(b.shutdown(ms(250)), Ok(ExitReason::Normal));
        assert_eq!(since(t0), ms(10));
        assert_eq!(grep(&log, "stop b"), vec!["stop b normal"]);
    });
}

#[test]
fn kill_right_after_spawn_still_exits_the_actor() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.kill();
        assert_eq!(a.join(), Ok(ExitReason::Killed));
        assert!(log.take().is_empty(), "it never started");
        // The runtime keeps a killed, never-started greenlet in its live count until the hub
        // pops its run-queue entry.
        settle();
    });
}

#[test]
fn start_failure_is_an_exit_reason_and_skips_stopped() {
    run_virtual(|| {
        let log = Log::new();
        let mut p = Probe::new("a", &log);
        p.fail_start = true;
        let a = spawn(p);
        assert_eq!(
            a.join(),
            Ok(ExitReason::StartFailed("a refuses to start".into()))
        );
        assert_eq!(log.take(), vec!["start a"]);
    });
}

#[test]
fn links_propagate_abnormal_exits_and_trap_exit_turns_them_into_signals() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        let b = probe("b", &log);
        let c = probe("c", &log);
        let (b2, c2) = (b.clone(), c.clone());
        a.tell(P::Run(Box::new(move |_, ctx| {
            ctx.link(&b2);
            ctx.link(&c2);
        })))
        .unwrap();
        c.tell(P::Run(Box::new(|_, ctx| ctx.trap_exit(true))))
            .unwrap();
        assert_eq!(a.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(c.ask(|r| P::Echo(0, r)), Ok(0));
        a.tell(P::Crash).unwrap();
        let reason = ExitReason::Panicked("a crashed on purpose".into());
        assert_eq!(a.join(), Ok(reason.clone()));
        assert_eq!(b.join(), Ok(reason.clone()), "b dies with a's reason");
        assert_eq!(c.ask(|r| P::Echo(1, r)), Ok(1), "c traps exits and lives");
        assert_eq!(
            grep(&log, "c signal"),
            vec![format!("c signal exit a {reason}")]
        );
        // A normal exit does not kill a linked actor that does not trap.
        let d = probe("d", &log);
        let c3 = c.clone();
        d.tell(P::Run(Box::new(move |_, ctx| ctx.link(&c3))))
            .unwrap();
        c.tell(P::Run(Box::new(|_, ctx| ctx.trap_exit(false))))
            .unwrap();
        assert_eq!(c.ask(|r| P::Echo(0, r)), Ok(0));
        d.stop();
        d.join().unwrap();
        assert_eq!(c.ask(|r| P::Echo(2, r)), Ok(2));
        c.stop();
        c.join().unwrap();
    });
}

#[test]
fn kill_cannot_be_trapped() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.tell(P::Run(Box::new(|_, ctx| ctx.trap_exit(true))))
            .unwrap();
        assert_eq!(a.ask(|r| P::Echo(0, r)), Ok(0));
        a.kill();
        assert_eq!(a.join(), Ok(ExitReason::Killed));
    });
}

#[test]
fn monitors_report_down_and_at_once_for_an_already_dead_actor() {
    run_virtual(|| {
        let log = Log::new();
        let w = probe("w", &log);
        let x = probe("x", &log);
        let dead = probe("dead", &log);
        dead.stop();
        dead.join().unwrap();
        let (x2, d2) = (x.clone(), dead.clone());
        w.tell(P::Run(Box::new(move |_, ctx| {
            ctx.monitor(&x2);
            ctx.monitor(&d2);
        })))
        .unwrap();
        assert_eq!(w.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(grep(&log, "w signal"), vec!["w signal down dead normal"]);
        x.kill();
        assert_eq!(w.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(
            grep(&log, "w signal"),
            vec!["w signal down dead normal", "w signal down x killed"]
        );
        w.stop();
        w.join().unwrap();
    });
}

#[test]
fn two_actors_blocking_telling_each_other_get_loop_exit_naming_both() {
    run_virtual(|| {
        let log = Log::new();
        let a = bounded("a", &log, 1, Policy::Block);
        let b = bounded("b", &log, 1, Policy::Block);
        let errors: Rc<RefCell<Vec<String>>> = Rc::default();
        let flood = |target: evergreen_actors::ActorRef<Probe>,
                     errors: Rc<RefCell<Vec<String>>>| {
            P::Run(Box::new(move |_, _| {
                for i in 0..3 {
                    match target.tell(P::Note(format!("{i}"))) {
                        Ok(()) => {}
                        Err(Error::LoopExit(m, _)) => errors.borrow_mut().push(m),
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            }))
        };
        a.tell(flood(b.clone(), errors.clone())).unwrap();
        b.tell(flood(a.clone(), errors.clone())).unwrap();
        // Not a hang: the cycle is reported, and everything drains.
        settle();
        a.stop();
        b.stop();
        a.join().unwrap();
        b.join().unwrap();
        let errors = errors.borrow();
        assert!(!errors.is_empty(), "the cycle was reported");
        for m in errors.iter() {
            assert!(m.contains("'a'") && m.contains("'b'"), "{m}");
        }
    });
}

#[test]
fn telling_yourself_into_a_full_block_mailbox_is_a_loop_exit() {
    run_virtual(|| {
        let log = Log::new();
        let a = bounded("a", &log, 1, Policy::Block);
        let got: Rc<RefCell<Vec<String>>> = Rc::default();
        let g2 = got.clone();
        a.tell(P::Run(Box::new(move |_, ctx| {
            let me = ctx.myself();
            me.tell(P::Note("1".into())).unwrap();
            match me.tell(P::Note("2".into())) {
                Err(Error::LoopExit(m, P::Note(s))) => g2.borrow_mut().push(format!("{s}: {m}")),
                other => panic!("expected LoopExit, got {other:?}"),
            }
        })))
        .unwrap();
        settle();
        assert_eq!(a.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(got.borrow().len(), 1);
        assert!(
            got.borrow()[0].starts_with("2: actor 'a' told itself"),
            "{:?}",
            got.borrow()
        );
        a.stop();
        a.join().unwrap();
    });
}

/// A ticker: counts timer messages by text.
struct Ticker {
    log: Log,
}

#[derive(Clone)]
enum T {
    Tick(&'static str),
    After(&'static str, Duration, &'static str),
    Every(&'static str, Duration, &'static str),
    Cancel(&'static str),
    Sleep(Duration),
    Has(&'static str, Rc<RefCell<Option<bool>>>),
}

impl Actor for Ticker {
    type Msg = T;
    fn handle(&mut self, msg: T, ctx: &mut Ctx<Self>) {
        match msg {
            T::Tick(s) => self
                .log
                .push(format!("tick {s} at {:?}", ctx.incarnation())),
            T::After(k, d, s) => ctx.send_after(k, d, T::Tick(s)),
            T::Every(k, d, s) => ctx.send_interval(k, d, T::Tick(s)),
            T::Cancel(k) => {
                ctx.cancel_timer(k);
            }
            T::Sleep(d) => evergreen::sleep(d),
            T::Has(k, out) => *out.borrow_mut() = Some(ctx.has_timer(k)),
        }
    }
}

#[test]
fn a_cancelled_or_replaced_timer_message_is_never_delivered_even_if_queued() {
    run_virtual(|| {
        let log = Log::new();
        let t = spawn(Ticker { log: log.clone() });
        // Replace: "first" fires while the actor sleeps (queued), then is replaced.
        t.tell(T::After("k", ms(10), "first")).unwrap();
        t.tell(T::Sleep(ms(20))).unwrap();
        t.tell(T::After("k", ms(10), "second")).unwrap();
        // Cancel: "third" fires while the actor sleeps, then is cancelled.
        t.tell(T::After("c", ms(35), "third")).unwrap();
        t.tell(T::Sleep(ms(30))).unwrap();
        t.tell(T::Cancel("c")).unwrap();
        evergreen::sleep(ms(200));
        assert_eq!(log.take(), vec!["tick second at 1"]);
        let has = Rc::new(RefCell::new(None));
        t.tell(T::Has("k", has.clone())).unwrap();
        evergreen::sleep(ms(1));
        assert_eq!(
            *has.borrow(),
            Some(false),
            "a delivered one-shot timer is gone"
        );
        t.stop();
        t.join().unwrap();
    });
}

#[test]
fn interval_timers_tick_without_piling_up_and_stop_with_the_actor() {
    run_virtual(|| {
        let log = Log::new();
        let t = spawn(Ticker { log: log.clone() });
        t.tell(T::Every("i", ms(10), "i")).unwrap();
        evergreen::sleep(ms(35));
        assert_eq!(log.take().len(), 3);
        // A busy actor gets at most one queued tick per interval timer.
        t.tell(T::Sleep(ms(100))).unwrap();
        evergreen::sleep(ms(105));
        assert_eq!(log.take().len(), 1);
        t.stop();
        t.join().unwrap();
        assert_eq!(
            evergreen::hub::timer_count(),
            0,
            "the interval timer was cancelled"
        );
    });
}

#[test]
fn registry_finds_actors_by_name_and_type_and_forgets_them_on_exit() {
    run_virtual(|| {
        let log = Log::new();
        let a = Builder::new()
            .name("reg-a")
            .register()
            .spawn(Probe::new("a", &log))
            .unwrap();
        let found = registry::whereis::<Probe>("reg-a").expect("registered");
        assert_eq!(found, a);
        assert!(
            registry::whereis::<Ticker>("reg-a").is_none(),
            "typed lookup"
        );
        assert_eq!(
            registry::register("reg-a", &a),
            Err(Error::AlreadyRegistered("reg-a".into()))
        );
        let dup = Builder::new()
            .name("reg-a")
            .register()
            .spawn(Probe::new("dup", &log));
        assert!(matches!(dup, Err(Error::AlreadyRegistered(_))));
        a.stop();
        a.join().unwrap();
        assert!(registry::whereis_any("reg-a").is_none());
        assert!(registry::registered().is_empty());
        assert_eq!(
            registry::register("x", &a),
            Err(Error::Dead(ExitReason::Normal, ()))
        );
    });
}

#[test]
fn leftovers_at_stop_are_dead_letters() {
    run_virtual(|| {
        let log = Log::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let sub = {
            let seen = seen.clone();
            dead_letters::subscribe(move |d| seen.borrow_mut().push((d.reason, d.to.clone())))
        };
        let a = probe("a", &log);
        a.tell(P::Sleep(ms(5))).unwrap();
        a.tell(P::Note("1".into())).unwrap();
        a.tell(P::Note("2".into())).unwrap();
        settle();
        a.stop();
        a.join().unwrap();
        assert_eq!(
            *seen.borrow(),
            vec![(DlReason::Leftover, "'a'".to_string()); 2]
        );
        dead_letters::unsubscribe(sub);
    });
}

#[test]
fn counters_track_handled_depth_high_water_and_time() {
    run_virtual(|| {
        let log = Log::new();
        let a = Builder::new()
            .name("a")
            .measure_time(true)
            .spawn(Probe::new("a", &log))
            .unwrap();
        a.tell(P::Sleep(ms(7))).unwrap();
        for i in 0..4 {
            a.tell(P::Note(format!("{i}"))).unwrap();
        }
        let s = a.stats();
        assert_eq!((s.mailbox_len, s.high_water), (5, 5));
        assert_eq!(a.ask(|r| P::Echo(0, r)), Ok(0));
        let s = a.stats();
        assert_eq!(s.handled, 6);
        assert_eq!(s.mailbox_len, 0);
        assert_eq!(s.high_water, 6, "the ask was the sixth queued message");
        assert_eq!(s.handler_time, Some(ms(7)));
        assert_eq!(s.status, "running");
        a.stop();
        a.join().unwrap();
        assert_eq!(a.stats().status, "dead");
    });
}

#[test]
fn an_ask_timeout_covers_waiting_for_room_in_a_full_block_mailbox() {
    run_virtual(|| {
        let log = Log::new();
        let a = bounded("a", &log, 1, Policy::Block);
        let gate = Rc::new(Event::new());
        a.tell(P::Wait(gate.clone())).unwrap();
        settle();
        a.tell(P::Note("fill".into())).unwrap();
        let t0 = evergreen::hub::now();
        assert_eq!(
            a.ask_timeout(|r| P::Echo(1, r), ms(50)),
            Err(Error::Timeout(ms(50)))
        );
        assert_eq!(since(t0), ms(50));
        assert_eq!(a.stats().mailbox_len, 1, "the timed-out ask was not queued");
        gate.set();
        settle();
        assert_eq!(a.ask(|r| P::Echo(2, r)), Ok(2));
        assert_eq!(grep(&log, "a got"), vec!["a got fill"]);
        a.stop();
        a.join().unwrap();
    });
}

/// `'a' asks 'b'` where `b`'s handler asks `a` back: with `via`, through one more actor.
fn ask_back(
    first: &evergreen_actors::ActorRef<Probe>,
    chain: Vec<evergreen_actors::ActorRef<Probe>>,
    out: Rc<RefCell<Vec<String>>>,
) -> Result<u32, Error> {
    // Each actor of the chain asks the next; the last asks `first`.
    fn make(
        rest: Vec<evergreen_actors::ActorRef<Probe>>,
        first: evergreen_actors::ActorRef<Probe>,
        out: Rc<RefCell<Vec<String>>>,
    ) -> impl FnOnce(Reply<u32>) -> P {
        move |reply: Reply<u32>| {
            P::Run(Box::new(move |me, _ctx| {
                let t0 = evergreen::hub::now();
                let r = match rest.split_first() {
                    Some((next, tail)) => next.ask(make(tail.to_vec(), first.clone(), out.clone())),
                    None => first.ask(|r| P::Echo(1, r)),
                };
                out.borrow_mut()
                    .push(format!("{}: {r:?} after {:?}", me.id, since(t0)));
                reply.send(2)
            }))
        }
    }
    let (head, tail) = chain.split_first().expect("a chain");
    let first2 = first.clone();
    let out2 = out.clone();
    let head = head.clone();
    let tail = tail.to_vec();
    first.ask(move |reply| {
        P::Run(Box::new(move |_, _| {
            let r = head.ask(make(tail, first2, out2));
            reply.send(r.unwrap_or(0))
        }))
    })
}

#[test]
fn an_ask_cycle_fails_at_once_naming_the_actors_instead_of_hanging() {
    // gen_server:call's deadlock: a calls b, b calls a. Here b's ask fails at once.
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        let b = probe("b", &log);
        let out: Rc<RefCell<Vec<String>>> = Rc::default();
        assert_eq!(ask_back(&a, vec![b.clone()], out.clone()), Ok(2));
        let out = out.borrow();
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("b: Err(LoopExit(\"'b' cannot ask 'a': the actors would wait for each other forever ('b' asks 'a', 'a' asks 'b')\""),
            "{out:?}"
        );
        assert!(out[0].ends_with("after 0ns"), "at once: {out:?}");
        for x in [a, b] {
            x.stop();
            x.join().unwrap();
        }
    });
}

#[test]
fn a_transitive_ask_cycle_names_every_actor_in_it() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        let b = probe("b", &log);
        let c = probe("c", &log);
        let out: Rc<RefCell<Vec<String>>> = Rc::default();
        assert_eq!(ask_back(&a, vec![b.clone(), c.clone()], out.clone()), Ok(2));
        let out = out.borrow();
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out[0].contains(
                "'c' cannot ask 'a': the actors would wait for each other forever \
                 ('c' asks 'a', 'a' asks 'b', 'b' asks 'c')"
            ),
            "{out:?}"
        );
        assert!(out[1].starts_with("b: Ok(2)"), "{out:?}");
        for x in [a, b, c] {
            x.stop();
            x.join().unwrap();
        }
    });
}

#[test]
fn asking_a_busy_actor_that_waits_on_someone_else_is_not_a_cycle() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        let b = probe("b", &log);
        let c = probe("c", &log);
        // b waits in an ask to c (which sleeps); a asks b meanwhile: a plain wait.
        let c2 = c.clone();
        b.tell(P::Run(Box::new(move |_, _| {
            c2.tell(P::Sleep(ms(10))).unwrap();
            assert_eq!(c2.ask(|r| P::Echo(3, r)), Ok(3));
        })))
        .unwrap();
        settle();
        let b2 = b.clone();
        let r = a.ask(|reply| {
            P::Run(Box::new(move |_, _| {
                reply.send(b2.ask(|r| P::Echo(4, r)).unwrap())
            }))
        });
        assert_eq!(r, Ok(4));
        for x in [a, b, c] {
            x.stop();
            x.join().unwrap();
        }
    });
}

/// Not `Clone`: carries a drop token and its sequence number.
struct Fresh(u32, DropToken);

struct Minter {
    log: Log,
    drops: DropCounter,
}

enum M {
    Tick(Fresh),
    Every(Duration),
    EveryPanicking(Duration),
    Sleep(Duration),
    Cancel,
}

impl Actor for Minter {
    type Msg = M;
    fn handle(&mut self, msg: M, ctx: &mut Ctx<Self>) {
        match msg {
            M::Tick(Fresh(n, _t)) => self
                .log
                .push(format!("tick {n} at {:?}", evergreen::hub::now())),
            M::Every(d) => {
                let drops = self.drops.clone();
                let mut n = 0;
                let token = drops.token();
                ctx.send_interval_with("mint", d, move || {
                    let _keep = &token;
                    n += 1;
                    M::Tick(Fresh(n, drops.token()))
                });
            }
            M::EveryPanicking(d) => {
                ctx.send_interval_with("bad", d, || -> M { panic!("the maker fails") })
            }
            M::Sleep(d) => evergreen::sleep(d),
            M::Cancel => {
                ctx.cancel_timer("mint");
            }
        }
    }
}

#[test]
fn send_interval_with_makes_non_clone_messages_and_keeps_the_cancel_guarantee() {
    run_virtual(|| {
        let log = Log::new();
        let drops = DropCounter::new();
        let t0 = evergreen::hub::now();
        let m = spawn(Minter {
            log: log.clone(),
            drops: drops.clone(),
        });
        m.tell(M::Every(ms(10))).unwrap();
        evergreen::sleep(ms(35));
        assert_eq!(
            log.take(),
            (1..=3)
                .map(|n| format!("tick {n} at {:?}", t0 + ms(10 * n)))
                .collect::<Vec<_>>()
        );
        // Busy for 100 ms: one tick is made and queued; no more are made meanwhile.
        m.tell(M::Sleep(ms(100))).unwrap();
        m.tell(M::Cancel).unwrap();
        evergreen::sleep(ms(200));
        assert!(
            log.take().is_empty(),
            "the queued tick of a cancelled timer is never handled"
        );
        // Ticks 1-3 handled, tick 4 dropped unhandled, and the maker (with its token) gone.
        assert_eq!(drops.count(), 5);
        assert_eq!(evergreen::hub::timer_count(), 0);
        // Stop cancels too.
        m.tell(M::Every(ms(10))).unwrap();
        evergreen::sleep(ms(15));
        assert_eq!(log.take().len(), 1);
        m.stop();
        m.join().unwrap();
        assert_eq!(evergreen::hub::timer_count(), 0);
        assert_eq!(drops.count(), 7, "tick 1 and the maker of the second timer");
    });
}

#[test]
fn a_panicking_message_maker_stops_its_timer_not_the_actor() {
    run_virtual(|| {
        let log = Log::new();
        let m = spawn(Minter {
            log: log.clone(),
            drops: DropCounter::new(),
        });
        m.tell(M::EveryPanicking(ms(10))).unwrap();
        evergreen::sleep(ms(50));
        assert_eq!(evergreen::hub::timer_count(), 0, "the timer stopped");
        assert!(!m.is_dead());
        m.tell(M::Sleep(ms(1))).unwrap();
        m.stop();
        assert_eq!(m.join(), Ok(ExitReason::Normal));
    });
}

/// Spawns linked greenlets that wait forever, logging their drop.
struct Parent {
    log: Log,
    linked: Rc<RefCell<Vec<evergreen::Greenlet<()>>>>,
}

struct Dropped(Log, String);
impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.push(format!("dropped {}", self.1));
    }
}

enum L {
    Spawn(&'static str),
    SpawnShort,
    Crash,
    KillMe,
}

impl Actor for Parent {
    type Msg = L;
    fn started(&mut self, ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        self.log.push(format!("start {}", ctx.incarnation()));
        Ok(())
    }
    fn handle(&mut self, msg: L, ctx: &mut Ctx<Self>) {
        match msg {
            L::Spawn(name) => {
                let d = Dropped(self.log.clone(), name.to_string());
                let g = ctx.spawn_linked(move || {
                    let _d = d;
                    evergreen::sleep(Duration::MAX);
                });
                self.linked.borrow_mut().push(g);
            }
            L::SpawnShort => {
                ctx.spawn_linked(|| ());
            }
            L::Crash => panic!("parent crashes"),
            L::KillMe => {
                let me = ctx.myself();
                let d = Dropped(self.log.clone(), "killer".into());
                ctx.spawn_linked(move || {
                    let _d = d;
                    me.kill();
                    unreachable!("killed with its actor");
                });
            }
        }
    }
}

fn parent(
    log: &Log,
    linked: &Rc<RefCell<Vec<evergreen::Greenlet<()>>>>,
    hib: bool,
) -> evergreen_actors::ActorRef<Parent> {
    Builder::new()
        .hibernate(hib)
        .spawn(Parent {
            log: log.clone(),
            linked: linked.clone(),
        })
        .unwrap()
}

#[test]
fn linked_greenlets_die_when_the_actor_stops_or_is_killed_parked_or_hibernated() {
    run_virtual(|| {
        for hib in [false, true] {
            for kill in [false, true] {
                let log = Log::new();
                let linked = Rc::default();
                let p = parent(&log, &linked, hib);
                p.tell(L::Spawn("x")).unwrap();
                p.tell(L::Spawn("y")).unwrap();
                settle();
                // (Not hibernating, it may still be asleep: a parked actor starts lazily, on
                // the dispatcher, until a user message wakes it from its first sleep.)
                if hib {
                    assert!(p.stats().hibernated);
                }
                if kill {
                    p.kill();
                } else {
                    p.stop();
                }
                p.join().unwrap();
                for g in linked.borrow().iter() {
                    g.join();
                    assert!(g.dead());
                }
                assert_eq!(
                    log.take(),
                    vec!["start 1", "dropped x", "dropped y"],
                    "hib {hib} kill {kill}"
                );
            }
        }
    });
}

#[test]
fn linked_greenlets_die_before_a_restarted_incarnation_starts() {
    run_virtual(|| {
        let log = Log::new();
        let linked: Rc<RefCell<Vec<evergreen::Greenlet<()>>>> = Rc::default();
        let (l2, k2) = (log.clone(), linked.clone());
        let sup = evergreen_actors::SupervisorSpec::new(evergreen_actors::Strategy::OneForOne)
            .child(evergreen_actors::ChildSpec::worker("p", move || Parent {
                log: l2.clone(),
                linked: k2.clone(),
            }))
            .spawn("sup")
            .unwrap();
        let p = sup.child::<Parent>("p").unwrap();
        p.tell(L::Spawn("x")).unwrap();
        p.tell(L::Crash).unwrap();
        settle();
        assert_eq!(log.take(), vec!["start 1", "dropped x", "start 2"]);
        assert!(linked.borrow()[0].dead());
        sup.shutdown(ms(100)).unwrap();
    });
}

#[test]
fn a_linked_greenlet_that_kills_its_actor_dies_with_it_and_finished_ones_are_forgotten() {
    run_virtual(|| {
        let log = Log::new();
        let linked = Rc::default();
        let p = parent(&log, &linked, false);
        for _ in 0..100 {
            p.tell(L::SpawnShort).unwrap();
        }
        p.tell(L::KillMe).unwrap();
        assert_eq!(p.join(), Ok(ExitReason::Killed));
        settle();
        assert_eq!(log.take(), vec!["start 1", "dropped killer"]);
    });
}

#[test]
fn system_lane_entries_are_handled_in_arrival_order() {
    // The lane's first entry is kept inline, the others queued behind it: the order must be
    // that of arrival, whichever holds which.
    run_virtual(|| {
        let log = Log::new();
        let w = probe("w", &log);
        let x = probe("x", &log);
        let y = probe("y", &log);
        let (x2, y2) = (x.clone(), y.clone());
        w.ask(|r| {
            P::Run(Box::new(move |_, ctx| {
                ctx.monitor(&x2);
                ctx.monitor(&y2);
                r.send(0)
            }))
        })
        .unwrap();
        let ev = Rc::new(Event::new());
        w.tell(P::Wait(ev.clone())).unwrap();
        settle();
        // While w is busy: two down signals, then a stop request, all queued.
        x.stop();
        x.join().unwrap();
        y.stop();
        y.join().unwrap();
        w.stop();
        ev.set();
        assert_eq!(w.join(), Ok(ExitReason::Normal));
        assert_eq!(
            [grep(&log, "w signal"), grep(&log, "stop w")].concat(),
            vec![
                "w signal down x normal",
                "w signal down y normal",
                "stop w normal"
            ]
        );
        // Twice more, on a fresh actor: the inline slot is reused once emptied.
        let v = probe("v", &log);
        for i in 0..2 {
            let z = probe(&format!("z{i}"), &log);
            let z2 = z.clone();
            v.ask(|r| {
                P::Run(Box::new(move |_, ctx| {
                    ctx.monitor(&z2);
                    r.send(0)
                }))
            })
            .unwrap();
            let ev = Rc::new(Event::new());
            v.tell(P::Wait(ev.clone())).unwrap();
            settle();
            z.stop();
            z.join().unwrap();
            ev.set();
            settle();
        }
        assert_eq!(
            grep(&log, "v signal"),
            vec!["v signal down z0 normal", "v signal down z1 normal"]
        );
        v.stop();
        v.join().unwrap();
    });
}
