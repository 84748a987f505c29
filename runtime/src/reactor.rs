//! The hub's I/O reactor (gevent's `hub.loop.io` watchers, over mio's epoll).
//!
//! # Contract
//!
//! This is mio's contract, followed literally:
//!
//! * **Register once.** A file descriptor is registered with epoll (edge-triggered, for
//!   reading and writing) the first time anyone waits on it, or when an evergreen socket is
//!   created, and stays registered until it is closed. Waiting never calls `epoll_ctl`.
//! * **Readiness is kept.** Every event sets the fd's `readable`/`writable` flags; they are
//!   cleared only when an operation on the fd reports `WouldBlock` (*draining readiness*). So a
//!   wait that starts after the event arrived returns at once, and an edge is never lost.
//! * **Try first, wait on `WouldBlock`.** Sockets try the syscall first and only wait when it
//!   would block; waits tolerate spurious wake-ups (the caller simply tries again). One
//!   exception, as in tokio: a read on a TCP socket (evergreen's `TcpStream`, or a blocking
//!   one through the hooks) that returned fewer bytes than asked for has emptied the receive
//!   queue (unless urgent data was seen on it: reads stop at the urgent mark), so the fd's `readable` flag is cleared then too (`mark_read_drained`),
//!   and the next read waits for an event before trying (`Reactor::read_known_drained`): a
//!   request/response client saves the `recvfrom` that would fail with `EAGAIN` on every
//!   response. (gevent always tries first.)
//! * **One reader and one writer per fd.** A second greenlet waiting to read (or write) the same
//!   fd while the first one waits is an error, [`Error::ConcurrentObjectUse`], as in gevent.
//! * **Closing wakes waiters.** Closing an fd (an evergreen socket's `close`, or `close(2)` through the hooks) deregisters the fd and wakes its reader and writer,
//!   whose waits fail with `EBADF` ("file descriptor was closed in another greenlet").
//!
//! Events are processed only by the hub, between greenlet switches, so a greenlet that saw
//! `WouldBlock` and then waits can never miss the edge that follows: no event is processed in
//! between.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::error::Error;
use crate::greenlet::CorePtr;
use crate::hub::{hub, Wake};

/// Direction of an I/O wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// What the monkey-patching hooks learned about an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum FdKind {
    /// Not examined yet.
    #[default]
    Unknown,
    /// A socket that evergreen's `net` owns (non-blocking): hooks pass it through.
    Owned,
    /// A socket created elsewhere (blocking unless its owner says otherwise), not a stream
    /// (datagram, seqpacket...).
    Socket,
    /// A `SOCK_STREAM` socket created elsewhere: blocking writes and `MSG_WAITALL` reads
    /// must transfer everything, as the kernel's would.
    StreamSocket,
    /// A TCP (`AF_INET`/`AF_INET6` `SOCK_STREAM`) socket created elsewhere: as
    /// [`StreamSocket`](Self::StreamSocket), and a short read means its receive queue is
    /// empty (see [`mark_read_drained`]; not so for Unix stream sockets, whose reads also stop
    /// at a message that carries fds or another sender's credentials).
    TcpSocket,
    /// Not a socket (file, pipe, tty): hooks pass it through.
    Other,
}

/// Per-fd state. Indexed by fd number.
#[derive(Default)]
pub(crate) struct FdState {
    /// Registered with epoll.
    registered: bool,
    /// An event said readable (or closed/error) since the last `WouldBlock` on read.
    readable: bool,
    /// An event said writable (or closed/error) since the last `WouldBlock` on write.
    writable: bool,
    /// An event said the reading side is closed (end of stream, hang-up or error): from then
    /// on, reads never wait before trying (a short read may be followed by the end of stream,
    /// whose edge has already been seen).
    read_closed: bool,
    /// A short read may leave data queued: an event said urgent (TCP out-of-band) data
    /// arrived (`EPOLLPRI`; a read stops at the urgent mark), or an upper-layer protocol was
    /// installed (`TCP_ULP`, kernel TLS: a read stops before a record of another type). From
    /// then on reads never wait before trying.
    short_reads_ambiguous: bool,
    /// The greenlet waiting to read, if any.
    reader: Option<CorePtr>,
    /// The greenlet waiting to write, if any.
    writer: Option<CorePtr>,
    /// Incremented by `close_fd`: a waiter that sees another generation was closed on.
    generation: u64,
    /// What the hooks know about the fd.
    pub(crate) kind: FdKind,
}

/// The per-hub reactor.
pub(crate) struct Reactor {
    /// The epoll instance (`None` if it could not be created: then only timers work).
    poll: Option<mio::Poll>,
    /// Reused event buffer.
    events: mio::Events,
    /// Per-fd state, indexed by fd.
    fds: Vec<FdState>,
    /// Occupied reader/writer slots: while non-zero, the hub may block on I/O.
    waiting: usize,
    /// Greenlets to wake after a poll (reused buffer).
    woken: Vec<CorePtr>,
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
            events: mio::Events::with_capacity(1024),
            fds: Vec::new(),
            waiting: 0,
            woken: Vec::new(),
        }
    }

    /// Whether some greenlet waits for I/O (so the hub may not declare `LoopExit`).
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting > 0
    }

    pub(crate) fn state(&mut self, fd: RawFd) -> &mut FdState {
        let i = fd as usize;
        if i >= self.fds.len() {
            self.fds.resize_with(i + 1, FdState::default);
        }
        &mut self.fds[i]
    }

    /// The kind recorded for `fd` (without growing the table).
    pub(crate) fn kind(&self, fd: RawFd) -> FdKind {
        self.fds
            .get(fd as usize)
            .map(|s| s.kind)
            .unwrap_or_default()
    }

    /// Whether a read on `fd` is known to find nothing: the fd is registered and no event has
    /// said readable since its receive queue was last seen empty (a `WouldBlock`, or a short
    /// read on a stream socket, see [`mark_read_drained`]). A read hook then waits before
    /// trying, saving the system call that would fail with `EAGAIN`. Not while another
    /// greenlet waits to read the fd: a read then tries first, as it always did, and only a
    /// `WouldBlock` makes it a second waiter ([`Error::ConcurrentObjectUse`]).
    pub(crate) fn read_known_drained(&self, fd: RawFd) -> bool {
        fd >= 0
            && self.fds.get(fd as usize).is_some_and(|s| {
                s.registered && !s.readable && !s.short_reads_ambiguous && s.reader.is_none()
            })
    }

    /// Whether `fd` is registered with epoll.
    pub(crate) fn is_registered(&self, fd: RawFd) -> bool {
        fd >= 0 && self.fds.get(fd as usize).is_some_and(|s| s.registered)
    }

    /// Registers `fd` with epoll if it is not yet.
    pub(crate) fn register(&mut self, fd: RawFd) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self.state(fd).registered {
            return Ok(());
        }
        let Some(poll) = self.poll.as_ref() else {
            return Err(io::Error::other("evergreen: the hub has no epoll instance"));
        };
        // PRIORITY: urgent TCP data is reported (see `FdState::short_reads_ambiguous`).
        let interest = Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY;
        let r = poll
            .registry()
            .register(&mut SourceFd(&fd), Token(fd as usize), interest);
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                poll.registry()
                    .reregister(&mut SourceFd(&fd), Token(fd as usize), interest)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("evergreen: fd {fd} cannot be polled (a regular file?)"),
                ));
            }
            Err(e) => return Err(e),
        }
        // Readiness flags start clear: with edge-triggered epoll, registering an fd that is
        // already ready produces an event at the next poll, which sets them.
        let st = self.state(fd);
        st.registered = true;
        // What the hooks learned about an fd number they had not registered may be stale: a
        // close on another thread does not reach this hub, and the number may now be another
        // kind of fd (a TCP socket's number reused by a Unix one). Registered from now on,
        // the fd is forgotten by every close this hub sees; the hooks examine it again at its
        // next call.
        if st.kind != FdKind::Owned {
            st.kind = FdKind::Unknown;
        }
        Ok(())
    }

    /// Forgets `fd` (it is being closed): deregisters it and returns the greenlets waiting on
    /// it, whose waits will fail with `EBADF`.
    fn close(&mut self, fd: RawFd) -> [Option<CorePtr>; 2] {
        if fd < 0 || fd as usize >= self.fds.len() {
            return [None, None];
        }
        let registered = self.fds[fd as usize].registered;
        if registered {
            if let Some(poll) = self.poll.as_ref() {
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
            }
        }
        let st = &mut self.fds[fd as usize];
        let woken = [st.reader.take(), st.writer.take()];
        let gen = st.generation + 1;
        *st = FdState {
            generation: gen,
            ..FdState::default()
        };
        self.waiting -= woken.iter().flatten().count();
        woken
    }

    /// Polls for at most `timeout` (`None`: forever); returns how many events arrived. The
    /// greenlets to wake are left in `woken`.
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> usize {
        let Some(poll) = self.poll.as_mut() else {
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
            return 0;
        };
        if timeout == Some(Duration::ZERO) && self.waiting == 0 && self.fds.is_empty() {
            // Nothing was ever registered: skip the syscall.
            return 0;
        }
        loop {
            match poll.poll(&mut self.events, timeout) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if timeout.is_some() {
                        // Let the hub recompute the timeout.
                        return 0;
                    }
                }
                Err(e) => {
                    log::error!("evergreen: epoll_wait failed: {e}");
                    return 0;
                }
            }
        }
        let mut n = 0;
        for ev in self.events.iter() {
            n += 1;
            let fd = ev.token().0;
            let Some(st) = self.fds.get_mut(fd) else {
                continue;
            };
            if !st.registered {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                st.readable = true;
                st.read_closed |= ev.is_read_closed() || ev.is_error();
                st.short_reads_ambiguous |= ev.is_priority();
                if let Some(g) = st.reader {
                    self.woken.push(g);
                }
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                st.writable = true;
                if let Some(g) = st.writer {
                    self.woken.push(g);
                }
            }
        }
        n
    }

    pub(crate) fn take_woken(&mut self) -> Vec<CorePtr> {
        std::mem::take(&mut self.woken)
    }

    pub(crate) fn give_back_woken(&mut self, mut v: Vec<CorePtr>) {
        v.clear();
        if self.woken.is_empty() {
            self.woken = v;
        }
    }
}

/// Clears the slot of a waiter on every exit path.
struct SlotGuard {
    fd: RawFd,
    dir: Dir,
    me: CorePtr,
    generation: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let hub = hub();
        let mut r = hub.reactor.borrow_mut();
        let mut freed = false;
        if let Some(st) = r.fds.get_mut(self.fd as usize) {
            if st.generation == self.generation {
                let slot = match self.dir {
                    Dir::Read => &mut st.reader,
                    Dir::Write => &mut st.writer,
                };
                if *slot == Some(self.me) {
                    *slot = None;
                    freed = true;
                }
            }
        }
        if freed {
            r.waiting -= 1;
        }
    }
}

fn dir_name(dir: Dir) -> &'static str {
    match dir {
        Dir::Read => "readable",
        Dir::Write => "writable",
    }
}

/// Records that a read on the TCP socket `fd` just emptied its receive queue: it returned
/// fewer bytes than asked for (more than zero, not a peek, from at most as many buffers as
/// one `readv` takes). Every byte that arrives after
/// that raises a new edge (the kernel reports each arrival to epoll), and events are processed
/// only by the hub, never during the read, so clearing the flag cannot lose an arrival; an
/// event for bytes this read already took only costs one read that finds nothing. The end of
/// stream raises no edge after the one already seen, so once an event said the reading side
/// is closed the flag stays set; so it does once urgent data was seen (a read stops at the
/// urgent mark with data behind it). Only for TCP: a Unix stream read also stops, with data
/// behind, at a message that carries fds or another sender's credentials, and epoll cannot
/// tell.
pub(crate) fn mark_read_drained(fd: RawFd) {
    let Ok(mut r) = hub().reactor.try_borrow_mut() else {
        return;
    };
    if let Some(s) = r.fds.get_mut(fd as usize) {
        if s.registered && !s.read_closed && !s.short_reads_ambiguous {
            s.readable = false;
        }
    }
}

/// Whether a read on the stream socket `fd` is known to find nothing (see
/// [`Reactor::read_known_drained`]); false if the reactor is in use.
pub(crate) fn stream_read_known_drained(fd: RawFd) -> bool {
    hub()
        .reactor
        .try_borrow()
        .is_ok_and(|r| r.read_known_drained(fd))
}

/// Records that short reads on `fd` may leave data queued from now on (see
/// `FdState::short_reads_ambiguous`): a `TCP_ULP` was installed.
pub(crate) fn short_reads_ambiguous(fd: RawFd) {
    let Ok(mut r) = hub().reactor.try_borrow_mut() else {
        return;
    };
    // Recorded also for an fd the reactor has not seen yet (the table grows): the hooks may
    // classify it as TCP later, and registering it keeps this flag; only a close clears it.
    if fd >= 0 {
        r.state(fd).short_reads_ambiguous = true;
    }
}

/// Whether `fd` is ready in `dir` now, by the kernel's own account (`ppoll` with a zero
/// timeout, not through the hooks); an fd that cannot be polled counts as ready.
fn ready_now(fd: RawFd, dir: Dir) -> bool {
    let events = match dir {
        Dir::Read => libc::POLLIN,
        Dir::Write => libc::POLLOUT,
    };
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ppoll(2) on one valid `pollfd` with a zero timeout and no signal mask; it only
    // writes `p.revents`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            &mut p as *mut libc::pollfd,
            1 as libc::nfds_t,
            &zero as *const libc::timespec,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    n != 0
}

/// Waits until `fd` is ready in `dir`, `deadline` passes (`TimedOut`), or the fd is closed by
/// another greenlet (`EBADF`). With `after_would_block`, the fd's readiness is drained first
/// (the caller just saw `WouldBlock`); otherwise a readiness already seen returns at once.
pub(crate) fn wait_io(
    fd: RawFd,
    dir: Dir,
    deadline: Option<Instant>,
    after_would_block: bool,
) -> io::Result<()> {
    wait_io_inner(fd, dir, deadline, after_would_block, true)
}

/// [`wait_io`] for the libc hooks: a kill or `Timeout` does not unwind (the hooks are called
/// through `extern "C"` declarations, which must not unwind) but fails the wait with
/// `ECANCELED` (a kill) or `ETIMEDOUT` (a `Timeout`); the interrupt stays pending and is
/// delivered at the greenlet's next evergreen blocking point.
pub(crate) fn wait_io_no_unwind(
    fd: RawFd,
    dir: Dir,
    deadline: Option<Instant>,
    after_would_block: bool,
) -> io::Result<()> {
    wait_io_inner(fd, dir, deadline, after_would_block, false)
}

/// The error a hooked call fails with when an interrupt is pending (see
/// [`wait_io_no_unwind`]).
pub(crate) fn interrupted_error() -> io::Error {
    let code = match hub().current().interrupt.get() {
        Some(crate::greenlet::Interrupt::Timeout { .. }) => libc::ETIMEDOUT,
        _ => libc::ECANCELED,
    };
    io::Error::from_raw_os_error(code)
}

fn wait_io_inner(
    fd: RawFd,
    dir: Dir,
    deadline: Option<Instant>,
    after_would_block: bool,
    unwind: bool,
) -> io::Result<()> {
    let hub = hub();
    let me = hub.current().ptr();
    let generation = {
        let mut r = hub.reactor.borrow_mut();
        r.register(fd)?;
        let st = r.state(fd);
        let (ready, slot) = match dir {
            Dir::Read => (&mut st.readable, &mut st.reader),
            Dir::Write => (&mut st.writable, &mut st.writer),
        };
        if after_would_block {
            *ready = false;
        } else if *ready {
            return Ok(());
        }
        if let Some(other) = *slot {
            // SAFETY: a slot holds a greenlet that is parked waiting on this fd, hence alive.
            let other_id = unsafe { other.as_ref() }.id;
            return Err(io::Error::other(Error::ConcurrentObjectUse(format!(
                "greenlet #{} waits for fd {fd} to become {} while greenlet #{other_id} already \
                 does",
                hub.current().id,
                dir_name(dir)
            ))));
        }
        *slot = Some(me);
        let g = st.generation;
        r.waiting += 1;
        g
    };
    let _guard = SlotGuard {
        fd,
        dir,
        me,
        generation,
    };
    let what = match dir {
        Dir::Read => "wait_read",
        Dir::Write => "wait_write",
    };
    loop {
        let wake = hub.park(deadline, what);
        {
            let mut r = hub.reactor.borrow_mut();
            let st = r.state(fd);
            if st.generation != generation {
                return Err(io::Error::other(EbadfClosed(fd)));
            }
            let ready = match dir {
                Dir::Read => st.readable,
                Dir::Write => st.writable,
            };
            if ready {
                return Ok(());
            }
        }
        match wake {
            Wake::Deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out waiting for fd {fd} to become {}", dir_name(dir)),
                ))
            }
            Wake::Interrupted if unwind => hub.deliver_interrupt(),
            Wake::Interrupted => {
                if !hub.current().is_unwinding() {
                    // The slot is freed first: the report may park for a while.
                    drop(_guard);
                    hub.hook_saw_interrupt();
                    return Err(interrupted_error());
                }
            }
            // Spurious: wait again.
            Wake::Woken => {}
        }
    }
}

/// Waits until any of `waits` (fds and directions, whose readiness the caller just found
/// drained) is ready, `deadline` passes (`TimedOut`), or one of the fds is closed; for the
/// hooked `poll`. Like [`wait_io_no_unwind`], an interrupt fails the wait with
/// `ECANCELED`/`ETIMEDOUT`. Fails at once (before parking) with `ConcurrentObjectUse` if
/// another greenlet waits on one of them in the same direction, or with the registration
/// error of an fd epoll refuses: the caller then falls back to polling.
pub(crate) fn wait_many_no_unwind(
    waits: &[(RawFd, Dir)],
    deadline: Option<Instant>,
) -> io::Result<()> {
    let hub = hub();
    let me = hub.current().ptr();
    let mut guards: Vec<SlotGuard> = Vec::with_capacity(waits.len());
    {
        let mut r = hub.reactor.borrow_mut();
        for &(fd, dir) in waits {
            let claimed = (|| {
                r.register(fd)?;
                let st = r.state(fd);
                let (ready, slot) = match dir {
                    Dir::Read => (&mut st.readable, &mut st.reader),
                    Dir::Write => (&mut st.writable, &mut st.writer),
                };
                match *slot {
                    Some(g) if g == me => return Ok(None), // listed twice
                    Some(_) => {
                        return Err(io::Error::other(Error::ConcurrentObjectUse(format!(
                            "poll: another greenlet waits for fd {fd} to become {}",
                            dir_name(dir)
                        ))))
                    }
                    None => {}
                }
                *ready = false;
                *slot = Some(me);
                Ok(Some(st.generation))
            })();
            match claimed {
                Ok(Some(generation)) => {
                    r.waiting += 1;
                    guards.push(SlotGuard {
                        fd,
                        dir,
                        me,
                        generation,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    drop(r);
                    return Err(e);
                }
            }
        }
    }
    loop {
        let wake = hub.park(deadline, "poll (patched)");
        {
            let mut r = hub.reactor.borrow_mut();
            for g in &guards {
                let st = r.state(g.fd);
                let ready = match g.dir {
                    Dir::Read => st.readable,
                    Dir::Write => st.writable,
                };
                if st.generation != g.generation || ready {
                    return Ok(());
                }
            }
        }
        match wake {
            Wake::Deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out waiting in poll",
                ))
            }
            Wake::Interrupted => {
                if !hub.current().is_unwinding() {
                    drop(guards);
                    hub.hook_saw_interrupt();
                    return Err(interrupted_error());
                }
            }
            Wake::Woken => {}
        }
    }
}

/// The error of a wait whose fd was closed by another greenlet (gevent's `cancel_wait_ex`).
#[derive(Debug)]
struct EbadfClosed(RawFd);

impl std::fmt::Display for EbadfClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "file descriptor {} was closed in another greenlet (EBADF)",
            self.0
        )
    }
}

impl std::error::Error for EbadfClosed {}

/// Forgets `fd` before it is closed: deregisters it and wakes its waiters with `EBADF`.
/// Safe to call for fds the reactor never saw.
pub(crate) fn close_fd(fd: RawFd) {
    if !crate::hub::exists() {
        return;
    }
    let hub = hub();
    let woken = hub.reactor.borrow_mut().close(fd);
    for g in woken.into_iter().flatten() {
        // SAFETY: the greenlet was parked waiting on this fd, hence alive.
        hub.unpark(unsafe { g.as_ref() });
    }
}

/// Records that `fd` is a non-blocking socket owned by evergreen's `net`, and registers it.
pub(crate) fn adopt_fd(fd: RawFd) -> io::Result<()> {
    let hub = hub();
    let mut r = hub.reactor.borrow_mut();
    r.register(fd)?;
    r.state(fd).kind = FdKind::Owned;
    Ok(())
}

/// Blocks the current greenlet until `fd` is readable (gevent's `wait_read`), or `timeout`
/// passes (`io::ErrorKind::TimedOut`), or the fd is closed by another greenlet.
///
/// Works on any pollable fd (sockets, pipes, eventfds...). Readiness is the kernel's at the
/// call, as gevent's level-triggered watchers see it (one `ppoll`): after an `EAGAIN` it
/// waits for new data even if the reactor saw the fd readable before. May return spuriously:
/// try the operation and wait again if it would block.
pub fn wait_read(fd: RawFd, timeout: Option<Duration>) -> io::Result<()> {
    wait_public(fd, Dir::Read, timeout)
}

/// Like [`wait_read`], for writability (gevent's `wait_write`).
pub fn wait_write(fd: RawFd, timeout: Option<Duration>) -> io::Result<()> {
    wait_public(fd, Dir::Write, timeout)
}

/// [`wait_read`] / [`wait_write`]: readiness as the kernel has it now, as gevent's
/// (level-triggered) watchers see it. The reactor's own flag can be stale here: the caller
/// typically just got `EAGAIN` from a call the reactor did not see (a raw `read` of a pipe),
/// and trusting the flag would return at once, again and again, without ever yielding. So the
/// kernel is asked (one `ppoll`): ready, it returns; not ready, the flag is cleared and the
/// greenlet waits for the next event.
fn wait_public(fd: RawFd, dir: Dir, timeout: Option<Duration>) -> io::Result<()> {
    let deadline = timeout.and_then(|t| hub().deadline(t));
    let ready = ready_now(fd, dir);
    wait_io(fd, dir, deadline, !ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_upper_layer_protocol_set_before_the_reactor_saw_the_fd_is_remembered() {
        // `setsockopt(TCP_ULP)` (kernel TLS) on an fd this hub never saw: the flag must
        // survive the table's growth and the fd's later registration, so short reads there
        // never mark it drained.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = s.as_raw_fd();
        assert!(
            hub().reactor.borrow().fds.len() <= fd as usize,
            "a fresh fd"
        );
        short_reads_ambiguous(fd);
        hub().reactor.borrow_mut().register(fd).unwrap();
        mark_read_drained(fd);
        assert!(!hub().reactor.borrow().read_known_drained(fd));
    }

    #[test]
    fn a_kind_the_hooks_cached_is_forgotten_when_the_fd_is_first_registered() {
        // Found in review: the hooks cache what an fd number is (here a TCP socket, so short
        // reads drain); closed on another thread, the number can come back as another kind of
        // fd (here a Unix stream, whose short reads do not drain), which must be examined
        // again, not taken for the old one.
        let mut r = Reactor::new();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        r.state(fd).kind = FdKind::TcpSocket;
        r.register(fd).unwrap();
        assert_eq!(r.kind(fd), FdKind::Unknown);
        // An fd of evergreen's own keeps its kind (set when it is adopted).
        let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
        let own = c.as_raw_fd();
        r.state(own).kind = FdKind::Owned;
        r.register(own).unwrap();
        assert_eq!(r.kind(own), FdKind::Owned);
    }
}
