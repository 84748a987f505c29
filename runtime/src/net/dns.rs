//! A cooperative stub resolver (gevent's `gevent.resolver`).
//!
//! glibc's `getaddrinfo` blocks the calling thread, and its internal socket calls bypass the
//! monkey-patching hooks, so evergreen resolves host names itself, in the calling greenlet:
//!
//! 1. an IP literal is returned as is, never queried;
//! 2. `/etc/hosts` is consulted;
//! 3. each candidate name (the `search`/`ndots` rules of `/etc/resolv.conf`) is queried for
//!    `A` and `AAAA` records over UDP at each nameserver in turn, `attempts` times, each query
//!    waiting at most `timeout`; an answer with the TC (truncated) bit is re-asked over TCP.
//!
//! `NXDOMAIN` moves on to the next candidate; when none resolves, the error is
//! `io::ErrorKind::NotFound` ("host not found: NAME"); when no server answered, `TimedOut`.
//!
//! Differences from glibc: no `/etc/nsswitch.conf` (files then DNS, always); no caching of
//! answers (the hosts file is re-read on each call, so edits apply at once).

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::dns_wire::{self, QType, ResolvConf};
use super::{TcpStream, UdpSocket};
use crate::hub::hub;

/// How a [`Resolver`] looks names up.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Servers to ask, in order.
    pub nameservers: Vec<SocketAddr>,
    /// Search domains for names with fewer than `ndots` dots.
    pub search: Vec<String>,
    /// See `resolv.conf(5)`.
    pub ndots: u32,
    /// How long one query waits for an answer.
    pub timeout: Duration,
    /// How many rounds over all nameservers.
    pub attempts: u32,
    /// The hosts file (`None`: skip it).
    pub hosts_path: Option<PathBuf>,
}

impl ResolverConfig {
    /// The system's configuration: `/etc/resolv.conf` (or the file named by
    /// `EVERGREEN_RESOLV_CONF`) and `/etc/hosts` (or `EVERGREEN_HOSTS`). A missing
    /// resolv.conf gives glibc's defaults (nameserver 127.0.0.1).
    pub fn system() -> ResolverConfig {
        let conf_path =
            std::env::var("EVERGREEN_RESOLV_CONF").unwrap_or_else(|_| "/etc/resolv.conf".into());
        let text = std::fs::read_to_string(&conf_path).unwrap_or_default();
        let rc = dns_wire::parse_resolv_conf(&text);
        let hosts = std::env::var("EVERGREEN_HOSTS").unwrap_or_else(|_| "/etc/hosts".into());
        ResolverConfig::from_resolv_conf(rc, Some(PathBuf::from(hosts)))
    }

    fn from_resolv_conf(rc: ResolvConf, hosts_path: Option<PathBuf>) -> ResolverConfig {
        ResolverConfig {
            nameservers: rc.nameservers,
            search: rc.search,
            ndots: rc.ndots,
            timeout: rc.timeout,
            attempts: rc.attempts.max(1),
            hosts_path,
        }
    }

    /// A configuration that asks only `nameserver`, with no hosts file and no search
    /// domains (for tests and special setups).
    pub fn with_nameserver(nameserver: SocketAddr) -> ResolverConfig {
        ResolverConfig {
            nameservers: vec![nameserver],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(2),
            attempts: 2,
            hosts_path: None,
        }
    }

    fn as_resolv_conf(&self) -> ResolvConf {
        ResolvConf {
            nameservers: self.nameservers.clone(),
            search: self.search.clone(),
            ndots: self.ndots,
            timeout: self.timeout,
            attempts: self.attempts,
        }
    }
}

/// A cooperative stub resolver. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Resolver {
    config: ResolverConfig,
}

thread_local! {
    static DEFAULT: RefCell<Option<Resolver>> = const { RefCell::new(None) };
    static NEXT_ID: Cell<u32> = const { Cell::new(0) };
}

fn query_id() -> u16 {
    // Not security-grade (a stub resolver on a trusted path), but unpredictable enough to
    // tell answers to different queries apart.
    NEXT_ID.with(|n| {
        let mut x = n.get();
        if x == 0 {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(0x9e37_79b9);
            x = t | 1;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        n.set(x);
        (x >> 7) as u16
    })
}

/// Resolves `host` with this thread's default resolver (the system's configuration unless
/// [`set_default_resolver`] replaced it).
pub fn resolve(host: &str) -> io::Result<Vec<IpAddr>> {
    let r = DEFAULT.with(|d| d.borrow_mut().get_or_insert_with(Resolver::system).clone());
    r.resolve(host)
}

/// Replaces this thread's default resolver (used by [`resolve`] and by
/// `TcpStream::connect("host:port")`).
pub fn set_default_resolver(r: Resolver) {
    DEFAULT.with(|d| *d.borrow_mut() = Some(r));
}

impl Resolver {
    /// A resolver with the given configuration.
    pub fn new(config: ResolverConfig) -> Resolver {
        Resolver { config }
    }

    /// A resolver with the system's configuration.
    pub fn system() -> Resolver {
        Resolver::new(ResolverConfig::system())
    }

    /// Its configuration.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// The addresses of `host`: IPv4 first, then IPv6.
    pub fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if host.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty host name",
            ));
        }
        if let Some(path) = &self.config.hosts_path {
            if let Ok(text) = std::fs::read_to_string(path) {
                let entries = dns_wire::parse_hosts(&text);
                let found = dns_wire::lookup_hosts(&entries, host);
                if !found.is_empty() {
                    return Ok(found);
                }
            }
        }
        let mut last: Option<io::Error> = None;
        for name in self.config.as_resolv_conf().candidates(host) {
            match self.lookup_name(&name) {
                Ok(v) if !v.is_empty() => return Ok(v),
                Ok(_) => {}
                Err(e) => {
                    // NXDOMAIN (NotFound) just moves on; keep the most telling error.
                    if last
                        .as_ref()
                        .is_none_or(|l| l.kind() == io::ErrorKind::NotFound)
                    {
                        last = Some(e);
                    }
                }
            }
        }
        Err(match last {
            Some(e) if e.kind() != io::ErrorKind::NotFound => e,
            _ => io::Error::new(io::ErrorKind::NotFound, format!("host not found: {host}")),
        })
    }

    fn lookup_name(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let a = self.query(name, QType::A);
        let aaaa = self.query(name, QType::Aaaa);
        match (a, aaaa) {
            (Ok(mut v4), Ok(v6)) => {
                v4.extend(v6);
                Ok(v4)
            }
            (Ok(v), Err(_)) | (Err(_), Ok(v)) if !v.is_empty() => Ok(v),
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(e),
        }
    }

    /// One question, over UDP (TCP if the answer was truncated), trying every nameserver,
    /// `attempts` times.
    fn query(&self, name: &str, qtype: QType) -> io::Result<Vec<IpAddr>> {
        if self.config.nameservers.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no nameserver configured to look up {name}"),
            ));
        }
        let mut last: Option<io::Error> = None;
        for _ in 0..self.config.attempts {
            for ns in &self.config.nameservers {
                match self.query_udp(*ns, name, qtype) {
                    Ok(v) => return Ok(v),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("DNS query failed")))
    }

    fn query_udp(&self, ns: SocketAddr, name: &str, qtype: QType) -> io::Result<Vec<IpAddr>> {
        let id = query_id();
        let q = dns_wire::build_query(id, name, qtype)?;
        let local: SocketAddr = match ns {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(ns)?;
        sock.send(&q)?;
        let deadline = hub().far_deadline(self.config.timeout);
        // Without EDNS0 a UDP answer is at most 512 bytes; a larger buffer tolerates servers
        // that send more anyway.
        let mut buf = vec![0u8; dns_wire::MAX_UDP_PAYLOAD * 8];
        loop {
            let left = deadline.saturating_duration_since(hub().now());
            if left.is_zero() {
                return Err(timed_out(name, qtype, ns, self.config.timeout));
            }
            sock.set_read_timeout(Some(left))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(timed_out(name, qtype, ns, self.config.timeout))
                }
                Err(e) => return Err(e),
            };
            match dns_wire::parse_response(id, name, qtype, &buf[..n]) {
                Ok(ans) if ans.truncated => return self.query_tcp(ns, name, qtype, deadline),
                Ok(ans) => return Ok(ans.addrs),
                // A stray or forged datagram (wrong id or question): keep waiting.
                Err(dns_wire::DnsError::IdMismatch { .. })
                | Err(dns_wire::DnsError::NotResponse)
                | Err(dns_wire::DnsError::QuestionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn query_tcp(
        &self,
        ns: SocketAddr,
        name: &str,
        qtype: QType,
        deadline: Instant,
    ) -> io::Result<Vec<IpAddr>> {
        let id = query_id();
        let q = dns_wire::build_query(id, name, qtype)?;
        let left = deadline.saturating_duration_since(hub().now());
        if left.is_zero() {
            return Err(timed_out(name, qtype, ns, self.config.timeout));
        }
        // The query's deadline bounds the whole exchange, not each read: a server that drips
        // its answer a byte at a time must not keep the lookup going.
        let exchange = crate::Timeout::new(left).run(|| -> io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(ns, left)?;
            s.write_all(&dns_wire::tcp_frame(&q))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut msg = vec![0u8; dns_wire::tcp_frame_len(len)];
            s.read_exact(&mut msg)?;
            Ok(msg)
        });
        let msg = match exchange {
            Ok(r) => r?,
            Err(_) => return Err(timed_out(name, qtype, ns, self.config.timeout)),
        };
        let ans = dns_wire::parse_response(id, name, qtype, &msg)?;
        Ok(ans.addrs)
    }
}

fn timed_out(name: &str, qtype: QType, ns: SocketAddr, t: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("DNS query for {name} ({qtype:?}) to {ns} timed out after {t:?}"),
    )
}
