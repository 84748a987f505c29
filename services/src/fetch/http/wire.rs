//! The HTTP/1.1 response parser: a response head through `httparse`, then the body framed by
//! the head (`Content-Length`, `chunked`, or until the connection closes), over any
//! [`Read`].
//!
//! It knows nothing of sockets, pools or URLs, so it can be driven directly by tests (the
//! fuzz test feeds it random and mutated responses). Every limit is explicit ([`Limits`]):
//! the head's size and header count, the body's size, the length of a chunk-size line. No
//! input can make it panic, allocate more than the limits plus one read buffer, or loop
//! without reading (every loop iteration either consumes input or fails).
//!
//! Framing rules (RFC 9112 §6.3), in order:
//!
//! 1. a response to `HEAD`, and every `1xx`, `204` and `304` response, has no body;
//! 2. `Transfer-Encoding` whose last coding is `chunked`: chunked (any `Content-Length` is
//!    ignored, and the connection is not reused, as the RFC asks);
//!    any other `Transfer-Encoding`: the body runs until the connection closes;
//! 3. `Content-Length` (all digits; several headers must agree);
//! 4. otherwise the body runs until the connection closes.
//!
//! Interim `1xx` responses (other than `101`) are skipped, as a client that sent no
//! `Expect: 100-continue` must tolerate them.

use std::fmt;
use std::io::{self, Read};

/// Limits that bound what one response may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest response head (status line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
    /// Largest body, in bytes (after de-chunking).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Longest chunk-size line (size, extensions and CRLF) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// Bytes asked of the transport per read.
const READ_SIZE: usize = 16 * 1024;

/// What went wrong while reading a response. The client adds the URL.
#[derive(Debug)]
pub enum WireError {
    /// The transport failed (including its timeouts: `io::ErrorKind::TimedOut`).
    Io(io::Error),
    /// The connection closed before the first byte of a response: on a reused keep-alive
    /// connection, the server had closed it (safe to retry an idempotent request).
    ClosedBeforeResponse,
    /// The server sent something that is not valid HTTP/1.x; what and where.
    Malformed(String),
    /// The body (or the head) is larger than the limit.
    TooLarge {
        /// What was too large: `"body"` or `"head"`.
        what: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::ClosedBeforeResponse => {
                f.write_str("the server closed the connection before sending a response")
            }
            WireError::Malformed(m) => write!(f, "malformed response: {m}"),
            WireError::TooLarge { what, limit } => {
                write!(f, "response {what} larger than the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

fn malformed(m: impl Into<String>) -> WireError {
    WireError::Malformed(m.into())
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// `HTTP/1.0` is 0, `HTTP/1.1` is 1.
    pub minor_version: u8,
    /// The status code (100..=999).
    pub status: u16,
    /// The reason phrase, lossily decoded.
    pub reason: String,
    /// The header fields in order; names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The first value of header `name` (lower-case), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether any `Connection` header lists `token` (case-insensitive).
    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// How the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A complete response as read from the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The head.
    pub head: Head,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// Whether the connection can carry another request.
    pub reusable: bool,
}

/// A buffered reader over a transport, keeping bytes that arrived beyond one response for
/// the next (a server may pipeline nothing, but a reader must not lose what it read).
pub struct Wire<S> {
    stream: S,
    /// Initialised storage; `buf[pos..end]` holds the bytes received and not yet consumed.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<S: fmt::Debug> fmt::Debug for Wire<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("stream", &self.stream)
            .field("buffered", &(self.end - self.pos))
            .finish()
    }
}

impl<S: Read> Wire<S> {
    /// Wraps a transport.
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The transport, mutably (to write a request).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes received but not yet consumed (a response may not leave any behind if the
    /// connection is to be reused).
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// The size of the read buffer. It grows only while an unfinished head or line fills it,
    /// so it stays below the largest of the head limit and the line limits (16 KiB), plus two
    /// reads (32 KiB): bodies are moved out as they arrive.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.len()
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer (at most [`READ_SIZE`] at a time); 0 at end of
    /// stream. The storage grows only while unconsumed bytes fill it.
    fn fill(&mut self) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() + READ_SIZE, 0);
            }
        }
        let room = (self.buf.len() - self.end).min(READ_SIZE);
        loop {
            match self.stream.read(&mut self.buf[self.end..self.end + room]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(n) => {
                    let n = n.min(room);
                    self.end += n;
                    return Ok(n);
                }
            }
        }
    }

    /// Reads one complete response to a request with method `method`.
    pub fn read_response(
        &mut self,
        method: &str,
        limits: &Limits,
    ) -> Result<RawResponse, WireError> {
        let mut first = true;
        let head = loop {
            let head = self.read_head(limits, first)?;
            first = false;
            match head.status {
                101 => {
                    return Err(malformed(
                        "101 Switching Protocols, but no upgrade was requested",
                    ))
                }
                100..=199 => continue,
                _ => break head,
            }
        };
        let framing = framing(&head, method)?;
        let mut reusable = head.minor_version >= 1 && !head.connection_has("close")
            || head.minor_version == 0 && head.connection_has("keep-alive");
        let body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.read_exact_body(n, limits)?,
            Framing::Chunked => {
                // A response with both Transfer-Encoding and Content-Length may be an attempt
                // at request smuggling: read it, but never reuse the connection.
                if head.header("content-length").is_some() {
                    reusable = false;
                }
                self.read_chunked(limits)?
            }
            Framing::UntilClose => {
                reusable = false;
                self.read_to_close(limits)?
            }
        };
        Ok(RawResponse {
            head,
            body,
            reusable,
        })
    }

    fn read_head(&mut self, limits: &Limits, first: bool) -> Result<Head, WireError> {
        let mut scanned_empty = true;
        loop {
            // Tolerate (and drop) empty lines before a status line, as RFC 9112 §2.2 allows.
            while self.unread().starts_with(b"\r\n") {
                self.consume(2);
            }
            while self.unread().starts_with(b"\n") {
                self.consume(1);
            }
            if !self.unread().is_empty() {
                scanned_empty = false;
                let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
                let mut resp = httparse::Response::new(&mut storage);
                match resp.parse(self.unread()) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = Head {
                            minor_version: resp.version.unwrap_or(1),
                            status: resp.code.unwrap_or(0),
                            reason: resp.reason.unwrap_or("").to_string(),
                            headers: resp
                                .headers
                                .iter()
                                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                                .collect(),
                        };
                        if len > limits.max_head_bytes {
                            return Err(WireError::TooLarge {
                                what: "head",
                                limit: limits.max_head_bytes,
                            });
                        }
                        self.consume(len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.unread().len() > limits.max_head_bytes {
                            return Err(WireError::TooLarge {
                                what: "head",
                                limit: limits.max_head_bytes,
                            });
                        }
                    }
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(malformed(format!(
                            "more than {} header fields",
                            limits.max_headers
                        )))
                    }
                    Err(e) => {
                        return Err(malformed(format!(
                            "{} in the response head (starting {})",
                            parse_error_text(e),
                            snippet(self.unread(), 40)
                        )))
                    }
                }
            }
            if self.fill()? == 0 {
                return Err(if first && scanned_empty {
                    WireError::ClosedBeforeResponse
                } else {
                    malformed(format!(
                        "the connection closed in the middle of the response head (after {} bytes)",
                        self.unread().len()
                    ))
                });
            }
        }
    }

    fn read_exact_body(&mut self, n: u64, limits: &Limits) -> Result<Vec<u8>, WireError> {
        if n > limits.max_body_bytes as u64 {
            return Err(WireError::TooLarge {
                what: "body",
                limit: limits.max_body_bytes,
            });
        }
        let n = n as usize;
        // Never trust the announced length for the allocation beyond a modest start.
        let mut body = Vec::with_capacity(n.min(256 * 1024));
        while body.len() < n {
            if self.unread().is_empty() && self.fill()? == 0 {
                return Err(malformed(format!(
                    "the connection closed after {} of the {n} body bytes announced by Content-Length",
                    body.len()
                )));
            }
            let take = (n - body.len()).min(self.unread().len());
            body.extend_from_slice(&self.unread()[..take]);
            self.consume(take);
        }
        Ok(body)
    }

    fn read_to_close(&mut self, limits: &Limits) -> Result<Vec<u8>, WireError> {
        let mut body = Vec::new();
        loop {
            let avail = self.unread().len();
            if body.len() + avail > limits.max_body_bytes {
                return Err(WireError::TooLarge {
                    what: "body",
                    limit: limits.max_body_bytes,
                });
            }
            body.extend_from_slice(self.unread());
            self.consume(avail);
            if self.fill()? == 0 {
                return Ok(body);
            }
        }
    }

    /// Reads one line ending in LF (CRLF or bare LF), at most `max` bytes including the end.
    fn read_line(&mut self, max: usize, what: &str) -> Result<Vec<u8>, WireError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.unread()[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i;
                let mut line = self.unread()[..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.consume(end + 1);
                return Ok(line);
            }
            scanned = self.unread().len();
            if scanned > max {
                return Err(malformed(format!("{what} longer than {max} bytes")));
            }
            if self.fill()? == 0 {
                return Err(malformed(format!(
                    "the connection closed in the middle of a {what}"
                )));
            }
        }
    }

    fn read_chunked(&mut self, limits: &Limits) -> Result<Vec<u8>, WireError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, "chunk-size line")?;
            let size = parse_chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > limits.max_body_bytes as u64 {
                return Err(WireError::TooLarge {
                    what: "body",
                    limit: limits.max_body_bytes,
                });
            }
            let mut left = size as usize;
            while left > 0 {
                if self.unread().is_empty() && self.fill()? == 0 {
                    return Err(malformed(format!(
                        "the connection closed inside a chunk ({left} of {size} bytes missing)"
                    )));
                }
                let take = left.min(self.unread().len());
                body.extend_from_slice(&self.unread()[..take]);
                self.consume(take);
                left -= take;
            }
            let end = self.read_line(2, "chunk terminator")?;
            if !end.is_empty() {
                return Err(malformed(format!(
                    "chunk data longer than its size {size:#x} (expected CRLF, found {})",
                    snippet(&end, 20)
                )));
            }
        }
        // Trailer fields, then the empty line.
        let mut trailers = 0;
        loop {
            let line = self.read_line(MAX_TRAILERS, "trailer section")?;
            if line.is_empty() {
                return Ok(body);
            }
            trailers += line.len() + 2;
            if trailers > MAX_TRAILERS {
                return Err(malformed(format!(
                    "trailer section longer than {MAX_TRAILERS} bytes"
                )));
            }
        }
    }
}

/// Decides the body framing of a response to `method` (see the module docs).
pub fn framing(head: &Head, method: &str) -> Result<Framing, WireError> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        return Ok(Framing::None);
    }
    let te: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_slice())
        .collect();
    if !te.is_empty() {
        let last = te
            .last()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|c| c.trim().to_ascii_lowercase());
        return Ok(match last.as_deref() {
            Some("chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    let mut length: Option<u64> = None;
    for (_, v) in head.headers.iter().filter(|(n, _)| n == "content-length") {
        // Several values in one field ("5, 5") are allowed if they agree.
        for part in v.split(|&b| b == b',') {
            let part = trim(part);
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(malformed(format!(
                    "invalid Content-Length {}",
                    snippet(v, 40)
                )));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| malformed(format!("invalid Content-Length {}", snippet(v, 40))))?;
            match length {
                Some(prev) if prev != n => {
                    return Err(malformed(format!(
                        "conflicting Content-Length values {prev} and {n}"
                    )))
                }
                _ => length = Some(n),
            }
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Parses a chunk-size line: hex digits, then optional `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let digits = trim(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed(format!(
            "invalid chunk size line {}",
            snippet(line, 40)
        )));
    }
    let digits = &digits[digits
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(digits.len())..];
    if digits.len() > 15 {
        return Err(malformed(format!(
            "chunk size {} is too large",
            snippet(line, 40)
        )));
    }
    let mut n: u64 = 0;
    for &d in digits {
        n = n * 16 + (d as char).to_digit(16).unwrap_or(0) as u64;
    }
    Ok(n)
}

fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "an invalid header name",
        httparse::Error::HeaderValue => "an invalid header value",
        httparse::Error::NewLine => "an invalid line ending",
        httparse::Error::Status => "an invalid status code",
        httparse::Error::Token => "an invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "an invalid HTTP version (not an HTTP/1.x status line)",
    }
}

/// A short, printable rendering of `bytes` for error messages: at most `max` characters,
/// lossily decoded, control characters escaped, quoted.
pub fn snippet(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max * 4)]);
    let mut out = String::from("\"");
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], method: &str) -> Result<RawResponse, WireError> {
        Wire::new(bytes).read_response(method, &Limits::default())
    }

    #[test]
    fn content_length_body_and_keep_alive() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            "GET",
        )
        .unwrap();
        assert_eq!(
            (r.head.status, &r.body[..], r.reusable),
            (200, &b"hello"[..], true)
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            "GET",
        )
        .unwrap();
        assert_eq!(r.body, b"hello world");
        assert!(r.reusable);
    }

    #[test]
    fn no_body_for_head_204_304_and_interim_skipped() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD").unwrap();
        assert!(r.body.is_empty() && r.reusable);
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            "GET",
        )
        .unwrap();
        assert_eq!(r.head.status, 204);
        let r = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            "GET",
        )
        .unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn until_close_and_connection_close() {
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\nall of it", "GET").unwrap();
        assert_eq!((&r.body[..], r.reusable), (&b"all of it"[..], false));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            "GET",
        )
        .unwrap();
        assert!(!r.reusable);
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET").unwrap();
        assert!(!r.reusable);
    }

    #[test]
    fn malformed_inputs_are_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"HTTP/1.1 abc OK\r\n\r\n", "invalid status code"),
            (b"HTTP/9.9 200 OK\r\n\r\n", "HTTP version"),
            (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "header"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
                "too large",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "longer than its size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "after 3 of the 10",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Le",
                "middle of the response head",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        ];
        for (input, want) in cases {
            let e = parse(input, "GET").unwrap_err();
            assert!(
                e.to_string().contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(matches!(
            parse(b"", "GET"),
            Err(WireError::ClosedBeforeResponse)
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        let e = Wire::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..])
            .read_response("GET", &limits)
            .unwrap_err();
        assert!(
            matches!(
                e,
                WireError::TooLarge {
                    what: "body",
                    limit: 4
                }
            ),
            "{e}"
        );
        let e = Wire::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"[..])
            .read_response("GET", &limits)
            .unwrap_err();
        assert!(matches!(e, WireError::TooLarge { what: "body", .. }), "{e}");
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..5000 {
            big.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        let e = parse(&big, "GET").unwrap_err();
        assert!(
            matches!(
                e,
                WireError::TooLarge { what: "head", .. } | WireError::Malformed(_)
            ),
            "{e}"
        );
    }

    #[test]
    fn snippets_escape_and_truncate() {
        assert_eq!(snippet(b"a\r\nb", 10), "\"a\\r\\nb\"");
        assert_eq!(snippet(b"abcdef", 3), "\"abc…\"");
    }
}
