//! One client connection: evergreen's cooperative [`TcpStream`], optionally wrapped in a
//! rustls client session, with the request's deadlines applied to every read and write.
//!
//! rustls is sans-I/O: [`rustls::StreamOwned`] drives it over any blocking `Read + Write`,
//! and evergreen's `TcpStream` *is* blocking from the greenlet's point of view (it parks on
//! `WouldBlock`), so TLS needs no glue of its own: the handshake and every record read park
//! the greenlet, never the thread.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evergreen::net::TcpStream;

/// A [`TcpStream`] whose every read and write waits at most `min(per_op, deadline - now)`.
#[derive(Debug)]
pub(crate) struct TimedTcp {
    stream: TcpStream,
    deadline: Cell<Option<Instant>>,
    per_op: Cell<Option<Duration>>,
}

impl TimedTcp {
    pub(crate) fn new(stream: TcpStream) -> TimedTcp {
        TimedTcp {
            stream,
            deadline: Cell::new(None),
            per_op: Cell::new(None),
        }
    }

    /// Sets the total deadline and the per-operation timeout for what follows.
    pub(crate) fn set_limits(&self, deadline: Option<Instant>, per_op: Option<Duration>) {
        self.deadline.set(deadline);
        self.per_op.set(per_op);
    }

    /// The timeout for the next operation; `TimedOut` if the deadline already passed.
    fn arm(&self, read: bool) -> io::Result<()> {
        let mut t = self.per_op.get();
        if let Some(d) = self.deadline.get() {
            let left = d.saturating_duration_since(evergreen::hub::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request's total time ran out",
                ));
            }
            t = Some(t.map_or(left, |t| t.min(left)));
        }
        if read {
            self.stream.set_read_timeout(t)
        } else {
            self.stream.set_write_timeout(t)
        }
    }
}

impl Read for TimedTcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(true)?;
        (&self.stream).read(buf)
    }
}

impl Write for TimedTcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(false)?;
        (&self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Plain TCP or TLS over it.
pub(crate) enum Transport {
    Plain(TimedTcp),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TimedTcp>>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain(t) => f.debug_tuple("Plain").field(t).finish(),
            Transport::Tls(s) => f.debug_tuple("Tls").field(&s.sock).finish(),
        }
    }
}

impl Transport {
    pub(crate) fn tcp(&self) -> &TimedTcp {
        match self {
            Transport::Plain(t) => t,
            Transport::Tls(s) => &s.sock,
        }
    }

    /// Runs the TLS handshake over `tcp` (bounded by the limits already set on it).
    pub(crate) fn tls(
        tcp: TimedTcp,
        config: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<Transport, TlsFailure> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| TlsFailure::Tls(format!("invalid TLS server name {host:?}: {e}")))?;
        let mut session = rustls::ClientConnection::new(config, name)
            .map_err(|e| TlsFailure::Tls(format!("TLS setup failed: {e}")))?;
        let mut tcp = tcp;
        while session.is_handshaking() {
            if let Err(e) = session.complete_io(&mut tcp) {
                return Err(classify_tls_io(e));
            }
        }
        Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
            session, tcp,
        ))))
    }
}

/// Why a TLS handshake failed: the peer or its certificate (not retried), or the transport.
#[derive(Debug)]
pub(crate) enum TlsFailure {
    Tls(String),
    Io(io::Error),
}

fn classify_tls_io(e: io::Error) -> TlsFailure {
    if let Some(t) = e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
        return TlsFailure::Tls(format!("TLS handshake failed: {t}"));
    }
    if e.kind() == io::ErrorKind::InvalidData {
        return TlsFailure::Tls(format!("TLS handshake failed: {e}"));
    }
    TlsFailure::Io(e)
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(t) => t.read(buf),
            Transport::Tls(s) => match s.read(buf) {
                // A peer that closes without close_notify: treat as end of stream. Framing
                // (Content-Length, chunked) still detects a truncated body.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(t) => t.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(t) => t.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}
