//! The workloads on tokio: `current_thread` and the work-stealing `multi_thread` runtime.
//!
//! Each run spawns a driver task and `block_on`s its handle, so the timed loop runs on a
//! runtime worker (for `multi_thread`, spawns from it go to that worker's local queue, the
//! fast path) rather than on the thread calling `block_on`.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use tokio::sync::{mpsc, Notify};

use super::memory::{prefaulted_vec, rss_bytes, ParkedMemory};
use super::{Runner, Workload, THROUGHPUT_QUEUE_CAPACITY};

/// Runs workloads on one tokio runtime, built once and reused for every run.
pub struct TokioRunner {
    rt: Runtime,
}

/// A tokio runtime with the I/O and time drivers enabled: `current_thread` for `None`, the
/// work-stealing `multi_thread` with that many workers for `Some(n)`.
pub fn build_runtime(workers: Option<usize>) -> Runtime {
    match workers {
        None => Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio current_thread runtime"),
        Some(n) => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .expect("build tokio multi_thread runtime"),
    }
}

impl TokioRunner {
    /// A `current_thread` runtime.
    pub fn current_thread() -> Self {
        TokioRunner {
            rt: build_runtime(None),
        }
    }

    /// A work-stealing `multi_thread` runtime with `workers` worker threads.
    pub fn multi_thread(workers: usize) -> Self {
        TokioRunner {
            rt: build_runtime(Some(workers)),
        }
    }
}

impl Runner for TokioRunner {
    fn run(&mut self, workload: Workload, iters: u64) -> Duration {
        self.rt.block_on(async move {
            tokio::spawn(drive(workload, iters))
                .await
                .expect("driver task panicked")
        })
    }
}

/// Runs `workload` for `iters` ops from inside a task and returns the elapsed time.
async fn drive(workload: Workload, iters: u64) -> Duration {
    match workload {
        Workload::SpawnJoin => spawn_join(iters).await,
        Workload::Yield => yield_ping_pong(iters).await,
        Workload::PingPong => queue_ping_pong(iters).await,
        Workload::Throughput => one_way_throughput(iters).await,
    }
}

/// Time for `iters` × (spawn a task returning a small value, await its `JoinHandle`).
async fn spawn_join(iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let value = tokio::spawn(async move { black_box(i) })
            .await
            .expect("spawned task panicked");
        black_box(value);
    }
    start.elapsed()
}

/// Time per `iters` yields: two tasks each call `tokio::task::yield_now` `iters` times.
async fn yield_ping_pong(iters: u64) -> Duration {
    let start = Instant::now();
    let yielder = move || async move {
        for _ in 0..iters {
            tokio::task::yield_now().await;
        }
    };
    let a = tokio::spawn(yielder());
    let b = tokio::spawn(yielder());
    a.await.expect("yielder panicked");
    b.await.expect("yielder panicked");
    start.elapsed() / 2
}

/// Time for `iters` round trips over two unbounded `tokio::sync::mpsc` channels.
async fn queue_ping_pong(iters: u64) -> Duration {
    let start = Instant::now();
    let (to_b, mut from_a) = mpsc::unbounded_channel::<u64>();
    let (to_a, mut from_b) = mpsc::unbounded_channel::<u64>();
    let b = tokio::spawn(async move {
        for _ in 0..iters {
            let v = from_a.recv().await.expect("ping channel closed");
            to_a.send(v).expect("pong channel closed");
        }
    });
    let a = tokio::spawn(async move {
        for i in 0..iters {
            to_b.send(i).expect("ping channel closed");
            let v = from_b.recv().await.expect("pong channel closed");
            debug_assert_eq!(v, i);
        }
    });
    a.await.expect("pinger panicked");
    b.await.expect("ponger panicked");
    start.elapsed()
}

/// Time for a producer task to send `iters` messages through a bounded `tokio::sync::mpsc`
/// channel to a consumer task, until the consumer has received the last one.
async fn one_way_throughput(iters: u64) -> Duration {
    let start = Instant::now();
    let (tx, mut rx) = mpsc::channel::<u64>(THROUGHPUT_QUEUE_CAPACITY);
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        for _ in 0..iters {
            sum = sum.wrapping_add(rx.recv().await.expect("channel closed early"));
        }
        sum
    });
    let producer = tokio::spawn(async move {
        for i in 0..iters {
            tx.send(i).await.expect("consumer gone");
        }
    });
    producer.await.expect("producer panicked");
    let sum = consumer.await.expect("consumer panicked");
    let elapsed = start.elapsed();
    black_box(sum);
    elapsed
}

/// Memory per parked task: spawns `n` tasks on `runner`'s runtime that each wait on one
/// shared `tokio::sync::Notify`, measures RSS once all of them are parked, then releases them
/// with `notify_waiters` and joins them all.
pub fn parked_memory(runner: &TokioRunner, n: usize) -> ParkedMemory {
    runner.rt.block_on(async move {
        // Warm the runtime up (first spawn, timer wheel) so one-time setup is not counted.
        tokio::spawn(async {}).await.expect("warm-up task");
        tokio::time::sleep(Duration::from_millis(1)).await;

        let release = Arc::new(Notify::new());
        let parked = Arc::new(AtomicUsize::new(0));
        let mut handles = prefaulted_vec(n);
        let before = rss_bytes();
        for _ in 0..n {
            let release = release.clone();
            let parked = parked.clone();
            handles.push(tokio::spawn(async move {
                let notified = release.notified();
                parked.fetch_add(1, Ordering::Relaxed);
                notified.await;
            }));
        }
        while parked.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let the last tasks reach their await point.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let after = rss_bytes();
        release.notify_waiters();
        for handle in handles {
            handle.await.expect("parked task panicked");
        }
        ParkedMemory {
            tasks: n,
            rss_before: before,
            rss_after: after,
            note: None,
        }
    })
}
