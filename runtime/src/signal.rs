//! Signals as hub events (gevent's `gevent.signal_handler`).
//!
//! A signal handler cannot run greenlet code: it interrupts whatever the thread was doing. So
//! the process-wide handler installed here only writes the signal number into a pipe (one pipe
//! per registration, the classic self-pipe trick; `write(2)` is async-signal-safe). A watcher
//! greenlet on the registering thread's hub reads that pipe cooperatively and, for every signal
//! received, spawns a new greenlet running the callback, as gevent's `signal_handler` does. The
//! callback may therefore block, and it sees the world between two greenlet switches, never in
//! the middle of one.
//!
//! ```no_run
//! use std::rc::Rc;
//! let stop = Rc::new(evergreen::Event::new());
//! let s = stop.clone();
//! let _h = evergreen::signal::signal_handler(libc::SIGTERM, move || s.set())?;
//! stop.wait(); // graceful shutdown starts here
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Differences from gevent: the returned [`SignalHandler`] must be kept (dropping it cancels
//! the registration); a registered handler's watcher counts as pending I/O, so a root that
//! waits forever with a handler installed waits for the signal instead of raising `LoopExit`.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use crate::greenlet::{spawn, Builder, Greenlet};
use crate::reactor::{self, Dir};

/// Registrations per signal (across all threads' hubs).
const SLOTS: usize = 16;
/// Signals 1..=64.
const NSIG: usize = 65;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicI32 = AtomicI32::new(-1);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicI32; SLOTS] = [EMPTY; SLOTS];
/// Write ends of the registered pipes, per signal; -1 is a free slot. Read by the handler.
static PIPES: [[AtomicI32; SLOTS]; NSIG] = [ROW; NSIG];

/// Registration state shared by all threads, under one lock so that installing and restoring
/// dispositions cannot interleave.
struct Registry {
    /// The previous dispositions, restored when a signal's last registration goes away.
    previous: Vec<(i32, libc::sigaction)>,
    /// Pipes of cancelled registrations, kept open and reused: a signal handler running on
    /// another thread may still hold a write end it loaded just before the slot was cleared,
    /// so that fd number must never be closed and reused for something else.
    spare_pipes: Vec<(RawFd, RawFd)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    previous: Vec::new(),
    spare_pipes: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn on_signal(sig: libc::c_int) {
    let saved = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if let Some(row) = PIPES.get(sig as usize) {
        let b = sig as u8;
        for slot in row {
            let fd = slot.load(Ordering::Relaxed);
            if fd >= 0 {
                // SAFETY: write(2) is async-signal-safe; the fd is a non-blocking pipe write end
                // that stays open while it is in the table. A full pipe just drops the byte
                // (the reader is already awake).
                unsafe {
                    libc::syscall(libc::SYS_write, fd, &b as *const u8, 1usize);
                }
            }
        }
    }
    // SAFETY: restoring errno, as a signal handler must.
    unsafe { *libc::__errno_location() = saved };
}

/// A registered signal handler; dropping it (or [`cancel`](Self::cancel)) unregisters it.
pub struct SignalHandler {
    sig: i32,
    slot: usize,
    read_fd: RawFd,
    write_fd: RawFd,
    watcher: Option<Greenlet<()>>,
}

impl std::fmt::Debug for SignalHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignalHandler(signal {})", self.sig)
    }
}

/// Signals raised synchronously by a faulting instruction. They are refused: a handler that
/// only records the signal returns to the faulting instruction, which faults again forever, and
/// `SIGSEGV`/`SIGBUS` belong to evergreen's stack-overflow handler.
const SYNCHRONOUS_FAULTS: [i32; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// Runs `callback` in a new greenlet each time the process receives `sig`.
///
/// Errors: an invalid signal number, `SIGKILL`/`SIGSTOP`, a synchronous fault signal
/// (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`), more than 16 registrations of one signal, or a
/// failure to make the pipe.
pub fn signal_handler(sig: i32, callback: impl Fn() + 'static) -> io::Result<SignalHandler> {
    if sig <= 0 || sig as usize >= NSIG || sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {sig} cannot be handled"),
        ));
    }
    if SYNCHRONOUS_FAULTS.contains(&sig) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "signal {sig} is a synchronous fault (SIGSEGV, SIGBUS, SIGILL or SIGFPE): it \
                 cannot be handled later in a greenlet, since the faulting instruction would run \
                 again at once, and replacing the handler would also disable evergreen's \
                 stack-overflow report"
            ),
        ));
    }
    let mut reg = registry();
    let (read_fd, write_fd) = match reg.spare_pipes.pop() {
        Some(p) => {
            drain(p.0);
            p
        }
        None => {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: pipe2 writes two fds into the array on success.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            (fds[0], fds[1])
        }
    };
    let row = &PIPES[sig as usize];
    let Some(slot) = row.iter().position(|s| {
        s.compare_exchange(-1, write_fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }) else {
        reg.spare_pipes.push((read_fd, write_fd));
        return Err(io::Error::other(format!(
            "too many handlers for signal {sig} (at most {SLOTS})"
        )));
    };
    if let Err(e) = install(&mut reg, sig) {
        row[slot].store(-1, Ordering::SeqCst);
        reg.spare_pipes.push((read_fd, write_fd));
        return Err(e);
    }
    drop(reg);
    let callback = Rc::new(callback);
    let watcher = Builder::new()
        .name(format!("signal {sig} watcher"))
        .spawn(move || watch(read_fd, callback));
    Ok(SignalHandler {
        sig,
        slot,
        read_fd,
        write_fd,
        watcher: Some(watcher),
    })
}

/// Empties a recycled pipe of signals that arrived after its registration was cancelled.
fn drain(read_fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reading into our buffer from our own non-blocking pipe.
    while unsafe { libc::syscall(libc::SYS_read, read_fd, buf.as_mut_ptr(), buf.len()) } > 0 {}
}

fn install(reg: &mut Registry, sig: i32) -> io::Result<()> {
    if reg.previous.iter().any(|(s, _)| *s == sig) {
        return Ok(());
    }
    // SAFETY: installing a plain handler with SA_RESTART; the old action is saved.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, &sa, &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        reg.previous.push((sig, old));
    }
    Ok(())
}

fn watch(read_fd: RawFd, callback: Rc<dyn Fn()>) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into our buffer from our own non-blocking pipe.
        let n = unsafe { libc::syscall(libc::SYS_read, read_fd, buf.as_mut_ptr(), buf.len()) };
        if n > 0 {
            for _ in 0..n {
                let cb = callback.clone();
                spawn(move || cb());
            }
            continue;
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
            if reactor::wait_io(read_fd, Dir::Read, None, true).is_err() {
                return;
            }
            continue;
        }
        return;
    }
}

impl SignalHandler {
    /// The signal number.
    pub fn signal(&self) -> i32 {
        self.sig
    }

    /// Unregisters: the watcher stops, and when this was the signal's last registration the
    /// previous disposition is restored.
    pub fn cancel(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        let Some(w) = self.watcher.take() else { return };
        {
            let mut reg = registry();
            let row = &PIPES[self.sig as usize];
            row[self.slot].store(-1, Ordering::SeqCst);
            if row.iter().all(|s| s.load(Ordering::SeqCst) == -1) {
                if let Some(i) = reg.previous.iter().position(|(s, _)| *s == self.sig) {
                    let (_, old) = reg.previous.remove(i);
                    // SAFETY: restoring the disposition saved by `install`.
                    unsafe { libc::sigaction(self.sig, &old, std::ptr::null_mut()) };
                }
            }
            reg.spare_pipes.push((self.read_fd, self.write_fd));
        }
        // Wakes the watcher (its wait fails with EBADF) and forgets the read end in this hub.
        reactor::close_fd(self.read_fd);
        if crate::hub::exists() && !w.dead() {
            w.kill();
        }
    }
}

impl Drop for SignalHandler {
    fn drop(&mut self) {
        self.teardown();
    }
}
