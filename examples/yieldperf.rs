//! Yield ping-pong only, for profiling.
use std::time::{Duration, Instant};
fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
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
}
