//! The hub's I/O reactor: a mio `Poll` polled once per loop turn.
//!
//! This part of the runtime only provides the poll the hub blocks in while it waits for
//! timers; socket readiness is registered here by the cooperative I/O layer.

use std::time::Duration;

use crate::greenlet::GRef;

/// The per-hub reactor.
pub(crate) struct Reactor {
    poll: Option<mio::Poll>,
    events: mio::Events,
    /// Greenlets currently waiting for I/O readiness.
    waiters: usize,
}

impl Reactor {
    pub(crate) fn new() -> Reactor {
        let poll = match mio::Poll::new() {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!("evergreen: cannot create the hub's epoll instance: {e}");
                None
            }
        };
        Reactor {
            poll,
            events: mio::Events::with_capacity(256),
            waiters: 0,
        }
    }

    /// Whether some greenlet waits for I/O (so the hub may not declare `LoopExit`).
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters > 0
    }

    /// Polls for readiness for at most `timeout` (`None`: forever); returns the greenlets to
    /// wake.
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> Vec<GRef> {
        let Some(poll) = self.poll.as_mut() else {
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
            return Vec::new();
        };
        if timeout == Some(Duration::ZERO) && self.waiters == 0 {
            // Nothing registered: skip the syscall.
            return Vec::new();
        }
        loop {
            match poll.poll(&mut self.events, timeout) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("evergreen: epoll_wait failed: {e}");
                    break;
                }
            }
        }
        Vec::new()
    }
}
