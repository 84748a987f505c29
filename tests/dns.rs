//! The cooperative resolver against a real (tiny) DNS server on 127.0.0.1 and a hosts file.

mod common;
#[path = "support/dns_server.rs"]
mod dns_server;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::run;
use dns_server::{Behavior, Proto, TestDnsServer, Zone};
use evergreen::net::dns::{Resolver, ResolverConfig};
use evergreen::net::{TcpListener, TcpStream};
use evergreen::spawn;

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn resolver(server: &TestDnsServer) -> Resolver {
    let mut c = ResolverConfig::with_nameserver(server.addr());
    c.timeout = Duration::from_millis(300);
    c.attempts = 1;
    Resolver::new(c)
}

#[test]
fn answers_a_and_aaaa_records_ipv4_first() {
    let server = TestDnsServer::start(Zone::new().with(
        "www.example.test",
        Behavior::Answer {
            a: vec![v4(192, 0, 2, 1), v4(192, 0, 2, 2)],
            aaaa: vec![Ipv6Addr::LOCALHOST],
        },
    ));
    let r = resolver(&server);
    run(move || {
        let got = r.resolve("www.example.test").unwrap();
        assert_eq!(
            got,
            [
                IpAddr::V4(v4(192, 0, 2, 1)),
                IpAddr::V4(v4(192, 0, 2, 2)),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
    });
    let q = server.queries();
    assert!(
        q.iter()
            .all(|(p, n, _)| *p == Proto::Udp && n == "www.example.test"),
        "{q:?}"
    );
    assert_eq!(q.len(), 2, "one A and one AAAA query");
}

#[test]
fn nxdomain_is_not_found_naming_the_host() {
    let server = TestDnsServer::start(Zone::new().with("gone.test", Behavior::NxDomain));
    let r = resolver(&server);
    run(move || {
        let e = r.resolve("gone.test").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("gone.test"), "{e}");
    });
}

#[test]
fn a_silent_server_times_out_without_blocking_the_hub() {
    let server = TestDnsServer::start(Zone::new().with("slow.test", Behavior::Drop));
    let r = resolver(&server);
    run(move || {
        let ticks = Rc::new(std::cell::Cell::new(0));
        let t2 = ticks.clone();
        let ticker = spawn(move || loop {
            t2.set(t2.get() + 1);
            evergreen::sleep(Duration::from_millis(5));
        });
        let start = Instant::now();
        let e = r.resolve("slow.test").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("slow.test"), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(
            ticks.get() >= 10,
            "the hub kept running ({} ticks)",
            ticks.get()
        );
        ticker.kill();
    });
    assert!(server.queries().len() >= 2);
}

#[test]
fn a_truncated_udp_answer_is_retried_over_tcp() {
    let server = TestDnsServer::start(Zone::new().with(
        "big.test",
        Behavior::Truncate {
            a: vec![v4(198, 51, 100, 7)],
        },
    ));
    let r = resolver(&server);
    run(move || {
        let got = r.resolve("big.test").unwrap();
        assert!(got.contains(&IpAddr::V4(v4(198, 51, 100, 7))), "{got:?}");
    });
    let q = server.queries();
    assert!(
        q.iter().any(|(p, _, t)| *p == Proto::Udp && *t == 1),
        "{q:?}"
    );
    assert!(
        q.iter().any(|(p, _, t)| *p == Proto::Tcp && *t == 1),
        "{q:?}"
    );
}

#[test]
fn cname_chains_are_followed() {
    let server = TestDnsServer::start(
        Zone::new()
            .with("alias.test", Behavior::Cname("real.test".into()))
            .with(
                "real.test",
                Behavior::Answer {
                    a: vec![v4(203, 0, 113, 9)],
                    aaaa: vec![],
                },
            ),
    );
    let r = resolver(&server);
    run(move || {
        assert_eq!(
            r.resolve("alias.test").unwrap(),
            [IpAddr::V4(v4(203, 0, 113, 9))]
        );
    });
}

#[test]
fn search_domains_complete_short_names() {
    let server = TestDnsServer::start(Zone::new().with(
        "db.corp.test",
        Behavior::Answer {
            a: vec![v4(10, 9, 8, 7)],
            aaaa: vec![],
        },
    ));
    let mut c = ResolverConfig::with_nameserver(server.addr());
    c.search = vec!["corp.test".into()];
    c.timeout = Duration::from_millis(300);
    let r = Resolver::new(c);
    run(move || {
        assert_eq!(r.resolve("db").unwrap(), [IpAddr::V4(v4(10, 9, 8, 7))]);
    });
}

#[test]
fn the_hosts_file_answers_first_and_ip_literals_never_query() {
    let server = TestDnsServer::start(Zone::new());
    let dir = std::env::temp_dir().join(format!("evergreen-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "# test hosts\n10.20.30.40  files.test  alias.files.test\n::1 six.test\n",
    )
    .unwrap();
    let mut c = ResolverConfig::with_nameserver(server.addr());
    c.hosts_path = Some(hosts.clone());
    let r = Resolver::new(c);
    run(move || {
        assert_eq!(
            r.resolve("FILES.test").unwrap(),
            [IpAddr::V4(v4(10, 20, 30, 40))]
        );
        assert_eq!(
            r.resolve("alias.files.test.").unwrap(),
            [IpAddr::V4(v4(10, 20, 30, 40))]
        );
        assert_eq!(
            r.resolve("six.test").unwrap(),
            [IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
        assert_eq!(
            r.resolve("127.0.0.1").unwrap(),
            [IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert_eq!(
            r.resolve("[::1]").unwrap(),
            [IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
    });
    assert!(
        server.queries().is_empty(),
        "nothing reached the DNS server"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_system_hosts_file_resolves_localhost() {
    run(|| {
        let got = Resolver::system().resolve("localhost").unwrap();
        assert!(got.iter().all(|ip| ip.is_loopback()), "{got:?}");
    });
}

#[test]
fn tcp_connect_by_host_name_uses_the_cooperative_resolver() {
    let server = TestDnsServer::start(Zone::new().with(
        "echo.test",
        Behavior::Answer {
            a: vec![Ipv4Addr::LOCALHOST],
            aaaa: vec![],
        },
    ));
    let r = resolver(&server);
    run(move || {
        evergreen::net::dns::set_default_resolver(r);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let acceptor = spawn(move || l.accept().map(|(_, a)| a.ip()));
        let s = TcpStream::connect(format!("echo.test:{port}")).unwrap();
        assert_eq!(
            s.peer_addr().unwrap(),
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
        );
        assert!(acceptor.into_result().unwrap().unwrap().is_loopback());
        let e = TcpStream::connect("nope.test:80").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let e = TcpStream::connect("no-port-here").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    });
}

/// Issue 7, item 7: the per-query timeout bounds the TCP fallback too: a server that drips its
/// answer one byte at a time cannot keep a lookup going (it used to take ~12 s for 200 ms).
#[test]
fn the_query_timeout_bounds_a_dripping_tcp_fallback() {
    let server = TestDnsServer::start_dripping_tcp(
        Zone::new().with(
            "drip.test",
            Behavior::Truncate {
                a: vec![v4(198, 51, 100, 9)],
            },
        ),
        Duration::from_millis(50),
    );
    let r = resolver(&server);
    run(move || {
        let start = Instant::now();
        let e = r.resolve("drip.test").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("drip.test"), "{e}");
        let took = start.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    });
    assert!(server.queries().iter().any(|(p, _, _)| *p == Proto::Tcp));
}
