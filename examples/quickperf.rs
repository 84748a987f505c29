//! Quick single-shot timings of the hot paths (a smoke check; the real numbers come from
//! `cargo bench`).
use std::rc::Rc;
use std::time::{Duration, Instant};

fn main() {
    let n = 2_000_000u64;
    // yield ping-pong
    let t = Instant::now();
    let a = evergreen::spawn(move || {
        for _ in 0..n {
            evergreen::sleep(Duration::ZERO)
        }
    });
    let b = evergreen::spawn(move || {
        for _ in 0..n {
            evergreen::sleep(Duration::ZERO)
        }
    });
    a.join();
    b.join();
    println!(
        "yield: {:.1} ns",
        t.elapsed().as_nanos() as f64 / (2 * n) as f64
    );

    let m = 1_000_000u64;
    let t = Instant::now();
    for i in 0..m {
        let g = evergreen::spawn(move || i + 1);
        g.join();
    }
    println!(
        "spawn+join: {:.1} ns",
        t.elapsed().as_nanos() as f64 / m as f64
    );

    let q1 = Rc::new(evergreen::Queue::new());
    let q2 = Rc::new(evergreen::Queue::new());
    let (a1, a2) = (q1.clone(), q2.clone());
    let echo = evergreen::spawn(move || {
        for _ in 0..m {
            let v: u64 = a1.get().unwrap();
            a2.put(v).unwrap();
        }
    });
    let t = Instant::now();
    let pinger = evergreen::spawn(move || {
        for i in 0..m {
            q1.put(i).unwrap();
            q2.get().unwrap();
        }
    });
    pinger.join();
    echo.join();
    println!(
        "queue ping-pong: {:.1} ns/round trip",
        t.elapsed().as_nanos() as f64 / m as f64
    );
}
