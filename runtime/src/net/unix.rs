//! Cooperative Unix-domain stream sockets: [`UnixStream`] and [`UnixListener`].

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::IoState;
use crate::reactor::{self, Dir};

/// A Unix-domain stream whose blocking operations park the greenlet.
pub struct UnixStream {
    io: IoState,
    inner: mio::net::UnixStream,
}

impl std::fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixStream")
            .field("fd", &self.io.fd)
            .finish()
    }
}

impl UnixStream {
    fn from_mio(inner: mio::net::UnixStream) -> io::Result<UnixStream> {
        let io = IoState::new(inner.as_raw_fd())?;
        Ok(UnixStream { io, inner })
    }

    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let p = path.as_ref();
        let s = mio::net::UnixStream::connect(p)
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", p.display())))?;
        let s = UnixStream::from_mio(s)?;
        loop {
            if let Some(e) = s.inner.take_error()? {
                return Err(e);
            }
            match s.inner.peer_addr() {
                Ok(_) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    reactor::wait_io(s.io.fd, Dir::Write, None, true)?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        Ok((UnixStream::from_mio(a)?, UnixStream::from_mio(b)?))
    }

    /// Sets the timeout of each read.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Read, t)
    }

    /// Sets the timeout of each write.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.io.set_timeout(Dir::Write, t)
    }

    /// Shuts down one or both halves.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The peer address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Shuts down and wakes blocked greenlets with `EBADF`.
    pub fn close(&self) {
        if !self.io.is_closed() {
            let _ = self.inner.shutdown(Shutdown::Both);
            self.io.close();
        }
    }
}

impl Read for &UnixStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // No drained-queue rule (see `IoState::read_stream`): a Unix stream read also stops at
        // a message that carries fds, with data behind it.
        let mut inner = &self.inner;
        self.io.io(Dir::Read, || inner.read(buf))
    }
}

impl Write for &UnixStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = &self.inner;
        self.io.io(Dir::Write, || inner.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for UnixStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for UnixStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for UnixStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.fd
    }
}

/// A listening Unix-domain socket.
pub struct UnixListener {
    io: IoState,
    inner: mio::net::UnixListener,
}

impl std::fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixListener")
            .field("fd", &self.io.fd)
            .finish()
    }
}

impl UnixListener {
    /// Binds and listens at `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let p = path.as_ref();
        let inner = mio::net::UnixListener::bind(p)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", p.display())))?;
        super::set_backlog(inner.as_raw_fd(), None)
            .map_err(|e| io::Error::new(e.kind(), format!("listening on {}: {e}", p.display())))?;
        let io = IoState::new(inner.as_raw_fd())?;
        Ok(UnixListener { io, inner })
    }

    /// Accepts a connection, parking while none is pending.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, a) = self.io.io(Dir::Read, || self.inner.accept())?;
        Ok((UnixStream::from_mio(s)?, a))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Stops accepting: a blocked `accept` fails with `EBADF`.
    pub fn close(&self) {
        self.io.close();
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.fd
    }
}
