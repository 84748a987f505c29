//! Fuzz-style test of the response parser: well-formed responses (checked exactly), the same
//! mutated (bit flips, inserted and deleted bytes, truncation, huge numbers), and random
//! bytes, each delivered in random-sized pieces. Nothing may panic; every parse must end
//! (it stops reading soon after the end of input, so it cannot hang) and stay within its
//! limits (so memory is bounded).

use std::io::{self, Read};

use evergreen_services::fetch::http::wire::{Limits, Wire, WireError};

/// Hands out `data` in pieces of random size; counts the reads.
struct Dribble {
    data: Vec<u8>,
    pos: usize,
    rng: fastrand::Rng,
    reads: usize,
    reads_after_eof: usize,
}

impl Read for Dribble {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.pos == self.data.len() {
            self.reads_after_eof += 1;
            return Ok(0);
        }
        let n = self
            .rng
            .usize(1..=64)
            .min(buf.len())
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A well-formed response and the body it carries.
fn valid(rng: &mut fastrand::Rng) -> (Vec<u8>, Vec<u8>, &'static str) {
    let body: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
    let status = *rng.choice(&[200u16, 201, 404, 500, 503]).unwrap();
    let mut r = format!("HTTP/1.{} {status} Reason\r\n", rng.u8(0..=1)).into_bytes();
    for i in 0..rng.usize(0..5) {
        r.extend_from_slice(format!("X-H{i}: v{}\r\n", rng.u32(..)).as_bytes());
    }
    let method = if rng.u8(0..10) == 0 { "HEAD" } else { "GET" };
    match rng.u8(0..3) {
        0 => {
            r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            if method == "GET" {
                r.extend_from_slice(&body);
            }
        }
        1 => {
            r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if method == "GET" {
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = rng.usize(1..=rest.len());
                    r.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    r.extend_from_slice(&rest[..n]);
                    r.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                r.extend_from_slice(b"0\r\n\r\n");
            }
        }
        _ => {
            r.extend_from_slice(b"Connection: close\r\n\r\n");
            if method == "GET" {
                r.extend_from_slice(&body);
            }
        }
    }
    let body = if method == "HEAD" { Vec::new() } else { body };
    (r, body, method)
}

fn mutate(rng: &mut fastrand::Rng, mut r: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(1..4) {
        if r.is_empty() {
            break;
        }
        let i = rng.usize(..r.len());
        match rng.u8(0..7) {
            0 => r[i] ^= 1 << rng.u8(0..8),
            1 => r.insert(i, rng.u8(..)),
            2 => {
                r.remove(i);
            }
            3 => r.truncate(i),
            4 => {
                let huge = *rng
                    .choice(&[
                        &b"99999999999999999999"[..],
                        b"ffffffffffffffff",
                        b"-1",
                        b"4294967296",
                    ])
                    .unwrap();
                r.splice(i..i, huge.iter().copied());
            }
            5 => {
                let seg = r[i..(i + rng.usize(0..20)).min(r.len())].to_vec();
                r.splice(i..i, seg);
            }
            _ => r.splice(i..i, b"\r\n".iter().copied()).for_each(drop),
        }
    }
    r
}

fn parse(
    rng: &mut fastrand::Rng,
    data: Vec<u8>,
    method: &str,
    limits: &Limits,
) -> (Result<Vec<u8>, WireError>, usize, usize) {
    let len = data.len();
    let d = Dribble {
        data,
        pos: 0,
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        reads: 0,
        reads_after_eof: 0,
    };
    let mut w = Wire::new(d);
    let r = w.read_response(method, limits).map(|resp| resp.body);
    let cap = w.buffer_capacity();
    let bound = limits.max_head_bytes.max(16 * 1024) + 32 * 1024;
    assert!(
        cap <= bound,
        "read buffer grew to {cap} bytes (bound {bound})"
    );
    let d = w.get_ref();
    assert!(
        d.reads_after_eof <= 2,
        "kept reading after the end of input ({} times)",
        d.reads_after_eof
    );
    assert!(d.reads <= len + 3, "{} reads for {len} bytes", d.reads);
    (r, d.reads, len)
}

#[test]
fn valid_responses_parse_exactly() {
    let mut rng = fastrand::Rng::with_seed(1);
    let limits = Limits::default();
    for _ in 0..3000 {
        let (bytes, body, method) = valid(&mut rng);
        let (r, _, _) = parse(&mut rng, bytes.clone(), method, &limits);
        assert_eq!(r.unwrap(), body, "{}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_and_random_responses_never_panic_hang_or_exceed_limits() {
    let mut rng = fastrand::Rng::with_seed(2);
    let limits = Limits {
        max_head_bytes: 2048,
        max_headers: 16,
        max_body_bytes: 4096,
    };
    let (mut ok, mut err) = (0, 0);
    for i in 0..40_000 {
        let data = if i % 4 == 0 {
            (0..rng.usize(0..400)).map(|_| rng.u8(..)).collect()
        } else {
            let (v, _, _) = valid(&mut rng);
            mutate(&mut rng, v)
        };
        let method = if rng.bool() { "GET" } else { "HEAD" };
        let (r, _, _) = parse(&mut rng, data, method, &limits);
        match r {
            Ok(body) => {
                assert!(body.len() <= limits.max_body_bytes);
                ok += 1;
            }
            Err(e) => {
                // Every error renders to a non-empty message.
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    // The mutations must exercise both outcomes substantially.
    assert!(ok > 1000 && err > 10_000, "ok {ok}, err {err}");
}

#[test]
fn an_endless_stream_stops_at_the_limits() {
    // A server that never stops sending: head bytes, chunk data, or an until-close body.
    struct Endless(Vec<u8>, usize, usize);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.2 += 1;
            let n = buf.len().min(1000);
            for b in &mut buf[..n] {
                *b = if self.1 < self.0.len() {
                    self.0[self.1]
                } else {
                    b'a'
                };
                self.1 += 1;
            }
            Ok(n)
        }
    }
    let limits = Limits {
        max_head_bytes: 8192,
        max_headers: 16,
        max_body_bytes: 100_000,
    };
    for prefix in [
        &b"HTTP/1.1 200 OK\r\nX: "[..],
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n",
    ] {
        let mut w = Wire::new(Endless(prefix.to_vec(), 0, 0));
        let e = w.read_response("GET", &limits).unwrap_err();
        assert!(
            w.buffer_capacity() <= 8192 + 48 * 1024,
            "{}",
            w.buffer_capacity()
        );
        assert!(w.get_ref().2 < 200, "{} reads", w.get_ref().2);
        assert!(
            matches!(e, WireError::TooLarge { .. } | WireError::Malformed(_)),
            "{e}"
        );
    }
}
