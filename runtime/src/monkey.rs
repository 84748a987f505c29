//! Monkey patching: making *unmodified* blocking code cooperative (gevent's `monkey`).
//!
//! gevent swaps Python's `socket` and `time` modules. The Rust equivalent works one level
//! lower: this crate defines the libc entry points that blocking socket code ends up calling
//! (`connect`, `accept`, `accept4`, `read`, `write`, `readv`, `writev`, `recv`, `send`,
//! `recvfrom`, `sendto`, `recvmsg`, `sendmsg`, `poll`, `close`, `dup2`, `dup3`, and for
//! [`patch_time`]
//! `nanosleep` and `clock_nanosleep`; `fcntl`, `fcntl64`, `ioctl` and `setsockopt` only to
//! notice changes to what the hooks cache) as `#[no_mangle]` functions. The executable's definitions
//! take precedence over libc's (symbol interposition), so `std::net`, `socket2` and crates built
//! on them (the `mysql` crate, for one) call these hooks.
//!
//! # What a hook does
//!
//! * **Outside a greenlet** (the root context, a hub callback, another thread), or before the
//!   relevant `patch_*` call, or on an fd that is not a socket, or on a socket its owner made
//!   non-blocking: it is a pure pass-through to the real system call (`libc::syscall`, never
//!   the libc wrapper of the same name, which would call the hook again).
//! * **Inside a greenlet, on a blocking socket**: it tries the call without blocking
//!   (`MSG_DONTWAIT`, or a temporary `O_NONBLOCK` for `connect` and `accept`, restored at once:
//!   file descriptors are never left non-blocking). If it would block, the greenlet parks on
//!   the [`reactor`] until the fd is ready, and the call is retried. A socket's
//!   `SO_RCVTIMEO` / `SO_SNDTIMEO` is honoured: when it passes, the call fails with `EAGAIN`,
//!   exactly as the kernel's blocking call would.
//! * A read on a blocking stream socket that returned fewer bytes than asked for emptied the
//!   socket's receive queue; the next read there waits for the reactor to report new bytes
//!   before trying, instead of trying and failing with `EAGAIN` (a query's answer is never
//!   there right after the query is sent). Peeks, the end of stream and sockets their owners
//!   made non-blocking are exempt; see [`reactor`]'s contract. gevent always tries first.
//! * What a wait needs to know of its fd (whether its owner made it non-blocking, its
//!   `SO_RCVTIMEO`/`SO_SNDTIMEO`) is asked of the kernel once and cached, so a call that waits
//!   makes no system calls beyond the transfer and the reactor's; `close`, `dup2`/`dup3`,
//!   `fcntl(F_SETFL)`, `ioctl(FIONBIO)` and `setsockopt(SOL_SOCKET, …)` through the hooks
//!   drop the cache.
//! * `nanosleep`/`clock_nanosleep` in a greenlet after [`patch_time`] become
//!   [`sleep`](crate::sleep), so `std::thread::sleep` yields.
//! * `close` of an fd the reactor knows deregisters it first and wakes its waiters with
//!   `EBADF` (so fd numbers can be reused safely).
//!
//! * Blocking semantics are kept: on a stream socket a blocking write (`write`, `send`,
//!   `writev`, `sendmsg`...) moves every byte and `recv(MSG_WAITALL)` fills the buffer, as the
//!   kernel's calls do (a timeout, an error or an interrupt after some bytes moved returns the
//!   count so far); a `connect` to a Unix listener whose queue is full waits for room.
//! * A second greenlet waiting on the same fd in the same direction fails with `EALREADY`
//!   ("operation already in progress": evergreen's
//!   [`ConcurrentObjectUse`](crate::Error::ConcurrentObjectUse), logged once per occurrence).
//! * The standard streams (fds 0, 1 and 2) always pass through: std guards stdin, stdout and
//!   stderr with a lock that is re-entrant per *thread*, so a greenlet parked in a write to a
//!   stdout that is a socket (systemd's journal) would hold it while another greenlet of the
//!   same thread re-entered it and panicked.
//! * `connect` and `accept` have no per-call "don't wait" flag: they set `O_NONBLOCK` for one
//!   attempt. The flag belongs to the open file description, shared by `dup`/`try_clone`, so
//!   those windows are serialised by a process-wide lock, the owner's flags are only read
//!   under it, and a pass-through `accept`/`connect` (a plain thread, the root) on a blocking
//!   description that ran into a window completes as the blocking call would. A description
//!   shared with another process (a fork) is not covered.
//!
//! A kill or `Timeout` delivered to a greenlet parked in a hook does **not** unwind through it
//! (callers reach the hooks through `extern "C"` declarations, which must not unwind): the
//! hooked call fails with `ECANCELED` (a kill) or `ETIMEDOUT` (a scoped `Timeout`), and the
//! interrupt itself is delivered, by unwinding, at the greenlet's next evergreen blocking point
//! (or the greenlet ends normally if its code returns first). A patched `sleep` is cut short
//! instead. This is a difference from gevent, where `GreenletExit` is raised inside the socket
//! call. Code that ignores the error and calls the hooks again is slowed down rather than left
//! to spin (see `Hub::hook_saw_interrupt`): the same interrupt reported again first parks the
//! greenlet for 1 ms, doubling up to 100 ms, and a later patched sleep sleeps its full time, so
//! the hub and the killer's own timeout keep running; such code ends only when it returns or
//! reaches an evergreen blocking point.
//!
//! # Not covered
//!
//! * **glibc's internal calls** do not go through the dynamic symbol table: `getaddrinfo`
//!   (and so `std`'s `ToSocketAddrs` for host names) blocks the hub. Resolve names with
//!   [`net::dns`](crate::net::dns) instead, or use IP literals.
//! * **`std::sync::Mutex`/`Condvar` held across a blocking call** deadlock the thread: the
//!   greenlet parks holding the lock, and the next greenlet to take it blocks the OS thread,
//!   so the first never runs again. This is why `mysql::Pool` (a `Mutex` + `Condvar` pool)
//!   cannot be used cooperatively: use one connection per greenlet, or a pool built on
//!   evergreen's [`Semaphore`](crate::Semaphore)/[`Queue`](crate::Queue).
//! * `select`, `epoll_wait`, `usleep`/`sleep` (glibc-internal nanosleep) and file I/O are not
//!   patched. (`poll` waits on all its fds in the reactor; it falls back to polling every
//!   millisecond or less only for an fd epoll refuses or another greenlet already waits on.)
//! * File descriptors closed without going through the `close`/`dup2`/`dup3` hooks (by
//!   glibc internally, `close_range`, raw syscalls, another thread) leave stale reactor state
//!   for their number; evergreen's own sockets and std's never do.
//!
//! # Example
//!
//! ```no_run
//! use std::io::Read;
//! evergreen::monkey::patch_all();
//! let gs: Vec<_> = (0..3)
//!     .map(|_| evergreen::spawn(|| {
//!         // unmodified blocking code: yields to the other greenlets
//!         std::thread::sleep(std::time::Duration::from_millis(100));
//!     }))
//!     .collect();
//! evergreen::joinall(&gs); // ~100 ms, not 300 ms
//! ```

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libc::{c_int, c_void, size_t, sockaddr, socklen_t, ssize_t};

use crate::hub::hub;
use crate::reactor::{self, Dir, FdKind};

static SOCKET: AtomicBool = AtomicBool::new(false);
static TIME: AtomicBool = AtomicBool::new(false);

/// Patches sockets and time (gevent's `patch_all`).
pub fn patch_all() {
    patch_socket();
    patch_time();
}

/// Makes blocking socket calls made inside greenlets cooperative (gevent's `patch_socket`).
pub fn patch_socket() {
    assert!(
        hooks_linked(),
        "evergreen's libc hooks are not linked into this executable; monkey patching cannot work"
    );
    SOCKET.store(true, Ordering::SeqCst);
}

/// Makes `nanosleep`/`clock_nanosleep` (so `std::thread::sleep`) inside greenlets
/// cooperative (gevent's `patch_time`).
pub fn patch_time() {
    assert!(
        hooks_linked(),
        "evergreen's libc hooks are not linked into this executable; monkey patching cannot work"
    );
    TIME.store(true, Ordering::SeqCst);
}

/// Turns the hooks back into pure pass-throughs (for tests and benchmarks).
pub fn unpatch_all() {
    SOCKET.store(false, Ordering::SeqCst);
    TIME.store(false, Ordering::SeqCst);
}

/// Whether anything is patched (gevent's `is_anything_patched`).
pub fn is_patched() -> bool {
    is_socket_patched() || is_time_patched()
}

/// Whether sockets are patched.
pub fn is_socket_patched() -> bool {
    SOCKET.load(Ordering::Relaxed)
}

/// Whether time is patched.
pub fn is_time_patched() -> bool {
    TIME.load(Ordering::Relaxed)
}

/// Whether this executable's `connect`, `recv`, `send` and `nanosleep` symbols resolve to
/// evergreen's hooks (checked with `dlsym`). False means the hooks were not linked in, or
/// another library interposes the same symbols first.
pub fn hooks_linked() -> bool {
    let ours: [(&[u8], usize); 4] = [
        (b"connect\0", connect as *const () as usize),
        (b"recv\0", recv as *const () as usize),
        (b"send\0", send as *const () as usize),
        (b"nanosleep\0", nanosleep as *const () as usize),
    ];
    ours.iter().all(|(name, addr)| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr() as *const libc::c_char) };
        p as usize == *addr
    })
}

// ---------------------------------------------------------------------------------------------
// Raw system calls (never the libc wrappers: those are the hooks)
// ---------------------------------------------------------------------------------------------

fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

macro_rules! sys {
    ($nr:expr $(, $a:expr)*) => {
        // SAFETY: a raw system call with the caller's arguments, exactly as the libc wrapper
        // would make it; the hooks' callers guarantee the pointers are valid.
        unsafe { libc::syscall($nr $(, $a)*) }
    };
}

fn fcntl_getfl(fd: RawFd) -> c_int {
    sys!(libc::SYS_fcntl, fd, libc::F_GETFL) as c_int
}

fn fcntl_setfl(fd: RawFd, flags: c_int) {
    sys!(libc::SYS_fcntl, fd, libc::F_SETFL, flags);
}

/// `SO_RCVTIMEO`/`SO_SNDTIMEO` of a socket, if set (cached: see [`FdFacts`]).
fn sock_timeout(fd: RawFd, dir: Dir) -> Option<Duration> {
    match dir {
        Dir::Read => fd_fact(
            fd,
            |f| f.rcv_timeout,
            |f, v| f.rcv_timeout = Some(v),
            || read_sock_timeout(fd, dir),
        ),
        Dir::Write => fd_fact(
            fd,
            |f| f.snd_timeout,
            |f, v| f.snd_timeout = Some(v),
            || read_sock_timeout(fd, dir),
        ),
    }
}

/// `SO_RCVTIMEO`/`SO_SNDTIMEO` of a socket as the kernel has it now.
fn read_sock_timeout(fd: RawFd, dir: Dir) -> Option<Duration> {
    let opt = match dir {
        Dir::Read => libc::SO_RCVTIMEO,
        Dir::Write => libc::SO_SNDTIMEO,
    };
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as socklen_t;
    let r = sys!(
        libc::SYS_getsockopt,
        fd,
        libc::SOL_SOCKET,
        opt,
        &mut tv as *mut libc::timeval,
        &mut len as *mut socklen_t
    );
    if r != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0) {
        return None;
    }
    Some(Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000))
}

// ---------------------------------------------------------------------------------------------
// What the hooks learned about an fd (cached, so a wait costs no extra system calls)
// ---------------------------------------------------------------------------------------------
//
// A hooked call that would block asks two things of its fd: did the owner make it
// non-blocking (then it wants `EAGAIN`, not a wait), and what are its `SO_RCVTIMEO` /
// `SO_SNDTIMEO` (the wait's bound)? Asking the kernel costs an `fcntl` and a `getsockopt`
// per wait, which is most of the hooks' own system calls on a busy connection (a query that
// waits for its answer: `sendto`, `recvfrom` → `EAGAIN`, wait, `recvfrom`). So the answers are
// cached per thread and fd, and the cache is dropped as a whole whenever anything that could
// change one of them happens anywhere in the process, through the hooked calls:
//
// * `close`, `dup2`, `dup3`: an fd number may now name another file;
// * `fcntl(F_SETFL)` (and `fcntl64`), `ioctl(FIONBIO)`: `O_NONBLOCK` changes for every fd
//   sharing the open file description, whatever its number;
// * `setsockopt` at `SOL_SOCKET` level: the timeouts.
//
// Each of these bumps one process-wide epoch *after* the change; a cached answer carries the
// epoch read *before* it was learned, and is used only while the epoch is unchanged. (The
// hooks' own temporary `O_NONBLOCK` windows use raw system calls, restore the flags, and are
// never cached: the flags are learned under the window lock.) Not covered, as for the
// reactor's state: fds closed or changed behind the hooks' back (raw system calls,
// `close_range`, glibc-internal calls, another process sharing the description).

/// Bumped after every hooked call that may change what [`FdFacts`] holds for some fd.
static FD_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Records that some fd's flags, timeouts or identity may have changed (see above).
fn fd_changed() {
    FD_EPOCH.fetch_add(1, Ordering::SeqCst);
}

/// What the hooks learned about one fd, valid while [`FD_EPOCH`] equals `epoch`.
#[derive(Clone, Copy, Default)]
struct FdFacts {
    /// The epoch read before these facts were learned (0: nothing known).
    epoch: u64,
    /// The owner's `O_NONBLOCK`.
    nonblocking: Option<bool>,
    /// `SO_RCVTIMEO` (`Some(None)`: known to be unset).
    rcv_timeout: Option<Option<Duration>>,
    /// `SO_SNDTIMEO`.
    snd_timeout: Option<Option<Duration>>,
}

/// Fds at or above this are not cached (the table is indexed by fd number).
const FD_FACTS_MAX: usize = 1 << 20;

thread_local! {
    /// This thread's [`FdFacts`], indexed by fd.
    static FD_FACTS: std::cell::RefCell<Vec<FdFacts>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One fact about `fd`: `get` it from the cache if it is there and current, otherwise
/// `learn` it from the kernel and `set` it in the cache.
fn fd_fact<T: Copy>(
    fd: RawFd,
    get: impl Fn(&FdFacts) -> Option<T>,
    set: impl Fn(&mut FdFacts, T),
    learn: impl FnOnce() -> T,
) -> T {
    let epoch = FD_EPOCH.load(Ordering::SeqCst);
    let Ok(i) = usize::try_from(fd) else {
        return learn();
    };
    if i >= FD_FACTS_MAX {
        return learn();
    }
    let cached = FD_FACTS
        .try_with(|c| {
            c.try_borrow()
                .ok()
                .and_then(|c| c.get(i).filter(|f| f.epoch == epoch).and_then(&get))
        })
        .ok()
        .flatten();
    if let Some(v) = cached {
        return v;
    }
    let v = learn();
    let _ = FD_FACTS.try_with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return;
        };
        if c.len() <= i {
            c.resize((i + 1).next_power_of_two().max(64), FdFacts::default());
        }
        let f = &mut c[i];
        if f.epoch != epoch {
            *f = FdFacts {
                epoch,
                ..FdFacts::default()
            };
        }
        set(f, v);
    });
    v
}

// ---------------------------------------------------------------------------------------------
// The decision: cooperate or pass through
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Depth of [`original`] calls on this thread: while non-zero the hooks pass through.
    static ORIGINAL: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the calling code runs in a greenlet (not the root, not a hub callback) and not
/// inside [`original`]: where the hooks cooperate.
#[inline]
fn in_greenlet() -> bool {
    crate::hub::in_greenlet() && ORIGINAL.try_with(|o| o.get() == 0).unwrap_or(true)
}

/// Runs `f` with the original, unpatched behaviour of every hooked call made on this thread
/// (gevent's `monkey.get_original`): a `std::thread::sleep` or a socket call inside `f`
/// blocks the OS thread, as it would without evergreen, even in a greenlet. Nests.
///
/// ```
/// evergreen::monkey::patch_all();
/// let g = evergreen::spawn(|| {
///     // Really blocks the thread for 1 ms, as gevent's get_original('time', 'sleep') would.
///     evergreen::monkey::original(|| std::thread::sleep(std::time::Duration::from_millis(1)));
/// });
/// g.join();
/// ```
pub fn original<R>(f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            let _ = ORIGINAL.try_with(|o| o.set(o.get() - 1));
        }
    }
    ORIGINAL.with(|o| o.set(o.get() + 1));
    let _depth = Depth;
    f()
}

/// Whether the calling code is inside [`original`].
pub fn in_original() -> bool {
    ORIGINAL.try_with(|o| o.get() > 0).unwrap_or(false)
}

/// What a cooperative call knows of its socket.
#[derive(Clone, Copy)]
struct Sock {
    /// `SOCK_STREAM`: blocking writes and `MSG_WAITALL` reads transfer everything.
    stream: bool,
    /// TCP: a short read means an empty receive queue (the drained-queue rule).
    tcp: bool,
    /// A read would find nothing: see [`Reactor::read_known_drained`](reactor::Reactor).
    read_drained: bool,
}

/// A read of up to `len` bytes from a stream socket that takes what it reads (not a peek),
/// for [`coop`]'s drained-queue rule.
#[derive(Clone, Copy)]
struct StreamRead {
    len: usize,
    /// The socket's receive queue is known to be empty: wait before trying.
    drained: bool,
}

impl Sock {
    /// The [`StreamRead`] of a call in `dir` with `flags` moving up to `len` bytes, if it is one.
    #[inline]
    fn stream_read(self, dir: Dir, flags: c_int, len: usize) -> Option<StreamRead> {
        (self.tcp && dir == Dir::Read && flags & libc::MSG_PEEK == 0).then_some(StreamRead {
            len,
            drained: self.read_drained,
        })
    }
}

/// Whether a socket call on `fd` must be made cooperative here.
#[inline]
fn cooperative_flags(fd: RawFd, flags: c_int) -> Option<Sock> {
    // A caller asking for MSG_DONTWAIT wants EAGAIN, not a wait (the classic "is this pooled
    // connection still alive?" peek).
    if flags & libc::MSG_DONTWAIT != 0 {
        return None;
    }
    cooperative_socket(fd)
}

/// The standard streams are never made cooperative: std guards stdin, stdout and stderr with
/// a lock that is re-entrant *per thread*, so a greenlet parked in a write to stdout (on a
/// socket: systemd's journal, socket activation) would hold it while another greenlet of the
/// same thread re-entered it and panicked ("already borrowed"). Writing to them blocks the
/// thread, as it does under gevent (which does not patch `sys.stdout` either).
const STD_STREAMS: RawFd = 2;

#[inline]
fn cooperative_socket(fd: RawFd) -> Option<Sock> {
    if !SOCKET.load(Ordering::Relaxed) || fd <= STD_STREAMS || !in_greenlet() {
        return None;
    }
    let hub = hub();
    let Ok(mut r) = hub.reactor.try_borrow_mut() else {
        return None;
    };
    match r.kind(fd) {
        FdKind::Socket => Some(Sock {
            stream: false,
            tcp: false,
            read_drained: false,
        }),
        FdKind::StreamSocket => Some(Sock {
            stream: true,
            tcp: false,
            read_drained: false,
        }),
        FdKind::TcpSocket => Some(Sock {
            stream: true,
            tcp: true,
            read_drained: r.read_known_drained(fd),
        }),
        FdKind::Owned | FdKind::Other => None,
        FdKind::Unknown => {
            // SAFETY: a zeroed stat buffer filled by fstat(2).
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if sys!(libc::SYS_fstat, fd, &mut st as *mut libc::stat) != 0 {
                return None;
            }
            let kind = if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                FdKind::Other
            } else if socket_int_opt(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM) {
                // TCP only: SCTP's one-to-one sockets are `SOCK_STREAM` too but return one
                // message per read, a short read with more queued.
                match (
                    socket_int_opt(fd, libc::SO_DOMAIN),
                    socket_int_opt(fd, libc::SO_PROTOCOL),
                ) {
                    (Some(libc::AF_INET | libc::AF_INET6), Some(libc::IPPROTO_TCP)) => {
                        FdKind::TcpSocket
                    }
                    _ => FdKind::StreamSocket,
                }
            } else {
                FdKind::Socket
            };
            r.state(fd).kind = kind;
            // (Examined again after its first registration, see `Reactor::register`: it may
            // be known drained already.)
            match kind {
                FdKind::Socket | FdKind::StreamSocket | FdKind::TcpSocket => Some(Sock {
                    stream: kind != FdKind::Socket,
                    tcp: kind == FdKind::TcpSocket,
                    read_drained: kind == FdKind::TcpSocket && r.read_known_drained(fd),
                }),
                _ => None,
            }
        }
    }
}

/// The integer socket option `name` at `SOL_SOCKET` level (`SO_TYPE`, `SO_DOMAIN`,
/// `SO_PROTOCOL`), by a raw `getsockopt` (not through the hooks).
fn socket_int_opt(fd: RawFd, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    let r = sys!(
        libc::SYS_getsockopt,
        fd,
        libc::SOL_SOCKET,
        name,
        &mut v as *mut c_int,
        &mut len as *mut socklen_t
    );
    (r == 0).then_some(v)
}

/// Runs `op` (which returns -1 and sets errno on failure) cooperatively: retried after
/// waiting for `fd` whenever it fails with `EAGAIN` on a blocking socket.
///
/// `stream_read` is set for a read from a stream socket that takes what it reads (not a
/// peek). Such a read that returns fewer bytes than asked for has emptied the receive queue,
/// and the next read on the fd, unless an event said readable in between (`drained`), waits
/// first instead of making a system call that would fail with `EAGAIN` (a request/response
/// protocol saves one `recvfrom` per response; see [`reactor::mark_read_drained`]).
fn coop<R: Copy + PartialOrd + From<i8> + TryInto<i64>>(
    fd: RawFd,
    dir: Dir,
    stream_read: Option<StreamRead>,
    mut op: impl FnMut() -> R,
) -> R {
    let fail: R = R::from(-1);
    let mut deadline: Option<Option<Instant>> = None;
    if stream_read.is_some_and(|s| s.drained && s.len > 0) && !is_nonblocking(fd) {
        let d =
            *deadline.get_or_insert_with(|| sock_timeout(fd, dir).and_then(|t| hub().deadline(t)));
        if let Err(err) = reactor::wait_io_no_unwind(fd, dir, d, false) {
            set_errno(hook_errno(&err, libc::EAGAIN));
            return fail;
        }
    }
    loop {
        let r = op();
        if r != fail {
            if let Some(StreamRead { len, .. }) = stream_read {
                let n: i64 = r.try_into().unwrap_or(0);
                if n > 0 && (n as u64) < len as u64 {
                    reactor::mark_read_drained(fd);
                }
            }
            return r;
        }
        let e = errno();
        if e == libc::EINTR {
            continue;
        }
        if e != libc::EAGAIN && e != libc::EWOULDBLOCK {
            return r;
        }
        if is_nonblocking(fd) {
            // The owner made it non-blocking and expects EAGAIN.
            set_errno(e);
            return r;
        }
        let d =
            *deadline.get_or_insert_with(|| sock_timeout(fd, dir).and_then(|t| hub().deadline(t)));
        if let Err(err) = reactor::wait_io_no_unwind(fd, dir, d, true) {
            set_errno(hook_errno(&err, libc::EAGAIN));
            return fail;
        }
    }
}

/// A blocking transfer that must move all `total` bytes, as the kernel's blocking call does
/// on a stream socket (a write of any size; a read with `MSG_WAITALL`): `op(done)` transfers
/// from offset `done` without blocking and returns a count, 0 at end of stream (reads), or
/// -1 with errno. It is repeated, waiting for `fd` whenever it would block, until everything
/// is moved. As with the kernel's call, a timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`), an error or
/// an interrupt after some bytes moved returns the count moved so far.
fn coop_all(fd: RawFd, dir: Dir, total: usize, mut op: impl FnMut(usize) -> ssize_t) -> ssize_t {
    let mut done = 0usize;
    let mut deadline: Option<Option<Instant>> = None;
    loop {
        let r = op(done);
        if r > 0 {
            done += r as usize;
            if done >= total {
                return done as ssize_t;
            }
            continue;
        }
        if r == 0 {
            return done as ssize_t;
        }
        let e = errno();
        if e == libc::EINTR {
            continue;
        }
        let partial = |e: c_int| {
            if done > 0 {
                done as ssize_t
            } else {
                set_errno(e);
                -1
            }
        };
        if e != libc::EAGAIN && e != libc::EWOULDBLOCK {
            return partial(e);
        }
        if is_nonblocking(fd) {
            return partial(e);
        }
        let d =
            *deadline.get_or_insert_with(|| sock_timeout(fd, dir).and_then(|t| hub().deadline(t)));
        if let Err(err) = reactor::wait_io_no_unwind(fd, dir, d, true) {
            return partial(hook_errno(&err, libc::EAGAIN));
        }
    }
}

/// The errno for a failed wait: the interrupt's code (`ECANCELED`/`ETIMEDOUT`), `on_timeout`
/// when the socket's own timeout passed, `EBADF` when the fd was closed, `EALREADY` when
/// another greenlet already waits on the fd in the same direction (evergreen's
/// `ConcurrentObjectUse`; reported once per fd through `log::warn!`).
fn hook_errno(err: &io::Error, on_timeout: c_int) -> c_int {
    match err.raw_os_error() {
        Some(code) => code,
        None if err.kind() == io::ErrorKind::TimedOut => on_timeout,
        None if matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<crate::Error>()),
            Some(crate::Error::ConcurrentObjectUse(_))
        ) =>
        {
            log::warn!("evergreen: a hooked call fails with EALREADY: {err}");
            libc::EALREADY
        }
        None => libc::EBADF,
    }
}

/// Sleeps without unwinding (for the hooks): a pending kill or `Timeout` cuts the sleep short
/// the first time and stays pending; a later sleep with the same interrupt still pending
/// sleeps its whole time (code that ignores the interrupt stays cooperative instead of
/// spinning; see `Hub::hook_saw_interrupt`). Returns `false` if it was cut short.
fn sleep_no_unwind(d: Duration) -> bool {
    let hub = hub();
    let deadline = hub.deadline(d);
    loop {
        match hub.park(deadline, "sleep (patched)") {
            crate::hub::Wake::Deadline => return true,
            crate::hub::Wake::Interrupted if !hub.current().is_unwinding() => {
                if hub.current().hook_reports.get() == 0 {
                    hub.hook_saw_interrupt();
                    return false;
                }
                let left = deadline.map(|dl| dl.saturating_duration_since(hub.now()));
                hub.park_uninterruptible(left.unwrap_or(Duration::MAX), "sleep (patched)");
                return true;
            }
            _ => {}
        }
        if deadline.is_some_and(|dl| hub.now() >= dl) {
            return true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The hooks
// ---------------------------------------------------------------------------------------------

/// The body shared by `recv`, `recvfrom`, `send`, `sendto`, `write`: on a cooperative stream
/// socket, a write (or a read with `MSG_WAITALL`) moves everything, as the kernel's blocking
/// call would; `call(offset, len, flags)` transfers `len` bytes from `offset` of the caller's
/// buffer.
#[inline]
fn buffer_call(
    fd: RawFd,
    flags: c_int,
    dir: Dir,
    len: size_t,
    call: impl Fn(usize, size_t, c_int) -> ssize_t,
) -> ssize_t {
    let Some(sock) = cooperative_flags(fd, flags) else {
        return call(0, len, flags);
    };
    let all = sock.stream && (dir == Dir::Write || flags & libc::MSG_WAITALL != 0);
    if !all {
        let stream_read = sock.stream_read(dir, flags, len);
        return coop(fd, dir, stream_read, || {
            call(0, len, flags | libc::MSG_DONTWAIT)
        });
    }
    let f = (flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT;
    coop_all(fd, dir, len, |done| call(done, len - done, f))
}

/// The body shared by `recvmsg`, `sendmsg`, `readv`, `writev`: as [`buffer_call`], over an
/// I/O vector; `call(msg, flags)` makes the call with `msg` (the caller's, or a copy whose
/// vector skips what was already transferred).
#[inline]
fn msg_call(
    fd: RawFd,
    flags: c_int,
    dir: Dir,
    msg: *const libc::msghdr,
    call: impl Fn(*const libc::msghdr, c_int) -> ssize_t,
) -> ssize_t {
    let Some(sock) = cooperative_flags(fd, flags) else {
        return call(msg, flags);
    };
    let all = sock.stream && (dir == Dir::Write || flags & libc::MSG_WAITALL != 0);
    if !all || msg.is_null() {
        let stream_read = sock.stream_read(dir, flags, msg_len(msg));
        return coop(fd, dir, stream_read, || {
            call(msg, flags | libc::MSG_DONTWAIT)
        });
    }
    // SAFETY: non-null, and valid per the caller's contract.
    let m = unsafe { *msg };
    // `msg_iovlen` is a `size_t` on glibc and an `int` on musl.
    #[allow(clippy::unnecessary_cast)]
    let iov: &[libc::iovec] = if m.msg_iov.is_null() || m.msg_iovlen == 0 {
        &[]
    } else {
        // SAFETY: the caller's message holds `msg_iovlen` iovecs at `msg_iov`.
        unsafe { std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen as usize) }
    };
    let total = iov.iter().map(|v| v.iov_len).sum();
    let f = (flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT;
    coop_all(fd, dir, total, |done| {
        if done == 0 {
            return call(msg, f);
        }
        // Rare (only after a partial transfer): a copy of the vector that skips `done` bytes;
        // ancillary data went with the first part.
        let rest = skip_iov(iov, done);
        let mut m2 = m;
        m2.msg_iov = rest.as_ptr() as *mut libc::iovec;
        m2.msg_iovlen = rest.len() as _;
        m2.msg_control = std::ptr::null_mut();
        m2.msg_controllen = 0;
        call(&m2, f)
    })
}

/// The total length of the buffers of `msg` (0 for a null header).
fn msg_len(msg: *const libc::msghdr) -> usize {
    if msg.is_null() {
        return 0;
    }
    // SAFETY: non-null, and valid per the hook caller's contract.
    let m = unsafe { &*msg };
    if m.msg_iov.is_null() || m.msg_iovlen == 0 {
        return 0;
    }
    // `msg_iovlen` is a `size_t` on glibc and an `int` on musl.
    #[allow(clippy::unnecessary_cast)]
    // SAFETY: the caller's message holds `msg_iovlen` iovecs at `msg_iov`.
    let iov = unsafe { std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen as usize) };
    iov.iter().map(|v| v.iov_len).sum()
}

/// The iovecs of `iov` after the first `skip` bytes.
fn skip_iov(iov: &[libc::iovec], mut skip: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(iov.len());
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // SAFETY: `skip < iov_len`, so the result stays inside the caller's buffer.
            iov_base: unsafe { (v.iov_base as *mut u8).add(skip) } as *mut c_void,
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    out
}

/// Hook for `recv(2)`. See the [module docs](self).
///
/// # Safety
///
/// The same contract as libc's `recv`: `buf` must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C-unwind" fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    buffer_call(fd, flags, Dir::Read, len, |off, n, f| {
        // SAFETY: `off <= len`: inside the caller's buffer.
        let p = unsafe { (buf as *mut u8).add(off) };
        sys!(libc::SYS_recvfrom, fd, p, n, f, 0usize, 0usize) as ssize_t
    })
}

/// Hook for `recvfrom(2)`.
///
/// # Safety
///
/// The same contract as libc's `recvfrom`.
#[no_mangle]
pub unsafe extern "C-unwind" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    buffer_call(fd, flags, Dir::Read, len, |off, n, f| {
        // SAFETY: `off <= len`: inside the caller's buffer.
        let p = unsafe { (buf as *mut u8).add(off) };
        sys!(libc::SYS_recvfrom, fd, p, n, f, addr, addrlen) as ssize_t
    })
}

/// Hook for `send(2)`.
///
/// # Safety
///
/// The same contract as libc's `send`.
#[no_mangle]
pub unsafe extern "C-unwind" fn send(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    buffer_call(fd, flags, Dir::Write, len, |off, n, f| {
        // SAFETY: `off <= len`: inside the caller's buffer.
        let p = unsafe { (buf as *const u8).add(off) };
        sys!(libc::SYS_sendto, fd, p, n, f, 0usize, 0usize) as ssize_t
    })
}

/// Hook for `sendto(2)`.
///
/// # Safety
///
/// The same contract as libc's `sendto`.
#[no_mangle]
pub unsafe extern "C-unwind" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> ssize_t {
    buffer_call(fd, flags, Dir::Write, len, |off, n, f| {
        // SAFETY: `off <= len`: inside the caller's buffer.
        let p = unsafe { (buf as *const u8).add(off) };
        sys!(libc::SYS_sendto, fd, p, n, f, addr, addrlen) as ssize_t
    })
}

/// Hook for `recvmsg(2)`.
///
/// # Safety
///
/// The same contract as libc's `recvmsg`.
#[no_mangle]
pub unsafe extern "C-unwind" fn recvmsg(
    fd: c_int,
    msg: *mut libc::msghdr,
    flags: c_int,
) -> ssize_t {
    msg_call(fd, flags, Dir::Read, msg, |m, f| {
        sys!(libc::SYS_recvmsg, fd, m, f) as ssize_t
    })
}

/// Hook for `sendmsg(2)`.
///
/// # Safety
///
/// The same contract as libc's `sendmsg`.
#[no_mangle]
pub unsafe extern "C-unwind" fn sendmsg(
    fd: c_int,
    msg: *const libc::msghdr,
    flags: c_int,
) -> ssize_t {
    msg_call(fd, flags, Dir::Write, msg, |m, f| {
        sys!(libc::SYS_sendmsg, fd, m, f) as ssize_t
    })
}

/// Hook for `read(2)`: cooperative on blocking sockets (as `recv` with `MSG_DONTWAIT`), a
/// pass-through for everything else.
///
/// # Safety
///
/// The same contract as libc's `read`.
#[no_mangle]
pub unsafe extern "C-unwind" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    let Some(sock) = cooperative_socket(fd) else {
        return sys!(libc::SYS_read, fd, buf, count) as ssize_t;
    };
    coop(fd, Dir::Read, sock.stream_read(Dir::Read, 0, count), || {
        sys!(
            libc::SYS_recvfrom,
            fd,
            buf,
            count,
            libc::MSG_DONTWAIT,
            0usize,
            0usize
        ) as ssize_t
    })
}

/// Hook for `write(2)`: on a blocking stream socket in a greenlet, writes everything (as the
/// kernel's blocking `write` does), waiting cooperatively whenever the socket is full.
///
/// # Safety
///
/// The same contract as libc's `write`.
#[no_mangle]
pub unsafe extern "C-unwind" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    if cooperative_socket(fd).is_none() {
        return sys!(libc::SYS_write, fd, buf, count) as ssize_t;
    }
    // SAFETY: forwarded with the caller's contract.
    unsafe { send(fd, buf, count, 0) }
}

fn iov_msg(iov: *const libc::iovec, iovcnt: c_int) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov as *mut libc::iovec;
    m.msg_iovlen = iovcnt.max(0) as _;
    m
}

/// Hook for `readv(2)`.
///
/// # Safety
///
/// The same contract as libc's `readv`.
#[no_mangle]
pub unsafe extern "C-unwind" fn readv(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> ssize_t {
    let Some(sock) = cooperative_socket(fd) else {
        return sys!(libc::SYS_readv, fd, iov, iovcnt) as ssize_t;
    };
    let mut m = iov_msg(iov, iovcnt);
    let stream_read = sock.stream_read(Dir::Read, 0, msg_len(&m));
    coop(fd, Dir::Read, stream_read, || {
        sys!(
            libc::SYS_recvmsg,
            fd,
            &mut m as *mut libc::msghdr,
            libc::MSG_DONTWAIT
        ) as ssize_t
    })
}

/// Hook for `writev(2)`: as [`write()`], everything is written on a blocking stream socket.
///
/// # Safety
///
/// The same contract as libc's `writev`.
#[no_mangle]
pub unsafe extern "C-unwind" fn writev(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> ssize_t {
    if cooperative_socket(fd).is_none() {
        return sys!(libc::SYS_writev, fd, iov, iovcnt) as ssize_t;
    }
    let m = iov_msg(iov, iovcnt);
    // SAFETY: forwarded with the caller's contract.
    unsafe { sendmsg(fd, &m, 0) }
}

// ---------------------------------------------------------------------------------------------
// Temporary O_NONBLOCK windows (connect, accept)
// ---------------------------------------------------------------------------------------------
//
// `connect` and `accept` have no per-call "don't wait" flag, so a hooked call sets
// `O_NONBLOCK` for the duration of one attempt. The flag lives on the *open file description*,
// which `dup`, `try_clone` and threads share: another thread entering a blocking `accept` on a
// clone during that window would get `EAGAIN`, and another hub reading the flags would take
// the listener for one its owner made non-blocking. So, within this process:
//
// * every window runs under one lock (held for two `fcntl`s and one non-blocking syscall),
//   and whoever needs the *owner's* flags reads them under that lock, never mid-window;
// * windows are counted (`NB_SEQ`: odd while one is open), and a pass-through `accept` or
//   `connect` (a plain thread, the root) on a socket its owner keeps blocking that fails with
//   `EAGAIN`/`EINPROGRESS` while a window was open completes as the blocking call would
//   (it waits with `poll` and retries, or waits for the connection).
//
// A process that shares the description with *another process* (a fork) is not covered.

static NB_LOCK: AtomicBool = AtomicBool::new(false);
static NB_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct NbLock;

impl NbLock {
    fn take() -> NbLock {
        while NB_LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        NbLock
    }
}

impl Drop for NbLock {
    fn drop(&mut self) {
        NB_LOCK.store(false, Ordering::Release);
    }
}

/// Whether the owner of `fd` made it non-blocking (read outside any hook's window; cached,
/// see [`FdFacts`]).
fn is_nonblocking(fd: RawFd) -> bool {
    fd_fact(
        fd,
        |f| f.nonblocking,
        |f, v| f.nonblocking = Some(v),
        || {
            let _l = NbLock::take();
            let fl = fcntl_getfl(fd);
            fl >= 0 && fl & libc::O_NONBLOCK != 0
        },
    )
}

/// Runs `op` with `O_NONBLOCK` set on `fd` for just this call; `None` (and `op` not run) if
/// the owner made `fd` non-blocking, or its flags cannot be read.
fn in_nonblocking_window<R>(fd: RawFd, op: impl FnOnce() -> R) -> Option<R> {
    let _l = NbLock::take();
    let flags = fcntl_getfl(fd);
    if flags < 0 || flags & libc::O_NONBLOCK != 0 {
        return None;
    }
    NB_SEQ.fetch_add(1, Ordering::SeqCst);
    fcntl_setfl(fd, flags | libc::O_NONBLOCK);
    let r = op();
    let e = errno();
    fcntl_setfl(fd, flags);
    NB_SEQ.fetch_add(1, Ordering::SeqCst);
    set_errno(e);
    Some(r)
}

/// Whether a pass-through call on `fd` that started at window count `seq0` and failed as a
/// non-blocking call would may owe that to a hook's window (not to its owner's flags).
fn failed_in_a_window(fd: RawFd, seq0: u64) -> bool {
    let seq1 = NB_SEQ.load(Ordering::SeqCst);
    if seq0 == seq1 && seq0 % 2 == 0 {
        return false;
    }
    !is_nonblocking(fd)
}

/// Waits, blocking the thread, until `fd` has `events` (for pass-through calls).
fn poll_blocking(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        let r = sys!(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, -1);
        if r >= 0 || errno() != libc::EINTR {
            return;
        }
    }
}

/// `accept4` outside greenlets: the real call, made to block again if a hook's window made it
/// fail with `EAGAIN`.
fn accept4_passthrough(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    loop {
        let seq0 = NB_SEQ.load(Ordering::SeqCst);
        let r = sys!(libc::SYS_accept4, fd, addr, len, flags) as c_int;
        if r >= 0 {
            return r;
        }
        let e = errno();
        if (e != libc::EAGAIN && e != libc::EWOULDBLOCK) || !failed_in_a_window(fd, seq0) {
            set_errno(e);
            return r;
        }
        poll_blocking(fd, libc::POLLIN);
    }
}

/// `connect` outside greenlets: the real call, made to wait for the connection if a hook's
/// window made it return `EINPROGRESS`.
fn connect_passthrough(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let seq0 = NB_SEQ.load(Ordering::SeqCst);
    let r = sys!(libc::SYS_connect, fd, addr, len) as c_int;
    if r == 0 {
        return 0;
    }
    let e = errno();
    if e != libc::EINPROGRESS || !failed_in_a_window(fd, seq0) {
        set_errno(e);
        return r;
    }
    poll_blocking(fd, libc::POLLOUT);
    connect_result(fd)
}

/// The outcome of a connection in progress that became writable (`SO_ERROR`).
fn connect_result(fd: c_int) -> c_int {
    let mut so_error: c_int = 0;
    let mut l = std::mem::size_of::<c_int>() as socklen_t;
    let r = sys!(
        libc::SYS_getsockopt,
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        &mut so_error as *mut c_int,
        &mut l as *mut socklen_t
    );
    if r != 0 {
        return -1;
    }
    if so_error != 0 {
        set_errno(so_error);
        return -1;
    }
    0
}

/// Parks the current greenlet for `d` (a hook's back-off); `Err(errno)` if an interrupt is
/// pending (reported as for any hooked call; see `Hub::hook_saw_interrupt`).
fn hook_pause(d: Duration) -> Result<(), c_int> {
    let hub = hub();
    let deadline = hub.deadline(d);
    loop {
        match hub.park(deadline, "connect (listen queue full)") {
            crate::hub::Wake::Deadline => return Ok(()),
            crate::hub::Wake::Interrupted if !hub.current().is_unwinding() => {
                let code = reactor::interrupted_error()
                    .raw_os_error()
                    .unwrap_or(libc::ECANCELED);
                hub.hook_saw_interrupt();
                return Err(code);
            }
            _ => {}
        }
        if deadline.is_some_and(|dl| hub.now() >= dl) {
            return Ok(());
        }
    }
}

/// Hook for `connect(2)`: in a greenlet, a blocking connect becomes a non-blocking connect
/// and a wait for writability (bounded by `SO_SNDTIMEO`, as the kernel does). On a Unix
/// socket whose listener's queue is full (the non-blocking connect says `EAGAIN`), it retries
/// with a back-off (1 ms doubling to 50 ms) until the queue has room or `SO_SNDTIMEO` passes,
/// as the blocking call waits.
///
/// # Safety
///
/// The same contract as libc's `connect`.
#[no_mangle]
pub unsafe extern "C-unwind" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if cooperative_socket(fd).is_none() {
        return connect_passthrough(fd, addr, len);
    }
    let mut pause = Duration::from_millis(1);
    let mut deadline: Option<Option<Instant>> = None;
    loop {
        let Some(r) = in_nonblocking_window(fd, || sys!(libc::SYS_connect, fd, addr, len) as c_int)
        else {
            // The owner's non-blocking socket: it expects EINPROGRESS.
            return sys!(libc::SYS_connect, fd, addr, len) as c_int;
        };
        if r == 0 {
            return 0;
        }
        let e = errno();
        let d = *deadline
            .get_or_insert_with(|| sock_timeout(fd, Dir::Write).and_then(|t| hub().deadline(t)));
        if e == libc::EAGAIN && socket_int_opt(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX) {
            // The listen queue is full: the blocking call would wait for room.
            let now = hub().now();
            if d.is_some_and(|d| now >= d) {
                set_errno(libc::EAGAIN);
                return -1;
            }
            let step = d.map_or(pause, |d| pause.min(d - now));
            if let Err(code) = hook_pause(step) {
                set_errno(code);
                return -1;
            }
            pause = (pause * 2).min(Duration::from_millis(50));
            continue;
        }
        if e != libc::EINPROGRESS {
            set_errno(e);
            return -1;
        }
        if let Err(err) = reactor::wait_io_no_unwind(fd, Dir::Write, d, true) {
            set_errno(hook_errno(&err, libc::EINPROGRESS));
            return -1;
        }
        return connect_result(fd);
    }
}

/// Hook for `accept4(2)`.
///
/// # Safety
///
/// The same contract as libc's `accept4`.
#[no_mangle]
pub unsafe extern "C-unwind" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    if cooperative_socket(fd).is_none() {
        return accept4_passthrough(fd, addr, len, flags);
    }
    coop(fd, Dir::Read, None, || {
        // A blocking listener: try without blocking, in a window (see above). `coop` reads
        // the owner's flags, so it waits on EAGAIN.
        in_nonblocking_window(fd, || {
            sys!(libc::SYS_accept4, fd, addr, len, flags) as c_int
        })
        .unwrap_or_else(|| sys!(libc::SYS_accept4, fd, addr, len, flags) as c_int)
    })
}

/// Hook for `accept(2)`.
///
/// # Safety
///
/// The same contract as libc's `accept`.
#[no_mangle]
pub unsafe extern "C-unwind" fn accept(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarded with the caller's contract.
    unsafe { accept4(fd, addr, len, 0) }
}

/// Hook for `poll(2)`: in a greenlet (after [`patch_socket`]), waits cooperatively.
///
/// The greenlet waits on the reactor for every fd and direction asked for at once, and
/// re-polls when any of them becomes ready. If one of the fds cannot be waited on that way
/// (another greenlet waits on it in the same direction, or epoll refuses it), it polls
/// without blocking and sleeps cooperatively in between (50 µs doubling up to 1 ms). A pending
/// kill or `Timeout` makes it fail with `ECANCELED`/`ETIMEDOUT`.
///
/// # Safety
///
/// The same contract as libc's `poll`: `fds` must be valid for `nfds` entries.
#[no_mangle]
pub unsafe extern "C-unwind" fn poll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
) -> c_int {
    let raw = |t: c_int| sys!(libc::SYS_poll, fds, nfds, t) as c_int;
    if !SOCKET.load(Ordering::Relaxed) || !in_greenlet() || timeout == 0 {
        return raw(timeout);
    }
    let r = raw(0);
    if r != 0 {
        return r;
    }
    let hub = hub();
    let deadline = if timeout > 0 {
        hub.deadline(Duration::from_millis(timeout as u64))
    } else {
        None
    };
    let pfds: &[libc::pollfd] = if fds.is_null() || nfds == 0 {
        &[]
    } else {
        // SAFETY: per the caller's contract, `fds` holds `nfds` entries.
        unsafe { std::slice::from_raw_parts(fds, nfds as usize) }
    };
    let mut waits = Vec::with_capacity(pfds.len());
    for p in pfds.iter().filter(|p| p.fd >= 0) {
        if p.events & (libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP) != 0 {
            waits.push((p.fd, Dir::Read));
        }
        if p.events & libc::POLLOUT != 0 {
            waits.push((p.fd, Dir::Write));
        }
    }
    loop {
        match reactor::wait_many_no_unwind(&waits, deadline) {
            Ok(()) => {
                let r = raw(0);
                if r != 0 {
                    return r;
                }
                // Readiness was stale: the next wait drains it and waits for the next edge.
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none() => {
                return raw(0);
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ECANCELED)
                    || e.raw_os_error() == Some(libc::ETIMEDOUT) =>
            {
                set_errno(e.raw_os_error().unwrap_or(libc::ECANCELED));
                return -1;
            }
            // Not pollable by epoll (a regular file), or waited on by another greenlet.
            Err(_) => break,
        }
    }
    let mut pause = Duration::from_micros(50);
    loop {
        let r = raw(0);
        if r != 0 {
            return r;
        }
        let now = hub.now();
        if let Some(d) = deadline {
            if now >= d {
                return 0;
            }
            pause = pause.min(d - now);
        }
        if !sleep_no_unwind(pause) {
            set_errno(
                reactor::interrupted_error()
                    .raw_os_error()
                    .unwrap_or(libc::ECANCELED),
            );
            return -1;
        }
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Hook for `close(2)`: the reactor forgets the fd first (waking its waiters with `EBADF`).
///
/// # Safety
///
/// The same contract as libc's `close`.
#[no_mangle]
pub unsafe extern "C-unwind" fn close(fd: c_int) -> c_int {
    forget_fd(fd);
    let r = sys!(libc::SYS_close, fd) as c_int;
    fd_changed();
    r
}

fn forget_fd(fd: c_int) {
    if crate::hub::exists() {
        let hub = hub();
        let known = hub
            .reactor
            .try_borrow()
            .map(|r| r.kind(fd) != FdKind::Unknown || r.is_registered(fd))
            .unwrap_or(false);
        if known {
            reactor::close_fd(fd);
        }
    }
}

/// Hook for `dup2(2)`: the target fd is closed by the call, so the reactor forgets it first.
///
/// # Safety
///
/// The same contract as libc's `dup2`.
#[no_mangle]
pub unsafe extern "C-unwind" fn dup2(old: c_int, new: c_int) -> c_int {
    if old != new {
        forget_fd(new);
    }
    if old == new {
        // dup2 with equal fds only checks `old` (dup3 would fail with EINVAL).
        return if sys!(libc::SYS_fcntl, old, libc::F_GETFD) < 0 {
            -1
        } else {
            new
        };
    }
    let r = sys!(libc::SYS_dup3, old, new, 0) as c_int;
    fd_changed();
    r
}

/// Hook for `dup3(2)`.
///
/// # Safety
///
/// The same contract as libc's `dup3`.
#[no_mangle]
pub unsafe extern "C-unwind" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old != new {
        forget_fd(new);
    }
    let r = sys!(libc::SYS_dup3, old, new, flags) as c_int;
    fd_changed();
    r
}

/// The next definition of `name` after this executable's (libc's), or 0.
fn next_symbol(name: &'static [u8], slot: &AtomicUsize) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only reads.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const libc::c_char) } as usize;
    slot.store(p, Ordering::Relaxed);
    p
}

type VariadicFcntl = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

/// `fcntl` or `fcntl64`: libc's (found with `dlsym(RTLD_NEXT)`, so every command keeps
/// libc's exact behaviour), or the raw system call if there is none; then, after a successful
/// `F_SETFL`, the cached flags are dropped.
fn fcntl_hooked(
    name: &'static [u8],
    slot: &AtomicUsize,
    fd: c_int,
    cmd: c_int,
    arg: libc::c_ulong,
) -> c_int {
    let real = next_symbol(name, slot);
    let r = if real == 0 {
        sys!(libc::SYS_fcntl, fd, cmd, arg) as c_int
    } else {
        // SAFETY: `real` is libc's `fcntl`/`fcntl64`, called with the caller's arguments:
        // the third is passed on as the word the caller passed (an int, a pointer, or nothing
        // meaningful for commands that take none, which libc then ignores).
        unsafe { std::mem::transmute::<usize, VariadicFcntl>(real)(fd, cmd, arg) }
    };
    if cmd == libc::F_SETFL && r != -1 {
        let e = errno();
        fd_changed();
        set_errno(e);
    }
    r
}

static REAL_FCNTL: AtomicUsize = AtomicUsize::new(0);
static REAL_FCNTL64: AtomicUsize = AtomicUsize::new(0);
static REAL_IOCTL: AtomicUsize = AtomicUsize::new(0);

/// Hook for `fcntl(2)`: libc's, then (after `F_SETFL`) the hooks forget what they cached
/// about fds' flags.
///
/// C declares `fcntl` variadic (`int fcntl(int, int, ...)`); defining variadic functions is
/// not stable Rust, so this takes the optional third argument as one machine word. On the
/// Linux ABIs evergreen supports (x86-64 System V, AArch64) a variadic integer or pointer
/// argument is passed exactly like a named one, so the word is what the caller passed.
///
/// # Safety
///
/// The same contract as libc's `fcntl`.
#[no_mangle]
pub unsafe extern "C-unwind" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    fcntl_hooked(b"fcntl\0", &REAL_FCNTL, fd, cmd, arg)
}

/// Hook for `fcntl64` (what C code built with 64-bit file offsets calls): as [`fcntl()`].
///
/// # Safety
///
/// The same contract as libc's `fcntl64`.
#[no_mangle]
pub unsafe extern "C-unwind" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    fcntl_hooked(b"fcntl64\0", &REAL_FCNTL64, fd, cmd, arg)
}

type VariadicIoctl = unsafe extern "C" fn(c_int, libc::c_ulong, ...) -> c_int;

/// Hook for `ioctl(2)`: libc's, then (after `FIONBIO`, which is how std's `set_nonblocking`
/// changes `O_NONBLOCK`) the hooks forget what they cached about fds' flags. Variadic in C;
/// see [`fcntl()`] for how the third argument is passed on.
///
/// # Safety
///
/// The same contract as libc's `ioctl`.
#[no_mangle]
pub unsafe extern "C-unwind" fn ioctl(
    fd: c_int,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> c_int {
    let real = next_symbol(b"ioctl\0", &REAL_IOCTL);
    let r = if real == 0 {
        sys!(libc::SYS_ioctl, fd, request, arg) as c_int
    } else {
        // SAFETY: `real` is libc's `ioctl`, called with the caller's arguments (see `fcntl`).
        unsafe { std::mem::transmute::<usize, VariadicIoctl>(real)(fd, request, arg) }
    };
    if request == libc::FIONBIO as libc::c_ulong && r != -1 {
        let e = errno();
        fd_changed();
        set_errno(e);
    }
    r
}

/// Hook for `setsockopt(2)`: the real call; at `SOL_SOCKET` level (the timeouts), the hooks
/// then forget what they cached about fds' timeouts; a `TCP_ULP` (kernel TLS) turns the
/// drained-queue rule off for the fd (its reads stop before a record of another type).
///
/// # Safety
///
/// The same contract as libc's `setsockopt`.
#[no_mangle]
pub unsafe extern "C-unwind" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    let r = sys!(libc::SYS_setsockopt, fd, level, name, value, len) as c_int;
    if r == 0 && level == libc::IPPROTO_TCP && name == libc::TCP_ULP && crate::hub::exists() {
        let e = errno();
        reactor::short_reads_ambiguous(fd);
        set_errno(e);
    }
    if level == libc::SOL_SOCKET {
        let e = errno();
        fd_changed();
        set_errno(e);
    }
    r
}

/// Hook for `nanosleep(2)`: [`sleep`](crate::sleep) in a greenlet after [`patch_time`].
///
/// # Safety
///
/// The same contract as libc's `nanosleep`.
#[no_mangle]
pub unsafe extern "C-unwind" fn nanosleep(
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> c_int {
    if !TIME.load(Ordering::Relaxed) || !in_greenlet() || req.is_null() {
        return sys!(libc::SYS_nanosleep, req, rem) as c_int;
    }
    // SAFETY: non-null, and valid per the caller's contract.
    let t = unsafe { *req };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        set_errno(libc::EINVAL);
        return -1;
    }
    // A kill or Timeout cuts the sleep short (and stays pending); std's `thread::sleep`
    // treats anything but 0 or EINTR-with-remainder as a bug, so report a full sleep.
    sleep_no_unwind(Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
    0
}

/// Hook for `clock_nanosleep(2)` (relative and `TIMER_ABSTIME`).
///
/// # Safety
///
/// The same contract as libc's `clock_nanosleep` (which returns the error number instead of
/// setting errno).
#[no_mangle]
pub unsafe extern "C-unwind" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> c_int {
    if !TIME.load(Ordering::Relaxed) || !in_greenlet() || req.is_null() {
        let r = sys!(libc::SYS_clock_nanosleep, clock, flags, req, rem);
        return if r == 0 { 0 } else { errno() };
    }
    // SAFETY: non-null, and valid per the caller's contract.
    let t = unsafe { *req };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return libc::EINVAL;
    }
    let mut d = Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
    if flags & libc::TIMER_ABSTIME != 0 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if sys!(
            libc::SYS_clock_gettime,
            clock,
            &mut now as *mut libc::timespec
        ) != 0
        {
            return errno();
        }
        let now = Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec as u32);
        d = d.saturating_sub(now);
    }
    sleep_no_unwind(d);
    0
}
