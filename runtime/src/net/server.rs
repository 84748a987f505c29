//! [`StreamServer`]: a TCP server with a greenlet per connection (gevent's
//! `gevent.server.StreamServer`).
//!
//! An *acceptor* greenlet accepts connections and spawns the handler for each one in a
//! [`Pool`] (or an unbounded [`Group`]). With a bounded pool the acceptor does not accept while
//! the pool is full (it waits for a free slot first), so the kernel's backlog applies
//! back-pressure, as gevent's `StreamServer(spawn=Pool(n))` does.
//!
//! [`StreamServer::stop`] is graceful: it stops accepting (closing the listener), waits up to a
//! timeout for the running handlers, then kills the rest (their `Drop`s run).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::{TcpListener, TcpStream, ToAddrs};
use crate::event::Event;
use crate::greenlet::{Builder, Greenlet};
use crate::pool::{Group, Pool};

/// A connection handler: called in its own greenlet for every accepted connection.
pub type Handler = Box<dyn Fn(TcpStream, SocketAddr)>;

struct Inner {
    listener: TcpListener,
    handler: Handler,
    pool: Pool,
    acceptor: RefCell<Option<Greenlet<()>>>,
    stopped: Event,
    accepted: Cell<u64>,
}

/// A TCP server spawning a greenlet per connection. See the [module docs](crate::net::StreamServer) and `net::server`.
///
/// ```no_run
/// use std::io::{Read, Write};
/// use evergreen::net::StreamServer;
///
/// let server = StreamServer::bind("127.0.0.1:7000", |mut conn, _peer| {
///     let mut buf = [0u8; 1024];
///     while let Ok(n) = conn.read(&mut buf) {
///         if n == 0 || conn.write_all(&buf[..n]).is_err() {
///             break;
///         }
///     }
/// })?
/// .with_pool_size(1000);
/// server.serve_forever();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct StreamServer {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("listener", &self.inner.listener)
            .field("connections", &self.inner.pool.len())
            .field("accepted", &self.inner.accepted.get())
            .finish()
    }
}

impl StreamServer {
    /// Binds a listener on `addr` and serves it with `handler` (not started yet).
    pub fn bind(
        addr: impl ToAddrs,
        handler: impl Fn(TcpStream, SocketAddr) + 'static,
    ) -> io::Result<StreamServer> {
        Ok(StreamServer::new(TcpListener::bind(addr)?, handler))
    }

    /// Serves an existing listener with `handler` (not started yet).
    pub fn new(
        listener: TcpListener,
        handler: impl Fn(TcpStream, SocketAddr) + 'static,
    ) -> StreamServer {
        StreamServer::with_parts(listener, Box::new(handler), (*Group::new()).clone())
    }

    fn with_parts(listener: TcpListener, handler: Handler, pool: Pool) -> StreamServer {
        StreamServer {
            inner: Rc::new(Inner {
                listener,
                handler,
                pool,
                acceptor: RefCell::new(None),
                stopped: Event::new(),
                accepted: Cell::new(0),
            }),
        }
    }

    /// Bounds the number of concurrent connections: at most `size` handlers run, and no
    /// connection is accepted while all are busy.
    ///
    /// # Panics
    ///
    /// If the server was started, or `size` is 0.
    pub fn with_pool_size(self, size: usize) -> StreamServer {
        let inner = Rc::try_unwrap(self.inner)
            .ok()
            .expect("with_pool_size must be called before the server is started or cloned");
        assert!(inner.acceptor.borrow().is_none());
        StreamServer::with_parts(inner.listener, inner.handler, Pool::new(size))
    }

    /// The listening address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.listener.local_addr()
    }

    /// The pool (or group) the handlers run in.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.get()
    }

    /// Whether the acceptor is running.
    pub fn started(&self) -> bool {
        matches!(&*self.inner.acceptor.borrow(), Some(g) if !g.dead())
    }

    /// Starts accepting in a new greenlet and returns at once (gevent's `start`).
    pub fn start(&self) {
        if self.started() || self.inner.listener.is_closed() {
            return;
        }
        let inner = self.inner.clone();
        let g = Builder::new()
            .name(format!(
                "acceptor {}",
                self.local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into())
            ))
            .spawn(move || accept_loop(&inner));
        *self.inner.acceptor.borrow_mut() = Some(g);
    }

    /// Stops accepting new connections, without closing the listener: the kernel keeps
    /// queueing them (up to the backlog) and running handlers go on (gevent's
    /// `stop_accepting`). [`start_accepting`](Self::start_accepting) resumes.
    pub fn stop_accepting(&self) {
        let acceptor = self.inner.acceptor.borrow_mut().take();
        if let Some(a) = acceptor {
            a.kill();
        }
    }

    /// Resumes accepting after [`stop_accepting`](Self::stop_accepting) (gevent's
    /// `start_accepting`); the same as [`start`](Self::start). Does nothing once the server
    /// was stopped.
    pub fn start_accepting(&self) {
        self.start()
    }

    /// Whether it is accepting connections now.
    pub fn is_accepting(&self) -> bool {
        self.started()
    }

    /// Starts (if needed) and blocks until [`stop`](Self::stop) is called (gevent's
    /// `serve_forever`).
    ///
    /// If the calling greenlet is killed (or a `Timeout` interrupts it) while it serves, the
    /// server is stopped on the way out, with a one-second grace period for the handlers, as
    /// gevent's `serve_forever` does in its `finally`.
    pub fn serve_forever(&self) {
        struct StopOnUnwind<'a>(&'a StreamServer);
        impl Drop for StopOnUnwind<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() && !self.0.inner.stopped.is_set() {
                    self.0.stop(Some(Duration::from_secs(1)));
                }
            }
        }
        self.start();
        let _guard = StopOnUnwind(self);
        self.inner.stopped.wait();
    }

    /// Stops gracefully: stops accepting, waits up to `timeout` for running handlers to
    /// finish (`None`: as long as they take), then kills the rest. Returns the number of
    /// handlers that had to be killed.
    ///
    /// May be called from one of the server's own handlers: that handler is left out of the
    /// wait and the kill (it is removed from the pool), so it can go on and finish.
    pub fn stop(&self, timeout: Option<Duration>) -> usize {
        self.inner.listener.close();
        // Wake `serve_forever` first, whatever happens below (gevent sets its stop event
        // first too).
        self.inner.stopped.set();
        let me = crate::greenlet::getcurrent();
        if self.inner.pool.contains(&me) {
            self.inner.pool.discard(&me);
        }
        let acceptor = self.inner.acceptor.borrow_mut().take();
        if let Some(a) = acceptor {
            if a.handle() != me {
                a.kill();
            }
        }
        let finished = match timeout {
            Some(t) => self.inner.pool.join_timeout(t),
            None => {
                self.inner.pool.join();
                true
            }
        };
        let mut killed = 0;
        if !finished {
            killed = self.inner.pool.len();
            self.inner.pool.kill();
        }
        killed
    }
}

fn accept_loop(inner: &Rc<Inner>) {
    loop {
        if inner.pool.full() {
            inner.pool.wait_available(None);
        }
        match inner.listener.accept() {
            Ok((conn, peer)) => {
                inner.accepted.set(inner.accepted.get() + 1);
                let me = inner.clone();
                inner.pool.spawn(move || (me.handler)(conn, peer));
            }
            Err(_) if inner.listener.is_closed() => return,
            Err(e) => {
                // EMFILE and friends: report, back off briefly instead of spinning.
                log::warn!("evergreen: StreamServer accept failed: {e}");
                crate::sleep(Duration::from_millis(10));
            }
        }
    }
}
