//! The workloads on evergreen's hub (single-threaded, cooperative).
//!
//! Each run spawns a driver greenlet and joins it from `main`, which runs the hub until the
//! driver is done; the driver times the workload from inside the hub, like the tokio and may
//! drivers do.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen::{Event, Queue};

use super::memory::{prefaulted_vec, rss_bytes, ParkedMemory};
use super::{Runner, Workload, THROUGHPUT_QUEUE_CAPACITY};

/// Runs workloads on the calling thread's evergreen hub.
pub struct EvergreenRunner {
    _not_send: std::marker::PhantomData<Rc<()>>,
}

impl EvergreenRunner {
    /// A runner for the current thread's hub (greenlets are bound to their thread).
    pub fn new() -> Self {
        EvergreenRunner {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Runner for EvergreenRunner {
    fn run(&mut self, workload: Workload, iters: u64) -> Duration {
        let driver = evergreen::spawn(move || match workload {
            Workload::SpawnJoin => spawn_join(iters),
            Workload::Yield => yield_ping_pong(iters),
            Workload::PingPong => queue_ping_pong(iters),
            Workload::Throughput => one_way_throughput(iters),
        });
        driver
            .into_result()
            .expect("evergreen driver greenlet failed")
    }
}

/// Time for `iters` × (spawn a greenlet returning a small value, join it and take the value:
/// `into_result`, which joins, like awaiting a tokio `JoinHandle` or joining a may coroutine).
fn spawn_join(iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let value = evergreen::spawn(move || black_box(i))
            .into_result()
            .expect("spawned greenlet failed");
        black_box(value);
    }
    start.elapsed()
}

/// Time per `iters` yields: two greenlets each call `evergreen::sleep(Duration::ZERO)`
/// `iters` times.
fn yield_ping_pong(iters: u64) -> Duration {
    let start = Instant::now();
    let yielder = move || {
        for _ in 0..iters {
            evergreen::sleep(Duration::ZERO);
        }
    };
    let a = evergreen::spawn(yielder);
    let b = evergreen::spawn(yielder);
    a.join();
    b.join();
    start.elapsed() / 2
}

/// Time for `iters` round trips over two unbounded `evergreen::Queue`s.
fn queue_ping_pong(iters: u64) -> Duration {
    let start = Instant::now();
    let q1 = Rc::new(Queue::<u64>::new());
    let q2 = Rc::new(Queue::<u64>::new());
    let b = {
        let (q1, q2) = (q1.clone(), q2.clone());
        evergreen::spawn(move || {
            for _ in 0..iters {
                let v = q1.get().expect("ping queue get");
                q2.put(v).expect("pong queue put");
            }
        })
    };
    let a = evergreen::spawn(move || {
        for i in 0..iters {
            q1.put(i).expect("ping queue put");
            let v = q2.get().expect("pong queue get");
            debug_assert_eq!(v, i);
        }
    });
    a.join();
    b.join();
    start.elapsed()
}

/// Time for a producer greenlet to put `iters` messages into a bounded `evergreen::Queue`
/// that a consumer greenlet drains, until the consumer has received the last one.
fn one_way_throughput(iters: u64) -> Duration {
    let start = Instant::now();
    let queue = Rc::new(Queue::<u64>::bounded(THROUGHPUT_QUEUE_CAPACITY));
    let consumer = {
        let queue = queue.clone();
        evergreen::spawn(move || {
            let mut sum = 0u64;
            for _ in 0..iters {
                sum = sum.wrapping_add(queue.get().expect("queue get"));
            }
            sum
        })
    };
    let producer = evergreen::spawn(move || {
        for i in 0..iters {
            queue.put(i).expect("queue put");
        }
    });
    producer.join();
    let sum = consumer.into_result().expect("consumer greenlet failed");
    let elapsed = start.elapsed();
    black_box(sum);
    elapsed
}

/// Memory per parked greenlet: spawns `n` greenlets (default stack settings) that each wait
/// on one shared `evergreen::Event`, measures RSS once all of them are parked, then sets the
/// event and joins them all.
pub fn parked_memory(n: usize) -> ParkedMemory {
    // Warm the hub up so its one-time setup is not counted.
    evergreen::spawn(|| ()).join();
    let release = Rc::new(Event::new());
    let parked = Rc::new(Cell::new(0usize));
    let mut greenlets = prefaulted_vec(n);
    let before = rss_bytes();
    for _ in 0..n {
        let release = release.clone();
        let parked = parked.clone();
        greenlets.push(evergreen::spawn(move || {
            parked.set(parked.get() + 1);
            release.wait();
        }));
    }
    // From main, a blocking call runs the hub: every spawned greenlet runs up to its wait.
    while parked.get() < n {
        evergreen::sleep(Duration::ZERO);
    }
    let after = rss_bytes();
    release.set();
    evergreen::joinall(&greenlets);
    ParkedMemory {
        tasks: n,
        rss_before: before,
        rss_after: after,
        note: None,
    }
}
