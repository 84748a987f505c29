//! Hibernation (Erlang's `erlang:hibernate/3`, gen_server's `hibernate`): an idle actor gives
//! its greenlet back and keeps only its state and mailbox; the next message or signal runs it
//! on a new greenlet. Everything else must behave as for a parked actor: links, monitors,
//! `trap_exit`, kill, stop, supervision, asks, timers, the registry, the counters. (The whole
//! suite also runs with every actor hibernating: `EVERGREEN_ACTORS_HIBERNATE=1 cargo test -p
//! evergreen-actors`.) Virtual clock, leak check (greenlets, timers, hibernated actors).

mod common;

use std::time::Duration;

use common::*;
use evergreen_actors::{
    hibernating, registry, Actor, ActorRef, Builder, ChildSpec, Ctx, Error, ExitReason, Reply,
    Shutdown, Strategy, SupervisorSpec,
};

/// A probe that hibernates whenever idle.
fn sleeper(id: &str, log: &Log) -> ActorRef<Probe> {
    Builder::new()
        .name(id)
        .hibernate(true)
        .spawn(Probe::new(id, log))
        .expect("spawn")
}

/// A counter whose state must survive hibernation; it holds a drop token.
struct Counter {
    n: u64,
    _token: DropToken,
    log: Log,
}

enum C {
    Add(u64),
    Get(Reply<u64>),
    SelfAsk(Reply<String>),
    HibernateNow,
}

impl Actor for Counter {
    type Msg = C;
    fn handle(&mut self, msg: C, ctx: &mut Ctx<Self>) {
        match msg {
            C::Add(k) => self.n += k,
            C::Get(r) => r.send(self.n),
            C::SelfAsk(r) => {
                let e = ctx.myself().ask(C::Get);
                r.send(format!("{e:?}"));
            }
            C::HibernateNow => ctx.hibernate(),
        }
    }
    fn stopped(&mut self, reason: &ExitReason, _ctx: &mut Ctx<Self>) {
        self.log.push(format!("stopped {reason}"));
    }
}

fn counter(drops: &DropCounter, log: &Log, hibernate: bool) -> ActorRef<Counter> {
    Builder::new()
        .name("counter")
        .hibernate(hibernate)
        .spawn(Counter {
            n: 0,
            _token: drops.token(),
            log: log.clone(),
        })
        .unwrap()
}

#[test]
fn an_idle_hibernating_actor_holds_no_greenlet_and_keeps_its_state() {
    run_virtual(|| {
        let drops = DropCounter::new();
        let log = Log::new();
        let c = counter(&drops, &log, true);
        settle();
        assert_eq!(evergreen::hub::live_count(), 0, "no greenlet while idle");
        assert_eq!(hibernating(), 1);
        assert!(c.stats().hibernated);
        assert_eq!(c.stats().status, "running");
        for k in 1..=3 {
            c.tell(C::Add(k)).unwrap();
            settle();
            assert_eq!(evergreen::hub::live_count(), 0);
            assert!(c.stats().hibernated);
        }
        assert_eq!(
            c.ask(C::Get),
            Ok(6),
            "the state survived three hibernations"
        );
        assert_eq!(c.stats().handled, 4);
        assert_eq!(drops.count(), 0, "hibernation does not drop the state");
        c.stop();
        assert_eq!(c.join(), Ok(ExitReason::Normal));
        assert_eq!(
            log.take(),
            vec!["stopped normal"],
            "stop runs the stopped hook"
        );
        assert_eq!(drops.count(), 1);
        assert_eq!(hibernating(), 0);
    });
}

#[test]
fn ctx_hibernate_hibernates_once_when_the_mailbox_is_empty() {
    run_virtual(|| {
        let drops = DropCounter::new();
        let log = Log::new();
        let c = counter(&drops, &log, false);
        // A parked actor starts lazily: a message that wakes it from its first sleep puts it
        // on a greenlet of its own.
        settle();
        assert_eq!(c.ask(C::Get), Ok(0));
        settle();
        assert_eq!(evergreen::hub::live_count(), 1, "parked, not hibernated");
        // Queued behind the request: handled first, then it hibernates.
        c.tell(C::HibernateNow).unwrap();
        c.tell(C::Add(5)).unwrap();
        settle();
        assert!(c.stats().hibernated);
        assert_eq!(evergreen::hub::live_count(), 0);
        // Woken, it parks again (the request was for once).
        assert_eq!(c.ask(C::Get), Ok(5));
        settle();
        assert!(!c.stats().hibernated);
        assert_eq!(evergreen::hub::live_count(), 1);
        c.stop();
        c.join().unwrap();
    });
}

#[test]
fn killing_a_hibernated_actor_just_ends_it_killed_without_the_stopped_hook() {
    run_virtual(|| {
        let drops = DropCounter::new();
        let log = Log::new();
        let c = counter(&drops, &log, true);
        let w = probe("watcher", &log);
        let l = probe("linked", &log);
        let c2 = c.clone();
        let c3 = c.clone();
        let l2 = l.clone();
        w.ask(|r| {
            P::Run(Box::new(move |_, ctx| {
                ctx.monitor(&c3);
                r.send(0)
            }))
        })
        .unwrap();
        l.ask(|r| {
            P::Run(Box::new(move |_, ctx| {
                ctx.trap_exit(true);
                ctx.link(&c);
                r.send(0)
            }))
        })
        .unwrap();
        settle();
        let c = c2;
        assert!(c.stats().hibernated);
        let asleep = hibernating();
        c.kill();
        assert_eq!(hibernating(), asleep - 1);
        // At once: there was nothing to unwind.
        assert!(c.is_dead());
        assert_eq!(c.exit_reason(), Some(ExitReason::Killed));
        assert_eq!(drops.count(), 1, "its state was dropped");
        assert!(
            grep(&log, "stopped").is_empty(),
            "kill skips the stopped hook"
        );
        assert_eq!(
            c.tell(C::Add(1)).map_err(|e| e.to_string().is_empty()),
            Err(false)
        );
        settle();
        assert_eq!(
            grep(&log, "watcher signal"),
            vec!["watcher signal down counter killed"]
        );
        assert_eq!(
            grep(&log, "linked signal"),
            vec!["linked signal exit counter killed"]
        );
        for a in [w, l2] {
            a.stop();
            a.join().unwrap();
        }
    });
}

#[test]
fn a_link_ending_a_hibernated_actor_and_trap_exit_behave_as_for_a_parked_one() {
    run_virtual(|| {
        let log = Log::new();
        let crasher = probe("crasher", &log);
        let plain = sleeper("plain", &log);
        let trapper = sleeper("trapper", &log);
        let c1 = crasher.clone();
        plain
            .ask(|r| {
                P::Run(Box::new(move |_, ctx| {
                    ctx.link(&c1);
                    r.send(0)
                }))
            })
            .unwrap();
        let c2 = crasher.clone();
        trapper
            .ask(|r| {
                P::Run(Box::new(move |_, ctx| {
                    ctx.trap_exit(true);
                    ctx.link(&c2);
                    r.send(0)
                }))
            })
            .unwrap();
        settle();
        assert!(plain.stats().hibernated && trapper.stats().hibernated);
        crasher.tell(P::Crash).unwrap();
        settle();
        let reason = ExitReason::Panicked("crasher crashed on purpose".into());
        assert_eq!(plain.exit_reason(), Some(reason.clone()));
        assert_eq!(
            grep(&log, "stop plain"),
            vec!["stop plain panicked: crasher crashed on purpose"],
            "an exit signal ends it with the stopped hook, as a parked actor"
        );
        assert!(!trapper.is_dead());
        assert_eq!(
            grep(&log, "trapper signal"),
            vec!["trapper signal exit crasher panicked: crasher crashed on purpose"]
        );
        assert!(trapper.stats().hibernated, "asleep again after the signal");
        trapper.stop();
        trapper.join().unwrap();
    });
}

#[test]
fn asks_stop_and_self_ask_work_on_a_hibernated_actor() {
    run_virtual(|| {
        let drops = DropCounter::new();
        let log = Log::new();
        let c = counter(&drops, &log, true);
        settle();
        assert_eq!(c.ask_timeout(C::Get, ms(10)), Ok(0));
        assert_eq!(
            c.ask(C::SelfAsk),
            Ok(format!("{:?}", Err::<u64, Error>(Error::SelfAsk)))
        );
        // Queued asks behind a stop fail with Dead, as for a parked actor.
        settle();
        c.stop();
        let c2 = c.clone();
        let g = evergreen::spawn(move || c2.ask(C::Get));
        settle();
        assert_eq!(g.get(), Ok(Err(Error::Dead(ExitReason::Normal, ()))));
        assert_eq!(log.take(), vec!["stopped normal"]);
    });
}

#[test]
fn spawning_many_hibernating_actors_takes_a_few_stacks_not_one_each() {
    run_virtual(|| {
        let log = Log::new();
        let n = 1000;
        let actors: Vec<_> = (0..n)
            .map(|i| {
                let a = sleeper(&format!("s{i}"), &log);
                a.tell(P::Note("hi".into())).unwrap();
                a
            })
            .collect();
        // Their starts are scheduled; only a few greenlets (each holding a stack) exist.
        assert!(
            evergreen::hub::live_count() <= 16,
            "{}",
            evergreen::hub::live_count()
        );
        assert_eq!(hibernating(), n);
        settle();
        assert_eq!(grep(&log, "start").len(), n);
        assert_eq!(
            log.0
                .borrow()
                .iter()
                .filter(|l| l.ends_with("got hi"))
                .count(),
            n
        );
        assert_eq!(evergreen::hub::live_count(), 0);
        assert_eq!(hibernating(), n);
        for a in &actors {
            a.stop();
        }
        assert!(evergreen::hub::live_count() <= 16);
        for a in &actors {
            assert_eq!(a.join(), Ok(ExitReason::Normal));
        }
        assert_eq!(grep(&log, "stop").len(), n);
        assert_eq!(hibernating(), 0);
    });
}

#[test]
fn killing_an_actor_whose_activation_is_queued_or_made_but_not_run() {
    run_virtual(|| {
        let log = Log::new();
        let actors: Vec<_> = (0..40).map(|i| sleeper(&format!("s{i}"), &log)).collect();
        // s0's activation greenlet is made, not run; s39's waits in the queue (no greenlet).
        actors[0].kill();
        actors[39].kill();
        for i in [0, 39] {
            assert_eq!(actors[i].exit_reason(), Some(ExitReason::Killed));
        }
        settle();
        let started = grep(&log, "start");
        assert_eq!(started.len(), 38);
        assert!(!started.contains(&"start s0".to_string()));
        assert!(!started.contains(&"start s39".to_string()));
        for a in &actors[1..39] {
            a.stop();
            a.join().unwrap();
        }
        assert_eq!(hibernating(), 0);
    });
}

/// Sets a timer in `started`, is dropped by everyone, and must still be woken by it.
struct Alarm {
    log: Log,
}

impl Actor for Alarm {
    type Msg = &'static str;
    fn started(&mut self, ctx: &mut Ctx<Self>) -> Result<(), Box<dyn std::error::Error>> {
        ctx.send_after("alarm", ms(10), "ring");
        Ok(())
    }
    fn handle(&mut self, msg: &'static str, ctx: &mut Ctx<Self>) {
        self.log
            .push(format!("{msg} at {:?}", evergreen::hub::now()));
        ctx.stop();
    }
    fn stopped(&mut self, reason: &ExitReason, _ctx: &mut Ctx<Self>) {
        self.log.push(format!("alarm {reason}"));
    }
}

#[test]
fn an_unreferenced_hibernated_actor_is_kept_alive_for_its_timer() {
    run_virtual(|| {
        let log = Log::new();
        let t0 = evergreen::hub::now();
        let a = Builder::new()
            .hibernate(true)
            .spawn(Alarm { log: log.clone() })
            .unwrap();
        drop(a);
        settle();
        assert_eq!(hibernating(), 1);
        evergreen::sleep(ms(20));
        assert_eq!(
            log.take(),
            vec![format!("ring at {:?}", t0 + ms(10)), "alarm normal".into()]
        );
        assert_eq!(hibernating(), 0);
    });
}

#[test]
fn registry_and_counters_of_a_hibernated_actor() {
    run_virtual(|| {
        let log = Log::new();
        let a = Builder::new()
            .name("reg")
            .register()
            .hibernate(true)
            .spawn(Probe::new("reg", &log))
            .unwrap();
        settle();
        let found = registry::whereis::<Probe>("reg").expect("registered");
        assert_eq!(found, a);
        for i in 0..3 {
            found.tell(P::Note(format!("{i}"))).unwrap();
        }
        assert_eq!(a.stats().mailbox_len, 3);
        settle();
        let s = a.stats();
        assert_eq!((s.handled, s.mailbox_len, s.high_water), (3, 0, 3));
        assert!(s.hibernated);
        a.kill();
        assert!(
            registry::whereis::<Probe>("reg").is_none(),
            "unregistered on exit"
        );
    });
}

#[test]
fn supervised_hibernating_children_restart_and_stop_in_order() {
    run_virtual(|| {
        let log = Log::new();
        let child = |id: &'static str, shutdown: Shutdown| {
            let log = log.clone();
            ChildSpec::with_builder(id, Builder::new().hibernate(true), move || {
                Probe::new(id, &log)
            })
            .shutdown(shutdown)
        };
        let sup = SupervisorSpec::new(Strategy::OneForOne)
            .child(child("a", Shutdown::Timeout(ms(100))))
            .child(child("b", Shutdown::BrutalKill))
            .child(child("c", Shutdown::Infinity))
            .spawn("sup")
            .unwrap();
        settle();
        assert_eq!(log.take(), vec!["start a", "start b", "start c"]);
        let a = sup.child::<Probe>("a").unwrap();
        assert!(a.stats().hibernated);
        a.tell(P::Crash).unwrap();
        settle();
        assert_eq!(
            log.take(),
            vec!["stop a panicked: a crashed on purpose", "start a"]
        );
        assert_eq!(a.stats().restarts, 1);
        assert_eq!(a.ask(|r| P::Echo(7, r)), Ok(7), "the same reference works");
        settle();
        assert!(a.stats().hibernated);
        sup.shutdown(ms(1000)).unwrap();
        // Reverse order; b is brutally killed (no stopped hook), asleep as it was.
        assert_eq!(log.take(), vec!["stop c shutdown", "stop a shutdown"]);
        assert_eq!(hibernating(), 0);
    });
}

#[test]
fn a_monitor_signal_wakes_a_hibernated_watcher() {
    run_virtual(|| {
        let log = Log::new();
        let target = probe("target", &log);
        let w = sleeper("w", &log);
        let t2 = target.clone();
        w.ask(|r| {
            P::Run(Box::new(move |_, ctx| {
                ctx.monitor(&t2);
                r.send(0)
            }))
        })
        .unwrap();
        settle();
        assert!(w.stats().hibernated);
        target.stop();
        target.join().unwrap();
        settle();
        assert_eq!(grep(&log, "w signal"), vec!["w signal down target normal"]);
        assert!(w.stats().hibernated);
        w.stop();
        w.join().unwrap();
    });
}

#[test]
fn destroying_the_hub_with_actors_asleep_or_roused_does_not_crash() {
    // Not under the harness (whose leak check forbids leftovers): a program that ends with
    // hibernated actors, some with their activation queued.
    std::thread::spawn(|| {
        let log = Log::new();
        let actors: Vec<_> = (0..100)
            .map(|i| {
                Builder::new()
                    .name(format!("h{i}"))
                    .hibernate(true)
                    .spawn(Probe::new("h", &log))
                    .unwrap()
            })
            .collect();
        evergreen::sleep(Duration::ZERO);
        evergreen::hub::destroy();
        drop(actors);
    })
    .join()
    .expect("no panic");
}

// The dispatcher: hibernated actors' activations run in turn on one greenlet, which stays
// with an actor whose handler blocks.

#[test]
fn a_handler_that_blocks_keeps_the_dispatcher_greenlet_and_the_others_run_on() {
    run_virtual(|| {
        let log = Log::new();
        let a = sleeper("a", &log);
        let b = sleeper("b", &log);
        let c = sleeper("c", &log);
        settle();
        assert_eq!(evergreen::hub::live_count(), 0);
        let t0 = evergreen::hub::now();
        a.tell(P::Sleep(ms(100))).unwrap();
        a.tell(P::Note("after the sleep".into())).unwrap();
        b.tell(P::Note("hi".into())).unwrap();
        c.tell(P::Note("hi".into())).unwrap();
        settle();
        assert_eq!(
            [grep(&log, "b got"), grep(&log, "c got")].concat(),
            vec!["b got hi", "c got hi"],
            "b and c ran while a's handler sleeps"
        );
        assert!(grep(&log, "a got").is_empty());
        assert_eq!(
            evergreen::hub::live_count(),
            1,
            "a keeps the greenlet it blocked on; the next dispatcher ended"
        );
        assert!(b.stats().hibernated && c.stats().hibernated);
        assert!(!a.stats().hibernated);
        evergreen::sleep(ms(150));
        assert_eq!(grep(&log, "a got"), vec!["a got after the sleep"]);
        assert!(since(t0) >= ms(100));
        settle();
        assert!(a.stats().hibernated);
        assert_eq!(evergreen::hub::live_count(), 0);
        for x in [a, b, c] {
            x.stop();
            assert_eq!(x.join(), Ok(ExitReason::Normal));
        }
    });
}

#[test]
fn a_hibernating_actor_asks_another_from_its_handler() {
    run_virtual(|| {
        let log = Log::new();
        let a = sleeper("a", &log);
        let b = sleeper("b", &log);
        settle();
        let b2 = b.clone();
        // a's handler, on the dispatcher, waits for b, which is only ready: b must not wait
        // for the dispatcher a holds.
        let got = a.ask(|r| {
            P::Run(Box::new(move |_, _| {
                let n = b2.ask(|rr| P::Echo(7, rr)).unwrap();
                r.send(n + 1)
            }))
        });
        assert_eq!(got, Ok(8));
        settle();
        assert!(a.stats().hibernated && b.stats().hibernated);
        assert_eq!(evergreen::hub::live_count(), 0);
        // A cycle of asks is still refused, not a hang.
        let a2 = a.clone();
        let b3 = b.clone();
        let got = a.ask(|r| {
            P::Run(Box::new(move |_, _| {
                let e = b3.ask(|rr| {
                    P::Run(Box::new(move |_, _| {
                        let e = a2.ask(|r3| P::Echo(1, r3));
                        rr.send(u32::from(matches!(e, Err(Error::LoopExit(..)))))
                    }))
                });
                r.send(e.unwrap())
            }))
        });
        assert_eq!(got, Ok(1), "b asking a back is a LoopExit");
        for x in [a, b] {
            x.stop();
            x.join().unwrap();
        }
    });
}

#[test]
fn killing_an_actor_blocked_in_a_handler_on_the_dispatcher_kills_only_it() {
    run_virtual(|| {
        let log = Log::new();
        let a = sleeper("a", &log);
        let b = sleeper("b", &log);
        settle();
        let ev = std::rc::Rc::new(evergreen::Event::new());
        // Nothing else is ready: no watch hands the dispatcher over; the kill does.
        a.tell(P::Wait(ev.clone())).unwrap();
        settle();
        assert_eq!(evergreen::hub::live_count(), 1);
        a.kill();
        assert_eq!(a.exit_reason(), Some(ExitReason::Killed));
        assert!(
            grep(&log, "stop a").is_empty(),
            "kill skips the stopped hook"
        );
        settle();
        assert_eq!(evergreen::hub::live_count(), 0);
        // The next dispatcher serves b.
        assert_eq!(b.ask(|r| P::Echo(3, r)), Ok(3));
        b.stop();
        b.join().unwrap();
        assert_eq!(grep(&log, "stop b"), vec!["stop b normal"]);
    });
}

#[test]
fn a_long_exchange_between_hibernating_actors_yields_to_other_greenlets() {
    struct Ball {
        peer: Option<ActorRef<Ball>>,
        hops: std::rc::Rc<std::cell::Cell<u32>>,
        done: std::rc::Rc<evergreen::Event>,
    }
    enum B {
        Peer(ActorRef<Ball>),
        Hit(u32),
    }
    impl Actor for Ball {
        type Msg = B;
        fn handle(&mut self, msg: B, _ctx: &mut Ctx<Self>) {
            match msg {
                B::Peer(p) => self.peer = Some(p),
                B::Hit(0) => self.done.set(),
                B::Hit(n) => {
                    self.hops.set(self.hops.get() + 1);
                    let _ = self.peer.as_ref().unwrap().tell(B::Hit(n - 1));
                }
            }
        }
    }
    run_virtual(|| {
        let hops = std::rc::Rc::new(std::cell::Cell::new(0));
        let done = std::rc::Rc::new(evergreen::Event::new());
        let mk = || {
            Builder::new()
                .hibernate(true)
                .spawn(Ball {
                    peer: None,
                    hops: hops.clone(),
                    done: done.clone(),
                })
                .unwrap()
        };
        let (x, y) = (mk(), mk());
        x.tell(B::Peer(y.clone())).unwrap();
        y.tell(B::Peer(x.clone())).unwrap();
        settle();
        x.tell(B::Hit(10_000)).unwrap();
        let h = hops.clone();
        let seen = evergreen::spawn(move || h.get());
        done.wait();
        let seen = seen.get().unwrap();
        assert!(
            seen > 0 && seen < 10_000,
            "another greenlet ran during the exchange (after {seen} hops)"
        );
        for a in [x, y] {
            a.stop();
            a.join().unwrap();
        }
    });
}

#[test]
fn a_parked_actor_starts_lazily_and_parks_once_a_message_wakes_it() {
    run_virtual(|| {
        let drops = DropCounter::new();
        let log = Log::new();
        let n = 100;
        let cs: Vec<_> = (0..n).map(|_| counter(&drops, &log, false)).collect();
        for (i, c) in cs.iter().enumerate() {
            c.tell(C::Add(i as u64)).unwrap();
        }
        settle();
        // Started and handled their first message on the dispatcher: no greenlet each.
        assert_eq!(evergreen::hub::live_count(), 0);
        assert_eq!(hibernating(), n);
        assert!(cs
            .iter()
            .all(|c| c.stats().hibernated && c.stats().handled == 1));
        // A message wakes one onto a greenlet of its own, where it parks from then on.
        assert_eq!(cs[7].ask(C::Get), Ok(7));
        settle();
        assert_eq!(evergreen::hub::live_count(), 1);
        assert!(!cs[7].stats().hibernated);
        cs[7].tell(C::Add(1)).unwrap();
        settle();
        assert_eq!(
            evergreen::hub::live_count(),
            1,
            "parked, not hibernated again"
        );
        assert_eq!(cs[7].ask(C::Get), Ok(8));
        // A stop needs no greenlet: the dispatcher runs the stopped hooks.
        for c in &cs {
            c.stop();
        }
        assert!(evergreen::hub::live_count() <= 2);
        for c in &cs {
            assert_eq!(c.join(), Ok(ExitReason::Normal));
        }
        assert_eq!(grep(&log, "stopped normal").len(), n);
        assert_eq!(drops.count(), n);
        assert_eq!(hibernating(), 0);
    });
}
