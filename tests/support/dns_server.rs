//! A tiny, real DNS server for the resolver's integration tests.
//!
//! It runs on plain std threads (never on evergreen, so it keeps answering while the hub under
//! test is blocked or broken), listens on `127.0.0.1` on an ephemeral port, and serves UDP and
//! TCP on the same port number, as a real nameserver does. What it answers is scripted per
//! name by a [`Zone`]; every query it receives is logged, so a test can check what the resolver
//! asked, over which transport, in which order.
//!
//! ```ignore
//! #[path = "support/dns_server.rs"]
//! mod dns_server;
//! use dns_server::{Behavior, TestDnsServer, Zone};
//!
//! let server = TestDnsServer::start(Zone::new().with(
//!     "db.test",
//!     Behavior::Answer { a: vec![[10, 0, 0, 5].into()], aaaa: vec![] },
//! ));
//! // ... point the resolver at server.addr(), look up "db.test" ...
//! assert_eq!(server.queries()[0].1, "db.test");
//! drop(server); // stops and joins every thread, within ~50 ms
//! ```
//!
//! # Implementation
//!
//! One thread receives UDP datagrams; one accepts TCP connections and spawns a thread per
//! connection, which serves length-prefixed queries until the client closes it. All sockets
//! use short timeouts (or non-blocking accept) and check a shared stop flag between waits, so
//! `Drop` sets the flag and joins everything promptly: no thread outlives the server.
//! Queries are parsed by this file's own minimal parser (one question, uncompressed name), not
//! by the runtime's private `dns_wire` module, so a bug there cannot hide itself here.
//! Answers are built as a real server would: the question echoed byte for byte, owners
//! compressed as pointers (to the question name, or into the previous CNAME's data), AA and
//! RA set, RD copied. A UDP answer longer than 512 bytes is replaced by a truncated one
//! (TC=1, no records), as the client sends no EDNS(0) record.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// TTL of every address record served.
pub const TTL: u32 = 300;
/// TTL of every CNAME record served (longer than [`TTL`], so a client's minimum is `TTL`).
pub const CNAME_TTL: u32 = 600;
/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;

/// How often blocked server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// The largest UDP answer sent; longer ones are truncated (RFC 1035 §4.2.1).
const MAX_UDP: usize = 512;
/// How many CNAMEs the server follows inside its zone before answering SERVFAIL.
const MAX_CHAIN: usize = 8;

/// The transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// A UDP datagram.
    Udp,
    /// A length-prefixed message on a TCP connection.
    Tcp,
}

/// How the server answers queries for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// NOERROR with these addresses: `a` for type A queries, `aaaa` for AAAA, nothing for
    /// other types (NODATA). Either list may be empty.
    Answer {
        /// Answers to A queries.
        a: Vec<Ipv4Addr>,
        /// Answers to AAAA queries.
        aaaa: Vec<Ipv6Addr>,
    },
    /// A CNAME to this name, followed by the target's answer when the target is in the zone
    /// (NXDOMAIN when it is not, as a recursive server reports).
    Cname(String),
    /// NXDOMAIN: the name does not exist. Also what unknown names get.
    NxDomain,
    /// Never answer (the query is still logged): the client must time out.
    Drop,
    /// Over UDP: an answer with TC=1 and no records. Over TCP: these A records in full.
    Truncate {
        /// The A records served over TCP.
        a: Vec<Ipv4Addr>,
    },
    /// SERVFAIL.
    ServFail,
}

/// The scripted names: lowercase, without a trailing dot, each with its [`Behavior`].
#[derive(Clone, Debug, Default)]
pub struct Zone {
    names: HashMap<String, Behavior>,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds `name` (any case, trailing dot optional) with `behavior`; builder style.
    pub fn with(mut self, name: &str, behavior: Behavior) -> Zone {
        self.insert(name, behavior);
        self
    }

    /// Adds or replaces `name` (any case, trailing dot optional).
    pub fn insert(&mut self, name: &str, behavior: Behavior) -> &mut Zone {
        self.names.insert(normalize(name), behavior);
        self
    }

    /// The behavior scripted for `name`, if any.
    fn get(&self, name: &str) -> Option<&Behavior> {
        self.names.get(&normalize(name))
    }
}

/// Lowercases a name and drops one trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// One logged query: transport, name (lowercase, no trailing dot), query type.
pub type LoggedQuery = (Proto, String, u16);

/// What the server threads share.
struct Shared {
    zone: Zone,
    log: Mutex<Vec<LoggedQuery>>,
    stop: AtomicBool,
    /// Send TCP answers one byte per this interval (a slow or hostile server).
    tcp_drip: Option<std::time::Duration>,
}

/// A running test DNS server; dropping it stops and joins all its threads.
pub struct TestDnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl TestDnsServer {
    /// Binds UDP and TCP on the same ephemeral port of 127.0.0.1 and starts serving `zone`.
    ///
    /// # Panics
    ///
    /// If no port free for both protocols is found in 50 tries, or a thread cannot start.
    pub fn start(zone: Zone) -> TestDnsServer {
        TestDnsServer::start_with(zone, None)
    }

    /// Like [`start`](Self::start), but every TCP answer is sent one byte per `interval`.
    pub fn start_dripping_tcp(zone: Zone, interval: std::time::Duration) -> TestDnsServer {
        TestDnsServer::start_with(zone, Some(interval))
    }

    fn start_with(zone: Zone, tcp_drip: Option<std::time::Duration>) -> TestDnsServer {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("UDP local address");
        udp.set_read_timeout(Some(POLL)).expect("UDP read timeout");
        tcp.set_nonblocking(true).expect("non-blocking listener");
        let shared = Arc::new(Shared {
            zone,
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            tcp_drip,
        });
        let udp_thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("test-dns-udp".into())
                .spawn(move || serve_udp(&udp, &shared))
                .expect("spawn UDP thread")
        };
        let tcp_thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("test-dns-tcp".into())
                .spawn(move || serve_tcp(&tcp, &shared))
                .expect("spawn TCP thread")
        };
        TestDnsServer {
            addr,
            shared,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// The address served, for both UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query received so far, in arrival order (malformed ones are not logged).
    pub fn queries(&self) -> Vec<LoggedQuery> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for TestDnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            // A server thread that panicked already printed why; failing again in drop
            // would only turn a test failure into an abort.
            let _ = t.join();
        }
    }
}

/// Locks the log even if a server thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Binds a UDP socket on an ephemeral port and a TCP listener on the same port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP on 127.0.0.1");
        let port = udp.local_addr().expect("UDP local address").port();
        if let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return (udp, tcp);
        }
    }
    panic!("test DNS server: no port free for both UDP and TCP after 50 tries");
}

/// The UDP thread: answer each datagram until stopped.
fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 65535];
    while !shared.stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if let Some(reply) = handle(&buf[..n], Proto::Udp, shared) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            // ICMP port unreachable from an earlier reply, reported on Linux as
            // ConnectionRefused: not our problem, keep serving.
            Err(_) => {}
        }
    }
}

/// The TCP accept thread: one thread per connection, all joined before it returns.
fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("test-dns-conn".into())
                    .spawn(move || serve_conn(stream, &shared));
                if let Ok(handle) = spawned {
                    conns.push(handle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL / 4),
            Err(_) => thread::sleep(POLL / 4),
        }
        conns.retain(|c| !c.is_finished());
    }
    for c in conns {
        let _ = c.join();
    }
}

/// One TCP connection: read length-prefixed queries and answer each, until the client
/// closes the connection, an error occurs, or the server stops.
fn serve_conn(mut stream: TcpStream, shared: &Shared) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    loop {
        let mut prefix = [0u8; 2];
        if !read_full(&mut stream, &mut prefix, shared) {
            break;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if !read_full(&mut stream, &mut msg, shared) {
            break;
        }
        if let Some(reply) = handle(&msg, Proto::Tcp, shared) {
            let len = u16::try_from(reply.len()).expect("reply fits a TCP frame");
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            let sent = match shared.tcp_drip {
                None => stream.write_all(&framed).is_ok(),
                Some(interval) => framed.iter().all(|b| {
                    thread::sleep(interval); // pacing a hostile server, not ordering a test
                    !shared.stop.load(Ordering::SeqCst) && stream.write_all(&[*b]).is_ok()
                }),
            };
            if !sent {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Fills `buf` from `stream`, waiting in [`POLL`] slices; false on EOF, error or stop.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], shared: &Shared) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// A read timeout, as Unix reports it.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------------------------
// Queries and answers
// ---------------------------------------------------------------------------------------------

/// A parsed query: what the server needs to answer it.
struct Query<'a> {
    /// The query's id, echoed.
    id: u16,
    /// The query's flags (opcode and RD are echoed).
    flags: u16,
    /// The question name, lowercase, no trailing dot ("" for the root).
    name: String,
    /// The question type.
    qtype: u16,
    /// The question section's bytes, echoed verbatim.
    question: &'a [u8],
}

/// Parses a standard query with exactly one question and an uncompressed name.
fn parse_query(msg: &[u8]) -> Option<Query<'_>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
    let id = u16_at(0)?;
    let flags = u16_at(2)?;
    if flags & 0x8000 != 0 || u16_at(4)? != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut pos = 12;
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None; // compression or reserved label types have no place in a query
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
    let qtype = u16_at(pos)?;
    let _class = u16_at(pos + 2)?;
    Some(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        question: &msg[12..pos + 4],
    })
}

/// Answers one message; `None` means send nothing.
fn handle(msg: &[u8], proto: Proto, shared: &Shared) -> Option<Vec<u8>> {
    let Some(query) = parse_query(msg) else {
        // A header we can read gets FORMERR; anything shorter is ignored.
        let header = msg.get(..4)?;
        if header[2] & 0x80 != 0 {
            return None; // a response: never answer those
        }
        let mut reply = vec![header[0], header[1], 0x80, 0x01];
        reply.extend_from_slice(&[0; 8]);
        return Some(reply);
    };
    lock(&shared.log).push((proto, query.name.clone(), query.qtype));
    let reply = answer(&query, proto, &shared.zone)?;
    if proto == Proto::Udp && reply.len() > MAX_UDP {
        return Some(response(&query, 0x0200, 0, &[]));
    }
    Some(reply)
}

/// Builds a response: header (with `extra_flags`, `rcode`, and `ancount` records), the echoed
/// question, then `records` (already encoded).
fn response(query: &Query<'_>, extra_flags: u16, ancount: u16, records: &[u8]) -> Vec<u8> {
    // QR, opcode copied, AA, RD copied, RA.
    let flags = 0x8000 | (query.flags & 0x7800) | 0x0400 | (query.flags & 0x0100) | 0x0080;
    let mut m = Vec::with_capacity(12 + query.question.len() + records.len());
    m.extend_from_slice(&query.id.to_be_bytes());
    m.extend_from_slice(&(flags | extra_flags).to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&ancount.to_be_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(query.question);
    m.extend_from_slice(records);
    m
}

/// Encodes a name uncompressed (lowercase is not forced: the zone's spelling is served).
fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out
}

/// Appends one record whose owner is a compression pointer to `owner_at`; returns the offset
/// of its data in the finished message (`base` is where `records` will start).
fn push_record(
    records: &mut Vec<u8>,
    base: usize,
    owner_at: usize,
    rtype: u16,
    ttl: u32,
    rdata: &[u8],
) -> usize {
    let pointer = 0xC000 | u16::try_from(owner_at).expect("owner within pointer range");
    records.extend_from_slice(&pointer.to_be_bytes());
    records.extend_from_slice(&rtype.to_be_bytes());
    records.extend_from_slice(&1u16.to_be_bytes()); // class IN
    records.extend_from_slice(&ttl.to_be_bytes());
    let rdlength = u16::try_from(rdata.len()).expect("record data fits");
    records.extend_from_slice(&rdlength.to_be_bytes());
    let rdata_at = base + records.len();
    records.extend_from_slice(rdata);
    rdata_at
}

/// Builds the answer the zone scripts for `query`, or `None` for [`Behavior::Drop`].
fn answer(query: &Query<'_>, proto: Proto, zone: &Zone) -> Option<Vec<u8>> {
    const NOERROR: u16 = 0;
    const SERVFAIL: u16 = 2;
    const NXDOMAIN: u16 = 3;
    const TC: u16 = 0x0200;

    let base = 12 + query.question.len();
    let mut records = Vec::new();
    let mut count: u16 = 0;
    // The name currently being answered, and where its spelling sits in the message.
    let mut name = query.name.clone();
    let mut owner_at = 12;
    let mut flags = NOERROR;
    for step in 0..=MAX_CHAIN {
        let behavior = zone.get(&name).cloned().unwrap_or(Behavior::NxDomain);
        match behavior {
            Behavior::Drop => return None,
            Behavior::NxDomain => {
                flags = NXDOMAIN;
                break;
            }
            Behavior::ServFail => {
                flags = SERVFAIL;
                break;
            }
            Behavior::Answer { a, aaaa } => {
                match query.qtype {
                    TYPE_A => {
                        for ip in a {
                            push_record(&mut records, base, owner_at, TYPE_A, TTL, &ip.octets());
                            count += 1;
                        }
                    }
                    TYPE_AAAA => {
                        for ip in aaaa {
                            push_record(&mut records, base, owner_at, TYPE_AAAA, TTL, &ip.octets());
                            count += 1;
                        }
                    }
                    _ => {}
                }
                break;
            }
            Behavior::Truncate { a } => {
                if proto == Proto::Udp {
                    return Some(response(query, TC, 0, &[]));
                }
                if query.qtype == TYPE_A {
                    for ip in a {
                        push_record(&mut records, base, owner_at, TYPE_A, TTL, &ip.octets());
                        count += 1;
                    }
                }
                break;
            }
            Behavior::Cname(target) => {
                if step == MAX_CHAIN {
                    flags = SERVFAIL; // a CNAME chain too long, or a loop, in the zone
                    break;
                }
                let rdata = encode_name(&target);
                owner_at = push_record(&mut records, base, owner_at, TYPE_CNAME, CNAME_TTL, &rdata);
                count += 1;
                name = normalize(&target);
            }
        }
    }
    if flags == SERVFAIL {
        return Some(response(query, SERVFAIL, 0, &[]));
    }
    Some(response(query, flags, count, &records))
}
