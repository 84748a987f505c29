//! Shared test harness: every test runs on its own thread (so it gets a fresh hub), under a
//! wall-clock timeout, and ends with a leak check: no greenlet and no timer may outlive it.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

/// How long any one test may take before it is declared hung.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `f` on its own thread with a fresh hub (the virtual clock if `virtual_clock`), then
/// checks that nothing outlived it; the test fails as hung after `timeout` of wall-clock time.
pub fn run_with_timeout<F: FnOnce() + Send + 'static>(
    virtual_clock: bool,
    timeout: Duration,
    f: F,
) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::Builder::new()
        .name("evergreen-test".into())
        .spawn(move || {
            let _ = env_logger::builder().is_test(true).try_init();
            if virtual_clock {
                assert!(evergreen::hub::use_virtual_clock());
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if r.is_ok() {
                // Leak check: everything the test started must have ended.
                let live = evergreen::hub::live_count();
                let info = evergreen::debug::format_run_info();
                assert_eq!(live, 0, "greenlets outlived the test:\n{info}");
                assert_eq!(evergreen::hub::timer_count(), 0, "timers outlived the test");
            }
            evergreen::hub::destroy();
            let _ = tx.send(());
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        })
        .expect("spawn test thread");
    match rx.recv_timeout(timeout) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {timeout:?} (hung)")
        }
    }
}

/// Runs `f` on a fresh hub with the real clock.
pub fn run<F: FnOnce() + Send + 'static>(f: F) {
    run_with_timeout(false, TEST_TIMEOUT, f)
}

/// Runs `f` on a fresh hub with the virtual clock: timers fire as soon as every greenlet is
/// blocked, so timeouts cost no real time and elapsed times are exact.
pub fn run_virtual<F: FnOnce() + Send + 'static>(f: F) {
    run_with_timeout(true, TEST_TIMEOUT, f)
}

/// Counts drops, to prove destructors ran.
#[derive(Clone, Default)]
pub struct DropCounter(pub std::rc::Rc<std::cell::Cell<usize>>);

impl DropCounter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn token(&self) -> DropToken {
        DropToken(self.0.clone())
    }
    pub fn count(&self) -> usize {
        self.0.get()
    }
}

/// Increments its counter when dropped.
pub struct DropToken(std::rc::Rc<std::cell::Cell<usize>>);

impl Drop for DropToken {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// A log shared between greenlets, to record the order of events.
#[derive(Clone, Default)]
pub struct Log(pub std::rc::Rc<std::cell::RefCell<Vec<String>>>);

impl Log {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&self, s: impl Into<String>) {
        self.0.borrow_mut().push(s.into());
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

/// Runs the hub until every runnable greenlet has had its turn and the hub would block.
pub fn settle() {
    evergreen::idle();
}
