//! The actor layer against actix, ractor, kameo and xtra.
//!
//! Workloads (the same shape for every library, timed inside its runtime by a driver task):
//!
//! * **tell**: 10M `u64` messages from a driver to one actor that sums them, then one ask to
//!   read the sum (checked); bounded mailbox of 1024 with backpressure, and unbounded.
//!   Backpressure per library: evergreen `tell` on a `Block` mailbox; kameo `tell().await`;
//!   xtra `send().detach().await`; actix has no awaiting tell, so `try_send` and a yield when
//!   full; ractor has no bounded mailbox (n/a).
//! * **ask**: 1M sequential round trips from the driver.
//! * **ping-pong**: two actors bounce a counter 1M times (ns per hop = per message handled).
//! * **spawn**: 100k actors spawned, each told one message and handled it; RSS measured then
//!   (memory per idle actor); then all stopped, until every `stopped` hook ran. Time per actor
//!   for the whole cycle, and peak RSS per actor. Each library in a fresh child process.
//!
//! Runs are interleaved across libraries (round-robin, rotated per round), every run in a fresh
//! child process (no library inherits another's heap), and medians quoted.
//! Runtimes: evergreen's hub; actix on its `System`; ractor, kameo, xtra on tokio
//! current-thread (`-ct`) and on tokio multi-thread with 2 workers (`-mt`).
//!
//! `cargo bench -p evergreen-bench --bench actors` writes bench/ACTORS.md. Under
//! `cargo test` (no `--bench`), a quick smoke run with small counts, writing nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evergreen_bench::{bench_mode, cpu_model, peak_rss_kib, rss_kib, Summary};

#[derive(Clone, Copy)]
struct Cfg {
    tell: u64,
    ask: u64,
    hops: u64,
    spawn: u64,
    rounds: usize,
    spawn_rounds: usize,
}

const BOUND: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Lib {
    Evergreen,
    /// evergreen-actors with hibernation on (`Builder::hibernate`): idle actors hold no
    /// greenlet.
    EvergreenHib,
    Actix,
    RactorCt,
    RactorMt,
    KameoCt,
    KameoMt,
    XtraCt,
    XtraMt,
}

impl Lib {
    const ALL: [Lib; 9] = [
        Lib::Evergreen,
        Lib::EvergreenHib,
        Lib::Actix,
        Lib::RactorCt,
        Lib::RactorMt,
        Lib::KameoCt,
        Lib::KameoMt,
        Lib::XtraCt,
        Lib::XtraMt,
    ];
    fn name(self) -> &'static str {
        match self {
            Lib::Evergreen => "evergreen",
            Lib::EvergreenHib => "evergreen-hib",
            Lib::Actix => "actix",
            Lib::RactorCt => "ractor-ct",
            Lib::RactorMt => "ractor-mt",
            Lib::KameoCt => "kameo-ct",
            Lib::KameoMt => "kameo-mt",
            Lib::XtraCt => "xtra-ct",
            Lib::XtraMt => "xtra-mt",
        }
    }
    fn from_name(s: &str) -> Option<Lib> {
        Lib::ALL.into_iter().find(|l| l.name() == s)
    }
    fn tokio(self) -> Option<tokio::runtime::Runtime> {
        let mt = matches!(self, Lib::RactorMt | Lib::KameoMt | Lib::XtraMt);
        let ct = matches!(self, Lib::RactorCt | Lib::KameoCt | Lib::XtraCt);
        if mt {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio mt"),
            )
        } else if ct {
            Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio ct"),
            )
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Work {
    TellBounded,
    TellUnbounded,
    Ask,
    PingPong,
}

impl Work {
    const ALL: [Work; 4] = [
        Work::TellBounded,
        Work::TellUnbounded,
        Work::Ask,
        Work::PingPong,
    ];
}

/// Runs `driver` as a task on `lib`'s tokio runtime (created for it) and returns its output;
/// the driver times itself.
fn on_tokio<F>(lib: Lib, driver: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = lib.tokio().expect("rt");
    rt.block_on(async move { tokio::spawn(driver).await.unwrap() })
}

/// One timed run; `None` if the library cannot do this workload.
fn run(lib: Lib, w: Work, cfg: &Cfg) -> Option<Duration> {
    match lib {
        Lib::Evergreen => Some(ev::run(w, cfg, false)),
        Lib::EvergreenHib => Some(ev::run(w, cfg, true)),
        Lib::Actix => Some(actix::System::new().block_on(ax::run(w, *cfg))),
        Lib::RactorCt | Lib::RactorMt => {
            if w == Work::TellBounded {
                return None;
            }
            Some(on_tokio(lib, rc::run(w, *cfg)))
        }
        Lib::KameoCt | Lib::KameoMt => Some(on_tokio(lib, km::run(w, *cfg))),
        Lib::XtraCt | Lib::XtraMt => Some(on_tokio(lib, xt::run(w, *cfg))),
    }
}

/// The spawn workload's result: ns per actor, bytes per idle actor, peak bytes per actor.
#[derive(Clone, Copy, Debug)]
struct SpawnResult {
    ns: f64,
    idle_bytes: f64,
    peak_bytes: f64,
}

fn spawn_child(lib: Lib, n: u64) -> SpawnResult {
    let base_rss = rss_kib().unwrap_or(0);
    let base_peak = peak_rss_kib().unwrap_or(0);
    let stats = Arc::new(SpawnStats::default());
    let t = match lib {
        Lib::Evergreen => ev::spawn(n, &stats, false),
        Lib::EvergreenHib => ev::spawn(n, &stats, true),
        Lib::Actix => actix::System::new().block_on(ax::spawn(n, stats.clone())),
        Lib::RactorCt | Lib::RactorMt => on_tokio(lib, rc::spawn(n, stats.clone())),
        Lib::KameoCt | Lib::KameoMt => on_tokio(lib, km::spawn(n, stats.clone())),
        Lib::XtraCt | Lib::XtraMt => on_tokio(lib, xt::spawn(n, stats.clone())),
    };
    let idle_kib = stats.idle_rss_kib.load(Ordering::SeqCst);
    let peak = peak_rss_kib().unwrap_or(0);
    SpawnResult {
        ns: t.as_nanos() as f64 / n as f64,
        idle_bytes: (idle_kib.saturating_sub(base_rss)) as f64 * 1024.0 / n as f64,
        peak_bytes: (peak.saturating_sub(base_peak.max(base_rss))) as f64 * 1024.0 / n as f64,
    }
}

/// Shared by the spawn workload's actors: how many handled their message, how many stopped.
#[derive(Default)]
struct SpawnStats {
    handled: AtomicU64,
    stopped: AtomicU64,
    idle_rss_kib: AtomicU64,
}

impl SpawnStats {
    fn record_idle(&self) {
        self.idle_rss_kib
            .store(rss_kib().unwrap_or(0), Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// evergreen-actors

mod ev {
    use super::*;
    use evergreen::Event;
    use evergreen_actors::{Actor, ActorRef, Builder, Ctx, Mailbox, Policy, Reply};
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    struct Sink(u64);
    enum SMsg {
        Add(u64),
        Get(Reply<u64>),
    }
    impl Actor for Sink {
        type Msg = SMsg;
        #[inline]
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
        #[inline]
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

    pub fn run(w: Work, cfg: &Cfg, hibernate: bool) -> Duration {
        let cfg = *cfg;
        evergreen_actors::set_hibernate_default(hibernate);
        let t = evergreen::spawn(move || match w {
            Work::TellBounded => tell(cfg.tell, Mailbox::bounded(BOUND, Policy::Block)),
            Work::TellUnbounded => tell(cfg.tell, Mailbox::unbounded()),
            Work::Ask => ask(cfg.ask),
            Work::PingPong => pingpong(cfg.hops),
        })
        .into_result()
        .expect("driver");
        evergreen_actors::set_hibernate_default(false);
        t
    }

    fn tell(n: u64, mb: Mailbox) -> Duration {
        let a = Builder::new().mailbox(mb).spawn(Sink(0)).expect("spawn");
        evergreen::sleep(Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..n {
            if a.tell(SMsg::Add(i)).is_err() {
                panic!("tell failed");
            }
        }
        let sum = a.ask(SMsg::Get).expect("ask");
        let t = t0.elapsed();
        assert_eq!(sum, n * (n - 1) / 2);
        a.stop();
        a.join().expect("join");
        t
    }

    fn ask(n: u64) -> Duration {
        let a = evergreen_actors::spawn(Sink(0));
        evergreen::sleep(Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..n {
            black_box(a.ask(SMsg::Get).expect("ask"));
        }
        let t = t0.elapsed();
        a.stop();
        a.join().expect("join");
        t
    }

    fn pingpong(n: u64) -> Duration {
        let done = Rc::new(Event::new());
        let a = evergreen_actors::spawn(Pong {
            peer: None,
            done: done.clone(),
        });
        let b = evergreen_actors::spawn(Pong {
            peer: None,
            done: done.clone(),
        });
        a.tell(PMsg::Peer(b.clone())).ok();
        b.tell(PMsg::Peer(a.clone())).ok();
        evergreen::sleep(Duration::ZERO);
        let t0 = Instant::now();
        a.tell(PMsg::Ball(n)).ok();
        done.wait();
        let t = t0.elapsed();
        a.stop();
        b.stop();
        a.join().ok();
        b.join().ok();
        t
    }

    struct Cheap {
        handled: Rc<Cell<u64>>,
        stopped: Rc<Cell<u64>>,
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

    pub fn spawn(n: u64, stats: &Arc<SpawnStats>, hibernate: bool) -> Duration {
        let stats = stats.clone();
        evergreen_actors::set_hibernate_default(hibernate);
        evergreen::spawn(move || {
            let handled = Rc::new(Cell::new(0));
            let stopped = Rc::new(Cell::new(0));
            let all_handled = Rc::new(Event::new());
            let all_stopped = Rc::new(Event::new());
            let refs = RefCell::new(Vec::with_capacity(n as usize));
            let t0 = Instant::now();
            for i in 0..n {
                let a = evergreen_actors::spawn(Cheap {
                    handled: handled.clone(),
                    stopped: stopped.clone(),
                    all_handled: all_handled.clone(),
                    all_stopped: all_stopped.clone(),
                    n,
                });
                a.tell(i).ok();
                refs.borrow_mut().push(a);
            }
            all_handled.wait();
            let t_spawn = t0.elapsed();
            stats.record_idle();
            let t1 = Instant::now();
            for a in refs.borrow().iter() {
                a.stop();
            }
            all_stopped.wait();
            let t = t_spawn + t1.elapsed();
            stats.handled.store(handled.get(), Ordering::SeqCst);
            drop(refs);
            // Let the last greenlets finish.
            evergreen::sleep(Duration::ZERO);
            t
        })
        .into_result()
        .expect("driver")
    }
}

// ---------------------------------------------------------------------------------------
// actix (its System: a current-thread tokio runtime with actix's arbiter)

mod ax {
    use super::*;
    use actix::prelude::*;

    struct Sink {
        n: u64,
        cap: Option<usize>,
    }
    impl Actor for Sink {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            if let Some(c) = self.cap {
                ctx.set_mailbox_capacity(c);
            }
        }
    }
    struct Add(u64);
    impl Message for Add {
        type Result = ();
    }
    struct Get;
    impl Message for Get {
        type Result = u64;
    }
    impl Handler<Add> for Sink {
        type Result = ();
        fn handle(&mut self, m: Add, _: &mut Context<Self>) {
            self.n = self.n.wrapping_add(m.0);
        }
    }
    impl Handler<Get> for Sink {
        type Result = u64;
        fn handle(&mut self, _: Get, _: &mut Context<Self>) -> u64 {
            self.n
        }
    }

    struct Pong {
        peer: Option<Addr<Pong>>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    }
    impl Actor for Pong {
        type Context = Context<Self>;
    }
    struct Peer(Addr<Pong>, Option<tokio::sync::oneshot::Sender<()>>);
    impl Message for Peer {
        type Result = ();
    }
    struct Ball(u64);
    impl Message for Ball {
        type Result = ();
    }
    impl Handler<Peer> for Pong {
        type Result = ();
        fn handle(&mut self, m: Peer, _: &mut Context<Self>) {
            self.peer = Some(m.0);
            self.done = m.1;
        }
    }
    impl Handler<Ball> for Pong {
        type Result = ();
        fn handle(&mut self, m: Ball, _: &mut Context<Self>) {
            if m.0 == 0 {
                if let Some(d) = self.done.take() {
                    let _ = d.send(());
                }
            } else {
                self.peer.as_ref().unwrap().do_send(Ball(m.0 - 1));
            }
        }
    }

    pub async fn run(w: Work, cfg: Cfg) -> Duration {
        match w {
            Work::TellBounded | Work::TellUnbounded => {
                let bounded = w == Work::TellBounded;
                let a = Sink {
                    n: 0,
                    cap: bounded.then_some(BOUND),
                }
                .start();
                a.send(Get).await.unwrap();
                let t0 = Instant::now();
                for i in 0..cfg.tell {
                    if bounded {
                        let mut m = Add(i);
                        loop {
                            match a.try_send(m) {
                                Ok(()) => break,
                                Err(SendError::Full(back)) => {
                                    m = back;
                                    tokio::task::yield_now().await;
                                }
                                Err(SendError::Closed(_)) => panic!("closed"),
                            }
                        }
                    } else {
                        a.do_send(Add(i));
                    }
                }
                let sum = a.send(Get).await.unwrap();
                let t = t0.elapsed();
                assert_eq!(sum, cfg.tell * (cfg.tell - 1) / 2);
                t
            }
            Work::Ask => {
                let a = Sink { n: 0, cap: None }.start();
                a.send(Get).await.unwrap();
                let t0 = Instant::now();
                for _ in 0..cfg.ask {
                    black_box(a.send(Get).await.unwrap());
                }
                t0.elapsed()
            }
            Work::PingPong => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let a = Pong {
                    peer: None,
                    done: None,
                }
                .start();
                let b = Pong {
                    peer: None,
                    done: None,
                }
                .start();
                a.send(Peer(b.clone(), Some(tx))).await.unwrap();
                let (tx2, _rx2) = tokio::sync::oneshot::channel();
                b.send(Peer(a.clone(), Some(tx2))).await.unwrap();
                let t0 = Instant::now();
                // Even hop counts end at `a`, which holds the first sender.
                a.do_send(Ball(cfg.hops));
                rx.await.unwrap();
                t0.elapsed()
            }
        }
    }

    struct Cheap {
        stats: Arc<SpawnStats>,
        n: u64,
        done: Option<Arc<tokio::sync::Notify>>,
        stop_done: Arc<tokio::sync::Notify>,
    }
    impl Actor for Cheap {
        type Context = Context<Self>;
        fn stopped(&mut self, _: &mut Context<Self>) {
            if self.stats.stopped.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.stop_done.notify_one();
            }
        }
    }
    struct One(u64);
    impl Message for One {
        type Result = ();
    }
    struct Halt;
    impl Message for Halt {
        type Result = ();
    }
    impl Handler<One> for Cheap {
        type Result = ();
        fn handle(&mut self, m: One, _: &mut Context<Self>) {
            black_box(m.0);
            if self.stats.handled.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                if let Some(d) = self.done.take() {
                    d.notify_one();
                }
            }
        }
    }
    impl Handler<Halt> for Cheap {
        type Result = ();
        fn handle(&mut self, _: Halt, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    pub async fn spawn(n: u64, stats: Arc<SpawnStats>) -> Duration {
        let done = Arc::new(tokio::sync::Notify::new());
        let stop_done = Arc::new(tokio::sync::Notify::new());
        let mut refs = Vec::with_capacity(n as usize);
        let t0 = Instant::now();
        for i in 0..n {
            let a = Cheap {
                stats: stats.clone(),
                n,
                done: Some(done.clone()),
                stop_done: stop_done.clone(),
            }
            .start();
            a.do_send(One(i));
            refs.push(a);
        }
        done.notified().await;
        let t_spawn = t0.elapsed();
        stats.record_idle();
        let t1 = Instant::now();
        for a in &refs {
            a.do_send(Halt);
        }
        stop_done.notified().await;
        t_spawn + t1.elapsed()
    }
}

// ---------------------------------------------------------------------------------------
// ractor (tokio)

mod rc {
    use super::*;
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    struct Sink;
    enum SMsg {
        Add(u64),
        Get(RpcReplyPort<u64>),
    }
    impl Actor for Sink {
        type Msg = SMsg;
        type State = u64;
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<SMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
            Ok(0)
        }
        async fn handle(
            &self,
            _: ActorRef<SMsg>,
            msg: SMsg,
            st: &mut u64,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                SMsg::Add(n) => *st = st.wrapping_add(n),
                SMsg::Get(r) => {
                    let _ = r.send(*st);
                }
            }
            Ok(())
        }
    }

    struct Pong;
    enum PMsg {
        Peer(ActorRef<PMsg>, Option<tokio::sync::oneshot::Sender<()>>),
        Ball(u64),
    }
    type PState = (
        Option<ActorRef<PMsg>>,
        Option<tokio::sync::oneshot::Sender<()>>,
    );
    impl Actor for Pong {
        type Msg = PMsg;
        type State = PState;
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<PMsg>, _: ()) -> Result<PState, ActorProcessingErr> {
            Ok((None, None))
        }
        async fn handle(
            &self,
            _: ActorRef<PMsg>,
            msg: PMsg,
            st: &mut PState,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                PMsg::Peer(p, d) => *st = (Some(p), d),
                PMsg::Ball(0) => {
                    if let Some(d) = st.1.take() {
                        let _ = d.send(());
                    }
                }
                PMsg::Ball(n) => {
                    let _ = st.0.as_ref().unwrap().cast(PMsg::Ball(n - 1));
                }
            }
            Ok(())
        }
    }

    pub async fn run(w: Work, cfg: Cfg) -> Duration {
        match w {
            Work::TellBounded => unreachable!("ractor has no bounded mailbox"),
            Work::TellUnbounded => {
                let (a, h) = Actor::spawn(None, Sink, ()).await.unwrap();
                let t0 = Instant::now();
                for i in 0..cfg.tell {
                    a.cast(SMsg::Add(i)).unwrap();
                }
                let sum = ractor::call!(a, SMsg::Get).unwrap();
                let t = t0.elapsed();
                assert_eq!(sum, cfg.tell * (cfg.tell - 1) / 2);
                a.stop(None);
                h.await.unwrap();
                t
            }
            Work::Ask => {
                let (a, h) = Actor::spawn(None, Sink, ()).await.unwrap();
                let t0 = Instant::now();
                for _ in 0..cfg.ask {
                    black_box(ractor::call!(a, SMsg::Get).unwrap());
                }
                let t = t0.elapsed();
                a.stop(None);
                h.await.unwrap();
                t
            }
            Work::PingPong => {
                let (a, ha) = Actor::spawn(None, Pong, ()).await.unwrap();
                let (b, hb) = Actor::spawn(None, Pong, ()).await.unwrap();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (tx2, _rx2) = tokio::sync::oneshot::channel();
                a.cast(PMsg::Peer(b.clone(), Some(tx))).unwrap();
                b.cast(PMsg::Peer(a.clone(), Some(tx2))).unwrap();
                let t0 = Instant::now();
                a.cast(PMsg::Ball(cfg.hops)).unwrap();
                rx.await.unwrap();
                let t = t0.elapsed();
                a.stop(None);
                b.stop(None);
                ha.await.unwrap();
                hb.await.unwrap();
                t
            }
        }
    }

    struct Cheap {
        stats: Arc<SpawnStats>,
        n: u64,
        done: Arc<tokio::sync::Notify>,
        stop_done: Arc<tokio::sync::Notify>,
    }
    impl Actor for Cheap {
        type Msg = u64;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<u64>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<u64>,
            m: u64,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            black_box(m);
            if self.stats.handled.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.done.notify_one();
            }
            Ok(())
        }
        async fn post_stop(&self, _: ActorRef<u64>, _: &mut ()) -> Result<(), ActorProcessingErr> {
            if self.stats.stopped.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.stop_done.notify_one();
            }
            Ok(())
        }
    }

    pub async fn spawn(n: u64, stats: Arc<SpawnStats>) -> Duration {
        let done = Arc::new(tokio::sync::Notify::new());
        let stop_done = Arc::new(tokio::sync::Notify::new());
        let mut refs = Vec::with_capacity(n as usize);
        let t0 = Instant::now();
        for i in 0..n {
            let (a, h) = Actor::spawn(
                None,
                Cheap {
                    stats: stats.clone(),
                    n,
                    done: done.clone(),
                    stop_done: stop_done.clone(),
                },
                (),
            )
            .await
            .unwrap();
            a.cast(i).unwrap();
            refs.push((a, h));
        }
        done.notified().await;
        let t_spawn = t0.elapsed();
        stats.record_idle();
        let t1 = Instant::now();
        for (a, _) in &refs {
            a.stop(None);
        }
        stop_done.notified().await;
        let t = t_spawn + t1.elapsed();
        for (_, h) in refs {
            let _ = h.await;
        }
        t
    }
}

// ---------------------------------------------------------------------------------------
// kameo (tokio)

mod km {
    use super::*;
    use kameo::actor::{ActorRef, Spawn};
    use kameo::error::Infallible;
    use kameo::mailbox;
    use kameo::message::{Context, Message};
    use kameo::Actor;

    #[derive(Actor)]
    struct Sink(u64);
    struct Add(u64);
    struct Get;
    impl Message<Add> for Sink {
        type Reply = ();
        async fn handle(&mut self, m: Add, _: &mut Context<Self, ()>) {
            self.0 = self.0.wrapping_add(m.0);
        }
    }
    impl Message<Get> for Sink {
        type Reply = u64;
        async fn handle(&mut self, _: Get, _: &mut Context<Self, u64>) -> u64 {
            self.0
        }
    }

    #[derive(Actor)]
    struct Pong {
        peer: Option<ActorRef<Pong>>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    }
    struct Peer(ActorRef<Pong>, Option<tokio::sync::oneshot::Sender<()>>);
    struct Ball(u64);
    impl Message<Peer> for Pong {
        type Reply = ();
        async fn handle(&mut self, m: Peer, _: &mut Context<Self, ()>) {
            self.peer = Some(m.0);
            self.done = m.1;
        }
    }
    impl Message<Ball> for Pong {
        type Reply = ();
        async fn handle(&mut self, m: Ball, _: &mut Context<Self, ()>) {
            if m.0 == 0 {
                if let Some(d) = self.done.take() {
                    let _ = d.send(());
                }
            } else {
                let _ = self.peer.as_ref().unwrap().tell(Ball(m.0 - 1)).await;
            }
        }
    }

    pub async fn run(w: Work, cfg: Cfg) -> Duration {
        match w {
            Work::TellBounded | Work::TellUnbounded => {
                let a = if w == Work::TellBounded {
                    Sink::spawn_with_mailbox(Sink(0), mailbox::bounded(BOUND))
                } else {
                    Sink::spawn_with_mailbox(Sink(0), mailbox::unbounded())
                };
                a.ask(Get).await.unwrap();
                let t0 = Instant::now();
                for i in 0..cfg.tell {
                    a.tell(Add(i)).await.unwrap();
                }
                let sum = a.ask(Get).await.unwrap();
                let t = t0.elapsed();
                assert_eq!(sum, cfg.tell * (cfg.tell - 1) / 2);
                a.kill();
                a.wait_for_shutdown().await;
                t
            }
            Work::Ask => {
                let a = Sink::spawn_with_mailbox(Sink(0), mailbox::unbounded());
                a.ask(Get).await.unwrap();
                let t0 = Instant::now();
                for _ in 0..cfg.ask {
                    black_box(a.ask(Get).await.unwrap());
                }
                let t = t0.elapsed();
                a.kill();
                a.wait_for_shutdown().await;
                t
            }
            Work::PingPong => {
                let mk = || {
                    Pong::spawn_with_mailbox(
                        Pong {
                            peer: None,
                            done: None,
                        },
                        mailbox::unbounded(),
                    )
                };
                let (a, b) = (mk(), mk());
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (tx2, _rx2) = tokio::sync::oneshot::channel();
                a.ask(Peer(b.clone(), Some(tx))).await.unwrap();
                b.ask(Peer(a.clone(), Some(tx2))).await.unwrap();
                let t0 = Instant::now();
                a.tell(Ball(cfg.hops)).await.unwrap();
                rx.await.unwrap();
                let t = t0.elapsed();
                a.kill();
                b.kill();
                a.wait_for_shutdown().await;
                b.wait_for_shutdown().await;
                t
            }
        }
    }

    struct Cheap {
        stats: Arc<SpawnStats>,
        n: u64,
        done: Arc<tokio::sync::Notify>,
        stop_done: Arc<tokio::sync::Notify>,
    }
    impl Actor for Cheap {
        type Args = Self;
        type Error = Infallible;
        async fn on_start(args: Self, _: ActorRef<Self>) -> Result<Self, Infallible> {
            Ok(args)
        }
        async fn on_stop(
            &mut self,
            _: kameo::actor::WeakActorRef<Self>,
            _: kameo::error::ActorStopReason,
        ) -> Result<(), Infallible> {
            if self.stats.stopped.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.stop_done.notify_one();
            }
            Ok(())
        }
    }
    impl Message<u64> for Cheap {
        type Reply = ();
        async fn handle(&mut self, m: u64, _: &mut Context<Self, ()>) {
            black_box(m);
            if self.stats.handled.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.done.notify_one();
            }
        }
    }

    pub async fn spawn(n: u64, stats: Arc<SpawnStats>) -> Duration {
        let done = Arc::new(tokio::sync::Notify::new());
        let stop_done = Arc::new(tokio::sync::Notify::new());
        let mut refs = Vec::with_capacity(n as usize);
        let t0 = Instant::now();
        for i in 0..n {
            let a = Cheap::spawn(Cheap {
                stats: stats.clone(),
                n,
                done: done.clone(),
                stop_done: stop_done.clone(),
            });
            a.tell(i).await.unwrap();
            refs.push(a);
        }
        done.notified().await;
        let t_spawn = t0.elapsed();
        stats.record_idle();
        let t1 = Instant::now();
        for a in &refs {
            let _ = a.stop_gracefully().await;
        }
        stop_done.notified().await;
        t_spawn + t1.elapsed()
    }
}

// ---------------------------------------------------------------------------------------
// xtra (tokio)

mod xt {
    use super::*;
    use xtra::prelude::*;

    struct Sink(u64);
    impl Actor for Sink {
        type Stop = ();
        async fn stopped(self) {}
    }
    struct Add(u64);
    struct Get;
    impl Handler<Add> for Sink {
        type Return = ();
        async fn handle(&mut self, m: Add, _: &mut Context<Self>) {
            self.0 = self.0.wrapping_add(m.0);
        }
    }
    impl Handler<Get> for Sink {
        type Return = u64;
        async fn handle(&mut self, _: Get, _: &mut Context<Self>) -> u64 {
            self.0
        }
    }

    struct Pong {
        peer: Option<Address<Pong>>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    }
    impl Actor for Pong {
        type Stop = ();
        async fn stopped(self) {}
    }
    struct Peer(Address<Pong>, Option<tokio::sync::oneshot::Sender<()>>);
    struct Ball(u64);
    impl Handler<Peer> for Pong {
        type Return = ();
        async fn handle(&mut self, m: Peer, _: &mut Context<Self>) {
            self.peer = Some(m.0);
            self.done = m.1;
        }
    }
    impl Handler<Ball> for Pong {
        type Return = ();
        async fn handle(&mut self, m: Ball, _: &mut Context<Self>) {
            if m.0 == 0 {
                if let Some(d) = self.done.take() {
                    let _ = d.send(());
                }
            } else {
                let _ = self
                    .peer
                    .as_ref()
                    .unwrap()
                    .send(Ball(m.0 - 1))
                    .detach()
                    .await;
            }
        }
    }

    pub async fn run(w: Work, cfg: Cfg) -> Duration {
        match w {
            Work::TellBounded | Work::TellUnbounded => {
                let mb = if w == Work::TellBounded {
                    Mailbox::bounded(BOUND)
                } else {
                    Mailbox::unbounded()
                };
                let a = xtra::spawn_tokio(Sink(0), mb);
                a.send(Get).await.unwrap();
                let t0 = Instant::now();
                for i in 0..cfg.tell {
                    drop(a.send(Add(i)).detach().await.unwrap());
                }
                // xtra may hand a sender that waited for room to the actor after a later
                // message, so the first `Get` can overtake the last `Add`s: poll until all
                // are handled.
                let expect = cfg.tell * (cfg.tell - 1) / 2;
                while a.send(Get).await.unwrap() != expect {
                    tokio::task::yield_now().await;
                }
                t0.elapsed()
            }
            Work::Ask => {
                let a = xtra::spawn_tokio(Sink(0), Mailbox::unbounded());
                a.send(Get).await.unwrap();
                let t0 = Instant::now();
                for _ in 0..cfg.ask {
                    black_box(a.send(Get).await.unwrap());
                }
                t0.elapsed()
            }
            Work::PingPong => {
                let mk = || {
                    xtra::spawn_tokio(
                        Pong {
                            peer: None,
                            done: None,
                        },
                        Mailbox::unbounded(),
                    )
                };
                let (a, b) = (mk(), mk());
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (tx2, _rx2) = tokio::sync::oneshot::channel();
                a.send(Peer(b.clone(), Some(tx))).await.unwrap();
                b.send(Peer(a.clone(), Some(tx2))).await.unwrap();
                let t0 = Instant::now();
                drop(a.send(Ball(cfg.hops)).detach().await.unwrap());
                rx.await.unwrap();
                t0.elapsed()
            }
        }
    }

    struct Cheap {
        stats: Arc<SpawnStats>,
        n: u64,
        done: Arc<tokio::sync::Notify>,
        stop_done: Arc<tokio::sync::Notify>,
    }
    impl Actor for Cheap {
        type Stop = ();
        async fn stopped(self) {
            if self.stats.stopped.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.stop_done.notify_one();
            }
        }
    }
    struct Halt;
    impl Handler<u64> for Cheap {
        type Return = ();
        async fn handle(&mut self, m: u64, _: &mut Context<Self>) {
            black_box(m);
            if self.stats.handled.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
                self.done.notify_one();
            }
        }
    }
    impl Handler<Halt> for Cheap {
        type Return = ();
        async fn handle(&mut self, _: Halt, ctx: &mut Context<Self>) {
            ctx.stop_self();
        }
    }

    pub async fn spawn(n: u64, stats: Arc<SpawnStats>) -> Duration {
        let done = Arc::new(tokio::sync::Notify::new());
        let stop_done = Arc::new(tokio::sync::Notify::new());
        let mut refs = Vec::with_capacity(n as usize);
        let t0 = Instant::now();
        for i in 0..n {
            let a = xtra::spawn_tokio(
                Cheap {
                    stats: stats.clone(),
                    n,
                    done: done.clone(),
                    stop_done: stop_done.clone(),
                },
                Mailbox::unbounded(),
            );
            drop(a.send(i).detach().await.unwrap());
            refs.push(a);
        }
        done.notified().await;
        let t_spawn = t0.elapsed();
        stats.record_idle();
        let t1 = Instant::now();
        for a in &refs {
            let _ = a.send(Halt).detach().await;
        }
        stop_done.notified().await;
        t_spawn + t1.elapsed()
    }
}

// ---------------------------------------------------------------------------------------
// driver and report

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(p) = args.iter().position(|a| a == "--spawn-child") {
        let lib = Lib::from_name(&args[p + 1]).expect("library name");
        let n: u64 = args[p + 2].parse().expect("count");
        let r = spawn_child(lib, n);
        println!("RESULT {} {} {}", r.ns, r.idle_bytes, r.peak_bytes);
        return;
    }
    let full = bench_mode();
    let cfg = config(full);
    if let Some(p) = args.iter().position(|a| a == "--run-child") {
        let w = args[p + 1]
            .parse::<usize>()
            .ok()
            .and_then(|i| Work::ALL.get(i).copied())
            .expect("workload index");
        let lib = Lib::from_name(&args[p + 2]).expect("library name");
        match run(lib, w, &cfg) {
            Some(d) => println!("RESULT {}", d.as_nanos()),
            None => println!("RESULT none"),
        }
        return;
    }
    let only: Option<Vec<Lib>> = std::env::var("ACTORS_BENCH_LIBS")
        .ok()
        .map(|s| s.split(',').filter_map(Lib::from_name).collect());
    let libs: Vec<Lib> = only.unwrap_or_else(|| Lib::ALL.to_vec());
    let exe = std::env::current_exe().expect("current exe");
    let mut samples: BTreeMap<(Work, Lib), Vec<f64>> = BTreeMap::new();
    for round in 0..cfg.rounds {
        for w in Work::ALL {
            for k in 0..libs.len() {
                let lib = libs[(k + round) % libs.len()];
                if let Some(d) = run_in_child(&exe, full, lib, w) {
                    let v = match w {
                        Work::TellBounded | Work::TellUnbounded => {
                            cfg.tell as f64 / d.as_secs_f64() / 1e6
                        }
                        Work::Ask => d.as_nanos() as f64 / cfg.ask as f64,
                        Work::PingPong => d.as_nanos() as f64 / cfg.hops as f64,
                    };
                    eprintln!("round {round} {w:?} {}: {v:.2}", lib.name());
                    samples.entry((w, lib)).or_default().push(v);
                }
            }
        }
    }
    let mut spawn: BTreeMap<Lib, Vec<SpawnResult>> = BTreeMap::new();
    for round in 0..cfg.spawn_rounds {
        for k in 0..libs.len() {
            let lib = libs[(k + round) % libs.len()];
            let out = Command::new(&exe)
                .args(["--spawn-child", lib.name(), &cfg.spawn.to_string()])
                .output()
                .expect("run the spawn child");
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
                eprintln!(
                    "spawn child {} failed: {}",
                    lib.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            };
            let v: Vec<f64> = line[7..]
                .split(' ')
                .map(|x| x.parse().unwrap_or(f64::NAN))
                .collect();
            let r = SpawnResult {
                ns: v[0],
                idle_bytes: v[1],
                peak_bytes: v[2],
            };
            eprintln!("spawn round {round} {}: {r:?}", lib.name());
            spawn.entry(lib).or_default().push(r);
        }
    }
    for ((w, lib), v) in &samples {
        let (key, unit, higher) = match w {
            Work::TellBounded => ("actor_tell_bounded", "M messages/s", true),
            Work::TellUnbounded => ("actor_tell_unbounded", "M messages/s", true),
            Work::Ask => ("actor_ask", "ns per ask", false),
            Work::PingPong => ("actor_ping_pong", "ns per hop", false),
        };
        evergreen_bench::record(key, lib.name(), unit, higher, v);
    }
    for (lib, v) in &spawn {
        let ns: Vec<f64> = v.iter().map(|r| r.ns).collect();
        let idle: Vec<f64> = v.iter().map(|r| r.idle_bytes).collect();
        evergreen_bench::record("actor_spawn", lib.name(), "ns per actor", false, &ns);
        evergreen_bench::record(
            "actor_idle_memory",
            lib.name(),
            "bytes per idle actor",
            false,
            &idle,
        );
    }
    let report = report(&cfg, &libs, &samples, &spawn);
    println!("{report}");
    if full {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ACTORS.md");
        // Only the generated section: the rounds of measurements below it are kept.
        evergreen_bench::write_section(path, "actors-bench", &report).expect("write ACTORS.md");
        eprintln!("wrote {path}");
    }
}

/// The sizes of a run: the full ones under `cargo bench`, smoke sizes otherwise.
fn config(full: bool) -> Cfg {
    if full {
        Cfg {
            tell: 10_000_000,
            ask: 1_000_000,
            hops: 1_000_000,
            spawn: 100_000,
            rounds: env_usize("ACTORS_BENCH_ROUNDS", 5),
            spawn_rounds: env_usize("ACTORS_BENCH_SPAWN_ROUNDS", 3),
        }
    } else {
        Cfg {
            tell: 10_000,
            ask: 1_000,
            hops: 1_000,
            spawn: 1_000,
            rounds: 1,
            spawn_rounds: 1,
        }
    }
}

/// Runs workload `w` of `lib` in a fresh child process (this executable with `--run-child`),
/// so that no library inherits another's heap (a 10-million-message mailbox leaves a heap
/// whose reuse, or not, changed the next library's tell throughput by 2×). `None` if the
/// library does not run `w`, or the child failed (reported on stderr).
fn run_in_child(exe: &std::path::Path, full: bool, lib: Lib, w: Work) -> Option<Duration> {
    let idx = Work::ALL.iter().position(|x| *x == w).expect("a workload");
    let mut cmd = Command::new(exe);
    cmd.args(["--run-child", &idx.to_string(), lib.name()]);
    if full {
        cmd.arg("--bench");
    }
    let out = cmd.output().expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.starts_with("RESULT ")) else {
        eprintln!(
            "child {} {w:?} failed: {}",
            lib.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    };
    line[7..].parse::<u64>().ok().map(Duration::from_nanos)
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn median(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| Summary::of(v).median)
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn report(
    cfg: &Cfg,
    libs: &[Lib],
    samples: &BTreeMap<(Work, Lib), Vec<f64>>,
    spawn: &BTreeMap<Lib, Vec<SpawnResult>>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# evergreen-actors vs actix, ractor, kameo, xtra\n");
    let _ = writeln!(
        s,
        "Generated by `cargo bench -p evergreen-bench --bench actors` (bench/benches/actors.rs) on: \
         {}, {} cores available, {}.\n",
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|v| format!("Linux {}", v.trim()))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "Medians of {} interleaved rounds, every run in a fresh process of its own (spawn: {} rounds). \
         tell: {} `u64` messages; ask: {} sequential round trips; ping-pong: {} hops; spawn: {} \
         actors. `-ct` = tokio current-thread, `-mt` = tokio multi-thread with 2 workers; \
         actix runs on its own `System`.\n",
        cfg.rounds, cfg.spawn_rounds, cfg.tell, cfg.ask, cfg.hops, cfg.spawn
    );
    let _ = write!(s, "| workload |");
    for l in libs {
        let _ = write!(s, " {} |", l.name());
    }
    let _ = write!(
        s,
        " fastest peer | evergreen ratio | evergreen-hib ratio | target | result (evergreen / -hib) |\n|---|"
    );
    for _ in libs {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "---|---:|---:|---|---|");
    let rows: [(Work, &str, bool, f64, &str); 4] = [
        (
            Work::TellBounded,
            "tell, bounded 1024 (M msg/s)",
            true,
            3.0,
            "≥ 3× throughput",
        ),
        (
            Work::TellUnbounded,
            "tell, unbounded (M msg/s)",
            true,
            3.0,
            "≥ 3× throughput",
        ),
        (Work::Ask, "ask round trip (ns)", false, 0.2, "≤ 1/5 time"),
        (
            Work::PingPong,
            "ping-pong (ns/hop)",
            false,
            1.0 / 3.0,
            "≤ 1/3 time",
        ),
    ];
    for (w, label, higher_better, target, target_s) in rows {
        let _ = write!(s, "| {label} |");
        let mut best: Option<(f64, Lib)> = None;
        let mut ev = [None, None];
        for l in libs {
            let m = samples.get(&(w, *l)).and_then(|v| median(v));
            let _ = write!(s, " {} |", fmt(m));
            if let Some(m) = m {
                if *l == Lib::Evergreen {
                    ev[0] = Some(m);
                } else if *l == Lib::EvergreenHib {
                    ev[1] = Some(m);
                } else {
                    let better = match best {
                        None => true,
                        Some((b, _)) => {
                            if higher_better {
                                m > b
                            } else {
                                m < b
                            }
                        }
                    };
                    if better {
                        best = Some((m, *l));
                    }
                }
            }
        }
        let judged = ev.map(|e| match (e, best) {
            (Some(e), Some((b, _))) => {
                let r = e / b;
                let pass = if higher_better {
                    r >= target
                } else {
                    r <= target
                };
                (format!("{r:.3}"), if pass { "PASS" } else { "MISS" })
            }
            _ => ("—".into(), "—"),
        });
        let _ = writeln!(
            s,
            " {} | {} | {} | {target_s} | {} / {} |",
            best.map(|(_, l)| l.name()).unwrap_or("—"),
            judged[0].0,
            judged[1].0,
            judged[0].1,
            judged[1].1,
        );
    }
    // spawn rows
    type Pick = fn(&SpawnResult) -> f64;
    type Row<'a> = (&'a str, Pick, Option<(f64, &'a str)>);
    let spawn_rows: [Row; 3] = [
        (
            "spawn + 1 message + stop (ns/actor)",
            |r| r.ns,
            Some((0.2, "≤ 1/5 time")),
        ),
        ("memory per idle actor (bytes)", |r| r.idle_bytes, None),
        ("peak RSS per actor (bytes)", |r| r.peak_bytes, None),
    ];
    for (label, pick, target) in spawn_rows {
        let _ = write!(s, "| {label} |");
        let mut best: Option<(f64, Lib)> = None;
        let mut ev = [None, None];
        for l in libs {
            let m = spawn
                .get(l)
                .and_then(|v| median(&v.iter().map(pick).collect::<Vec<_>>()));
            let _ = write!(s, " {} |", fmt(m));
            if let Some(m) = m {
                if *l == Lib::Evergreen {
                    ev[0] = Some(m);
                } else if *l == Lib::EvergreenHib {
                    ev[1] = Some(m);
                } else if best.is_none_or(|(b, _)| m < b) {
                    best = Some((m, *l));
                }
            }
        }
        let judged = ev.map(|ev| match (ev, best, target) {
            (Some(e), Some((b, _)), Some((t, ts))) => {
                let r = e / b;
                (
                    format!("{r:.3}"),
                    ts.to_string(),
                    if r <= t { "PASS" } else { "MISS" },
                )
            }
            (Some(e), Some((b, _)), None) if label.starts_with("memory") => (
                format!("{:.3}", e / b),
                "≤ 5 KiB (5120 B)".to_string(),
                if e <= 5120.0 { "PASS" } else { "MISS" },
            ),
            (Some(e), Some((b, _)), None) => (format!("{:.3}", e / b), "—".into(), "—"),
            _ => ("—".into(), "—".into(), "—"),
        });
        let tgt = if judged[0].1 != "—" {
            &judged[0].1
        } else {
            &judged[1].1
        };
        let _ = writeln!(
            s,
            " {} | {} | {} | {tgt} | {} / {} |",
            best.map(|(_, l)| l.name()).unwrap_or("—"),
            judged[0].0,
            judged[1].0,
            judged[0].2,
            judged[1].2,
        );
    }
    let _ = writeln!(
        s,
        "\nRatios are evergreen ÷ the fastest peer in the same run (for tell, throughput: higher \
         is better; for the others, time or bytes: lower is better). Memory per idle actor: RSS \
         growth while 100k actors are alive and idle (each has handled one message), per actor. \
         `evergreen`: the default, parked actors that start lazily (the spawn workload's actors, \
         spawned, told one message and stopped, run on the dispatcher greenlet and never take a \
         greenlet or a stack; an actor woken again by a message gets a greenlet of its own and \
         parks). `evergreen-hib`: the same actors with hibernation on (`Builder::hibernate`, \
         here through `set_hibernate_default`): an idle actor holds no greenlet and no stack, \
         and each wake-up from an empty mailbox is an activation on the dispatcher greenlet \
         instead of a switch to a parked greenlet; Erlang's `hibernate`."
    );
    s
}
