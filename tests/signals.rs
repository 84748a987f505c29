//! Signals as hub events: handlers run in greenlets.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::run;
use evergreen::signal::signal_handler;
use evergreen::{getcurrent, Event, Queue};

#[test]
fn a_signal_runs_its_handler_in_a_new_greenlet() {
    run(|| {
        let got = Rc::new(Queue::new());
        let g2 = got.clone();
        let h = signal_handler(libc::SIGUSR1, move || {
            // A real greenlet: it may block.
            evergreen::sleep(Duration::from_millis(1));
            g2.put(getcurrent().is_root()).unwrap();
        })
        .unwrap();
        // SAFETY: sending SIGUSR1 to our own process, whose disposition we just installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) }, 0);
        assert_eq!(got.get_timeout(Duration::from_secs(5)), Ok(false));
        // SAFETY: as above.
        unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
        assert_eq!(got.get_timeout(Duration::from_secs(5)), Ok(false));
        h.cancel();
    });
}

#[test]
fn graceful_shutdown_on_sigterm_style_signal() {
    run(|| {
        let stop = Rc::new(Event::new());
        let s2 = stop.clone();
        let h = signal_handler(libc::SIGUSR2, move || s2.set()).unwrap();
        let worker = evergreen::spawn({
            let stop = stop.clone();
            move || {
                let mut rounds = 0u32;
                while !stop.wait_timeout(Duration::from_millis(1)) {
                    rounds += 1;
                }
                rounds
            }
        });
        evergreen::sleep(Duration::from_millis(5));
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
        assert!(stop.wait_timeout(Duration::from_secs(5)));
        assert!(worker.get().unwrap() > 0);
        drop(h);
    });
}

#[test]
fn invalid_signals_are_refused() {
    run(|| {
        assert!(signal_handler(libc::SIGKILL, || ()).is_err());
        assert!(signal_handler(0, || ()).is_err());
        assert!(signal_handler(1000, || ()).is_err());
    });
}
