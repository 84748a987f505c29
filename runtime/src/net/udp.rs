//! Cooperative UDP: [`UdpSocket`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::{IoState, ToAddrs};
use crate::reactor::Dir;

/// A UDP socket whose `recv*` park the greenlet while no datagram is queued.
pub struct UdpSocket {
    io: IoState,
    inner: mio::net::UdpSocket,
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("fd", &self.io.fd)
            .field("local", &self.inner.local_addr().ok())
            .finish()
    }
}

fn first_addr(addr: impl ToAddrs) -> io::Result<SocketAddr> {
    addr.to_addrs()?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address given"))
}

impl UdpSocket {
    /// Binds a socket to `addr` (port 0 for an ephemeral port).
    pub fn bind(addr: impl ToAddrs) -> io::Result<UdpSocket> {
        let a = first_addr(addr)?;
        let inner = mio::net::UdpSocket::bind(a)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {a}: {e}")))?;
        let io = IoState::new(inner.as_raw_fd())?;
        Ok(UdpSocket { io, inner })
    }

    /// Sets the default peer for `send`/`recv`.
    pub fn connect(&self, addr: impl ToAddrs) -> io::Result<()> {
        self.inner.connect(first_addr(addr)?)
    }

    /// Sends a datagram to `addr`.
    pub fn send_to(&self, buf: &[u8], addr: impl ToAddrs) -> io::Result<usize> {
        let a = first_addr(addr)?;
        self.io.io(Dir::Write, || self.inner.send_to(buf, a))
    }

    /// Receives a datagram, parking until one arrives (or the read timeout passes).
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.io(Dir::Read, || self.inner.recv_from(buf))
    }

    /// Sends to the connected peer.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.io(Dir::Write, || self.inner.send(buf))
    }

    /// Receives from the connected peer.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.io(Dir::Read, || self.inner.recv(buf))
    }

    /// Sets the timeout of each receive (`None`: forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Read, t)
    }

    /// Sets the timeout of each send (`None`: forever).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Write, t)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The connected peer.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Sets `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.inner.set_broadcast(on)
    }

    /// Takes the pending socket error (for example an ICMP "port unreachable").
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Wakes a greenlet blocked on the socket with `EBADF`; later operations fail.
    pub fn close(&self) {
        self.io.close();
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.fd
    }
}
