//! A tour of evergreen in one screen: greenlets, a Queue, a Pool, a Timeout and a kill.
//!
//! Run with `cargo run --release --example demo`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen::{sleep, spawn, with_timeout, Builder, Error, Pool, Queue};

fn main() {
    let t0 = Instant::now();
    let at = move || format!("{:>4} ms", t0.elapsed().as_millis());

    // A producer and two consumers on one thread, sharing a bounded queue.
    let q = Rc::new(Queue::bounded(2));
    let producer = {
        let q = q.clone();
        Builder::new().name("producer").spawn(move || {
            for job in 1..=6 {
                q.put(job).expect("queue is open");
            }
            q.shutdown(false); // consumers drain what is left, then stop
        })
    };
    let consumers: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|name| {
            let q = q.clone();
            Builder::new().name(name).spawn(move || {
                let mut done = vec![];
                while let Ok(job) = q.get() {
                    sleep(Duration::from_millis(10 * job)); // "work": yields to the others
                    done.push(job);
                }
                done
            })
        })
        .collect();
    producer.join();
    for c in &consumers {
        let done = c.get().unwrap();
        println!("[{}] {} handled {:?}", at(), c.name().unwrap(), done);
    }

    // A pool of 3 runs 9 sleeps of 30 ms in ~90 ms, not 270 ms.
    let start = Instant::now();
    let pool = Pool::new(3);
    let out = pool
        .map(
            |i: u64| {
                sleep(Duration::from_millis(30));
                i * i
            },
            1..=9,
        )
        .unwrap();
    println!(
        "[{}] pool of 3 squared 1..=9 -> {:?} in {} ms",
        at(),
        out,
        start.elapsed().as_millis()
    );

    // A scoped timeout interrupts whatever the greenlet blocks on.
    let slow = with_timeout(Duration::from_millis(50), || {
        sleep(Duration::from_secs(10));
        "finished"
    });
    assert_eq!(slow, Err(Error::Timeout(Duration::from_millis(50))));
    println!(
        "[{}] with_timeout(50 ms) around a 10 s sleep -> {slow:?}",
        at()
    );

    // A kill unwinds the victim at its blocking point: its destructors run.
    struct Goodbye;
    impl Drop for Goodbye {
        fn drop(&mut self) {
            println!("        (the sleeper's destructor ran)");
        }
    }
    let sleeper = spawn(|| {
        let _g = Goodbye;
        sleep(Duration::from_secs(3600));
    });
    sleep(Duration::ZERO);
    sleeper.kill();
    println!(
        "[{}] killed the sleeper: dead={} successful={}",
        at(),
        sleeper.dead(),
        sleeper.successful()
    );
    print!("{}", evergreen::debug::format_run_info());
}
