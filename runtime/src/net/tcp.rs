//! Cooperative TCP: [`TcpStream`] and [`TcpListener`] (gevent's `socket.socket` for
//! `SOCK_STREAM`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use super::{each_addr, IoState, ToAddrs};
use crate::hub::hub;
use crate::reactor::{self, Dir};

/// A TCP connection whose blocking operations park the greenlet instead of the thread.
///
/// It implements `Read` and `Write` (also through `&TcpStream`, so one greenlet can read while
/// another writes). Timeouts set with [`set_read_timeout`](Self::set_read_timeout) and
/// [`set_write_timeout`](Self::set_write_timeout) make an operation fail with
/// `io::ErrorKind::TimedOut` while other greenlets keep running.
///
/// ```no_run
/// use std::io::{Read, Write};
/// let mut s = evergreen::net::TcpStream::connect("127.0.0.1:8080")?;
/// s.write_all(b"ping")?;
/// let mut buf = [0; 4];
/// s.read_exact(&mut buf)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpStream {
    io: IoState,
    inner: mio::net::TcpStream,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.io.fd)
            .field("local", &self.inner.local_addr().ok())
            .field("peer", &self.inner.peer_addr().ok())
            .finish()
    }
}

impl TcpStream {
    pub(crate) fn from_mio(inner: mio::net::TcpStream) -> io::Result<TcpStream> {
        let io = IoState::new(inner.as_raw_fd())?;
        Ok(TcpStream { io, inner })
    }

    /// Connects to the first address that accepts (gevent's `create_connection`). Host names
    /// are resolved cooperatively.
    pub fn connect(addr: impl ToAddrs) -> io::Result<TcpStream> {
        let addrs = addr.to_addrs()?;
        each_addr(addrs, |a| TcpStream::connect_one(a, None))
    }

    /// Like [`connect`](Self::connect), giving up on each address after `timeout`
    /// (`io::ErrorKind::TimedOut`).
    pub fn connect_timeout(addr: impl ToAddrs, timeout: Duration) -> io::Result<TcpStream> {
        let addrs = addr.to_addrs()?;
        each_addr(addrs, |a| {
            TcpStream::connect_one(a, hub().deadline(timeout)).map_err(|e| {
                if e.kind() == io::ErrorKind::TimedOut {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {a} timed out after {timeout:?}"),
                    )
                } else {
                    e
                }
            })
        })
    }

    fn connect_one(addr: SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
        // A non-blocking socket and connect(2); EINPROGRESS is the normal answer.
        let s = TcpStream::from_mio(mio::net::TcpStream::connect(addr)?)?;
        loop {
            reactor::wait_io(s.io.fd, Dir::Write, deadline, true)?;
            if let Some(e) = s.inner.take_error()? {
                return Err(io::Error::new(
                    e.kind(),
                    format!("connecting to {addr}: {e}"),
                ));
            }
            match s.inner.peer_addr() {
                Ok(_) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets the timeout of each read (`None`: wait forever). A zero duration is refused.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Read, t)
    }

    /// Sets the timeout of each write (`None`: wait forever). A zero duration is refused.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Write, t)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.io.timeout(Dir::Read)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.io.timeout(Dir::Write)
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Shuts down the read half, the write half (the peer reads EOF: a half-close), or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.set_nodelay(on)
    }

    /// Reads `TCP_NODELAY`.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.nodelay()
    }

    /// Takes the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Reads into `buf` without removing the data from the socket.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.io(Dir::Read, || self.inner.peek(buf))
    }

    /// Adopts a connected std stream (made non-blocking and registered with this thread's
    /// hub).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        TcpStream::from_mio(mio::net::TcpStream::from_std(s))
    }

    /// Turns it back into a std stream (still non-blocking; call `set_nonblocking(false)` for
    /// blocking use), forgetting it in the hub's reactor.
    pub fn into_std(self) -> std::net::TcpStream {
        // SAFETY: the fd is ours and open; ownership moves to the std stream.
        unsafe { std::net::TcpStream::from_raw_fd(self.into_raw_fd()) }
    }

    /// Enables TCP keep-alive probes after `idle` without traffic (`SO_KEEPALIVE` and
    /// `TCP_KEEPIDLE`, whole seconds, at least 1), or disables them with `None`.
    pub fn set_keepalive(&self, idle: Option<Duration>) -> io::Result<()> {
        let fd = self.io.fd;
        let on = libc::c_int::from(idle.is_some());
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, on)?;
        if let Some(d) = idle {
            let secs = d.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
            setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs)?;
        }
        Ok(())
    }

    /// The keep-alive idle time, or `None` if keep-alive is off.
    pub fn keepalive(&self) -> io::Result<Option<Duration>> {
        let fd = self.io.fd;
        if getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE)? == 0 {
            return Ok(None);
        }
        let secs = getsockopt::<libc::c_int>(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)?;
        Ok(Some(Duration::from_secs(secs.max(0) as u64)))
    }

    /// Sets `SO_LINGER`: with `Some(t)`, closing waits (in the kernel) up to `t` for unsent
    /// data, and `Some(ZERO)` resets the connection on close; `None` is the default
    /// (close returns at once, data is sent in the background).
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        let l = libc::linger {
            l_onoff: libc::c_int::from(linger.is_some()),
            l_linger: linger.map_or(0, |d| d.as_secs().min(i32::MAX as u64) as libc::c_int),
        };
        setsockopt(self.io.fd, libc::SOL_SOCKET, libc::SO_LINGER, l)
    }

    /// The `SO_LINGER` setting.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        let l = getsockopt::<libc::linger>(self.io.fd, libc::SOL_SOCKET, libc::SO_LINGER)?;
        Ok((l.l_onoff != 0).then(|| Duration::from_secs(l.l_linger.max(0) as u64)))
    }

    /// A new handle to the same socket: the fd is duplicated, and the clone has its own
    /// timeouts and its own reader and writer slots (so a reader on the clone and a reader on
    /// the original are not detected as concurrent use). Closing one handle with
    /// [`close`](Self::close) shuts the connection down for both.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        // SAFETY: F_DUPFD_CLOEXEC on a valid, open fd returns a new fd or -1.
        let fd = unsafe { libc::fcntl(self.io.fd, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh fd that nothing else owns; the duplicate shares the original's
        // O_NONBLOCK flag (it is a property of the open file description).
        let inner = unsafe { mio::net::TcpStream::from_raw_fd(fd) };
        TcpStream::from_mio(inner)
    }

    /// Shuts the connection down and wakes any greenlet blocked on it with `EBADF`
    /// (gevent's `close()` from another greenlet). Later operations fail with
    /// `NotConnected`. The fd itself is released when the stream is dropped.
    pub fn close(&self) {
        if !self.io.is_closed() {
            let _ = self.inner.shutdown(Shutdown::Both);
            self.io.close();
        }
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inner = &self.inner;
        let len = buf.len();
        self.io.read_stream(len, || inner.read(buf))
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        let mut inner = &self.inner;
        // `readv` fills at most `UIO_MAXIOV` buffers (std passes no more): what a full read
        // can return is what those hold, or a read of more buffers would look short.
        let len = bufs
            .iter()
            .take(libc::UIO_MAXIOV as usize)
            .map(|b| b.len())
            .sum();
        self.io.read_stream(len, || inner.read_vectored(bufs))
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = &self.inner;
        self.io.io(Dir::Write, || inner.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut inner = &self.inner;
        self.io.io(Dir::Write, || inner.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.fd
    }
}

/// A listening TCP socket whose `accept` parks the greenlet.
pub struct TcpListener {
    io: IoState,
    inner: mio::net::TcpListener,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.io.fd)
            .field("local", &self.inner.local_addr().ok())
            .finish()
    }
}

impl TcpListener {
    /// Binds (with `SO_REUSEADDR`) and listens on the first address that works, with a
    /// backlog of [`Config::listen_backlog`](crate::config::Config::listen_backlog) (1024 by
    /// default, `EVERGREEN_LISTEN_BACKLOG`).
    pub fn bind(addr: impl ToAddrs) -> io::Result<TcpListener> {
        TcpListener::bind_inner(addr, None)
    }

    /// Like [`bind`](Self::bind), with this listen backlog (capped by the kernel at
    /// `net.core.somaxconn`).
    pub fn bind_with_backlog(addr: impl ToAddrs, backlog: u32) -> io::Result<TcpListener> {
        TcpListener::bind_inner(addr, Some(backlog))
    }

    fn bind_inner(addr: impl ToAddrs, backlog: Option<u32>) -> io::Result<TcpListener> {
        let addrs = addr.to_addrs()?;
        each_addr(addrs, |a| {
            let l = mio::net::TcpListener::bind(a)
                .map_err(|e| io::Error::new(e.kind(), format!("binding {a}: {e}")))?;
            super::set_backlog(l.as_raw_fd(), backlog)
                .map_err(|e| io::Error::new(e.kind(), format!("listening on {a}: {e}")))?;
            TcpListener::from_mio(l)
        })
    }

    fn from_mio(inner: mio::net::TcpListener) -> io::Result<TcpListener> {
        let io = IoState::new(inner.as_raw_fd())?;
        Ok(TcpListener { io, inner })
    }

    /// Adopts a bound, listening std listener (made non-blocking).
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        TcpListener::from_mio(mio::net::TcpListener::from_std(l))
    }

    /// Accepts a connection, parking while none is pending.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, a) = self.io.io(Dir::Read, || self.inner.accept())?;
        Ok((TcpStream::from_mio(s)?, a))
    }

    /// Like [`accept`](Self::accept), giving up after `timeout` (`TimedOut`).
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
        let deadline = hub().deadline(timeout);
        let (s, a) = self
            .io
            .io_until(Dir::Read, deadline, || self.inner.accept())?;
        Ok((TcpStream::from_mio(s)?, a))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Stops listening: new connection attempts are refused, connections waiting in the
    /// backlog are reset, and a greenlet blocked in `accept` fails with `EBADF`. (The fd is
    /// released when the listener is dropped.)
    pub fn close(&self) {
        if !self.io.is_closed() {
            // On Linux, shutdown(2) of a listening socket stops it listening.
            // SAFETY: shutdown on our own valid fd.
            unsafe { libc::shutdown(self.io.fd, libc::SHUT_RDWR) };
            self.io.close();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.io.is_closed()
    }
}

impl IntoRawFd for TcpStream {
    /// Gives up the fd (still non-blocking), forgetting it in the hub's reactor.
    fn into_raw_fd(self) -> RawFd {
        let TcpStream { io, inner } = self;
        // Deregisters first (see `IoState`), then releases the fd without closing it.
        drop(io);
        inner.into_raw_fd()
    }
}

impl FromRawFd for TcpStream {
    /// Adopts a connected TCP socket (made non-blocking and registered with this thread's
    /// hub).
    ///
    /// # Safety
    ///
    /// `fd` must be an open, connected TCP socket that nothing else owns.
    ///
    /// # Panics
    ///
    /// If the fd cannot be registered with the hub's reactor (the hub has no epoll
    /// instance); use [`TcpStream::from_std`] to get an error instead.
    unsafe fn from_raw_fd(fd: RawFd) -> TcpStream {
        // SAFETY: per this function's contract.
        let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        TcpStream::from_std(s).unwrap_or_else(|e| panic!("TcpStream::from_raw_fd({fd}): {e}"))
    }
}

impl IntoRawFd for TcpListener {
    /// Gives up the fd (still non-blocking), forgetting it in the hub's reactor.
    fn into_raw_fd(self) -> RawFd {
        let TcpListener { io, inner } = self;
        drop(io);
        inner.into_raw_fd()
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: T) -> io::Result<()> {
    // SAFETY: `v` is a valid value of the option's type, passed with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: an all-zero value is valid for the plain C option types used here (int, linger).
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` has room for `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.fd
    }
}
