//! The floor: a bare corosensei resume+suspend round trip on a default stack.
use corosensei::{Coroutine, CoroutineResult};
use std::time::Instant;
fn main() {
    let n = 10_000_000u64;
    let mut co = Coroutine::new(move |y, ()| loop {
        y.suspend(())
    });
    let t = Instant::now();
    for _ in 0..n {
        if let CoroutineResult::Return(()) = co.resume(()) {
            break;
        }
    }
    println!(
        "raw resume+suspend: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
}
