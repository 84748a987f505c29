//! Supervisors: strategies, restart types, the intensity window, escalation, ordering,
//! shutdown timeouts, backoff, dynamic children, the tree dump. Virtual clock, leak check.

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use evergreen::Event;
use evergreen_actors::dead_letters;
use evergreen_actors::{
    Actor, ActorRef, Backoff, Builder, ChildSpec, Ctx, Error, ExitReason, Mailbox, Policy, Restart,
    Shutdown, Strategy, Supervisor, SupervisorSpec,
};

fn worker(id: &'static str, log: &Log) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker(id, move || Probe::new(id, &log))
}

fn crash(sup: &ActorRef<Supervisor>, id: &str) {
    let c = sup.child::<Probe>(id).expect("child");
    c.tell(P::Crash).unwrap();
    settle();
}

fn panicked(id: &str) -> String {
    format!("stop {id} panicked: {id} crashed on purpose")
}

#[test]
fn children_start_in_order_and_stop_in_reverse() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(worker("a", &log))
            .child(worker("b", &log))
            .child(worker("c", &log))
            .spawn("sup")
            .unwrap();
        assert_eq!(log.take(), vec!["start a", "start b", "start c"]);
        let ids: Vec<String> = sup.children().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        let a = sup.child::<Probe>("a").unwrap();
        assert_eq!(sup.shutdown(Duration::from_secs(5)), Ok(ExitReason::Normal));
        assert_eq!(
            log.take(),
            vec!["stop c shutdown", "stop b shutdown", "stop a shutdown"]
        );
        assert_eq!(
            a.exit_reason(),
            Some(ExitReason::Shutdown),
            "final once the supervisor is"
        );
    });
}

/// supervisor_SUITE: one_for_one. A crashed child is restarted alone; its reference stays
/// valid; the asker of the message it crashed on gets an error; queued messages survive.
#[test]
fn one_for_one_restarts_only_the_child_and_keeps_its_reference() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("a", &log))
            .child(worker("b", &log))
            .spawn("sup")
            .unwrap();
        log.take();
        let a = sup.child::<Probe>("a").unwrap();
        // A crash on an ask: the asker gets the error, the actor lives (no restart).
        assert!(matches!(a.ask(P::CrashAsk), Err(Error::Panicked(_))));
        assert_eq!(a.stats().restarts, 0);
        // A crash on a tell, with a message queued behind it.
        a.tell(P::Crash).unwrap();
        a.tell(P::Note("after".into())).unwrap();
        settle();
        assert_eq!(
            log.take(),
            vec![panicked("a"), "start a".into(), "a got after".into()]
        );
        assert_eq!(a.stats().restarts, 1);
        assert_eq!(
            a.ask(|r| P::Echo(1, r)),
            Ok(1),
            "same reference after the restart"
        );
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: one_for_all. A crash restarts every child: the others stop in reverse
/// start order, then all start in start order.
#[test]
fn one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForAll)
            .intensity(3, Duration::from_secs(5))
            .child(worker("a", &log))
            .child(worker("b", &log))
            .child(worker("c", &log))
            .child(worker("d", &log))
            .spawn("sup")
            .unwrap();
        log.take();
        crash(&sup, "b");
        assert_eq!(
            log.take(),
            vec![
                panicked("b"),
                "stop d shutdown".into(),
                "stop c shutdown".into(),
                "stop a shutdown".into(),
                "start a".into(),
                "start b".into(),
                "start c".into(),
                "start d".into(),
            ]
        );
        for id in ["a", "b", "c", "d"] {
            assert_eq!(sup.child::<Probe>(id).unwrap().stats().restarts, 1, "{id}");
        }
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: rest_for_one. The children started after the failed one stop in
/// reverse order; it and they restart in order; earlier ones are untouched.
#[test]
fn rest_for_one_restarts_the_failed_child_and_those_after_it_in_order() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::RestForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("a", &log))
            .child(worker("b", &log))
            .child(worker("c", &log))
            .child(worker("d", &log))
            .spawn("sup")
            .unwrap();
        log.take();
        crash(&sup, "b");
        assert_eq!(
            log.take(),
            vec![
                panicked("b"),
                "stop d shutdown".into(),
                "stop c shutdown".into(),
                "start b".into(),
                "start c".into(),
                "start d".into(),
            ]
        );
        assert_eq!(sup.child::<Probe>("a").unwrap().stats().restarts, 0);
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: transient_normal / transient_abnormal (cases of restart_type).
#[test]
fn transient_children_are_restarted_only_after_an_abnormal_exit() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("t", &log).restart(Restart::Transient))
            .spawn("sup")
            .unwrap();
        log.take();
        let t = sup.child::<Probe>("t").unwrap();
        crash(&sup, "t");
        assert_eq!(log.take(), vec![panicked("t"), "start t".into()]);
        t.tell(P::Stop).unwrap();
        assert_eq!(t.join(), Ok(ExitReason::Normal));
        assert_eq!(
            log.take(),
            vec!["stop t normal"],
            "not restarted after a normal exit"
        );
        assert_eq!(sup.children()[0].state, "stopped");
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: temporary_normal / temporary_abnormal.
#[test]
fn temporary_children_are_never_restarted() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("t", &log).restart(Restart::Temporary))
            .child(worker("p", &log))
            .spawn("sup")
            .unwrap();
        log.take();
        let t = sup.child::<Probe>("t").unwrap();
        crash(&sup, "t");
        assert_eq!(log.take(), vec![panicked("t")]);
        assert_eq!(
            t.exit_reason(),
            Some(ExitReason::Panicked("t crashed on purpose".into()))
        );
        let ids: Vec<String> = sup.children().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, vec!["p"], "a temporary child is forgotten");
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: permanent_normal. A permanent child is restarted even after a normal
/// exit.
#[test]
fn permanent_children_are_restarted_after_a_normal_exit_too() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("p", &log))
            .spawn("sup")
            .unwrap();
        log.take();
        sup.child::<Probe>("p").unwrap().tell(P::Stop).unwrap();
        settle();
        assert_eq!(log.take(), vec!["stop p normal", "start p"]);
        sup.stop();
        sup.join().unwrap();
    });
}

fn intensity_case(last_crash_at: Duration) -> (Option<ExitReason>, u32) {
    let log = Log::new();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(3, Duration::from_secs(1))
        .child(worker("w", &log))
        .spawn("sup")
        .unwrap();
    let w = sup.child::<Probe>("w").unwrap();
    let t0 = evergreen::hub::now();
    for at in [ms(0), ms(300), ms(600), last_crash_at] {
        evergreen::sleep(at - since(t0));
        w.tell(P::Crash).unwrap();
        settle();
    }
    let restarts = w.stats().restarts;
    let r = sup.exit_reason();
    if r.is_none() {
        sup.stop();
        sup.join().unwrap();
    }
    (r, restarts)
}

/// supervisor_SUITE: restart intensity (max restarts within the period), a true sliding
/// window: four crashes with intensity 3 per second; the fourth at exactly 1000 ms still sees
/// the first (OTP counts a restart at `now - period`), at 1001 ms it does not.
#[test]
fn restart_intensity_is_a_sliding_window() {
    run_virtual(|| {
        let (r, restarts) = intensity_case(ms(1000));
        match r {
            Some(ExitReason::Escalated(m)) => {
                assert!(m.contains("\"w\"") && m.contains("more than 3"), "{m}")
            }
            other => panic!("expected the supervisor to give up, got {other:?}"),
        }
        assert_eq!(restarts, 3);
        let (r, restarts) = intensity_case(ms(1001));
        assert_eq!(r, None, "the first crash left the window");
        assert_eq!(restarts, 4);
    });
}

/// A window, not a counter reset every period: crashes every 600 ms with intensity 1 per
/// second give up at the second crash, though no fixed 1 s bucket holds two.
#[test]
fn restart_intensity_is_not_a_periodic_counter() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1, Duration::from_secs(1))
            .child(worker("w", &log))
            .spawn("sup")
            .unwrap();
        evergreen::sleep(ms(700));
        crash(&sup, "w"); // t = 0.7 s: bucket [0, 1)
        assert_eq!(sup.exit_reason(), None);
        evergreen::sleep(ms(600));
        crash(&sup, "w"); // t = 1.3 s: bucket [1, 2), but 0.6 s after the last
        assert!(matches!(sup.exit_reason(), Some(ExitReason::Escalated(_))));
    });
}

/// supervisor_SUITE: escalation through nested supervisors (the `sup_stop_*` /
/// `child_adm` family): the inner supervisor gives up, the outer restarts it (and with it its
/// child, on the same reference); when the inner one gives up again too soon, the outer gives
/// up as well.
#[test]
fn escalation_up_a_two_level_tree() {
    run_virtual(|| {
        let log = Log::new();
        let inner = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1, Duration::from_secs(10))
            .child(worker("w", &log));
        let root = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1, Duration::from_secs(10))
            .child(ChildSpec::supervisor("inner", inner))
            .child(worker("other", &log))
            .spawn("root")
            .unwrap();
        let mid = root.child::<Supervisor>("inner").unwrap();
        let w = mid.child::<Probe>("w").unwrap();
        log.take();
        w.tell(P::Crash).unwrap();
        settle();
        assert_eq!(log.take(), vec![panicked("w"), "start w".into()]);
        w.tell(P::Crash).unwrap();
        settle();
        // inner gives up (its child already exited), the root restarts inner, which starts w.
        assert_eq!(log.take(), vec![panicked("w"), "start w".into()]);
        assert_eq!(mid.stats().restarts, 1);
        assert_eq!(root.exit_reason(), None);
        assert_eq!(
            w.ask(|r| P::Echo(5, r)),
            Ok(5),
            "w's reference survived its subtree restart"
        );
        // Again: inner gives up a second time within the root's window: the root gives up.
        w.tell(P::Crash).unwrap();
        settle();
        w.tell(P::Crash).unwrap();
        let r = root.join().unwrap();
        match &r {
            ExitReason::Escalated(m) => assert!(m.contains("\"inner\""), "{m}"),
            other => panic!("expected escalation, got {other:?}"),
        }
        assert!(matches!(mid.exit_reason(), Some(ExitReason::Escalated(_))));
        assert!(w.is_dead() && root.child::<Probe>("other").is_none());
        assert_eq!(log.take().last().unwrap(), "stop other shutdown");
    });
}

/// supervisor_SUITE: shutdown timeout (`sup_stop_timeout` / brutal_kill): a child that does
/// not stop within its shutdown timeout is killed.
#[test]
fn supervisor_stop_escalates_to_kill_after_the_child_shutdown_timeout() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(worker("slow", &log).shutdown(Shutdown::Timeout(ms(300))))
            .child(worker("brutal", &log).shutdown(Shutdown::BrutalKill))
            .child(worker("fine", &log))
            .spawn("sup")
            .unwrap();
        log.take();
        sup.child::<Probe>("slow")
            .unwrap()
            .tell(P::Sleep(Duration::from_secs(60)))
            .unwrap();
        settle();
        let t0 = evergreen::hub::now();
        sup.stop();
        assert_eq!(sup.join(), Ok(ExitReason::Normal));
        assert_eq!(
            since(t0),
            ms(300),
            "waited the shutdown timeout, then killed"
        );
        assert_eq!(
            log.take(),
            vec!["stop fine shutdown"],
            "brutal and slow were killed"
        );
        assert_eq!(
            sup.child::<Probe>("slow").map(|_| ()),
            None,
            "children are gone with their supervisor"
        );
    });
}

/// A full user mailbox does not delay supervision: the stop goes through the system lane,
/// handled right after the current message; blocked tellers and queued messages are
/// released as dead.
#[test]
fn supervision_is_unaffected_by_a_full_mailbox() {
    run_virtual(|| {
        let log = Log::new();
        let l2 = log.clone();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::with_builder(
                "busy",
                Builder::new().mailbox(Mailbox::bounded(2, Policy::Block)),
                move || Probe::new("busy", &l2),
            ))
            .spawn("sup")
            .unwrap();
        log.take();
        let busy = sup.child::<Probe>("busy").unwrap();
        busy.tell(P::Sleep(ms(10))).unwrap();
        settle();
        busy.tell(P::Sleep(ms(10))).unwrap();
        busy.tell(P::Sleep(ms(10))).unwrap();
        let blocked = {
            let busy = busy.clone();
            evergreen::spawn(move || busy.tell(P::Note("blocked".into())))
        };
        settle();
        assert_eq!(busy.stats().mailbox_len, 2);
        let before = dead_letters::count();
        let t0 = evergreen::hub::now();
        assert_eq!(sup.terminate_child("busy"), Ok(()));
        assert_eq!(since(t0), ms(10), "stopped after the current message only");
        assert_eq!(log.take(), vec!["stop busy shutdown"]);
        match blocked.into_result() {
            Ok(Err(Error::Dead(ExitReason::Shutdown, P::Note(s)))) => assert_eq!(s, "blocked"),
            other => panic!("expected the blocked tell to fail with Dead, got {other:?}"),
        }
        assert_eq!(
            dead_letters::count() - before,
            3,
            "2 leftovers + the refused tell"
        );
        sup.stop();
        sup.join().unwrap();
    });
}

/// An actor that logs the virtual time of each start.
struct Timed {
    t0: Instant,
    log: Log,
}

impl Actor for Timed {
    type Msg = P;
    fn started(&mut self, _ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        self.log.push(format!("{}", since(self.t0).as_millis()));
        Ok(())
    }
    fn handle(&mut self, msg: P, _ctx: &mut Ctx<Self>) {
        match msg {
            P::Crash => panic!("timed crash"),
            P::Echo(n, r) => r.send(n),
            _ => {}
        }
    }
}

fn starts(log: &Log) -> Vec<u64> {
    log.take().iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn backoff_is_exponential_capped_and_resets_after_a_stable_period() {
    run_virtual(|| {
        let log = Log::new();
        let t0 = evergreen::hub::now();
        let l2 = log.clone();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(100, Duration::from_secs(60))
            .backoff(
                Backoff::exponential(ms(100), ms(1000))
                    .jitter(0.0)
                    .reset_after(Duration::from_secs(5)),
            )
            .child(ChildSpec::worker("w", move || Timed {
                t0,
                log: l2.clone(),
            }))
            .spawn("sup")
            .unwrap();
        let w = sup.child::<Timed>("w").unwrap();
        assert_eq!(starts(&log), vec![0]);
        // Crash as soon as it is up, six times: delays 100, 200, 400, 800, 1000 (cap), 1000.
        let mut at = Vec::new();
        for _ in 0..6 {
            w.tell(P::Crash).unwrap();
            assert_eq!(w.ask(|r| P::Echo(0, r)), Ok(0), "queued during the backoff");
            at.extend(starts(&log));
        }
        let deltas: Vec<u64> = std::iter::once(at[0])
            .chain(at.windows(2).map(|p| p[1] - p[0]))
            .collect();
        assert_eq!(deltas, vec![100, 200, 400, 800, 1000, 1000]);
        // Stable for 5 s: the next restart waits `base` again.
        evergreen::sleep(Duration::from_secs(5));
        let t1 = since(t0).as_millis() as u64;
        w.tell(P::Crash).unwrap();
        assert_eq!(w.ask(|r| P::Echo(0, r)), Ok(0));
        assert_eq!(starts(&log), vec![t1 + 100]);
        sup.stop();
        sup.join().unwrap();
    });
}

#[test]
fn backoff_jitter_stays_within_bounds_and_is_reproducible_with_a_seed() {
    let b = Backoff::exponential(ms(100), ms(10_000)).jitter(0.5);
    for n in 0..6u32 {
        let full = ms(100) * 2u32.pow(n);
        assert_eq!(b.delay(n, 0.0), full);
        let d = b.delay(n, 0.999);
        assert!(d <= full && d >= full / 2, "{n}: {d:?}");
    }
    assert_eq!(b.delay(40, 0.0), ms(10_000), "capped, no overflow");
    run_virtual(|| {
        let run = |seed| {
            let log = Log::new();
            let t0 = evergreen::hub::now();
            let l2 = log.clone();
            let sup = SupervisorSpec::new(Strategy::OneForOne)
                .intensity(100, Duration::from_secs(60))
                .backoff(Backoff::exponential(ms(100), ms(1000)).jitter(0.5))
                .seed(seed)
                .child(ChildSpec::worker("w", move || Timed {
                    t0,
                    log: l2.clone(),
                }))
                .spawn("sup")
                .unwrap();
            let w = sup.child::<Timed>("w").unwrap();
            let mut at = starts(&log);
            for _ in 0..4 {
                w.tell(P::Crash).unwrap();
                w.ask(|r| P::Echo(0, r)).unwrap();
                at.extend(starts(&log));
            }
            sup.stop();
            sup.join().unwrap();
            at.windows(2).map(|p| p[1] - p[0]).collect::<Vec<u64>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same delays");
        for (n, d) in a.iter().enumerate() {
            let full = 100u64 << n;
            assert!(*d <= full && *d >= full / 2, "restart {n}: {d} ms");
        }
    });
}

/// supervisor_SUITE: simple_one_for_one (start_child, restart, terminate_child, and the
/// children going away with the supervisor).
#[test]
fn simple_one_for_one_starts_children_at_run_time() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::SimpleOneForOne)
            .intensity(5, Duration::from_secs(5))
            .spawn("fetchers")
            .unwrap();
        let mut kids = Vec::new();
        for i in 0..3 {
            let l = log.clone();
            let id: &'static str = ["f0", "f1", "f2"][i];
            kids.push(sup.start_worker(id, move || Probe::new(id, &l)).unwrap());
        }
        assert_eq!(log.take(), vec!["start f0", "start f1", "start f2"]);
        assert!(matches!(
            sup.start_worker("f0", || Probe::new("x", &Log::new())),
            Err(Error::Invalid(_))
        ));
        kids[1].tell(P::Crash).unwrap();
        settle();
        assert_eq!(log.take(), vec![panicked("f1"), "start f1".into()]);
        assert_eq!(sup.terminate_child("f0"), Ok(()));
        assert_eq!(kids[0].exit_reason(), Some(ExitReason::Shutdown));
        assert!(matches!(
            sup.terminate_child("nope"),
            Err(Error::Invalid(_))
        ));
        let bad = {
            let l = log.clone();
            sup.start_worker("bad", move || {
                let mut p = Probe::new("bad", &l);
                p.fail_start = true;
                p
            })
        };
        match bad {
            Err(Error::StartFailed(m)) => assert!(m.contains("bad refuses to start"), "{m}"),
            other => panic!("expected StartFailed, got {other:?}"),
        }
        assert_eq!(sup.children().len(), 2);
        log.take();
        sup.stop();
        sup.join().unwrap();
        assert_eq!(log.take(), vec!["stop f2 shutdown", "stop f1 shutdown"]);
        assert!(kids.iter().all(|k| k.is_dead()));
    });
}

/// supervisor_SUITE: a child that fails to start makes the supervisor's start fail, after
/// stopping the children started before it (in reverse order).
#[test]
fn a_child_failing_to_start_fails_the_supervisor_start() {
    run_virtual(|| {
        let log = Log::new();
        let l = log.clone();
        let r = SupervisorSpec::new(Strategy::OneForOne)
            .child(worker("a", &log))
            .child(worker("b", &log))
            .child(ChildSpec::worker("c", move || {
                let mut p = Probe::new("c", &l);
                p.fail_start = true;
                p
            }))
            .spawn("sup");
        match r {
            Err(Error::StartFailed(m)) => {
                assert!(
                    m.contains("\"c\"") && m.contains("c refuses to start"),
                    "{m}"
                )
            }
            other => panic!("expected StartFailed, got {other:?}"),
        }
        assert_eq!(
            log.take(),
            vec![
                "start a",
                "start b",
                "start c",
                "stop b shutdown",
                "stop a shutdown"
            ]
        );
        let dup = SupervisorSpec::new(Strategy::OneForOne)
            .child(worker("a", &log))
            .child(worker("a", &log))
            .spawn("dup");
        assert!(matches!(dup, Err(Error::Invalid(_))));
    });
}

#[test]
fn killing_a_supervisor_kills_its_children() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(worker("a", &log))
            .child(worker("b", &log))
            .spawn("sup")
            .unwrap();
        let a = sup.child::<Probe>("a").unwrap();
        log.take();
        sup.kill();
        assert_eq!(sup.join(), Ok(ExitReason::Killed));
        assert_eq!(a.join(), Ok(ExitReason::Killed));
        assert!(log.take().is_empty(), "no stopped hooks on kill");
    });
}

#[test]
fn timers_are_cancelled_on_restart() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("w", &log))
            .spawn("sup")
            .unwrap();
        let w = sup.child::<Probe>("w").unwrap();
        w.tell(P::Run(Box::new(|_, ctx| {
            ctx.send_after("t", ms(100), P::Note("timer".into()))
        })))
        .unwrap();
        settle();
        assert_eq!(evergreen::hub::timer_count(), 1);
        w.tell(P::Crash).unwrap();
        settle();
        assert_eq!(evergreen::hub::timer_count(), 0);
        evergreen::sleep(ms(200));
        assert!(grep(&log, "w got").is_empty());
        sup.stop();
        sup.join().unwrap();
    });
}

#[test]
fn the_tree_dump_shows_every_actor_with_its_counters() {
    run_virtual(|| {
        let log = Log::new();
        let inner = SupervisorSpec::new(Strategy::RestForOne).child(worker("leaf", &log));
        let root = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("db", &log))
            .child(ChildSpec::supervisor("pool", inner))
            .spawn("app")
            .unwrap();
        crash(&root, "db");
        let db = root.child::<Probe>("db").unwrap();
        db.ask(|r| P::Echo(0, r)).unwrap();
        let dump = root.dump();
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 4, "{dump}");
        assert!(
            lines[0].starts_with("supervisor 'app' one_for_one (restarts 1/3 in 5s) running"),
            "{dump}"
        );
        assert_eq!(
            lines[1],
            "├── worker 'db' running: handled 2, mailbox 0 (high 1), restarts 1"
        );
        assert!(
            lines[2].starts_with("└── supervisor 'pool' rest_for_one (restarts 0/1 in 5s)"),
            "{dump}"
        );
        assert_eq!(
            lines[3],
            "    └── worker 'leaf' running: handled 0, mailbox 0 (high 0), restarts 0"
        );
        root.stop();
        root.join().unwrap();
    });
}

#[test]
fn a_blocking_queue_event_keeps_the_harness_honest() {
    // The harness's leak check must catch an actor left running.
    let r = std::panic::catch_unwind(|| {
        run_virtual(|| {
            let log = Log::new();
            let a = probe("left", &log);
            a.tell(P::Wait(Rc::new(Event::new()))).unwrap();
            settle();
        })
    });
    assert!(r.is_err(), "a live actor must fail the leak check");
}

/// The message being handled when the actor failed is dropped and its asker gets an error;
/// queued asks survive the restart and are answered by the new incarnation.
#[test]
fn the_asker_of_the_failing_message_gets_an_error_queued_asks_survive() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(5))
            .child(worker("w", &log))
            .spawn("sup")
            .unwrap();
        let w = sup.child::<Probe>("w").unwrap();
        // An ask whose handler blocks, then is killed: its asker gets the reason at once.
        let gate = Rc::new(Event::new());
        let g2 = gate.clone();
        let blocked = {
            let w = w.clone();
            evergreen::spawn(move || {
                w.ask(move |r: evergreen_actors::Reply<u32>| {
                    P::Run(Box::new(move |_, _| {
                        g2.wait();
                        r.send(1);
                    }))
                })
            })
        };
        let queued = {
            let w = w.clone();
            evergreen::spawn(move || w.ask(|r| P::Echo(2, r)))
        };
        settle();
        w.kill();
        assert_eq!(
            blocked.into_result(),
            Ok(Err(Error::Dead(ExitReason::Killed, ())))
        );
        assert_eq!(
            queued.into_result(),
            Ok(Ok(2)),
            "answered by the new incarnation"
        );
        assert_eq!(w.stats().restarts, 1);
        drop(gate);
        sup.stop();
        sup.join().unwrap();
    });
}
