//! Shared test harness: each test on its own thread (a fresh hub) under a wall-clock timeout,
//! ending with a leak check (no greenlet or timer may outlive it); and a scriptable HTTP/1.1
//! test server on evergreen's `StreamServer` (plain or TLS).
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use evergreen::net::{StreamServer, TcpStream};

#[path = "../../../tests/common/mod.rs"]
mod base;

/// How long any one test may take before it is declared hung (MySQL and network tests are
/// slower than the runtime's own, so longer than the workspace's default).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `f` on a fresh hub with the real clock, under [`TEST_TIMEOUT`] and the workspace's leak
/// check (tests/common/mod.rs).
pub fn run<F: FnOnce() + Send + 'static>(f: F) {
    base::run_with_timeout(false, TEST_TIMEOUT, f)
}

/// Runs `f` on a fresh hub with the virtual clock (timers fire as soon as everything is
/// blocked; loopback I/O is still real).
pub fn run_virtual<F: FnOnce() + Send + 'static>(f: F) {
    base::run_with_timeout(true, TEST_TIMEOUT, f)
}

/// A request as the test server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which connection (1-based, in accept order) carried it.
    pub conn: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with one request.
pub enum Reply {
    /// Writes these bytes and keeps the connection for the next request.
    Bytes(Vec<u8>),
    /// Writes these bytes, pausing (`sleep(0)`) between the pieces, then keeps the connection.
    Pieces(Vec<Vec<u8>>),
    /// Writes these bytes and closes the connection.
    BytesThenClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Writes these bytes, then resets the connection (`SO_LINGER` 0: an RST, not a FIN;
    /// plain TCP only).
    BytesThenReset(Vec<u8>),
    /// Sleeps (on the hub's clock), then does the rest.
    After(Duration, Box<Reply>),
}

/// A complete response with `Content-Length`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (n, v) in headers {
        r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    r.extend_from_slice(body);
    r
}

pub fn ok(body: &str) -> Reply {
    Reply::Bytes(response(
        200,
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

type HandlerFn = dyn Fn(&Seen) -> Reply;

struct State {
    handler: Box<HandlerFn>,
    seen: RefCell<Vec<Seen>>,
    conns: Cell<u64>,
    open: Cell<u64>,
    max_open: Cell<u64>,
}

/// A scriptable HTTP/1.1 server on 127.0.0.1 (an ephemeral port), in greenlets of this hub.
pub struct TestServer {
    server: StreamServer,
    state: Rc<State>,
    pub addr: SocketAddr,
    tls: bool,
}

impl TestServer {
    /// Plain HTTP.
    pub fn start(handler: impl Fn(&Seen) -> Reply + 'static) -> TestServer {
        TestServer::start_inner(handler, None)
    }

    /// HTTPS with the fixture certificate for `localhost`/`127.0.0.1` (signed by the test CA).
    pub fn start_tls(handler: impl Fn(&Seen) -> Reply + 'static) -> TestServer {
        TestServer::start_inner(handler, Some(server_tls_config()))
    }

    fn start_inner(
        handler: impl Fn(&Seen) -> Reply + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestServer {
        let state = Rc::new(State {
            handler: Box::new(handler),
            seen: RefCell::new(Vec::new()),
            conns: Cell::new(0),
            open: Cell::new(0),
            max_open: Cell::new(0),
        });
        let st = state.clone();
        let is_tls = tls.is_some();
        // Counts the connection while its handler runs, then serves it.
        let serve = move |st: &Rc<State>, s: &mut dyn ReadWrite| -> bool {
            st.conns.set(st.conns.get() + 1);
            st.open.set(st.open.get() + 1);
            st.max_open.set(st.max_open.get().max(st.open.get()));
            let id = st.conns.get();
            struct Dec(Rc<State>);
            impl Drop for Dec {
                fn drop(&mut self) {
                    self.0.open.set(self.0.open.get() - 1);
                }
            }
            let _dec = Dec(st.clone());
            serve_conn(st, s, id)
        };
        let server = match tls {
            None => StreamServer::bind("127.0.0.1:0", move |mut stream: TcpStream, _peer| {
                if serve(&st, &mut stream) {
                    let _ = stream.set_linger(Some(Duration::ZERO));
                }
            }),
            // evergreen's TLS server: the handshake runs in the connection's greenlet.
            Some(cfg) => StreamServer::bind_tls("127.0.0.1:0", cfg, move |mut stream, _peer| {
                serve(&st, &mut stream);
            }),
        }
        .expect("bind test server");
        let addr = server.local_addr().unwrap();
        server.start();
        TestServer {
            server,
            state,
            addr,
            tls: is_tls,
        }
    }

    /// `http://127.0.0.1:PORT{path}` (https for a TLS server).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.conns.get()
    }

    /// Most connections open at once.
    pub fn max_open(&self) -> u64 {
        self.state.max_open.get()
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.borrow().clone()
    }

    /// Stops the server and kills its handlers (they may be parked on keep-alive reads).
    pub fn stop(self) {
        self.server.stop(Some(Duration::ZERO));
    }
}

/// A byte stream the test server can serve (plain TCP or TLS).
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Serves requests until the connection ends; `true` if the reply asked for a reset.
fn serve_conn(st: &State, s: &mut dyn ReadWrite, id: u64) -> bool {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(s, &mut buf, id) else {
            return false;
        };
        st.seen.borrow_mut().push(req.clone());
        let mut reply = (st.handler)(&req);
        loop {
            match reply {
                Reply::After(d, next) => {
                    evergreen::sleep(d);
                    reply = *next;
                }
                Reply::Bytes(b) => {
                    if s.write_all(&b).and_then(|_| s.flush()).is_err() {
                        return false;
                    }
                    break;
                }
                Reply::Pieces(ps) => {
                    for p in ps {
                        if s.write_all(&p).and_then(|_| s.flush()).is_err() {
                            return false;
                        }
                        evergreen::sleep(Duration::ZERO);
                    }
                    break;
                }
                Reply::BytesThenClose(b) => {
                    let _ = s.write_all(&b).and_then(|_| s.flush());
                    return false;
                }
                Reply::BytesThenReset(b) => {
                    let _ = s.write_all(&b).and_then(|_| s.flush());
                    return true;
                }
                Reply::Close => return false,
            }
        }
    }
}

/// Reads one request (head and `Content-Length` body); `None` at EOF or on garbage.
fn read_request(s: &mut dyn ReadWrite, buf: &mut Vec<u8>, conn: u64) -> Option<Seen> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                buf.drain(..n);
                while buf.len() < len {
                    let mut chunk = [0u8; 8192];
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return None,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let body: Vec<u8> = buf.drain(..len).collect();
                return Some(Seen {
                    method,
                    path,
                    headers,
                    body,
                    conn,
                });
            }
            Ok(httparse::Status::Partial) => {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            Err(_) => return None,
        }
    }
}

pub const CA_PEM: &[u8] = include_bytes!("../fixtures/ca.pem");
pub const OTHER_CA_PEM: &[u8] = include_bytes!("../fixtures/other-ca.pem");
const SERVER_PEM: &[u8] = include_bytes!("../fixtures/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../fixtures/server.key");

fn server_tls_config() -> Arc<evergreen::net::tls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(SERVER_PEM)
        .collect::<Result<_, _>>()
        .expect("fixture certificate");
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).expect("fixture key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server TLS config"),
    )
}

/// An address on 127.0.0.1 where nothing listens (bound, then closed).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Asserts that `r` is an error of `kind` whose message contains every one of `parts`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(
    r: Result<T, evergreen_services::fetch::http::Error>,
    kind: evergreen_services::fetch::http::ErrorKind,
    parts: &[&str],
) -> evergreen_services::fetch::http::Error {
    let e = r.expect_err("expected an error");
    assert_eq!(e.kind(), kind, "{e}");
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
    e
}

/// An `io::Error` helper for handlers.
pub fn io_err(m: &str) -> io::Error {
    io::Error::other(m.to_string())
}
