//! TLS servers over cooperative sockets (gevent's `StreamServer(..., ssl_context=...)`, with
//! [rustls](https://docs.rs/rustls) instead of OpenSSL). Needs the `tls` feature.
//!
//! # Mechanism
//!
//! rustls is sans-I/O: it only turns bytes into bytes. [`TlsStream`] is rustls's
//! `StreamOwned` over an evergreen [`TcpStream`], whose blocking `read`/`write` park the
//! greenlet instead of the thread, so the handshake and every record cooperate with the hub
//! exactly as plain reads and writes do. [`accept`] runs the server side of the handshake
//! under a timeout; [`StreamServer::bind_tls`](super::StreamServer::bind_tls) does it for every
//! connection, in the connection's own greenlet, before calling the handler.
//!
//! Differences from gevent: the configuration is a rustls `ServerConfig` (certificate chain,
//! key, ALPN...), not an `ssl.SSLContext`; a connection whose handshake fails or times out
//! is closed and logged at `debug` level, and never reaches the handler.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{StreamServer, TcpStream, ToAddrs};

pub use rustls::ServerConfig;

/// A server-side TLS connection over a cooperative [`TcpStream`]; `Read` and `Write` carry
/// the plaintext. `get_ref()`/`conn` give the TCP stream and the rustls connection (ALPN,
/// SNI, peer certificates).
pub type TlsStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// How long [`StreamServer::bind_tls`] gives a client to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the server side of the TLS handshake on `tcp`, giving up after `timeout`
/// (`io::ErrorKind::TimedOut`); other greenlets run meanwhile. The stream's own read and
/// write timeouts are restored afterwards.
pub fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<TlsStream> {
    let conn = rustls::ServerConnection::new(config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS setup: {e}")))?;
    let (rt, wt) = (tcp.read_timeout(), tcp.write_timeout());
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS handshake with {:?}: {e}", s.sock.peer_addr().ok()),
            )
        })?;
    }
    s.sock.set_read_timeout(rt)?;
    s.sock.set_write_timeout(wt)?;
    Ok(s)
}

impl StreamServer {
    /// A TLS server: binds `addr`, and for every connection completes the TLS handshake
    /// (at most [`HANDSHAKE_TIMEOUT`]) in the connection's greenlet, then calls `handler`
    /// with the [`TlsStream`] (gevent's `StreamServer(addr, handle, ssl_context=...)`).
    /// Not started yet.
    pub fn bind_tls(
        addr: impl ToAddrs,
        config: Arc<ServerConfig>,
        handler: impl Fn(TlsStream, SocketAddr) + 'static,
    ) -> io::Result<StreamServer> {
        Ok(StreamServer::new(
            super::TcpListener::bind(addr)?,
            move |tcp, peer| match accept(tcp, config.clone(), HANDSHAKE_TIMEOUT) {
                Ok(tls) => handler(tls, peer),
                Err(e) => log::debug!("evergreen: TLS handshake with {peer} failed: {e}"),
            },
        ))
    }
}
