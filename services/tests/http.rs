//! The HTTP client against test servers on 127.0.0.1 (evergreen `StreamServer`s in the same
//! hub): keep-alive, chunked bodies, dead pooled connections, timeouts, retries, redirects,
//! malformed responses, TLS, and many concurrent requests.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use evergreen_services::fetch::http::{Client, ErrorKind};

const SECRET: &str = "SECRET-API-KEY-4242";

fn client() -> evergreen_services::fetch::http::ClientBuilder {
    Client::builder()
        .default_header("apikey", SECRET)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

/// A greenlet that GETs `url` with `c`: the body, or the error's text.
fn spawn_get(c: &Client, url: String) -> evergreen::Greenlet<Result<String, String>> {
    let c = c.clone();
    evergreen::spawn(move || {
        c.get(&url)
            .send()
            .map(|r| r.text())
            .map_err(|e| e.to_string())
    })
}

#[test]
fn keep_alive_reuses_one_connection_counted_by_the_server() {
    run(|| {
        let srv = TestServer::start(|req| ok(&format!("hello {}", req.path)));
        let c = client().build().unwrap();
        for i in 0..20 {
            let r = c.get(&srv.url(&format!("/n{i}"))).send().unwrap();
            assert_eq!((r.status(), r.text()), (200, format!("hello /n{i}")));
        }
        assert_eq!(
            srv.connections(),
            1,
            "every request on one keep-alive connection"
        );
        let seen = srv.seen();
        assert!(seen
            .iter()
            .all(|s| s.conn == 1 && s.header("apikey") == Some(SECRET)));
        assert_eq!(c.pool_stats().opened, 1);
        assert_eq!(c.pool_stats().reused, 19);
        srv.stop();
    });
}

#[test]
fn connection_close_and_keep_alive_off_open_new_connections() {
    run(|| {
        let srv = TestServer::start(|_| {
            Reply::BytesThenClose(response(200, &[("Connection", "close")], b"bye"))
        });
        let c = client().build().unwrap();
        for _ in 0..3 {
            assert_eq!(c.get(&srv.url("/")).send().unwrap().text(), "bye");
        }
        assert_eq!(srv.connections(), 3);
        srv.stop();

        let srv = TestServer::start(|_| ok("x"));
        let c = client().keep_alive(false).build().unwrap();
        for _ in 0..3 {
            c.get(&srv.url("/")).send().unwrap();
        }
        assert!(srv
            .seen()
            .iter()
            .all(|s| s.header("connection") == Some("close")));
        assert_eq!(c.pool_stats().reused, 0);
        srv.stop();
    });
}

#[test]
fn chunked_bodies_arrive_whole_and_the_connection_is_reused() {
    run(|| {
        let srv = TestServer::start(|_| {
            Reply::Pieces(vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                b"5\r\nhel".to_vec(),
                b"lo\r\n7;ext=x\r\n, world\r\n".to_vec(),
                b"0\r\nX-Trailer: t\r\n\r\n".to_vec(),
            ])
        });
        let c = client().build().unwrap();
        for _ in 0..3 {
            assert_eq!(c.get(&srv.url("/")).send().unwrap().text(), "hello, world");
        }
        assert_eq!(srv.connections(), 1);
        srv.stop();
    });
}

#[test]
fn post_sends_its_body_with_content_length() {
    run(|| {
        let srv = TestServer::start(|req| {
            Reply::Bytes(response(
                201,
                &[],
                format!("got {} bytes", req.body.len()).as_bytes(),
            ))
        });
        let c = client().build().unwrap();
        let r = c
            .post(&srv.url("/items"))
            .json_body(&serde_json::json!({"a": 1}))
            .send()
            .unwrap();
        assert_eq!((r.status(), r.text()), (201, "got 7 bytes".to_string()));
        let seen = srv.seen();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].body, br#"{"a":1}"#);
        assert_eq!(seen[0].header("content-length"), Some("7"));
        assert_eq!(seen[0].header("content-type"), Some("application/json"));
        srv.stop();
    });
}

#[test]
fn head_204_and_304_have_no_body_even_with_content_length() {
    run(|| {
        let srv = TestServer::start(|req| match req.path.as_str() {
            // A HEAD answer announces the length of the GET body but sends none.
            "/head" => Reply::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec()),
            "/204" => Reply::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            _ => Reply::Bytes(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n".to_vec()),
        });
        let c = client().build().unwrap();
        let r = c.head(&srv.url("/head")).send().unwrap();
        assert_eq!(
            (r.status(), r.bytes().len(), r.header("content-length")),
            (200, 0, Some("100"))
        );
        assert_eq!(c.get(&srv.url("/204")).send().unwrap().status(), 204);
        assert_eq!(c.get(&srv.url("/304")).send().unwrap().status(), 304);
        assert_eq!(
            srv.connections(),
            1,
            "no body was waited for, so the connection stayed usable"
        );
        srv.stop();
    });
}

#[test]
fn a_pooled_connection_closed_by_the_server_is_replaced_once_for_idempotent_requests() {
    run(|| {
        // Every response is followed by the server closing the connection, without saying
        // `Connection: close`: the client pools it, and the next request finds it dead.
        let srv = TestServer::start(|_| Reply::BytesThenClose(response(200, &[], b"ok")));
        let c = client().max_retries(0).build().unwrap();
        for _ in 0..3 {
            assert_eq!(c.get(&srv.url("/")).send().unwrap().text(), "ok");
        }
        assert_eq!(srv.connections(), 3);
        // A POST is not retried on a dead pooled connection (it might have been processed)...
        let e = assert_err(
            c.post(&srv.url("/p")).body("x").send(),
            ErrorKind::Io,
            &["closed the pooled connection", &srv.url("/p")],
        );
        assert!(!e.to_string().contains(SECRET));
        // ...unless the caller says it is idempotent.
        let r = c
            .post(&srv.url("/p"))
            .body("x")
            .idempotent(true)
            .send()
            .unwrap();
        assert_eq!(r.text(), "ok");
        srv.stop();
    });
}

#[test]
fn a_pooled_connection_reset_by_the_server_is_replaced_too() {
    run(|| {
        // The server answers, then resets the connection (RST instead of FIN): the next
        // request on the pooled connection fails with ECONNRESET and is sent again on a new one.
        let srv = TestServer::start(|_| Reply::BytesThenReset(response(200, &[], b"ok")));
        let c = client().max_retries(0).build().unwrap();
        for _ in 0..3 {
            assert_eq!(c.get(&srv.url("/")).send().unwrap().text(), "ok");
        }
        assert_eq!(srv.connections(), 3);
        assert_eq!(
            c.pool_stats().retries,
            0,
            "a dead pooled connection is not a retry"
        );
        srv.stop();
    });
}

#[test]
fn a_slow_server_times_out_while_other_greenlets_keep_running() {
    run_virtual(|| {
        let srv =
            TestServer::start(|_| Reply::After(Duration::from_secs(3600), Box::new(ok("late"))));
        let c = client()
            .read_timeout(Duration::from_secs(2))
            .max_retries(0)
            .build()
            .unwrap();
        let ticks = Rc::new(Cell::new(0u32));
        let t = ticks.clone();
        let ticker = evergreen::spawn(move || loop {
            evergreen::sleep(Duration::from_millis(100));
            t.set(t.get() + 1);
        });
        let start = evergreen::hub::now();
        let e = assert_err(
            c.get(&srv.url("/slow")).send(),
            ErrorKind::Timeout,
            &["read timeout", "2s", "/slow"],
        );
        assert_eq!(evergreen::hub::now() - start, Duration::from_secs(2));
        assert!(e.is_timeout());
        assert!(
            ticks.get() >= 19,
            "the ticker ran {} times in 2 s",
            ticks.get()
        );
        // The total timeout bounds retries of read timeouts too.
        let c = client()
            .read_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let start = evergreen::hub::now();
        assert_err(
            c.get(&srv.url("/slow")).send(),
            ErrorKind::Timeout,
            &["/slow"],
        );
        let took = evergreen::hub::now() - start;
        assert!(took <= Duration::from_secs(5), "{took:?}");
        ticker.kill();
        srv.stop();
    });
}

#[test]
fn refused_connections_are_retried_with_backoff_then_fail_clearly() {
    run_virtual(|| {
        let addr = refused_addr();
        let url = format!("http://127.0.0.1:{}/users?apikey=leak", addr.port());
        let c = client()
            .backoff(Duration::from_millis(100), Duration::from_secs(10))
            .build()
            .unwrap();
        let start = evergreen::hub::now();
        let e = assert_err(
            c.get(&url).send(),
            ErrorKind::Connect,
            &[
                "cannot connect to 127.0.0.1",
                "after 6 attempts",
                "apikey=REDACTED",
            ],
        );
        let took = evergreen::hub::now() - start;
        // Five back-offs of 100, 200, 400, 800, 1600 ms, each jittered down to half at most.
        assert!(
            took >= Duration::from_millis(1550) && took <= Duration::from_millis(3100),
            "{took:?}"
        );
        let msg = e.to_string();
        assert!(!msg.contains("leak") && !msg.contains(SECRET), "{msg}");
    });
}

#[test]
fn status_503_with_retry_after_is_retried_after_the_delay_asked() {
    run_virtual(|| {
        let n = Rc::new(Cell::new(0));
        let n2 = n.clone();
        let srv = TestServer::start(move |_| {
            n2.set(n2.get() + 1);
            if n2.get() <= 2 {
                Reply::Bytes(response(503, &[("Retry-After", "3")], b"busy"))
            } else {
                ok("finally")
            }
        });
        let c = client().build().unwrap();
        let start = evergreen::hub::now();
        let r = c.get(&srv.url("/")).send().unwrap();
        assert_eq!((r.status(), r.text()), (200, "finally".to_string()));
        assert_eq!(evergreen::hub::now() - start, Duration::from_secs(6));
        assert_eq!(n.get(), 3);
        assert_eq!(c.pool_stats().retries, 2);
        // A POST is not retried on 503; the status is an error with the body's start.
        n.set(0);
        let r = c.post(&srv.url("/p")).body("b").send().unwrap();
        assert_eq!(r.status(), 503);
        let e = assert_err(
            r.error_for_status(),
            ErrorKind::Status,
            &["HTTP 503", "\"busy\""],
        );
        assert_eq!(e.status(), Some(503));
        // A Retry-After beyond the limit ends the retries at once.
        n.set(0);
        let c = client()
            .max_retry_after(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(c.get(&srv.url("/")).send().unwrap().status(), 503);
        assert_eq!(n.get(), 1);
        srv.stop();
    });
}

#[test]
fn redirects_are_followed_and_a_loop_or_too_many_fail_clearly() {
    run(|| {
        let srv = TestServer::start(|req| {
            let p = req.path.as_str();
            let redirect =
                |code: u16, to: &str| Reply::Bytes(response(code, &[("Location", to)], b""));
            match p {
                "/a" => redirect(302, "/b"),
                "/b" => redirect(301, "c"),
                "/c" => ok("at c"),
                "/form" => redirect(303, "/c"),
                "/x" => redirect(307, "/y"),
                "/y" => redirect(308, "/x"),
                _ if p.starts_with("/n/") => {
                    let k: u32 = p[3..].parse().unwrap_or(0);
                    redirect(302, &format!("/n/{}", k + 1))
                }
                _ => Reply::Bytes(response(404, &[], b"no")),
            }
        });
        let c = client().build().unwrap();
        let r = c.get(&srv.url("/a")).send().unwrap();
        assert_eq!((r.text(), r.url().path()), ("at c".to_string(), "/c"));
        let r = c.post(&srv.url("/form")).body("data").send().unwrap();
        assert_eq!(r.text(), "at c");
        let last = srv.seen().pop().unwrap();
        assert_eq!(
            (last.method.as_str(), last.body.len()),
            ("GET", 0),
            "303 turns a POST into a GET"
        );
        assert_err(
            c.get(&srv.url("/x")).send(),
            ErrorKind::Redirect,
            &["redirect loop", "/x -> ", "/y -> ", "/x"],
        );
        assert_err(
            c.get(&srv.url("/n/0")).send(),
            ErrorKind::Redirect,
            &["more than 10 redirects"],
        );
        let c = client().max_redirects(0).build().unwrap();
        assert_eq!(c.get(&srv.url("/a")).send().unwrap().status(), 302);
        srv.stop();
    });
}

#[test]
fn a_redirect_to_another_origin_drops_the_api_key() {
    run(|| {
        let other = TestServer::start(|_| ok("other"));
        let target = other.url("/landing");
        let srv =
            TestServer::start(move |_| Reply::Bytes(response(302, &[("Location", &target)], b"")));
        let c = client().build().unwrap();
        assert_eq!(c.get(&srv.url("/go")).send().unwrap().text(), "other");
        assert_eq!(srv.seen()[0].header("apikey"), Some(SECRET));
        assert_eq!(other.seen()[0].header("apikey"), None);
        srv.stop();
        other.stop();
    });
}

#[test]
fn malformed_responses_are_clear_errors_never_panics() {
    run(|| {
        let cases: Vec<(&str, Vec<u8>, ErrorKind, &str)> = vec![
            (
                "/status",
                b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec(),
                ErrorKind::Malformed,
                "invalid status code",
            ),
            (
                "/version",
                b"ICY 200 OK\r\n\r\n".to_vec(),
                ErrorKind::Malformed,
                "HTTP version",
            ),
            (
                "/header",
                b"HTTP/1.1 200 OK\r\nNo Colon Here\r\n\r\n".to_vec(),
                ErrorKind::Malformed,
                "header",
            ),
            (
                "/length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n".to_vec(),
                ErrorKind::Malformed,
                "invalid Content-Length",
            ),
            (
                "/chunk",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n".to_vec(),
                ErrorKind::Malformed,
                "invalid chunk size",
            ),
            (
                "/chunkbig",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"
                    .to_vec(),
                ErrorKind::Malformed,
                "too large",
            ),
            (
                "/truncated",
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(),
                ErrorKind::Malformed,
                "after 9 of the 100",
            ),
            (
                "/truncchunk",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc".to_vec(),
                ErrorKind::Malformed,
                "inside a chunk",
            ),
            (
                "/oversize",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n".to_vec(),
                ErrorKind::TooLarge,
                "limit of 1000000",
            ),
            (
                "/nothing",
                Vec::new(),
                ErrorKind::Io,
                "closed the connection before sending a response",
            ),
        ];
        let table: Vec<(String, Vec<u8>)> = cases
            .iter()
            .map(|(p, b, _, _)| (p.to_string(), b.clone()))
            .collect();
        let srv = TestServer::start(move |req| {
            let bytes = table
                .iter()
                .find(|(p, _)| *p == req.path)
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
            Reply::BytesThenClose(bytes)
        });
        let c = client()
            .max_retries(0)
            .max_response_bytes(1_000_000)
            .build()
            .unwrap();
        for (path, _, kind, want) in &cases {
            let url = srv.url(path);
            let e = assert_err(c.get(&url).send(), *kind, &[want, &url]);
            assert!(!e.to_string().contains(SECRET));
        }
        srv.stop();
    });
}

#[test]
fn oversize_chunked_and_until_close_bodies_are_refused() {
    run(|| {
        let srv = TestServer::start(|req| {
            let mut b = if req.path == "/chunked" {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\n\r\n".to_vec()
            };
            for _ in 0..100 {
                if req.path == "/chunked" {
                    b.extend_from_slice(b"400\r\n");
                    b.extend_from_slice(&[b'a'; 1024]);
                    b.extend_from_slice(b"\r\n");
                } else {
                    b.extend_from_slice(&[b'a'; 1024]);
                }
            }
            Reply::BytesThenClose(b)
        });
        let c = client().max_response_bytes(10_000).build().unwrap();
        assert_err(
            c.get(&srv.url("/chunked")).send(),
            ErrorKind::TooLarge,
            &["limit of 10000"],
        );
        assert_err(
            c.get(&srv.url("/close")).send(),
            ErrorKind::TooLarge,
            &["limit of 10000"],
        );
        srv.stop();
    });
}

#[test]
fn bad_json_and_bad_status_name_the_status_and_a_snippet() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Users {
        responses: Vec<String>,
    }
    run(|| {
        let srv = TestServer::start(|req| match req.path.as_str() {
            "/bad" => Reply::Bytes(response(200, &[], b"{\"responses\": [1, 2")),
            "/html" => Reply::Bytes(response(200, &[], b"<html>maintenance</html>")),
            _ => Reply::Bytes(response(500, &[], b"{\"error\": \"database down\"}")),
        });
        let c = client().max_retries(0).build().unwrap();
        let e = assert_err(
            c.get(&srv.url("/bad")).json::<Users>(),
            ErrorKind::Json,
            &["invalid JSON", "HTTP 200", "{\\\"responses\\\": [1, 2"],
        );
        assert_eq!(e.status(), Some(200));
        assert_err(
            c.get(&srv.url("/html")).json::<Users>(),
            ErrorKind::Json,
            &["<html>maintenance"],
        );
        assert_err(
            c.get(&srv.url("/err")).json::<Users>(),
            ErrorKind::Status,
            &["HTTP 500", "database down"],
        );
        srv.stop();
    });
}

#[test]
fn invalid_urls_and_headers_are_refused_before_any_io() {
    run(|| {
        let c = client().build().unwrap();
        assert_err(
            c.get("not a url").send(),
            ErrorKind::InvalidUrl,
            &["cannot parse"],
        );
        assert_err(
            c.get("ftp://h/x").send(),
            ErrorKind::InvalidUrl,
            &["unsupported scheme"],
        );
        let e = assert_err(
            c.get("http://127.0.0.1:1/")
                .header("apikey", "a\r\nInjected: 1")
                .send(),
            ErrorKind::InvalidRequest,
            &["apikey", "CR, LF"],
        );
        assert!(!e.to_string().contains("Injected"));
        assert_err(
            c.request("GE T", "http://h/").send(),
            ErrorKind::InvalidRequest,
            &["method"],
        );
        let e = Client::builder()
            .default_header("bad header", "v")
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidRequest);
        let e = Client::builder()
            .add_root_certificate_pem(b"nope")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("no CA certificate"), "{e}");
        let e = Client::builder()
            .read_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("read_timeout must be greater than zero"),
            "{e}"
        );
    });
}

#[test]
fn https_with_the_test_ca_works_and_other_cas_are_rejected() {
    run(|| {
        let srv = TestServer::start_tls(|req| ok(&format!("secure {}", req.path)));
        let c = client().add_root_certificate_pem(CA_PEM).build().unwrap();
        for _ in 0..3 {
            assert_eq!(c.get(&srv.url("/t")).send().unwrap().text(), "secure /t");
        }
        let by_name = srv.url("/n").replace("127.0.0.1", "localhost");
        assert_eq!(c.get(&by_name).send().unwrap().text(), "secure /n");
        assert_eq!(
            srv.connections(),
            2,
            "keep-alive over TLS (one connection per host name)"
        );

        let webpki_only = client().build().unwrap();
        assert_err(
            webpki_only.get(&srv.url("/t")).send(),
            ErrorKind::Tls,
            &["invalid peer certificate", "UnknownIssuer"],
        );
        let wrong = client()
            .webpki_roots(false)
            .add_root_certificate_pem(OTHER_CA_PEM)
            .build()
            .unwrap();
        assert_err(
            wrong.get(&srv.url("/t")).send(),
            ErrorKind::Tls,
            &["invalid peer certificate"],
        );
        // Plain HTTP to the TLS port: the server's TLS alert is not HTTP.
        let plain = client().max_retries(0).build().unwrap();
        let e = plain
            .get(&srv.url("/t").replace("https", "http"))
            .send()
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Malformed | ErrorKind::Io),
            "{e}"
        );
        srv.stop();
    });
}

#[test]
fn a_thousand_concurrent_fetches_share_one_bounded_pool() {
    run(|| {
        let srv = TestServer::start(|req| ok(&req.path));
        let c = client().max_connections_per_host(50).build().unwrap();
        let gs: Vec<_> = (0..1000)
            .map(|i| spawn_get(&c, srv.url(&format!("/item/{i}"))))
            .collect();
        for (i, g) in gs.iter().enumerate() {
            assert_eq!(g.get().unwrap().unwrap(), format!("/item/{i}"));
        }
        assert!(
            srv.max_open() <= 50,
            "{} connections open at once",
            srv.max_open()
        );
        assert!(
            srv.connections() <= 50,
            "{} connections opened",
            srv.connections()
        );
        assert_eq!(srv.seen().len(), 1000);
        srv.stop();
    });
}

#[test]
fn waiting_for_a_pooled_connection_times_out_clearly() {
    run_virtual(|| {
        let srv =
            TestServer::start(|_| Reply::After(Duration::from_secs(10), Box::new(ok("slow"))));
        let c = client()
            .max_connections_per_host(1)
            .pool_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let first = spawn_get(&c, srv.url("/"));
        evergreen::sleep(Duration::ZERO);
        assert_err(
            c.get(&srv.url("/")).send(),
            ErrorKind::Timeout,
            &["waiting for a free connection", "limit 1 per host"],
        );
        assert_eq!(first.get().unwrap().unwrap(), "slow");
        srv.stop();
    });
}

#[test]
fn a_killed_request_releases_its_connection_and_permit() {
    run_virtual(|| {
        let srv = TestServer::start(|req| {
            if req.path == "/slow" {
                Reply::After(Duration::from_secs(100), Box::new(ok("slow")))
            } else {
                ok("fast")
            }
        });
        let c = client().max_connections_per_host(1).build().unwrap();
        let c2 = c.clone();
        let url = srv.url("/slow");
        let g = evergreen::spawn(move || c2.get(&url).send().map(|r| r.text()));
        evergreen::sleep(Duration::from_millis(10));
        g.kill();
        // The only permit is free again, and the half-used connection was not pooled.
        assert_eq!(c.get(&srv.url("/fast")).send().unwrap().text(), "fast");
        assert_eq!(srv.connections(), 2);
        srv.stop();
    });
}

#[test]
fn idle_connections_expire() {
    run_virtual(|| {
        let srv = TestServer::start(|_| ok("x"));
        let c = client()
            .idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        c.get(&srv.url("/")).send().unwrap();
        evergreen::sleep(Duration::from_secs(1));
        c.get(&srv.url("/")).send().unwrap();
        assert_eq!(srv.connections(), 1);
        evergreen::sleep(Duration::from_secs(6));
        c.get(&srv.url("/")).send().unwrap();
        assert_eq!(srv.connections(), 2);
        srv.stop();
    });
}

#[test]
fn waiters_for_a_full_host_are_served_in_arrival_order() {
    run(|| {
        let srv = TestServer::start(|req| ok(&req.path));
        let c = client().max_connections_per_host(1).build().unwrap();
        let gs: Vec<_> = (0..20)
            .map(|i| spawn_get(&c, srv.url(&format!("/{i}"))))
            .collect();
        evergreen::joinall(&gs);
        let order: Vec<String> = srv.seen().into_iter().map(|s| s.path).collect();
        assert_eq!(order, (0..20).map(|i| format!("/{i}")).collect::<Vec<_>>());
        assert_eq!(srv.connections(), 1);
        srv.stop();
    });
}

#[test]
fn the_api_key_never_appears_in_any_error_or_debug_output() {
    run(|| {
        let srv = TestServer::start(|_| Reply::BytesThenClose(b"garbage".to_vec()));
        let c = client().max_retries(0).build().unwrap();
        let refused = format!("http://127.0.0.1:{}/", refused_addr().port());
        let texts = vec![
            format!("{c:?}"),
            format!("{:?}", c.get(&srv.url("/x")).header("x-token", SECRET)),
            format!("{:?}", c.get(&srv.url("/x")).send().unwrap_err()),
            c.get(&srv.url("/x")).send().unwrap_err().to_string(),
            c.get(&refused).send().unwrap_err().to_string(),
            c.get(&srv.url("/x"))
                .header("apikey", &format!("{SECRET}\n"))
                .send()
                .unwrap_err()
                .to_string(),
            Client::builder()
                .default_header("apikey", &format!("{SECRET}\r"))
                .build()
                .unwrap_err()
                .to_string(),
        ];
        for t in &texts {
            assert!(!t.contains(SECRET), "{t}");
        }
        srv.stop();
    });
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_bodies_are_decoded_within_the_limit() {
    run(|| {
        // Compressed here, in the root context: miniz's encoder needs more stack (in debug
        // builds) than a handler greenlet has. Decoding below runs in a greenlet with the
        // default stack, as the services do.
        let json = gzip(br#"{"users": ["alice", "bob"]}"#);
        // 50 MB of zeros: a compression bomb of about 50 KB.
        let bomb = gzip(&vec![0u8; 50 << 20]);
        let srv = TestServer::start(move |req| {
            let enc = [("Content-Encoding", "gzip")];
            match req.path.as_str() {
                "/json" => Reply::Bytes(response(200, &enc, &json)),
                "/bomb" => Reply::Bytes(response(200, &enc, &bomb)),
                "/corrupt" => Reply::Bytes(response(200, &enc, b"\x1f\x8b\x08\x00garbage")),
                _ => Reply::Bytes(response(200, &[("Content-Encoding", "br")], b"xx")),
            }
        });
        let c = client().max_response_bytes(1 << 20).build().unwrap();
        let url = |p: &str| srv.url(p);
        let (json_url, bomb_url, corrupt_url, br_url) =
            (url("/json"), url("/bomb"), url("/corrupt"), url("/br"));
        let g = evergreen::spawn(move || {
            let v: serde_json::Value = c.get(&json_url).json().unwrap();
            assert_eq!(v["users"][1], "bob");
            assert_err(
                c.get(&bomb_url).send(),
                ErrorKind::TooLarge,
                &["once decompressed"],
            );
            assert_err(
                c.get(&corrupt_url).send(),
                ErrorKind::Malformed,
                &["invalid gzip body"],
            );
            assert_err(
                c.get(&br_url).send(),
                ErrorKind::Malformed,
                &["Content-Encoding \"br\""],
            );
        });
        g.get().unwrap();
        assert_eq!(srv.seen()[0].header("accept-encoding"), Some("gzip"));
        srv.stop();
    });
}

#[test]
fn a_connect_that_gets_no_answer_times_out_and_is_retried() {
    run_virtual(|| {
        // A listener that never accepts, with a backlog of 0: once its accept queue holds a
        // connection, the kernel drops further SYNs and a connect gets no answer.
        let l = evergreen::net::TcpListener::bind_with_backlog("127.0.0.1:0", 0).unwrap();
        let addr = l.local_addr().unwrap();
        let mut fillers = Vec::new();
        loop {
            match evergreen::net::TcpStream::connect_timeout(addr, Duration::from_millis(100)) {
                Ok(s) => fillers.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                    break;
                }
            }
            assert!(fillers.len() < 64, "the backlog never filled");
        }
        let c = client()
            .connect_timeout(Duration::from_secs(3))
            .max_retries(2)
            .build()
            .unwrap();
        let start = evergreen::hub::now();
        assert_err(
            c.get(&format!("http://{addr}/x")).send(),
            ErrorKind::Timeout,
            &[
                "connecting to 127.0.0.1",
                "timed out after 3s",
                "after 3 attempts",
            ],
        );
        let took = evergreen::hub::now() - start;
        // Three connects of 3 s, and two back-offs of at most 10 and 20 ms.
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_millis(9030),
            "{took:?}"
        );
        drop(fillers);
    });
}
