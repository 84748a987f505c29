//! Cooperative networking (gevent's `socket.py`, `server.py` and `resolver/`).
//!
//! Every socket here is non-blocking underneath and registered once with the hub's
//! [`reactor`]. An operation is tried first; only when it would block does the
//! greenlet park until the fd is ready, so blocking-style code (`read`, `write_all`,
//! `accept`) runs concurrently with every other greenlet on the hub.
//!
//! | gevent | evergreen |
//! |---|---|
//! | `gevent.socket.create_connection` | [`TcpStream::connect`], [`TcpStream::connect_timeout`] |
//! | `socket.settimeout` | [`TcpStream::set_read_timeout`], [`TcpStream::set_write_timeout`] (errors are `io::ErrorKind::TimedOut`) |
//! | `socket.close()` while another greenlet waits | [`TcpStream::close`]: the waiter fails with `EBADF` |
//! | a second reader (`ConcurrentObjectUseError`) | an `io::Error` wrapping [`Error::ConcurrentObjectUse`](crate::Error::ConcurrentObjectUse) |
//! | `gevent.server.StreamServer` | [`StreamServer`] |
//! | `gevent.resolver` (thread/ares) | [`dns`]: a cooperative stub resolver (`/etc/hosts`, then UDP/TCP queries) |
//!
//! Differences from gevent: host names are resolved by evergreen's own resolver (never by
//! glibc's `getaddrinfo`, which would block the hub); `try_clone` duplicates the fd, and each
//! clone has its own reader and writer slots.
//!
//! Sockets are `!Send`: each is registered with the reactor of the hub of the thread that made
//! it, and must be used and dropped there (one hub per thread; for several cores, accept on
//! one listener per thread, or hand connections over as raw fds with `into_raw_fd` and
//! `from_raw_fd`):
//!
//! ```compile_fail
//! fn must_be_send<T: Send>() {}
//! must_be_send::<evergreen::net::TcpStream>();
//! ```
//!
//! ```compile_fail
//! fn must_be_send<T: Send>() {}
//! must_be_send::<evergreen::net::UnixListener>();
//! ```
//!
//! Listeners are bound with a backlog of
//! [`Config::listen_backlog`](crate::config::Config::listen_backlog) (1024 by default, as
//! tokio; std and mio use 128), or the one given to [`TcpListener::bind_with_backlog`].

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::hub::hub;
use crate::reactor::{self, Dir};

pub mod dns;
mod dns_wire;
mod server;
mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
mod udp;
mod unix;

pub use server::{Handler, StreamServer};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};

/// The reactor side of an evergreen socket: its fd, its timeouts and whether it was closed.
///
/// Must be declared *before* the socket it belongs to in a struct, so that it deregisters the
/// fd before the socket closes it.
pub(crate) struct IoState {
    /// Sockets belong to the hub of the thread that made them: their fd is registered in
    /// that hub's reactor, so moving one to another thread and dropping it there would leave
    /// the first hub believing the fd number is registered. This marker makes every socket
    /// `!Send` (and `!Sync`), like greenlet handles.
    _not_send: std::marker::PhantomData<*const ()>,
    fd: RawFd,
    closed: Cell<bool>,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

impl IoState {
    pub(crate) fn new(fd: RawFd) -> io::Result<IoState> {
        reactor::adopt_fd(fd)?;
        Ok(IoState {
            _not_send: std::marker::PhantomData,
            fd,
            closed: Cell::new(false),
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
        })
    }

    fn check_open(&self) -> io::Result<()> {
        if self.closed.get() {
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("socket (fd {}) was closed", self.fd),
            ))
        } else {
            Ok(())
        }
    }

    /// Runs `op` until it does not report `WouldBlock`, waiting for the fd in `dir` in
    /// between, until `deadline`.
    pub(crate) fn io_until<R>(
        &self,
        dir: Dir,
        deadline: Option<Instant>,
        mut op: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            self.check_open()?;
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    #[cfg(test)]
                    tests::WOULD_BLOCK.with(|c| c.set(c.get() + 1));
                    reactor::wait_io(self.fd, dir, deadline, true)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// [`io_until`](Self::io_until) with the socket's own timeout for `dir`.
    pub(crate) fn io<R>(&self, dir: Dir, op: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        let t = match dir {
            Dir::Read => self.read_timeout.get(),
            Dir::Write => self.write_timeout.get(),
        };
        let deadline = t.and_then(|t| hub().deadline(t));
        self.io_until(dir, deadline, op)
    }

    /// A read of up to `len` bytes from a TCP socket (`op`, which takes what it reads: not a
    /// peek), with the reactor's drained-queue rule: a read that returns fewer bytes than
    /// asked for has emptied the receive queue, so the next read, unless an event said
    /// readable in between, waits for one before trying instead of making a system call that
    /// fails with `EAGAIN` (a request/response client saves one `recvfrom` per response; see
    /// [`reactor::mark_read_drained`]). The end of stream (0) is not a short read.
    pub(crate) fn read_stream(
        &self,
        len: usize,
        op: impl FnMut() -> io::Result<usize>,
    ) -> io::Result<usize> {
        let deadline = self.read_timeout.get().and_then(|t| hub().deadline(t));
        if len > 0 && !self.closed.get() && reactor::stream_read_known_drained(self.fd) {
            reactor::wait_io(self.fd, Dir::Read, deadline, false)?;
        }
        let n = self.io_until(Dir::Read, deadline, op)?;
        if n > 0 && n < len {
            reactor::mark_read_drained(self.fd);
        }
        Ok(n)
    }

    pub(crate) fn set_timeout(&self, dir: Dir, t: Option<Duration>) -> io::Result<()> {
        if t == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a zero timeout is not allowed (as in std); use None for no timeout",
            ));
        }
        match dir {
            Dir::Read => self.read_timeout.set(t),
            Dir::Write => self.write_timeout.set(t),
        }
        Ok(())
    }

    pub(crate) fn timeout(&self, dir: Dir) -> Option<Duration> {
        match dir {
            Dir::Read => self.read_timeout.get(),
            Dir::Write => self.write_timeout.get(),
        }
    }

    /// Marks the socket closed and wakes its waiters with `EBADF`.
    pub(crate) fn close(&self) {
        if !self.closed.replace(true) {
            reactor::close_fd(self.fd);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// Raises the listen backlog of a freshly bound listener (std and mio listen with 128) to
/// [`Config::listen_backlog`](crate::config::Config::listen_backlog), or to `backlog`.
pub(crate) fn set_backlog(fd: RawFd, backlog: Option<u32>) -> io::Result<()> {
    let n = backlog.unwrap_or_else(|| crate::hub::hub().config.listen_backlog);
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    // SAFETY: listen(2) on a bound socket we own; calling it again only changes the backlog.
    if unsafe { libc::listen(fd, n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for IoState {
    fn drop(&mut self) {
        self.close();
    }
}

/// Things that name one or more socket addresses, resolved *cooperatively* (std's
/// `ToSocketAddrs` calls glibc's blocking `getaddrinfo`, so evergreen has its own trait).
///
/// Host names go through [`dns::resolve`]: `/etc/hosts`, then the nameservers of
/// `/etc/resolv.conf`. IP literals are never looked up.
pub trait ToAddrs {
    /// The addresses, in the order to try them.
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>>;
}

impl ToAddrs for SocketAddr {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![*self])
    }
}
impl ToAddrs for SocketAddrV4 {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![SocketAddr::V4(*self)])
    }
}
impl ToAddrs for SocketAddrV6 {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![SocketAddr::V6(*self)])
    }
}
impl ToAddrs for (IpAddr, u16) {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![SocketAddr::new(self.0, self.1)])
    }
}
impl ToAddrs for (Ipv4Addr, u16) {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![SocketAddr::new(IpAddr::V4(self.0), self.1)])
    }
}
impl ToAddrs for (Ipv6Addr, u16) {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![SocketAddr::new(IpAddr::V6(self.0), self.1)])
    }
}
impl ToAddrs for (&str, u16) {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let ips = dns::resolve(self.0)?;
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.1))
            .collect())
    }
}
impl ToAddrs for (String, u16) {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        (self.0.as_str(), self.1).to_addrs()
    }
}
impl ToAddrs for str {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        if let Ok(a) = self.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let (host, port) = split_host_port(self)?;
        (host, port).to_addrs()
    }
}
impl ToAddrs for String {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.as_str().to_addrs()
    }
}
impl ToAddrs for [SocketAddr] {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(self.to_vec())
    }
}
impl<T: ToAddrs + ?Sized> ToAddrs for &T {
    fn to_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        (**self).to_addrs()
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals), with a clear error on bad input.
pub(crate) fn split_host_port(s: &str) -> io::Result<(&str, u16)> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid socket address {s:?}: {why} (expected host:port)"),
        )
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(|| bad("unclosed '['"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| bad("no port"))?
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("the port is not a number in 0..=65535"))?;
    Ok((host, port))
}

/// Tries `connect` on each address until one succeeds; the last error otherwise.
pub(crate) fn each_addr<T>(
    addrs: Vec<SocketAddr>,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in addrs {
        match f(a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    thread_local! {
        /// Operations of this thread's sockets that reported `WouldBlock` (each a system call
        /// that found nothing to do).
        pub(super) static WOULD_BLOCK: Cell<u64> = const { Cell::new(0) };
    }

    fn would_block() -> u64 {
        WOULD_BLOCK.with(Cell::get)
    }

    /// `rounds` request/response exchanges over `client`/`server` (each unit test runs on a
    /// thread of its own, so on a hub of its own): the client writes a 2-byte length, the
    /// server answers that many bytes in two writes with a switch between them, the client
    /// reads them with a 64-byte buffer. Returns the bytes the client received.
    fn exchange<S: 'static>(client: S, server: S, rounds: usize) -> usize
    where
        for<'a> &'a S: Read + Write,
    {
        let server_g = crate::spawn(move || {
            let mut req = [0u8; 2];
            for _ in 0..rounds {
                (&server).read_exact(&mut req).unwrap();
                let len = u16::from_le_bytes(req) as usize;
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let cut = len / 3;
                (&server).write_all(&body[..cut]).unwrap();
                crate::sleep(Duration::ZERO);
                (&server).write_all(&body[cut..]).unwrap();
            }
        });
        let client_g = crate::spawn(move || {
            let mut buf = [0u8; 64];
            let mut total = 0;
            for round in 0..rounds {
                let len = 1 + (round * 37) % 300;
                (&client).write_all(&(len as u16).to_le_bytes()).unwrap();
                let mut got = Vec::with_capacity(len);
                while got.len() < len {
                    let want = (len - got.len()).min(buf.len());
                    let n = (&client).read(&mut buf[..want]).unwrap();
                    assert!(n > 0, "end of stream in round {round}");
                    got.extend_from_slice(&buf[..n]);
                }
                let expect: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                assert_eq!(got, expect, "round {round}");
                total += len;
            }
            total
        });
        let total = crate::with_timeout(Duration::from_secs(20), || client_g.get())
            .expect("no read waited forever")
            .unwrap();
        server_g.join();
        total
    }

    /// A connected loopback TCP pair: (client, server).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = crate::spawn(move || listener.accept().unwrap().0);
        let client = TcpStream::connect(addr).unwrap();
        (client, accept.into_result().unwrap())
    }

    #[test]
    fn request_response_reads_wait_for_the_reactor_instead_of_failing_with_eagain() {
        // Every read here is issued before its bytes arrive, into a buffer larger than the
        // message (as an HTTP client reads a response), so each read that gets a message
        // comes back short. Without the drained-queue rule the next read on each side is a
        // `recvfrom` that fails with `EAGAIN`, then a wait: two per round.
        let (client, server) = tcp_pair();
        let rounds = 200usize;
        let before = would_block();
        let server_g = crate::spawn(move || {
            let mut req = [0u8; 64];
            for _ in 0..rounds {
                assert_eq!((&server).read(&mut req).unwrap(), 1);
                let body = vec![req[0]; usize::from(req[0])];
                (&server).write_all(&body).unwrap();
            }
        });
        let client_g = crate::spawn(move || {
            let mut buf = [0u8; 64];
            for round in 0..rounds {
                let len = 1 + (round * 7) % 60;
                (&client).write_all(&[len as u8]).unwrap();
                let n = (&client).read(&mut buf).unwrap();
                assert_eq!(&buf[..n], &vec![len as u8; len][..], "round {round}");
            }
        });
        crate::with_timeout(Duration::from_secs(20), || client_g.get())
            .expect("no read waited forever")
            .unwrap();
        server_g.get().unwrap();
        let failed = would_block() - before;
        // Only each side's first read (before any short read) may try in vain.
        assert!(
            failed <= 2,
            "{failed} reads found nothing in {rounds} rounds"
        );
    }

    #[test]
    fn request_response_rounds_over_tcp_lose_nothing() {
        let (client, server) = tcp_pair();
        // The server answers in two small writes: without this, Nagle holds the second one
        // until the delayed ACK of the first (40 ms a round).
        server.set_nodelay(true).unwrap();
        let rounds = 300;
        assert_eq!(
            exchange(client, server, rounds),
            (0..rounds).map(|r| 1 + (r * 37) % 300).sum::<usize>()
        );
    }

    #[test]
    fn a_short_read_followed_by_the_end_of_stream_returns_zero_without_waiting() {
        // The last bytes and the end of stream arrive in one edge, seen before the short read
        // that takes the bytes: the next read must find the end of stream, not wait.
        let (b, a) = tcp_pair();
        let reader = crate::spawn(move || {
            let mut sizes = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = (&a).read(&mut buf).unwrap();
                sizes.push(n);
                if n == 0 {
                    return sizes;
                }
            }
        });
        crate::sleep(Duration::ZERO);
        (&b).write_all(b"hello").unwrap();
        b.close();
        let r = crate::with_timeout(Duration::from_secs(2), || reader.get());
        assert_eq!(r.ok().map(|r| r.unwrap()), Some(vec![5, 0]));
    }

    #[test]
    fn a_peek_does_not_hide_the_bytes_it_saw_from_the_next_read() {
        let (client, server) = tcp_pair();
        let first_read = std::rc::Rc::new(crate::Event::new());
        let first_read2 = first_read.clone();
        let reader = crate::spawn(move || {
            let mut buf = [0u8; 64];
            // A short read first: the queue is then known to be empty.
            let first = (&server).read(&mut buf).unwrap();
            first_read2.set();
            // A short peek of the next bytes leaves them queued: the read must not wait.
            let peeked = server.peek(&mut buf).unwrap();
            let read =
                crate::with_timeout(Duration::from_secs(2), || (&server).read(&mut buf).unwrap());
            (first, peeked, read.ok())
        });
        (&client).write_all(b"x").unwrap();
        first_read.wait();
        (&client).write_all(b"abc").unwrap();
        assert_eq!(reader.get().unwrap(), (1, 3, Some(3)));
    }

    #[test]
    fn a_read_timeout_still_applies_when_the_read_waits_first() {
        let (a, _b) = tcp_pair();
        a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        // Nothing arrives: the first read tries, fails with EAGAIN, waits and times out; the
        // second waits first (no short read marked it, but the WouldBlock cleared readiness)
        // and times out too.
        for _ in 0..2 {
            let e = (&a).read(&mut [0u8; 8]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        }
    }

    /// Waits until the hub has seen `s` readable: the events of the bytes written so far are
    /// processed (loopback writes are delivered within the writer's system call).
    fn seen_readable(s: &impl std::os::fd::AsRawFd) {
        crate::wait_read(s.as_raw_fd(), Some(Duration::from_secs(2))).unwrap();
    }

    #[test]
    fn read_vectored_into_more_buffers_than_readv_takes_is_not_a_short_read() {
        // Found in review: readv fills at most 1024 buffers, so 2048 one-byte buffers get
        // 1024 bytes of the 2000 queued; taking that for an empty queue hung the next read.
        let (client, server) = tcp_pair();
        (&client).write_all(&[7u8; 2000]).unwrap();
        seen_readable(&server);
        let mut storage = vec![[0u8; 1]; 2048];
        let mut bufs: Vec<io::IoSliceMut<'_>> = storage
            .iter_mut()
            .map(|b| io::IoSliceMut::new(&mut b[..]))
            .collect();
        assert_eq!((&server).read_vectored(&mut bufs).unwrap(), 1024);
        let mut buf = [0u8; 64];
        let r = crate::with_timeout(Duration::from_secs(2), || (&server).read(&mut buf));
        assert_eq!(r.ok().map(|r| r.unwrap()), Some(64), "the next read hung");
    }

    #[test]
    fn a_read_stopped_by_tcp_urgent_data_is_not_taken_for_an_empty_queue() {
        // Found in review: recv stops at the urgent mark, so "xy" comes back short with "tail"
        // queued behind it, all under one edge. The urgent data's EPOLLPRI turns the rule off.
        use std::os::fd::AsRawFd;
        let (client, server) = tcp_pair();
        (&client).write_all(b"xy").unwrap();
        // SAFETY: send(2) of one byte from a valid buffer on our own open socket.
        let r = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(r, 1);
        (&client).write_all(b"tail").unwrap();
        seen_readable(&server);
        let mut buf = [0u8; 64];
        assert_eq!((&server).read(&mut buf).unwrap(), 2);
        let r = crate::with_timeout(Duration::from_secs(2), || (&server).read(&mut buf));
        assert_eq!(r.ok().map(|r| r.unwrap()), Some(4), "the next read hung");
        assert_eq!(&buf[..4], b"tail");
    }

    #[test]
    fn a_read_beside_a_greenlet_waiting_on_the_fd_still_tries_first() {
        // Found in review: on a drained fd whose reader slot another greenlet holds (here in
        // `wait_read`), waiting first made the read a second waiter (`ConcurrentObjectUse`)
        // although a byte had arrived whose event the hub had not processed yet. Such a read
        // tries first, as it did before the drained-queue rule.
        use std::os::fd::AsRawFd;
        let (client, server) = tcp_pair();
        let server = std::rc::Rc::new(server);
        (&client).write_all(b"a").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            (&*server).read(&mut buf).unwrap(),
            1,
            "a short read: drained"
        );
        let s2 = server.clone();
        let waiter = crate::spawn(move || crate::wait_read(s2.as_raw_fd(), None).is_ok());
        crate::sleep(Duration::ZERO);
        (&client).write_all(b"z").unwrap();
        // No poll since the write: the byte is queued, its event not processed.
        let r = (&*server).read(&mut buf).map_err(|e| e.to_string());
        assert_eq!(r, Ok(1));
        assert_eq!(buf[0], b'z');
        (&client).write_all(b"!").unwrap();
        assert_eq!(waiter.get(), Ok(true));
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(
            split_host_port("example.com:80").unwrap(),
            ("example.com", 80)
        );
        assert_eq!(split_host_port("[::1]:8080").unwrap(), ("::1", 8080));
        for bad in ["example.com", ":80", "h:99999", "[::1:80", "h:x"] {
            let e = split_host_port(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
