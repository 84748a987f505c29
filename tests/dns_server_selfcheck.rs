//! Self-check of the test DNS server in `support/dns_server.rs`: before the resolver's tests
//! trust it, it is queried here with plain std sockets and hand-built packets, and every
//! scripted behavior is checked byte by byte, over UDP and TCP, together with its query log
//! and its prompt shutdown.

#[path = "support/dns_server.rs"]
mod dns_server;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use dns_server::{Behavior, Proto, TestDnsServer, Zone, CNAME_TTL, TTL};

const A: u16 = 1;
const CNAME: u16 = 5;
const AAAA: u16 = 28;
/// Upper bound on any single wait in these tests, so a broken server fails, never hangs.
const WAIT: Duration = Duration::from_secs(5);

/// A standard query with RD set for `name` (trailing dot optional).
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// Sends `q` over UDP and returns the reply, or `None` if none came within `wait`.
fn ask_udp(server: SocketAddr, q: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(q, server).unwrap();
    let mut buf = [0u8; 65535];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from, server);
            Some(buf[..n].to_vec())
        }
        Err(e) => {
            let timed_out = matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            assert!(timed_out, "unexpected UDP error: {e}");
            None
        }
    }
}

/// Sends `q` as one TCP frame on `conn` and reads one framed reply.
fn ask_on(conn: &mut TcpStream, q: &[u8]) -> Vec<u8> {
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    conn.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut reply).unwrap();
    reply
}

/// Opens a TCP connection to the server with [`WAIT`] as read timeout.
fn connect(server: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect_timeout(&server, WAIT).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn
}

/// Sends `q` over a fresh TCP connection and returns the reply.
fn ask_tcp(server: SocketAddr, q: &[u8]) -> Vec<u8> {
    ask_on(&mut connect(server), q)
}

/// A decoded reply, as far as these checks need.
#[derive(Debug)]
struct Reply {
    id: u16,
    flags: u16,
    question: Vec<u8>,
    /// (owner, type, ttl, data) per answer record; CNAME data decoded to a name.
    answers: Vec<(String, u16, u32, Vec<u8>)>,
}

impl Reply {
    fn rcode(&self) -> u16 {
        self.flags & 0x000F
    }

    fn tc(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    fn a(&self) -> Vec<Ipv4Addr> {
        let data = self.answers.iter().filter(|r| r.1 == A);
        data.map(|r| <[u8; 4]>::try_from(&r.3[..]).unwrap().into())
            .collect()
    }

    fn aaaa(&self) -> Vec<Ipv6Addr> {
        let data = self.answers.iter().filter(|r| r.1 == AAAA);
        data.map(|r| <[u8; 16]>::try_from(&r.3[..]).unwrap().into())
            .collect()
    }
}

/// Reads a possibly compressed name at `pos`: (dotted name, offset after it in place).
fn read_name(m: &[u8], mut pos: usize) -> (String, usize) {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..64 {
        let len = m[pos];
        if len == 0 {
            return (labels.join("."), end.unwrap_or(pos + 1));
        }
        if len & 0xC0 == 0xC0 {
            end.get_or_insert(pos + 2);
            let target = usize::from(len & 0x3F) << 8 | usize::from(m[pos + 1]);
            assert!(target < pos, "pointers must point backwards");
            pos = target;
        } else {
            let len = usize::from(len);
            labels.push(String::from_utf8(m[pos + 1..pos + 1 + len].to_vec()).unwrap());
            pos += 1 + len;
        }
    }
    panic!("name at {pos} does not end");
}

/// Decodes a reply and checks the invariants every reply must have.
fn decode(m: &[u8], q: &[u8]) -> Reply {
    assert!(m.len() >= 12, "reply shorter than a header: {m:?}");
    let u16_at = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
    let flags = u16_at(2);
    assert_ne!(flags & 0x8000, 0, "QR set");
    assert_eq!(flags & 0x0100, 0x0100, "RD copied");
    assert_eq!(flags & 0x0080, 0x0080, "RA set");
    assert_eq!(u16_at(4), 1, "one question");
    let question = m[12..q.len()].to_vec();
    assert_eq!(question, &q[12..], "question echoed verbatim");
    let mut pos = q.len();
    let mut answers = Vec::new();
    for _ in 0..u16_at(6) {
        let (owner, next) = read_name(m, pos);
        let rtype = u16_at(next);
        assert_eq!(u16_at(next + 2), 1, "class IN");
        let ttl = u32::from_be_bytes(m[next + 4..next + 8].try_into().unwrap());
        let len = usize::from(u16_at(next + 8));
        let data_at = next + 10;
        let data = if rtype == CNAME {
            let (target, end) = read_name(m, data_at);
            assert_eq!(end, data_at + len);
            target.into_bytes()
        } else {
            m[data_at..data_at + len].to_vec()
        };
        answers.push((owner, rtype, ttl, data));
        pos = data_at + len;
    }
    assert_eq!(pos, m.len(), "no trailing bytes");
    Reply {
        id: u16_at(0),
        flags,
        question,
        answers,
    }
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn zone() -> Zone {
    Zone::new()
        .with(
            "Host.Test",
            Behavior::Answer {
                a: vec![ip4("192.0.2.1"), ip4("192.0.2.2")],
                aaaa: vec![ip6("2001:db8::1")],
            },
        )
        .with("alias.test", Behavior::Cname("middle.test".into()))
        .with("middle.test", Behavior::Cname("host.test.".into()))
        .with("dangling.test", Behavior::Cname("missing.test".into()))
        .with("gone.test", Behavior::NxDomain)
        .with("broken.test", Behavior::ServFail)
        .with("silent.test", Behavior::Drop)
        .with(
            "big.test",
            Behavior::Truncate {
                a: vec![ip4("198.51.100.7")],
            },
        )
        .with(
            "huge.test",
            Behavior::Answer {
                a: (0..40).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect(),
                aaaa: vec![],
            },
        )
}

#[test]
fn answers_a_and_aaaa_over_udp_and_tcp() {
    let server = TestDnsServer::start(zone());
    let q = query(0x1234, "HoSt.TeSt.", A);
    for raw in [
        ask_udp(server.addr(), &q, WAIT).unwrap(),
        ask_tcp(server.addr(), &q),
    ] {
        let r = decode(&raw, &q);
        assert_eq!(r.id, 0x1234);
        assert_eq!((r.rcode(), r.tc()), (0, false));
        assert_eq!(r.a(), vec![ip4("192.0.2.1"), ip4("192.0.2.2")]);
        assert!(r.answers.iter().all(|x| x.0 == "HoSt.TeSt" && x.2 == TTL));
        assert_eq!(r.question, &q[12..]);
    }
    let q = query(7, "host.test", AAAA);
    let r = decode(&ask_udp(server.addr(), &q, WAIT).unwrap(), &q);
    assert_eq!(r.aaaa(), vec![ip6("2001:db8::1")]);
    assert!(r.a().is_empty());
    // Another type: NODATA.
    let q = query(8, "host.test", 16);
    let r = decode(&ask_udp(server.addr(), &q, WAIT).unwrap(), &q);
    assert_eq!((r.rcode(), r.answers.len()), (0, 0));
    assert_eq!(
        server.queries(),
        vec![
            (Proto::Udp, "host.test".to_owned(), A),
            (Proto::Tcp, "host.test".to_owned(), A),
            (Proto::Udp, "host.test".to_owned(), AAAA),
            (Proto::Udp, "host.test".to_owned(), 16),
        ]
    );
}

#[test]
fn follows_cname_chains_with_compressed_owners() {
    let server = TestDnsServer::start(zone());
    let q = query(1, "alias.test", A);
    let r = decode(&ask_udp(server.addr(), &q, WAIT).unwrap(), &q);
    assert_eq!(r.rcode(), 0);
    let summary: Vec<_> = r.answers.iter().map(|x| (x.0.as_str(), x.1, x.2)).collect();
    assert_eq!(
        summary,
        vec![
            ("alias.test", CNAME, CNAME_TTL),
            ("middle.test", CNAME, CNAME_TTL),
            ("host.test", A, TTL),
            ("host.test", A, TTL),
        ]
    );
    assert_eq!(r.answers[0].3, b"middle.test");
    assert_eq!(r.answers[1].3, b"host.test");
    // A CNAME to a name outside the zone: the CNAME, then NXDOMAIN.
    let q = query(2, "dangling.test", A);
    let r = decode(&ask_tcp(server.addr(), &q), &q);
    assert_eq!(r.rcode(), 3);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].1, CNAME);
}

#[test]
fn nxdomain_servfail_and_unknown_names() {
    let server = TestDnsServer::start(zone());
    for (name, rcode) in [("gone.test", 3), ("nowhere.example", 3), ("broken.test", 2)] {
        let q = query(3, name, A);
        let r = decode(&ask_udp(server.addr(), &q, WAIT).unwrap(), &q);
        assert_eq!((r.rcode(), r.answers.len()), (rcode, 0), "{name}");
        let r = decode(&ask_tcp(server.addr(), &q), &q);
        assert_eq!((r.rcode(), r.answers.len()), (rcode, 0), "{name} over TCP");
    }
}

#[test]
fn truncates_over_udp_and_answers_fully_over_tcp() {
    let server = TestDnsServer::start(zone());
    let q = query(4, "big.test", A);
    let r = decode(&ask_udp(server.addr(), &q, WAIT).unwrap(), &q);
    assert!(r.tc());
    assert_eq!((r.rcode(), r.answers.len()), (0, 0));
    let r = decode(&ask_tcp(server.addr(), &q), &q);
    assert!(!r.tc());
    assert_eq!(r.a(), vec![ip4("198.51.100.7")]);

    // An answer over 512 bytes is truncated over UDP too, and complete over TCP.
    let q = query(5, "huge.test", A);
    let raw = ask_udp(server.addr(), &q, WAIT).unwrap();
    assert!(raw.len() <= 512);
    let r = decode(&raw, &q);
    assert!(r.tc() && r.answers.is_empty());
    let r = decode(&ask_tcp(server.addr(), &q), &q);
    assert!(!r.tc());
    assert_eq!(r.a().len(), 40);
    assert_eq!(
        server.queries(),
        vec![
            (Proto::Udp, "big.test".to_owned(), A),
            (Proto::Tcp, "big.test".to_owned(), A),
            (Proto::Udp, "huge.test".to_owned(), A),
            (Proto::Tcp, "huge.test".to_owned(), A),
        ]
    );
}

#[test]
fn drop_behavior_never_answers_but_logs() {
    let server = TestDnsServer::start(zone());
    let q = query(6, "silent.test", A);
    assert_eq!(ask_udp(server.addr(), &q, Duration::from_millis(200)), None);
    // Over TCP the connection stays open and silent; later queries on it still work.
    let mut conn = connect(server.addr());
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    conn.write_all(&framed).unwrap();
    let mut byte = [0u8; 1];
    let err = conn.read(&mut byte).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let q2 = query(9, "host.test", A);
    let r = decode(&ask_on(&mut conn, &q2), &q2);
    assert_eq!(r.id, 9);
    assert_eq!(r.a().len(), 2);
    assert_eq!(
        server.queries(),
        vec![
            (Proto::Udp, "silent.test".to_owned(), A),
            (Proto::Tcp, "silent.test".to_owned(), A),
            (Proto::Tcp, "host.test".to_owned(), A),
        ]
    );
}

#[test]
fn several_queries_on_one_tcp_connection() {
    let server = TestDnsServer::start(zone());
    let mut conn = connect(server.addr());
    for (id, name, qtype, rcode) in [
        (10, "host.test", A, 0),
        (11, "host.test", AAAA, 0),
        (12, "gone.test", A, 3),
    ] {
        let q = query(id, name, qtype);
        let r = decode(&ask_on(&mut conn, &q), &q);
        assert_eq!((r.id, r.rcode()), (id, rcode));
    }
}

#[test]
fn malformed_queries_get_formerr_and_are_not_logged() {
    let server = TestDnsServer::start(zone());
    let garbage = [0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0];
    let raw = ask_udp(server.addr(), &garbage, WAIT).unwrap();
    assert_eq!(&raw[..4], &[0xAB, 0xCD, 0x80, 0x01]);
    // A response is never answered (no reflection loops).
    let mut response = query(1, "host.test", A);
    response[2] |= 0x80;
    assert_eq!(
        ask_udp(server.addr(), &response, Duration::from_millis(100)),
        None
    );
    assert!(server.queries().is_empty());
}

#[test]
fn drop_stops_every_thread_promptly() {
    let server = TestDnsServer::start(zone());
    let addr = server.addr();
    // An idle TCP connection and a connection mid-frame must not delay shutdown.
    let idle = connect(addr);
    let mut partial = connect(addr);
    partial.write_all(&[0, 40, 1, 2]).unwrap();
    let q = query(1, "host.test", A);
    assert!(ask_udp(addr, &q, WAIT).is_some());
    let started = Instant::now();
    drop(server);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "drop took {took:?}");
    // The port is no longer served: TCP is refused, and the old connections are closed.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    for mut conn in [idle, partial] {
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("read {n} bytes from a stopped server"),
        }
    }
}
