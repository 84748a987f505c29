//! Micro-benchmarks of the actor hot paths, for profiling (`perf record`): tell throughput,
//! ask round trip, ping-pong. The comparisons with other libraries are in the `bench/`
//! package (`cargo bench -p evergreen-bench --bench actors`).
//!
//! Run: `cargo run --release -p evergreen-actors --example actor_quickperf [tell|ask|pingpong|spawn] [n]`
//! (`EVERGREEN_ACTORS_HIBERNATE=1`: the actors hibernate when idle).

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen::Event;
use evergreen_actors::{Actor, ActorRef, Builder, Ctx, Mailbox, Policy, Reply};

struct Sink(u64);
enum SMsg {
    Add(u64),
    Get(Reply<u64>),
}
impl Actor for Sink {
    type Msg = SMsg;
    fn handle(&mut self, msg: SMsg, _ctx: &mut Ctx<Self>) {
        match msg {
            SMsg::Add(n) => self.0 = self.0.wrapping_add(n),
            SMsg::Get(r) => r.send(self.0),
        }
    }
}

struct Pong {
    peer: Option<ActorRef<Pong>>,
    done: Rc<Event>,
}
enum PMsg {
    Peer(ActorRef<Pong>),
    Ball(u64),
}
impl Actor for Pong {
    type Msg = PMsg;
    fn handle(&mut self, msg: PMsg, _ctx: &mut Ctx<Self>) {
        match msg {
            PMsg::Peer(p) => self.peer = Some(p),
            PMsg::Ball(0) => self.done.set(),
            PMsg::Ball(n) => {
                let _ = self.peer.as_ref().expect("peer").tell(PMsg::Ball(n - 1));
            }
        }
    }
}

/// The spawn workload's actor, as in the `bench/` package: counts its message and its stop.
struct Cheap {
    handled: Rc<std::cell::Cell<u64>>,
    stopped: Rc<std::cell::Cell<u64>>,
    all_handled: Rc<Event>,
    all_stopped: Rc<Event>,
    n: u64,
}
impl Actor for Cheap {
    type Msg = u64;
    fn handle(&mut self, m: u64, _ctx: &mut Ctx<Self>) {
        black_box(m);
        self.handled.set(self.handled.get() + 1);
        if self.handled.get() == self.n {
            self.all_handled.set();
        }
    }
    fn stopped(&mut self, _r: &evergreen_actors::ExitReason, _ctx: &mut Ctx<Self>) {
        self.stopped.set(self.stopped.get() + 1);
        if self.stopped.get() == self.n {
            self.all_stopped.set();
        }
    }
}

/// Times `n` round trips between this greenlet and another, each side waking the other through
/// a doorbell of type `$q` (`Queue<()>` or `Channel<()>`, which share these method names but no
/// trait).
macro_rules! doorbell_floor {
    ($q:ty, $n:expr) => {{
        let a = Rc::new(<$q>::new());
        let b = Rc::new(<$q>::new());
        let (a2, b2) = (a.clone(), b.clone());
        let g = evergreen::spawn(move || loop {
            if a2.get().is_err() {
                break;
            }
            let _ = b2.put_nowait(());
        });
        evergreen::sleep(Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..$n {
            let _ = a.put_nowait(());
            let _ = b.get();
        }
        let t = t0.elapsed();
        g.kill();
        t
    }};
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("pingpong")
        .to_string();
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    if std::env::var("EVERGREEN_ACTORS_HIBERNATE").is_ok_and(|v| v == "1") {
        evergreen_actors::set_hibernate_default(true);
    }
    let t = evergreen::spawn(move || -> Duration {
        match what.as_str() {
            "tell" | "tellb" => {
                let mb = if what == "tellb" {
                    Mailbox::bounded(1024, Policy::Block)
                } else {
                    Mailbox::unbounded()
                };
                let a = Builder::new().mailbox(mb).spawn(Sink(0)).unwrap();
                let t0 = Instant::now();
                for i in 0..n {
                    let _ = a.tell(SMsg::Add(i));
                }
                black_box(a.ask(SMsg::Get).unwrap());
                let t = t0.elapsed();
                a.stop();
                a.join().unwrap();
                t
            }
            "ask" => {
                let a = evergreen_actors::spawn(Sink(0));
                let t0 = Instant::now();
                for _ in 0..n {
                    black_box(a.ask(SMsg::Get).unwrap());
                }
                let t = t0.elapsed();
                a.stop();
                a.join().unwrap();
                t
            }
            // The runtime's floor for an ask: two greenlets bouncing on `Queue<()>` (`floor`)
            // or `Channel<()>` (`cfloor`) doorbells: two wake-ups and two parks per round trip.
            "floor" => doorbell_floor!(evergreen::Queue::<()>, n),
            "cfloor" => doorbell_floor!(evergreen::Channel::<()>, n),
            "gspawn" => {
                // The runtime's floor for the spawn workload: bare greenlets, each parked on
                // its own doorbell, woken once, then ended.
                let t0 = Instant::now();
                let gs: Vec<_> = (0..n)
                    .map(|_| {
                        let q = Rc::new(evergreen::Queue::<u64>::new());
                        let q2 = q.clone();
                        let g = evergreen::spawn(move || {
                            black_box(q2.get().unwrap());
                            black_box(q2.get().unwrap());
                        });
                        (g, q)
                    })
                    .collect();
                for (i, (_, q)) in gs.iter().enumerate() {
                    q.put_nowait(i as u64).unwrap();
                }
                evergreen::sleep(Duration::ZERO);
                for (_, q) in &gs {
                    q.put_nowait(0).unwrap();
                }
                for (g, _) in &gs {
                    g.join();
                }
                t0.elapsed()
            }
            "spawn" => {
                // As the `bench/` package's spawn workload: spawn, one message each, stop all.
                let handled = Rc::new(std::cell::Cell::new(0));
                let stopped = Rc::new(std::cell::Cell::new(0));
                let all_handled = Rc::new(Event::new());
                let all_stopped = Rc::new(Event::new());
                let t0 = Instant::now();
                let refs: Vec<_> = (0..n)
                    .map(|i| {
                        let a = evergreen_actors::spawn(Cheap {
                            handled: handled.clone(),
                            stopped: stopped.clone(),
                            all_handled: all_handled.clone(),
                            all_stopped: all_stopped.clone(),
                            n,
                        });
                        let _ = a.tell(i);
                        a
                    })
                    .collect();
                all_handled.wait();
                for a in &refs {
                    a.stop();
                }
                all_stopped.wait();
                let t = t0.elapsed();
                drop(refs);
                evergreen::sleep(Duration::ZERO);
                t
            }
            _ => {
                let done = Rc::new(Event::new());
                let a = evergreen_actors::spawn(Pong {
                    peer: None,
                    done: done.clone(),
                });
                let b = evergreen_actors::spawn(Pong {
                    peer: None,
                    done: done.clone(),
                });
                let _ = a.tell(PMsg::Peer(b.clone()));
                let _ = b.tell(PMsg::Peer(a.clone()));
                evergreen::sleep(Duration::ZERO);
                let t0 = Instant::now();
                let _ = a.tell(PMsg::Ball(n));
                done.wait();
                let t = t0.elapsed();
                a.stop();
                b.stop();
                a.join().unwrap();
                b.join().unwrap();
                t
            }
        }
    })
    .into_result()
    .unwrap();
    println!("{:.1} ns per op", t.as_nanos() as f64 / n as f64);
}
