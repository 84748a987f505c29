//! spawn+join from inside a greenlet only, for profiling.
use std::time::Instant;
fn main() {
    let m: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let d = evergreen::spawn(move || {
        let t = Instant::now();
        for i in 0..m {
            let v = evergreen::spawn(move || i + 1).into_result().unwrap();
            std::hint::black_box(v);
        }
        t.elapsed()
    });
    let e = d.into_result().unwrap();
    println!("spawn+join from a greenlet: {:.1} ns", e.as_nanos() as f64 / m as f64);
}
