//! Queue ping-pong only, for profiling.
use std::rc::Rc;
use std::time::Instant;
fn main() {
    let m: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
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
