//! spawn+join only, for profiling.
use std::time::Instant;
fn main() {
    let m: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    for i in 0..m {
        let g = evergreen::spawn(move || i + 1);
        g.join();
    }
    println!(
        "spawn+join: {:.1} ns",
        t.elapsed().as_nanos() as f64 / m as f64
    );
}
