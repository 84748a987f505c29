//! A green pool of MySQL/MariaDB connections: the unmodified `mysql` crate's [`mysql::Conn`],
//! made cooperative by evergreen's monkey patching, shared by greenlets.
//!
//! ```no_run
//! # fn main() -> Result<(), evergreen_services::fetch::mysql::Error> {
//! use evergreen_services::fetch::mysql::{MySqlPool, PoolOptions};
//! let pool = MySqlPool::new(PoolOptions::from_url("mysql://root@127.0.0.1:3306/stats")?.max_connections(10));
//! let workers: Vec<_> = (0..100)
//!     .map(|i| {
//!         let pool = pool.clone();
//!         evergreen::spawn(move || -> Result<Option<u32>, _> {
//!             pool.get()?.exec_first("SELECT ? + 1", (i,))
//!         })
//!     })
//!     .collect();
//! evergreen::joinall(&workers);
//! # Ok(()) }
//! ```
//!
//! # Why not `mysql::Pool`
//!
//! `mysql::Pool` guards its connections with a std `Mutex` and `Condvar`. Under monkey
//! patching a greenlet parks *inside* a query while another greenlet of the same thread waits
//! on that condvar, which blocks the OS thread: the hub, and with it the query that would
//! release the connection, never runs again. So this pool is built on evergreen's primitives
//! instead.
//!
//! # Implementation
//!
//! * **Bound and fairness**: an evergreen [`Semaphore`] of `max_connections` permits (strict
//!   FIFO hand-off: waiters are served in arrival order) guards checkout;
//!   [`MySqlPool::get`] waits at most [`PoolOptions::checkout_timeout`] for one, then fails
//!   with [`ErrorKind::CheckoutTimeout`].
//! * **Connections on demand**: the most recently used idle connection is reused; if none is
//!   idle a new one is opened. The host is resolved by evergreen's resolver (the crate would
//!   call glibc's blocking `getaddrinfo`) and the crate gets an IP literal,
//!   `prefer_socket(false)` (no second connect through a Unix socket), and
//!   `tcp_connect_timeout`, `read_timeout` and `write_timeout` always set: when many
//!   connections open at once the server's listen queue can overflow and a handshake never
//!   arrive, so a connect that fails or times out is retried with back-off.
//! * **Health**: a connection idle for longer than [`PoolOptions::check_after_idle`] is
//!   pinged before reuse (a ping on *every* checkout would halve throughput), and one idle
//!   longer than [`PoolOptions::max_idle_time`] is closed. If the first statement on a reused
//!   connection fails because the connection was lost (killed on the server, server
//!   restarted), it is retried once on a fresh connection: the server never saw it.
//! * **Discard on any error**: after an I/O error or an interrupt in the middle of a query the
//!   crate does not mark a `Conn` broken, and later queries get the *previous* query's result.
//!   So a connection that saw any error (or whose greenlet was killed or timed out mid-call,
//!   unwinding through the [`PooledConn`]) is closed, never returned to the pool.
//! * **Interrupts**: a kill or an evergreen `Timeout` reaching a greenlet parked in a hooked
//!   call makes the call fail with `ECANCELED` or `ETIMEDOUT`; they surface here as
//!   [`ErrorKind::Cancelled`] and [`ErrorKind::Interrupted`], not as generic I/O errors (the
//!   kill or timeout itself is then delivered at the greenlet's next evergreen blocking point).
//! * The server's connection limit (`max_connections`, 151 by default, or a user's
//!   `MAX_USER_CONNECTIONS`) is [`ErrorKind::TooManyConnections`], with what to change.
//! * The pool calls [`evergreen::monkey::patch_all`] itself, so no caller can forget.
//!
//! Use it from greenlets. In the root context (`main` outside any greenlet) the hooks pass
//! straight through: a statement there is a plain blocking call that stops the whole hub and
//! that no evergreen `Timeout` or kill can interrupt (fine for set-up such as migrations).
//!
//! # gevent / Python mapping
//!
//! | the sample (gevent + a blocking driver) | here | differences |
//! |---|---|---|
//! | `MySQLdb.connect()` per task after `patch_all()` | [`MySqlPool::get`] | pooled, bounded, FIFO |
//! | `cursor.execute(sql, params)`; `conn.commit()` per row | [`PooledConn::exec_drop`], [`MySqlPool::upsert`] | batched multi-row upserts in one transaction |
//! | `gevent.pool.Pool(n)` around DB work | `max_connections` | a checkout timeout instead of waiting forever |
//! | `sqlalchemy` `pool_pre_ping` | [`PoolOptions::check_after_idle`] | pings only after idleness |

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen::Semaphore;
use mysql::prelude::{FromRow, Queryable};
use mysql::{Conn, Opts, OptsBuilder, TxOpts};

/// The `mysql` crate's types that appear in this module's API, re-exported so callers need
/// not depend on the same version of the crate themselves.
pub use mysql::{prelude, Params, Row, Transaction, Value};

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad URL, option, identifier or row shape. The caller's fault.
    Config,
    /// The server could not be reached or refused the login (after the retries).
    Connect,
    /// The server's connection limit was reached (`max_connections`, or the user's
    /// `MAX_USER_CONNECTIONS`).
    TooManyConnections,
    /// No pooled connection became free within the checkout timeout.
    CheckoutTimeout,
    /// The server did not answer within the read or write timeout.
    Timeout,
    /// The greenlet was killed while it waited on the server (`ECANCELED` from a hooked call).
    Cancelled,
    /// An evergreen `Timeout` expired while the greenlet waited on the server (`ETIMEDOUT`
    /// from a hooked call).
    Interrupted,
    /// The connection was lost (killed on the server, server restart, network).
    ConnectionLost,
    /// The server answered with an error (syntax, constraint, ...); see [`Error::code`].
    Server,
    /// Any other driver failure (protocol, conversion).
    Driver,
}

/// A MySQL pool error: what was being done, and why it failed. Never contains the password.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    message: String,
    code: Option<u16>,
}

impl Error {
    fn new(kind: ErrorKind, context: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            kind,
            context: context.into(),
            message: message.into(),
            code: None,
        }
    }

    /// Classifies a driver error, naming `context`.
    fn from_mysql(context: impl Into<String>, e: mysql::Error) -> Error {
        let context = context.into();
        match e {
            mysql::Error::MySqlError(m) => {
                let kind = match m.code {
                    1040 | 1203 | 1226 => ErrorKind::TooManyConnections,
                    1053 | 1927 | 2006 | 2013 => ErrorKind::ConnectionLost,
                    _ => ErrorKind::Server,
                };
                let mut message = format!("server error {} ({}): {}", m.code, m.state, m.message);
                if kind == ErrorKind::TooManyConnections {
                    message.push_str(
                        "; the server's connection limit is reached: lower the pool's \
                         max_connections (or run fewer pools), or raise the server's \
                         max_connections / the user's MAX_USER_CONNECTIONS",
                    );
                }
                Error {
                    kind,
                    context,
                    message,
                    code: Some(m.code),
                }
            }
            mysql::Error::IoError(e) => Error::from_io(context, &e),
            mysql::Error::CodecError(c) => {
                let io = std::error::Error::source(&c).and_then(|s| s.downcast_ref::<io::Error>());
                match io {
                    Some(e) => Error::from_io(context, e),
                    None => Error::new(
                        ErrorKind::ConnectionLost,
                        context,
                        format!("protocol error: {c}"),
                    ),
                }
            }
            mysql::Error::DriverError(mysql::DriverError::ConnectTimeout) => {
                Error::new(ErrorKind::Timeout, context, "connecting timed out")
            }
            mysql::Error::DriverError(mysql::DriverError::CouldNotConnect(Some((
                addr,
                desc,
                _,
            )))) => Error::new(
                ErrorKind::Connect,
                context,
                format!("cannot connect to {addr}: {desc}"),
            ),
            mysql::Error::DriverError(d) => Error::new(ErrorKind::Driver, context, d.to_string()),
            mysql::Error::UrlError(u) => Error::new(ErrorKind::Config, context, u.to_string()),
            other => Error::new(ErrorKind::Driver, context, other.to_string()),
        }
    }

    fn from_io(context: String, e: &io::Error) -> Error {
        let (kind, what) = match (e.raw_os_error(), e.kind()) {
            (Some(libc::ECANCELED), _) => (
                ErrorKind::Cancelled,
                "the greenlet was killed while waiting on the server".to_string(),
            ),
            (Some(libc::ETIMEDOUT), _) => (
                ErrorKind::Interrupted,
                "an evergreen Timeout expired while waiting on the server".to_string(),
            ),
            (_, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => (
                ErrorKind::Timeout,
                "the server did not answer within the read/write timeout".to_string(),
            ),
            (
                _,
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe,
            ) => (ErrorKind::ConnectionLost, format!("connection lost: {e}")),
            (_, io::ErrorKind::ConnectionRefused) => {
                (ErrorKind::Connect, format!("connection refused: {e}"))
            }
            _ => (ErrorKind::ConnectionLost, format!("I/O error: {e}")),
        };
        Error::new(kind, context, what)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's error code, for [`ErrorKind::Server`] and the limits.
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// Whether the connection was lost (a retry on a new connection may succeed).
    fn is_connection_lost(&self) -> bool {
        self.kind == ErrorKind::ConnectionLost
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.message)
    }
}

impl std::error::Error for Error {}

impl From<mysql::Error> for Error {
    fn from(e: mysql::Error) -> Error {
        Error::from_mysql("query", e)
    }
}

/// Settings of a [`MySqlPool`].
#[derive(Clone)]
pub struct PoolOptions {
    host: String,
    port: u16,
    user: Option<String>,
    pass: Option<String>,
    db: Option<String>,
    max_connections: usize,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    connect_attempts: u32,
    check_after_idle: Duration,
    max_idle_time: Duration,
}

impl fmt::Debug for PoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.pass.as_ref().map(|_| "REDACTED"))
            .field("db", &self.db)
            .field("max_connections", &self.max_connections)
            .field("checkout_timeout", &self.checkout_timeout)
            .finish_non_exhaustive()
    }
}

impl PoolOptions {
    /// Options for `host:port`, with the defaults: 10 connections, checkout timeout 30 s,
    /// connect timeout 5 s, read and write timeouts 60 s, 4 connect attempts, a ping before
    /// reusing a connection idle for more than 5 s, idle connections closed after 10 min.
    pub fn new(host: &str, port: u16) -> PoolOptions {
        PoolOptions {
            host: host.to_string(),
            port,
            user: None,
            pass: None,
            db: None,
            max_connections: 10,
            checkout_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            connect_attempts: 4,
            check_after_idle: Duration::from_secs(5),
            max_idle_time: Duration::from_secs(600),
        }
    }

    /// Options from `mysql://user:password@host:port/database`. The error never shows the
    /// password.
    pub fn from_url(url: &str) -> Result<PoolOptions, Error> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Config,
                "parsing the database URL",
                why.to_string(),
            )
        };
        let u = url::Url::parse(url).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if u.scheme() != "mysql" {
            return Err(bad(&format!(
                "the scheme is {:?}, expected \"mysql\"",
                u.scheme()
            )));
        }
        if u.query().is_some_and(|q| !q.is_empty()) {
            let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
            return Err(bad(&format!(
                "URL options are not supported ({}); set them on PoolOptions",
                names.join(", ")
            )));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let mut o = PoolOptions::new(host, u.port().unwrap_or(3306));
        let dec = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| bad("the user or password is not valid percent-encoded UTF-8"))
        };
        if !u.username().is_empty() {
            o.user = Some(dec(u.username())?);
        }
        if let Some(p) = u.password() {
            o.pass = Some(dec(p)?);
        }
        let db = u.path().trim_start_matches('/');
        if !db.is_empty() {
            o.db = Some(dec(db)?);
        }
        Ok(o)
    }

    /// The user name.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }
    /// The password (never shown in errors or `Debug`).
    pub fn password(mut self, pass: &str) -> Self {
        self.pass = Some(pass.to_string());
        self
    }
    /// The default database (`None`: no database selected).
    pub fn database(mut self, db: Option<&str>) -> Self {
        self.db = db.map(str::to_string);
        self
    }
    /// The most connections open at once (default 10, at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
    /// How long [`MySqlPool::get`] waits for a free connection (default 30 s).
    pub fn checkout_timeout(mut self, t: Duration) -> Self {
        self.checkout_timeout = t;
        self
    }
    /// TCP connect timeout per attempt (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// How long a statement may wait for the server's answer (default 60 s).
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }
    /// How long a write may block (default 60 s).
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }
    /// Attempts to open a connection before giving up (default 4, at least 1).
    pub fn connect_attempts(mut self, n: u32) -> Self {
        self.connect_attempts = n.max(1);
        self
    }
    /// Ping a connection before reuse if it was idle longer than this (default 5 s).
    pub fn check_after_idle(mut self, t: Duration) -> Self {
        self.check_after_idle = t;
        self
    }
    /// Close idle connections older than this (default 10 min).
    pub fn max_idle_time(mut self, t: Duration) -> Self {
        self.max_idle_time = t;
        self
    }

    fn target(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user.as_deref().unwrap_or(""),
            self.host,
            self.port,
            self.db.as_deref().unwrap_or("")
        )
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Counters of a [`MySqlPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections checked out now.
    pub in_use: usize,
    /// The most connections checked out at once so far.
    pub max_in_use: usize,
    /// Idle connections in the pool now.
    pub idle: usize,
    /// Greenlets waiting for a connection now.
    pub waiting: usize,
    /// Connections opened so far.
    pub opened: u64,
    /// Connections closed because they saw an error, failed a ping, or were interrupted.
    pub discarded: u64,
    /// Pings sent before reusing an idle connection.
    pub pings: u64,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Inner {
    opts: PoolOptions,
    permits: Semaphore,
    idle: RefCell<Vec<Idle>>,
    stats: RefCell<PoolStats>,
}

/// A bounded, FIFO pool of MySQL connections for the greenlets of one hub. Cheap to clone
/// (clones share the pool). See the [module docs](self).
#[derive(Clone)]
pub struct MySqlPool {
    inner: Rc<Inner>,
}

impl fmt::Debug for MySqlPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlPool")
            .field("opts", &self.inner.opts)
            .field("stats", &self.stats())
            .finish()
    }
}

impl MySqlPool {
    /// A pool (no connection is opened until one is needed). Turns monkey patching on.
    pub fn new(opts: PoolOptions) -> MySqlPool {
        evergreen::monkey::patch_all();
        MySqlPool {
            inner: Rc::new(Inner {
                permits: Semaphore::new(opts.max_connections),
                opts,
                idle: RefCell::new(Vec::new()),
                stats: RefCell::new(PoolStats::default()),
            }),
        }
    }

    /// The pool's options.
    pub fn options(&self) -> &PoolOptions {
        &self.inner.opts
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        let mut s = *self.inner.stats.borrow();
        s.idle = self.inner.idle.borrow().len();
        s.waiting = self.inner.permits.waiter_count();
        s
    }

    /// Closes the idle connections.
    pub fn clear_idle(&self) {
        self.inner.idle.borrow_mut().clear();
    }

    /// Checks a connection out: waits (FIFO) at most the checkout timeout for a permit, then
    /// reuses an idle connection (pinged first if it was idle long) or opens a new one.
    pub fn get(&self) -> Result<PooledConn, Error> {
        let o = &self.inner.opts;
        let permitted = self.inner.permits.acquire_nowait()
            || self.inner.permits.acquire_timeout(o.checkout_timeout);
        if !permitted {
            return Err(Error::new(
                ErrorKind::CheckoutTimeout,
                format!("checking out a connection to {}", o.target()),
                format!(
                    "no connection became free within {:?} (all {} in use, {} greenlets waiting); \
                     raise max_connections or checkout_timeout, or hold connections for less time",
                    o.checkout_timeout,
                    o.max_connections,
                    self.inner.permits.waiter_count()
                ),
            ));
        }
        // From here the permit is ours: the guard gives it back on every path.
        let mut pc = PooledConn {
            pool: self.inner.clone(),
            conn: None,
            reused: false,
            in_call: Cell::new(false),
            broken: Cell::new(false),
        };
        {
            let mut st = self.inner.stats.borrow_mut();
            st.in_use += 1;
            st.max_in_use = st.max_in_use.max(st.in_use);
        }
        pc.conn = Some(match self.take_idle()? {
            Some(c) => {
                pc.reused = true;
                c
            }
            None => self.connect()?,
        });
        Ok(pc)
    }

    /// The freshest healthy idle connection, if any.
    fn take_idle(&self) -> Result<Option<Conn>, Error> {
        let o = &self.inner.opts;
        loop {
            let Some(Idle { mut conn, since }) = self.inner.idle.borrow_mut().pop() else {
                return Ok(None);
            };
            let idle_for = evergreen::hub::now().saturating_duration_since(since);
            if idle_for >= o.max_idle_time {
                self.inner.stats.borrow_mut().discarded += 1;
                continue;
            }
            if idle_for >= o.check_after_idle {
                self.inner.stats.borrow_mut().pings += 1;
                if let Err(e) = conn.ping() {
                    let e = Error::from_mysql("pinging an idle connection", e);
                    log::debug!("mysql pool: dropping a dead idle connection: {e}");
                    self.inner.stats.borrow_mut().discarded += 1;
                    if matches!(e.kind, ErrorKind::Cancelled | ErrorKind::Interrupted) {
                        return Err(e);
                    }
                    continue;
                }
            }
            return Ok(Some(conn));
        }
    }

    /// Opens a connection, retrying failures that may be transient with back-off.
    fn connect(&self) -> Result<Conn, Error> {
        let o = &self.inner.opts;
        let context = format!("connecting to {}", o.target());
        for (name, t) in [
            ("connect_timeout", o.connect_timeout),
            ("read_timeout", o.read_timeout),
            ("write_timeout", o.write_timeout),
        ] {
            if t.is_zero() {
                return Err(Error::new(
                    ErrorKind::Config,
                    &context,
                    format!("{name} must be greater than zero"),
                ));
            }
        }
        let ip = evergreen::net::dns::resolve(&o.host)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    &context,
                    format!("resolving {}: {e}", o.host),
                )
            })?
            .into_iter()
            .next()
            .ok_or_else(|| Error::new(ErrorKind::Connect, &context, "the host has no address"))?;
        let builder = OptsBuilder::new()
            .ip_or_hostname(Some(ip.to_string()))
            .tcp_port(o.port)
            .user(o.user.clone())
            .pass(o.pass.clone())
            .db_name(o.db.clone())
            .prefer_socket(false)
            .tcp_connect_timeout(Some(o.connect_timeout))
            .read_timeout(Some(o.read_timeout))
            .write_timeout(Some(o.write_timeout));
        let opts = Opts::from(builder);
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Conn::new(opts.clone()) {
                Ok(c) => {
                    self.inner.stats.borrow_mut().opened += 1;
                    return Ok(c);
                }
                Err(e) => {
                    let e = Error::from_mysql(&context, e);
                    let transient = matches!(
                        e.kind,
                        ErrorKind::Connect
                            | ErrorKind::Timeout
                            | ErrorKind::ConnectionLost
                            | ErrorKind::TooManyConnections
                    );
                    if !transient || attempt >= o.connect_attempts {
                        let mut e = e;
                        if attempt > 1 {
                            e.message = format!("{} (after {attempt} attempts)", e.message);
                        }
                        return Err(e);
                    }
                    log::debug!(
                        "mysql pool: {e}; attempt {attempt} of {}",
                        o.connect_attempts
                    );
                    let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                    evergreen::sleep(jittered);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Runs `f` with a connection, retrying once on a new connection if a reused one turns
    /// out to be lost before `f` did anything (see [`PooledConn::run`]).
    pub fn with_conn<R>(
        &self,
        f: impl FnMut(&mut Conn) -> Result<R, mysql::Error>,
    ) -> Result<R, Error> {
        self.get()?.run("query", f)
    }

    /// Applies `migrations` in order, each once: a table `_evergreen_migrations` records the
    /// names applied. Use idempotent DDL (`CREATE TABLE IF NOT EXISTS ...`): MySQL commits DDL
    /// at once, so a crash between a migration and its record runs it again.
    pub fn migrate(&self, migrations: &[Migration]) -> Result<usize, Error> {
        let mut c = self.get()?;
        c.run("creating the migrations table", |c| {
            c.query_drop(
                "CREATE TABLE IF NOT EXISTS _evergreen_migrations (\
                 name VARCHAR(191) NOT NULL PRIMARY KEY, \
                 applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
            )
        })?;
        let done: Vec<String> = c.run("reading the applied migrations", |c| {
            c.query("SELECT name FROM _evergreen_migrations")
        })?;
        let mut applied = 0;
        for m in migrations {
            if done.iter().any(|d| d == m.name) {
                continue;
            }
            c.run(&format!("applying migration {:?}", m.name), |c| {
                c.query_drop(m.sql)?;
                c.exec_drop(
                    "INSERT INTO _evergreen_migrations (name) VALUES (?)",
                    (m.name,),
                )
            })?;
            applied += 1;
        }
        Ok(applied)
    }

    /// Inserts `rows` into `table`, updating `update` columns of rows whose key already exists
    /// (`INSERT … ON DUPLICATE KEY UPDATE`), in statements of at most `batch` rows, all in one
    /// transaction: either every row is written or none. Values always travel as parameters;
    /// the table and column names must be plain identifiers (letters, digits, `_`).
    ///
    /// Statements carry `batch` rows while that many are left, then the rest in power-of-two
    /// sizes (1,000 rows with `batch` 300: 300, 300, 300, 64, 32, 4), so a table's upserts
    /// prepare at most `1 + ⌈log2(batch)⌉` distinct statements however the row counts vary
    /// (one per row count would grow the server's and the driver's statement caches, and
    /// evict the connection's other statements, with every new remainder).
    pub fn upsert(
        &self,
        table: &str,
        columns: &[&str],
        update: &[&str],
        rows: &[Vec<Value>],
        batch: usize,
    ) -> Result<UpsertStats, Error> {
        let context = format!("upserting {} rows into {table}", rows.len());
        let cfg = |m: String| Error::new(ErrorKind::Config, &context, m);
        for id in std::iter::once(&table).chain(columns).chain(update) {
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(cfg(format!("{id:?} is not a plain SQL identifier")));
            }
        }
        if columns.is_empty() {
            return Err(cfg("no columns".into()));
        }
        if let Some(u) = update.iter().find(|u| !columns.contains(u)) {
            return Err(cfg(format!("update column {u:?} is not among the columns")));
        }
        if let Some((i, r)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != columns.len())
        {
            return Err(cfg(format!(
                "row {i} has {} values for {} columns",
                r.len(),
                columns.len()
            )));
        }
        let batch = batch.clamp(1, 65_535 / columns.len());
        if rows.is_empty() {
            return Ok(UpsertStats::default());
        }
        let cols = columns
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let one = format!("({})", vec!["?"; columns.len()].join(", "));
        let on_dup = if update.is_empty() {
            // Nothing to update: keep the existing row (a no-op assignment).
            format!("`{0}` = `{0}`", columns[0])
        } else {
            update
                .iter()
                .map(|u| format!("`{u}` = VALUES(`{u}`)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql_for = |n: usize| {
            format!(
                "INSERT INTO `{table}` ({cols}) VALUES {} ON DUPLICATE KEY UPDATE {on_dup}",
                vec![one.as_str(); n].join(", ")
            )
        };
        let mut c = self.get()?;
        c.transaction(&context, |tx| {
            let mut stats = UpsertStats::default();
            let mut i = 0;
            while i < rows.len() {
                let n = upsert_chunk_len(rows.len() - i, batch);
                let chunk = &rows[i..i + n];
                let params: Vec<Value> = chunk.iter().flat_map(|r| r.iter().cloned()).collect();
                tx.exec_drop(sql_for(n), Params::Positional(params))?;
                stats.batches += 1;
                stats.rows += n as u64;
                stats.affected += tx.affected_rows();
                i += n;
            }
            Ok(stats)
        })
    }
}

/// How many of the `left` rows still to send go into the next upsert statement: `batch` while
/// at least that many are left, then the largest power of two not above what is left. Each row
/// count is a distinct prepared statement (on the server and in the driver's cache), so an
/// upsert of any number of rows uses at most `1 + ⌈log2(batch)⌉` distinct statements, the same
/// few for every call, instead of one per remainder size; the cost is a few more statements
/// per call (the remainder's binary digits: at most `⌈log2(batch)⌉` instead of one).
fn upsert_chunk_len(left: usize, batch: usize) -> usize {
    debug_assert!(left > 0 && batch > 0);
    if left >= batch {
        batch
    } else {
        1 << (usize::BITS - 1 - left.leading_zeros())
    }
}

/// One schema migration (see [`MySqlPool::migrate`]).
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// A unique, stable name.
    pub name: &'static str,
    /// The statement (idempotent DDL).
    pub sql: &'static str,
}

/// What an upsert did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpsertStats {
    /// Rows sent.
    pub rows: u64,
    /// Statements sent.
    pub batches: u64,
    /// The server's affected-row count: 1 per inserted row, 2 per updated row, 0 per row left
    /// unchanged.
    pub affected: u64,
}

/// A checked-out connection. Returned to the pool when dropped, unless it saw an error or
/// was interrupted (then it is closed).
pub struct PooledConn {
    pool: Rc<Inner>,
    conn: Option<Conn>,
    /// Taken from the idle list (so it may have died while idle).
    reused: bool,
    /// A call is in progress: if the greenlet unwinds (kill, `Timeout`) with this set, the
    /// connection is in an unknown state.
    in_call: Cell<bool>,
    broken: Cell<bool>,
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field(
                "connection_id",
                &self.conn.as_ref().map(|c| c.connection_id()),
            )
            .field("reused", &self.reused)
            .field("broken", &self.broken.get())
            .finish()
    }
}

impl PooledConn {
    /// Runs `f` on the connection. On error the connection is marked broken (it will be
    /// closed, not pooled) and the error classified, naming `context`. If this is the first
    /// call on a connection reused from the pool and the connection turns out to be lost
    /// (killed on the server while idle, server restarted), `f` is run again, once, on a new
    /// connection.
    ///
    /// # Caution
    ///
    /// That retry assumes the lost connection died while idle, before `f`'s statement. If it
    /// died *while* the server executed an autocommit statement, after the commit but before
    /// the answer, the statement runs twice. Use [`transaction`](Self::transaction) (which
    /// never replays) or idempotent statements (upserts) where that matters.
    pub fn run<R>(
        &mut self,
        context: &str,
        f: impl FnMut(&mut Conn) -> Result<R, mysql::Error>,
    ) -> Result<R, Error> {
        self.run_named(|| context, f)
    }

    /// [`run`](Self::run) with the context made only when an error needs it (a statement's
    /// context is cut from its text, which costs more than a point query's own bookkeeping).
    fn run_named<'c, R>(
        &mut self,
        context: impl Fn() -> &'c str,
        mut f: impl FnMut(&mut Conn) -> Result<R, mysql::Error>,
    ) -> Result<R, Error> {
        if self.broken.get() {
            let context = context();
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                context,
                "this connection saw an error earlier and was discarded; check out another",
            ));
        }
        loop {
            let first_on_reused = std::mem::replace(&mut self.reused, false);
            let conn = self.conn.as_mut().expect("a checked-out connection");
            self.in_call.set(true);
            let r = f(conn);
            self.in_call.set(false);
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let e = Error::from_mysql(context(), e);
                    self.discard();
                    if first_on_reused && e.is_connection_lost() {
                        log::debug!("mysql pool: a pooled connection was lost ({e}); reconnecting");
                        self.conn = Some(
                            MySqlPool {
                                inner: self.pool.clone(),
                            }
                            .connect()?,
                        );
                        self.broken.set(false);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn discard(&mut self) {
        if !self.broken.replace(true) {
            self.pool.stats.borrow_mut().discarded += 1;
        }
    }

    /// `query_drop`: runs a text statement, discarding its result.
    pub fn query_drop(&mut self, sql: &str) -> Result<(), Error> {
        self.run_named(|| sql_context(sql), |c| c.query_drop(sql))
    }

    /// Runs a text query, collecting its rows.
    pub fn query<T: FromRow>(&mut self, sql: &str) -> Result<Vec<T>, Error> {
        self.run_named(|| sql_context(sql), |c| c.query(sql))
    }

    /// Runs a prepared statement with parameters, discarding the result.
    pub fn exec_drop(&mut self, sql: &str, params: impl Into<Params> + Clone) -> Result<(), Error> {
        self.run_named(|| sql_context(sql), |c| c.exec_drop(sql, params.clone()))
    }

    /// Runs a prepared statement with parameters, collecting its rows.
    pub fn exec<T: FromRow>(
        &mut self,
        sql: &str,
        params: impl Into<Params> + Clone,
    ) -> Result<Vec<T>, Error> {
        self.run_named(|| sql_context(sql), |c| c.exec(sql, params.clone()))
    }

    /// Runs a prepared statement with parameters, returning its first row.
    pub fn exec_first<T: FromRow>(
        &mut self,
        sql: &str,
        params: impl Into<Params> + Clone,
    ) -> Result<Option<T>, Error> {
        self.run_named(|| sql_context(sql), |c| c.exec_first(sql, params.clone()))
    }

    /// Runs `f` in a transaction: committed if `f` returns `Ok`, rolled back otherwise (and on
    /// a kill or timeout, when the connection is closed with the transaction open, the server
    /// rolls it back).
    ///
    /// `f` runs at most once: on a connection reused from the pool, a ping first makes sure the
    /// connection is alive (replacing it once if it was lost), so a transaction is never
    /// replayed after a failure that might have come after its `COMMIT` reached the server.
    pub fn transaction<R>(
        &mut self,
        context: &str,
        mut f: impl FnMut(&mut mysql::Transaction<'_>) -> Result<R, mysql::Error>,
    ) -> Result<R, Error> {
        if self.reused {
            self.pool.stats.borrow_mut().pings += 1;
            self.run(context, |c| c.ping())?;
        }
        debug_assert!(
            !self.reused,
            "the retry-once window is closed before the body runs"
        );
        self.run(context, |c| {
            let mut tx = c.start_transaction(TxOpts::default())?;
            let v = f(&mut tx)?; // dropping `tx` on error rolls back
            tx.commit()?;
            Ok(v)
        })
    }

    /// The server's id of this connection (`CONNECTION_ID()`).
    pub fn connection_id(&self) -> u32 {
        self.conn.as_ref().map_or(0, |c| c.connection_id())
    }

    /// Closes this connection instead of returning it to the pool.
    pub fn close(mut self) {
        self.discard();
    }
}

/// A short context for an error: the statement's first words, no values (they may be data).
fn sql_context(sql: &str) -> &str {
    let s = sql.trim_start();
    let end = s.char_indices().nth(60).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let conn = self.conn.take();
        {
            let mut st = self.pool.stats.borrow_mut();
            st.in_use -= 1;
        }
        if let Some(conn) = conn {
            if self.broken.get() || self.in_call.get() {
                if !self.broken.get() {
                    self.pool.stats.borrow_mut().discarded += 1;
                }
                // Closing sends COM_QUIT through the hooks; with an interrupt pending it fails
                // at once, and the socket is closed either way.
                drop(conn);
            } else {
                self.pool.idle.borrow_mut().push(Idle {
                    conn,
                    since: evergreen::hub::now(),
                });
            }
        }
        self.pool.permits.release();
    }
}

#[cfg(test)]
mod tests {
    use super::upsert_chunk_len;

    /// The statement sizes an upsert of `n` rows sends.
    fn sizes(mut n: usize, batch: usize) -> Vec<usize> {
        let mut out = Vec::new();
        while n > 0 {
            let k = upsert_chunk_len(n, batch);
            out.push(k);
            n -= k;
        }
        out
    }

    #[test]
    fn upsert_chunks_cover_every_row_in_a_few_distinct_sizes() {
        assert_eq!(sizes(1000, 300), [300, 300, 300, 64, 32, 4]);
        assert_eq!(sizes(7, 500), [4, 2, 1]);
        assert_eq!(sizes(500, 500), [500]);
        for batch in [1, 2, 3, 16, 100, 500] {
            let mut distinct = std::collections::BTreeSet::new();
            for n in 1..=2_000 {
                let s = sizes(n, batch);
                assert_eq!(s.iter().sum::<usize>(), n);
                assert!(s.iter().all(|&k| k <= batch));
                distinct.extend(s);
            }
            // `batch` itself and the powers of two below it.
            let bound = 1 + batch.next_power_of_two().trailing_zeros() as usize;
            assert!(distinct.len() <= bound, "batch {batch}: {distinct:?}");
        }
    }
}
