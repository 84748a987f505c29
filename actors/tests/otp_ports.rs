//! Ports of the cases of Erlang/OTP's `supervisor_SUITE` and `gen_server_SUITE`
//! (lib/stdlib/test/) that apply to a single-node, typed actor layer. Each test names the case
//! it ports; where our semantics differ on purpose, the test says so. Not ported: remote
//! nodes and `global`/`via` names, code change, `format_status`, hibernation, `ignore`
//! returns from init (a `started` hook either succeeds or fails), map child specs.

mod common;

use std::time::Duration;

use common::*;
use evergreen_actors::{
    registry, spawn, Builder, ChildSpec, Error, ExitReason, Reply, Restart, Shutdown, Strategy,
    SupervisorSpec,
};

fn worker(id: &'static str, log: &Log) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker(id, move || Probe::new(id, &log))
}

fn failing(id: &'static str, log: &Log) -> ChildSpec {
    let log = log.clone();
    ChildSpec::worker(id, move || {
        let mut p = Probe::new(id, &log);
        p.fail_start = true;
        p
    })
}

// ---------------------------------------------------------------------------------------
// supervisor_SUITE

/// supervisor_SUITE: sup_start_normal — starts, and terminates gracefully with `shutdown`.
#[test]
fn sup_start_normal() {
    run_virtual(|| {
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(2, Duration::from_secs(3600))
            .spawn("sup_test")
            .unwrap();
        sup.stop_with(ExitReason::Shutdown);
        assert_eq!(sup.join(), Ok(ExitReason::Shutdown));
    });
}

/// supervisor_SUITE: sup_start_fail — a failing init makes the start return an error.
#[test]
fn sup_start_fail() {
    run_virtual(|| {
        let log = Log::new();
        let r = SupervisorSpec::new(Strategy::OneForOne)
            .child(failing("child1", &log))
            .spawn("sup_test");
        assert!(matches!(r, Err(Error::StartFailed(_))), "{r:?}");
    });
}

/// supervisor_SUITE: sup_stop_infinity — children with an `infinity` shutdown exit with
/// `shutdown` when the supervisor does.
#[test]
fn sup_stop_infinity() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(2, Duration::from_secs(3600))
            .spawn("sup_test")
            .unwrap();
        let c1 = sup
            .start_child(worker("child1", &log).shutdown(Shutdown::Infinity))
            .unwrap();
        let c2 = sup
            .start_child(ChildSpec::supervisor(
                "child2",
                SupervisorSpec::new(Strategy::OneForOne),
            ))
            .unwrap();
        sup.stop_with(ExitReason::Shutdown);
        sup.join().unwrap();
        assert_eq!(c1.exit_reason(), Some(ExitReason::Shutdown));
        assert_eq!(c2.exit_reason(), Some(ExitReason::Shutdown));
    });
}

/// supervisor_SUITE: sup_stop_timeout — a child sleeping past its 1000 ms shutdown timeout
/// is killed; the other exits with `shutdown`.
#[test]
fn sup_stop_timeout() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .spawn("sup_test")
            .unwrap();
        let spec = |id| worker(id, &log).shutdown(Shutdown::Timeout(ms(1000)));
        let c1 = sup.start_child(spec("child1")).unwrap();
        let c2 = sup.start_child(spec("child2")).unwrap();
        c2.downcast::<Probe>()
            .unwrap()
            .tell(P::Sleep(Duration::from_secs(200)))
            .unwrap();
        settle();
        let t0 = evergreen::hub::now();
        sup.stop_with(ExitReason::Shutdown);
        sup.join().unwrap();
        assert_eq!(since(t0), ms(1000));
        assert_eq!(c1.exit_reason(), Some(ExitReason::Shutdown));
        assert_eq!(c2.exit_reason(), Some(ExitReason::Killed));
    });
}

/// supervisor_SUITE: sup_stop_brutal_kill.
#[test]
fn sup_stop_brutal_kill() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .spawn("sup_test")
            .unwrap();
        let c1 = sup
            .start_child(worker("child1", &log).shutdown(Shutdown::Timeout(ms(1000))))
            .unwrap();
        let c2 = sup
            .start_child(worker("child2", &log).shutdown(Shutdown::BrutalKill))
            .unwrap();
        sup.stop_with(ExitReason::Shutdown);
        sup.join().unwrap();
        assert_eq!(c1.exit_reason(), Some(ExitReason::Shutdown));
        assert_eq!(c2.exit_reason(), Some(ExitReason::Killed));
    });
}

/// supervisor_SUITE: child_adm — start_child, a duplicate id refused, which_children,
/// terminate_child (+ delete_child), restarts keep the child's identity.
#[test]
fn child_adm() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(2, Duration::from_secs(3600))
            .spawn("sup_test")
            .unwrap();
        let c = sup.start_child(worker("child1", &log)).unwrap();
        assert!(matches!(
            sup.start_child(worker("child1", &log)),
            Err(Error::Invalid(_))
        ));
        let kids = sup.children();
        assert_eq!(kids.len(), 1);
        assert_eq!(kids[0].id, "child1");
        assert_eq!(kids[0].state, "running");
        assert_eq!(kids[0].actor.as_ref(), Some(&c));
        // Killed: restarted, same identity.
        c.kill();
        settle();
        assert_eq!(sup.children()[0].actor.as_ref(), Some(&c));
        assert!(!c.is_dead());
        assert_eq!(sup.terminate_child("child1"), Ok(()));
        assert!(sup.children().is_empty());
        assert_eq!(c.exit_reason(), Some(ExitReason::Shutdown));
        assert!(matches!(
            sup.terminate_child("child1"),
            Err(Error::Invalid(_))
        ));
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: count_children — children reports workers and supervisors.
#[test]
fn count_children() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(worker("w1", &log))
            .child(worker("w2", &log))
            .child(ChildSpec::supervisor(
                "s1",
                SupervisorSpec::new(Strategy::OneForOne),
            ))
            .spawn("sup_test")
            .unwrap();
        let kids = sup.children();
        let sups = kids.iter().filter(|k| k.supervisor).count();
        let active = kids.iter().filter(|k| k.state == "running").count();
        assert_eq!((kids.len(), active, sups), (3, 3, 1));
        sup.stop();
        sup.join().unwrap();
    });
}

fn exit_case(restart: Restart, reason: ExitReason) -> (Vec<String>, usize) {
    let log = Log::new();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(2, Duration::from_secs(3600))
        .child(worker("child1", &log).restart(restart))
        .spawn("sup_test")
        .unwrap();
    log.take();
    let c = sup.child::<Probe>("child1").unwrap();
    c.tell(P::StopWith(reason)).unwrap();
    settle();
    let running = sup
        .children()
        .iter()
        .filter(|k| k.state == "running")
        .count();
    sup.stop();
    sup.join().unwrap();
    (
        log.take()
            .into_iter()
            .filter(|l| !l.ends_with("shutdown") || l.contains("child1 shutdown"))
            .collect(),
        running,
    )
}

/// supervisor_SUITE: permanent_normal / transient_normal / temporary_normal.
#[test]
fn normal_termination() {
    run_virtual(|| {
        let (_, running) = exit_case(Restart::Permanent, ExitReason::Normal);
        assert_eq!(running, 1, "permanent_normal: restarted");
        let (_, running) = exit_case(Restart::Transient, ExitReason::Normal);
        assert_eq!(running, 0, "transient_normal: not restarted");
        let (_, running) = exit_case(Restart::Temporary, ExitReason::Normal);
        assert_eq!(running, 0, "temporary_normal: not restarted");
    });
}

/// supervisor_SUITE: permanent_shutdown / transient_shutdown / temporary_shutdown.
#[test]
fn shutdown_termination() {
    run_virtual(|| {
        let (_, running) = exit_case(Restart::Permanent, ExitReason::Shutdown);
        assert_eq!(running, 1, "permanent_shutdown: restarted");
        let (_, running) = exit_case(Restart::Transient, ExitReason::Shutdown);
        assert_eq!(running, 0, "transient_shutdown: not restarted");
        let (_, running) = exit_case(Restart::Temporary, ExitReason::Shutdown);
        assert_eq!(running, 0, "temporary_shutdown: not restarted");
    });
}

/// supervisor_SUITE: permanent_abnormal / transient_abnormal / temporary_abnormal.
#[test]
fn abnormal_termination() {
    run_virtual(|| {
        let bad = || ExitReason::Error("abnormal".into());
        let (log, running) = exit_case(Restart::Permanent, bad());
        assert_eq!(running, 1, "permanent_abnormal: restarted");
        assert!(log.contains(&"start child1".to_string()), "{log:?}");
        let (_, running) = exit_case(Restart::Transient, bad());
        assert_eq!(running, 1, "transient_abnormal: restarted");
        let (_, running) = exit_case(Restart::Temporary, bad());
        assert_eq!(running, 0, "temporary_abnormal: not restarted");
    });
}

/// supervisor_SUITE: temporary_bystander — under one_for_all, a temporary child stopped
/// because a sibling failed is not restarted.
#[test]
fn temporary_bystander() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForAll)
            .intensity(2, Duration::from_secs(3600))
            .child(worker("child1", &log).restart(Restart::Temporary))
            .child(worker("child2", &log))
            .spawn("sup_test")
            .unwrap();
        let c1 = sup.child::<Probe>("child1").unwrap();
        sup.child::<Probe>("child2")
            .unwrap()
            .tell(P::Crash)
            .unwrap();
        settle();
        assert_eq!(c1.exit_reason(), Some(ExitReason::Shutdown));
        let ids: Vec<String> = sup.children().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, vec!["child2"]);
        sup.stop();
        sup.join().unwrap();
    });
}

fn escalation_case(strategy: Strategy) {
    let log = Log::new();
    let sup = SupervisorSpec::new(strategy)
        .intensity(1, Duration::from_secs(10))
        .spawn("sup_test")
        .unwrap();
    let c1 = sup.start_child(worker("child1", &log)).unwrap();
    let c2 = sup.start_child(worker("child2", &log)).unwrap();
    let c1p = c1.downcast::<Probe>().unwrap();
    c1p.tell(P::Crash).unwrap();
    settle();
    assert_eq!(sup.exit_reason(), None, "{strategy:?}: one restart allowed");
    c1p.tell(P::Crash).unwrap();
    match sup.join() {
        Ok(ExitReason::Escalated(m)) => assert!(m.contains("child1"), "{m}"),
        other => panic!("{strategy:?}: expected escalation, got {other:?}"),
    }
    assert!(
        c1.is_dead() && c2.is_dead(),
        "{strategy:?}: children gone with it"
    );
}

/// supervisor_SUITE: one_for_one_escalation, one_for_all_escalation,
/// rest_for_one_escalation, simple_one_for_one_escalation — too many restarts terminate the
/// supervisor and its children.
#[test]
fn strategy_escalation() {
    run_virtual(|| {
        for s in [
            Strategy::OneForOne,
            Strategy::OneForAll,
            Strategy::RestForOne,
            Strategy::SimpleOneForOne,
        ] {
            escalation_case(s);
        }
    });
}

/// supervisor_SUITE: multiple_restarts — restarts within intensity keep the supervisor up,
/// and each restart gives the child a fresh state.
#[test]
fn multiple_restarts() {
    run_virtual(|| {
        let log = Log::new();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(5, Duration::from_secs(10))
            .child(worker("child1", &log))
            .spawn("sup_test")
            .unwrap();
        let c = sup.child::<Probe>("child1").unwrap();
        for i in 1..=5 {
            c.tell(P::Note(format!("state {i}"))).unwrap();
            c.tell(P::Crash).unwrap();
            settle();
            assert_eq!(c.stats().restarts, i);
        }
        assert_eq!(sup.exit_reason(), None);
        sup.stop();
        sup.join().unwrap();
    });
}

/// supervisor_SUITE: hanging_restart_loop — a child that keeps failing to restart makes the
/// supervisor give up (it does not loop forever).
#[test]
fn hanging_restart_loop() {
    run_virtual(|| {
        let log = Log::new();
        let starts = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let s2 = starts.clone();
        let l2 = log.clone();
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3, Duration::from_secs(10))
            .child(ChildSpec::worker("child1", move || {
                s2.set(s2.get() + 1);
                let mut p = Probe::new("child1", &l2);
                p.fail_start = s2.get() > 1; // only the first start succeeds
                p
            }))
            .spawn("sup_test")
            .unwrap();
        sup.child::<Probe>("child1")
            .unwrap()
            .tell(P::Crash)
            .unwrap();
        match sup.join() {
            Ok(ExitReason::Escalated(m)) => assert!(m.contains("start failed"), "{m}"),
            other => panic!("expected escalation, got {other:?}"),
        }
        assert_eq!(starts.get(), 4, "the first start and three failed restarts");
    });
}

/// supervisor_SUITE: one_for_all_other_child_fails_restart — while restarting all, another
/// child fails to start: the strategy runs again until the intensity is exceeded.
#[test]
fn one_for_all_other_child_fails_restart() {
    run_virtual(|| {
        let log = Log::new();
        let n = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let n2 = n.clone();
        let l2 = log.clone();
        let sup = SupervisorSpec::new(Strategy::OneForAll)
            .intensity(3, Duration::from_secs(3600))
            .child(worker("child1", &log))
            .child(ChildSpec::worker("child2", move || {
                n2.set(n2.get() + 1);
                let mut p = Probe::new("child2", &l2);
                p.fail_start = n2.get() > 1;
                p
            }))
            .spawn("sup_test")
            .unwrap();
        sup.child::<Probe>("child1")
            .unwrap()
            .tell(P::Crash)
            .unwrap();
        assert!(matches!(sup.join(), Ok(ExitReason::Escalated(_))));
        assert_eq!(n.get(), 4);
    });
}

/// supervisor_SUITE: tree — a supervisor of supervisors; terminating a middle supervisor
/// takes its subtree with it, the rest of the tree is untouched.
#[test]
fn tree() {
    run_virtual(|| {
        let log = Log::new();
        let mid = |_: &str| {
            SupervisorSpec::new(Strategy::OneForOne)
                .child(worker("w1", &log))
                .child(worker("w2", &log))
        };
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::supervisor("sup1", mid("sup1")))
            .child(ChildSpec::supervisor("sup2", mid("sup2")))
            .spawn("top")
            .unwrap();
        let s1 = sup.child::<evergreen_actors::Supervisor>("sup1").unwrap();
        let s2 = sup.child::<evergreen_actors::Supervisor>("sup2").unwrap();
        let w = s1.child::<Probe>("w1").unwrap();
        assert_eq!(sup.terminate_child("sup1"), Ok(()));
        assert!(s1.is_dead() && w.is_dead());
        assert_eq!(s2.children().len(), 2);
        assert!(s2.children().iter().all(|k| k.state == "running"));
        sup.stop();
        sup.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// gen_server_SUITE

/// gen_server_SUITE: start — start, call, stop; a registered name is unique
/// (`already_started`); a call to a stopped server fails (`noproc`).
#[test]
fn gen_server_start() {
    run_virtual(|| {
        let log = Log::new();
        let a = Builder::new()
            .name("my_test_name")
            .register()
            .spawn(Probe::new("a", &log))
            .unwrap();
        let named = registry::whereis::<Probe>("my_test_name").unwrap();
        assert_eq!(named.ask(|r| P::Echo(1, r)), Ok(1));
        let again = Builder::new()
            .name("my_test_name")
            .register()
            .spawn(Probe::new("b", &log));
        assert!(matches!(again, Err(Error::AlreadyRegistered(_))));
        a.stop();
        a.join().unwrap();
        assert_eq!(
            a.ask_timeout(|r| P::Echo(1, r), ms(1)),
            Err(Error::Dead(ExitReason::Normal, ()))
        );
        // init failing: the start fails (here: the exit reason says why).
        let mut p = Probe::new("c", &log);
        p.fail_start = true;
        assert!(matches!(spawn(p).join(), Ok(ExitReason::StartFailed(_))));
    });
}

/// gen_server_SUITE: stop1 / stop2 / stop4 — stop with `normal` or another reason; the
/// server is gone afterwards, a second stop finds nothing, a registered name is freed.
#[test]
fn gen_server_stop() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        assert_eq!(a.shutdown(Duration::from_secs(5)), Ok(ExitReason::Normal));
        assert!(a.is_dead());
        a.stop(); // a stop to a dead actor is harmless (Erlang: noproc)
        assert_eq!(a.join(), Ok(ExitReason::Normal));
        let b = probe("b", &log);
        b.stop_with(ExitReason::Error("other_reason".into()));
        assert_eq!(b.join(), Ok(ExitReason::Error("other_reason".into())));
        let c = Builder::new()
            .name("to_stop")
            .register()
            .spawn(Probe::new("c", &log))
            .unwrap();
        c.stop();
        c.join().unwrap();
        assert!(registry::whereis_any("to_stop").is_none());
    });
}

/// gen_server_SUITE: crash — a server stopping with `shutdown` reasons is an orderly exit;
/// a crash inside a call goes to the caller. Difference: OTP crashes the server too (and the
/// caller exits); here the caller gets `Err(Panicked)` and the actor lives on, while a crash
/// in a cast (tell) ends the actor.
#[test]
fn gen_server_crash() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.tell(P::StopWith(ExitReason::Shutdown)).unwrap();
        let r = a.join().unwrap();
        assert!(r.is_normal(), "shutdown is orderly");
        let b = probe("b", &log);
        assert!(matches!(b.ask(P::CrashAsk), Err(Error::Panicked(_))));
        b.tell(P::Crash).unwrap();
        assert!(matches!(b.join(), Ok(ExitReason::Panicked(_))));
    });
}

/// gen_server_SUITE: call — a delayed answer; a call with a too-short timeout fails with
/// `timeout` and the late answer does not reach the caller.
#[test]
fn gen_server_call() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        // {delayed_answer, 1}: answered after 1 ms, within 30 ms.
        let delayed = |d: Duration| {
            move |r: Reply<u32>| {
                P::Run(Box::new(move |_, _| {
                    evergreen::spawn(move || {
                        evergreen::sleep(d);
                        r.send(7);
                    });
                }))
            }
        };
        assert_eq!(a.ask_timeout(delayed(ms(1)), ms(30)), Ok(7));
        assert_eq!(
            a.ask_timeout(delayed(ms(30)), ms(1)),
            Err(Error::Timeout(ms(1)))
        );
        evergreen::sleep(ms(40)); // the late answer is dropped
        assert_eq!(a.ask(|r| P::Echo(8, r)), Ok(8));
        a.stop();
        a.join().unwrap();
    });
}

/// gen_server_SUITE: cast / info — casts are handled in order; a timer message (Erlang's
/// `handle_info` of `erlang:send_after`) arrives after its delay.
#[test]
fn gen_server_cast_and_info() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        a.tell(P::Note("cast1".into())).unwrap();
        a.tell(P::Run(Box::new(|_, ctx| {
            ctx.send_after("info", ms(50), P::Note("info".into()))
        })))
        .unwrap();
        a.tell(P::Note("cast2".into())).unwrap();
        let t0 = evergreen::hub::now();
        evergreen::sleep(ms(60));
        assert_eq!(
            grep(&log, "a got"),
            vec!["a got cast1", "a got cast2", "a got info"]
        );
        assert!(since(t0) >= ms(50));
        a.stop();
        a.join().unwrap();
    });
}

/// gen_server_SUITE: call_with_huge_message_queue — a call behind 100,000 queued messages
/// is still answered (and the queue costs no time per message beyond handling it).
#[test]
fn call_with_huge_message_queue() {
    run_virtual(|| {
        let log = Log::new();
        let a = probe("a", &log);
        for i in 0..100_000u32 {
            let _ = i;
            a.tell(P::AnswerKept(0)).unwrap(); // a no-op message
        }
        assert_eq!(a.stats().mailbox_len, 100_000);
        assert_eq!(a.ask(|r| P::Echo(42, r)), Ok(42));
        assert_eq!(a.stats().handled, 100_001);
        a.stop();
        a.join().unwrap();
    });
}
