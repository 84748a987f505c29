//! [`Client`], [`RequestBuilder`] and [`Response`]: requests with retries, redirects and
//! timeouts over the keep-alive [`pool`](super::pool).

use std::fmt;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use evergreen::net::TcpStream;
use serde::de::DeserializeOwned;
use url::Url;

use super::error::{redact, Error, ErrorKind};
use super::pool::{Conn, ConnPool, HostKey, PoolStats};
use super::transport::{TimedTcp, TlsFailure, Transport};
use super::wire::{snippet, Limits, RawResponse, Wire, WireError};

/// How many characters of a body an error message quotes.
const SNIPPET_CHARS: usize = 200;

/// Settings of a [`Client`], with their defaults. Build one with [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    connect_timeout: Duration,
    read_timeout: Duration,
    total_timeout: Duration,
    pool_timeout: Option<Duration>,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    max_redirects: usize,
    limits: Limits,
    max_per_host: usize,
    max_idle_per_host: usize,
    idle_timeout: Duration,
    keep_alive: bool,
    gzip: bool,
    default_headers: Vec<(String, String)>,
    user_agent: String,
    webpki_roots: bool,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    error: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be secrets: only their names are shown.
        f.debug_struct("ClientBuilder")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("max_retries", &self.max_retries)
            .field("max_redirects", &self.max_redirects)
            .field("max_per_host", &self.max_per_host)
            .field(
                "default_headers",
                &self
                    .default_headers
                    .iter()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> ClientBuilder {
        ClientBuilder {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(120),
            pool_timeout: None,
            max_retries: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            max_redirects: 10,
            limits: Limits::default(),
            max_per_host: 100,
            max_idle_per_host: 100,
            idle_timeout: Duration::from_secs(90),
            keep_alive: true,
            gzip: true,
            default_headers: Vec::new(),
            user_agent: concat!("evergreen-services/", env!("CARGO_PKG_VERSION")).to_string(),
            webpki_roots: true,
            extra_roots: Vec::new(),
            error: None,
        }
    }
}

impl ClientBuilder {
    /// Time to establish a TCP connection, per address (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Longest wait for any one read or write (default 30 s).
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }
    /// Time for a whole request, retries, back-off and redirects included (default 120 s, as
    /// the sample's `requests` used).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.total_timeout = t;
        self
    }
    /// Longest wait for a pooled connection when the host's limit is reached (default: the
    /// request's remaining total time).
    pub fn pool_timeout(mut self, t: Duration) -> Self {
        self.pool_timeout = Some(t);
        self
    }
    /// Retries after the first attempt (default 5): on connection failures, and on 429, 502,
    /// 503 and 504 for idempotent requests.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Back-off before retry *n* is `base × 2ⁿ⁻¹`, capped at `max`, with jitter down to half
    /// of it (defaults 100 ms and 10 s). A `Retry-After` header overrides it.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }
    /// The longest `Retry-After` honoured (default 60 s); a longer one ends the retries and
    /// the response is returned as it is.
    pub fn max_retry_after(mut self, t: Duration) -> Self {
        self.max_retry_after = t;
        self
    }
    /// Redirects followed per request (default 10; 0 returns redirect responses as they are).
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }
    /// Largest response body accepted (default 32 MiB).
    pub fn max_response_bytes(mut self, n: usize) -> Self {
        self.limits.max_body_bytes = n;
        self
    }
    /// Connections per host, in use at once (default 100). Requests beyond it wait, FIFO.
    pub fn max_connections_per_host(mut self, n: usize) -> Self {
        self.max_per_host = n.max(1);
        self
    }
    /// Idle connections kept per host (default 100; 0 disables keep-alive reuse).
    pub fn max_idle_per_host(mut self, n: usize) -> Self {
        self.max_idle_per_host = n;
        self
    }
    /// How long an idle connection is kept (default 90 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }
    /// Whether to keep connections alive (default true). When false, every request says
    /// `Connection: close`.
    pub fn keep_alive(mut self, on: bool) -> Self {
        self.keep_alive = on;
        self
    }
    /// Whether to ask for gzip-compressed bodies (`Accept-Encoding: gzip`) and decode them
    /// (default true, as `requests` does). The decoded size is bounded by
    /// [`max_response_bytes`](Self::max_response_bytes), so a compression bomb is refused.
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }
    /// A header sent with every request (for example the upstream's `apikey`). Its value never
    /// appears in an error or a `Debug` output.
    pub fn default_header(mut self, name: &str, value: &str) -> Self {
        if let Err(e) = check_header(name, value) {
            self.error.get_or_insert(e);
        }
        self.default_headers
            .push((name.to_string(), value.to_string()));
        self
    }
    /// The `User-Agent` header (default `evergreen-services/VERSION`).
    pub fn user_agent(mut self, ua: &str) -> Self {
        if let Err(e) = check_header("user-agent", ua) {
            self.error.get_or_insert(e);
        }
        self.user_agent = ua.to_string();
        self
    }
    /// Whether to trust the Mozilla roots of `webpki-roots` (default true).
    pub fn webpki_roots(mut self, on: bool) -> Self {
        self.webpki_roots = on;
        self
    }
    /// Trusts the CA certificates of a PEM file's contents as well (for tests and private
    /// CAs).
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut found = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            match cert {
                Ok(c) => {
                    self.extra_roots.push(c);
                    found += 1;
                }
                Err(e) => {
                    self.error
                        .get_or_insert(format!("invalid PEM CA certificate: {e}"));
                }
            }
        }
        if found == 0 {
            self.error
                .get_or_insert("no CA certificate found in the PEM data".to_string());
        }
        self
    }

    /// Builds the client. Fails on an invalid setting (a bad header, a bad CA certificate).
    pub fn build(self) -> Result<Client, Error> {
        if let Some(e) = &self.error {
            return Err(Error::new(ErrorKind::InvalidRequest, "(client)", e.clone()));
        }
        for (name, t) in [
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
            ("timeout", self.total_timeout),
        ] {
            if t.is_zero() {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    "(client)",
                    format!("{name} must be greater than zero"),
                ));
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for c in &self.extra_roots {
            roots.add(c.clone()).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidRequest,
                    "(client)",
                    format!("CA certificate rejected: {e}"),
                )
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Tls, "(client)", format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let pool = ConnPool::new(
            self.max_per_host,
            if self.keep_alive {
                self.max_idle_per_host
            } else {
                0
            },
            self.idle_timeout,
        );
        Ok(Client {
            inner: Rc::new(Inner {
                settings: self,
                tls: Arc::new(tls),
                pool,
                retries: std::cell::Cell::new(0),
            }),
        })
    }
}

struct Inner {
    settings: ClientBuilder,
    tls: Arc<rustls::ClientConfig>,
    pool: ConnPool,
    retries: std::cell::Cell<u64>,
}

/// A cooperative HTTP/1.1 client (the `requests.Session` of the sample): cheap to clone (the
/// clones share the pool), used from any greenlet of the hub that created it.
///
/// ```no_run
/// # fn main() -> Result<(), evergreen_services::fetch::http::Error> {
/// use evergreen_services::fetch::http::Client;
/// #[derive(serde::Deserialize)]
/// struct Users { responses: serde_json::Value }
///
/// let client = Client::builder().default_header("apikey", "s3cret").build()?;
/// let users: Users = client
///     .get("https://api.example.com/bulkSms/sent")
///     .query(&[("startDate", "2016-08-18"), ("endDate", "2016-08-18")])
///     .json()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.inner.settings)
            .field("pool", &self.inner.pool.stats())
            .finish()
    }
}

impl Client {
    /// A client with the default settings (see [`ClientBuilder`]).
    pub fn new() -> Client {
        Client::builder()
            .build()
            .expect("the default client settings are valid")
    }

    /// Settings for a new client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A `GET` request.
    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request("GET", url)
    }
    /// A `POST` request.
    pub fn post(&self, url: &str) -> RequestBuilder {
        self.request("POST", url)
    }
    /// A `PUT` request.
    pub fn put(&self, url: &str) -> RequestBuilder {
        self.request("PUT", url)
    }
    /// A `DELETE` request.
    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.request("DELETE", url)
    }
    /// A `HEAD` request.
    pub fn head(&self, url: &str) -> RequestBuilder {
        self.request("HEAD", url)
    }

    /// A request with any method (an HTTP token such as `PATCH`).
    pub fn request(&self, method: &str, url: &str) -> RequestBuilder {
        let mut error = None;
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            error = Some(Error::new(
                ErrorKind::InvalidRequest,
                "(request)",
                format!("invalid HTTP method {}", snippet(method.as_bytes(), 40)),
            ));
        }
        let url = match parse_url(url) {
            Ok(u) => Some(u),
            Err(e) => {
                error.get_or_insert(e);
                None
            }
        };
        RequestBuilder {
            client: self.clone(),
            method: method.to_ascii_uppercase(),
            url,
            headers: Vec::new(),
            body: Vec::new(),
            has_body: false,
            idempotent: None,
            timeout: None,
            error,
        }
    }

    /// Counters: connections opened and reused, idle connections, retries.
    pub fn pool_stats(&self) -> PoolStats {
        PoolStats {
            retries: self.inner.retries.get(),
            ..self.inner.pool.stats()
        }
    }

    /// Closes every idle pooled connection.
    pub fn clear_idle(&self) {
        self.inner.pool.clear_idle()
    }
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

fn parse_url(s: &str) -> Result<Url, Error> {
    // The raw text may hold a secret: name it only once parsed and redacted, or not at all.
    let u = Url::parse(s).map_err(|e| {
        Error::new(
            ErrorKind::InvalidUrl,
            "(invalid URL)",
            format!("cannot parse the URL: {e}"),
        )
    })?;
    check_url(&u)?;
    Ok(u)
}

fn check_url(u: &Url) -> Result<(), Error> {
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(Error::new(
            ErrorKind::InvalidUrl,
            &redact(u),
            format!("unsupported scheme {:?} (only http and https)", u.scheme()),
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(Error::new(ErrorKind::InvalidUrl, &redact(u), "no host"));
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Header names are tokens; values have no CR, LF or NUL. The value is never quoted (it may
/// be a secret).
fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(
            "invalid header name {}",
            snippet(name.as_bytes(), 40)
        ));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "the value of header {name:?} contains CR, LF or NUL (value not shown)"
        ));
    }
    Ok(())
}

/// Header names that are dropped when a redirect leaves the origin.
fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "apikey" | "api-key" | "x-api-key"
    ) || n.contains("token")
        || n.contains("secret")
}

/// One request being built. Finish it with [`send`](Self::send) or [`json`](Self::json).
pub struct RequestBuilder {
    client: Client,
    method: String,
    url: Option<Url>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    has_body: bool,
    idempotent: Option<bool>,
    timeout: Option<Duration>,
    error: Option<Error>,
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("url", &self.url.as_ref().map(redact))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl RequestBuilder {
    /// Adds a header (replacing the client's default of the same name). The value never
    /// appears in errors.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Err(e) = check_header(name, value) {
            let url = self.url_text();
            self.error
                .get_or_insert(Error::new(ErrorKind::InvalidRequest, &url, e));
        }
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends query parameters, percent-encoded.
    pub fn query<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        if let Some(u) = &mut self.url {
            u.query_pairs_mut()
                .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        }
        self
    }

    /// The request body (sent with `Content-Length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.has_body = true;
        self
    }

    /// A JSON body (and `Content-Type: application/json`).
    pub fn json_body<T: serde::Serialize + ?Sized>(self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(b) => self.header("content-type", "application/json").body(b),
            Err(e) => {
                let url = self.url_text();
                let mut s = self;
                s.error.get_or_insert(Error::new(
                    ErrorKind::InvalidRequest,
                    &url,
                    format!("cannot serialise the JSON body: {e}"),
                ));
                s
            }
        }
    }

    /// Marks the request safe (or not) to retry after a failure mid-request. By default
    /// `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS` and `TRACE` are idempotent.
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = Some(yes);
        self
    }

    /// The total time of this request (overrides the client's).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    fn url_text(&self) -> String {
        self.url
            .as_ref()
            .map(redact)
            .unwrap_or_else(|| "(invalid URL)".into())
    }

    /// Sends the request and reads the whole response (any status; see
    /// [`Response::error_for_status`]).
    pub fn send(self) -> Result<Response, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(url) = self.url else {
            return Err(Error::new(ErrorKind::InvalidUrl, "(invalid URL)", "no URL"));
        };
        let idempotent = self.idempotent.unwrap_or(matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ));
        let inner = &self.client.inner;
        let total = self.timeout.unwrap_or(inner.settings.total_timeout);
        let deadline = evergreen::hub::now().checked_add(total);
        // The client's default headers join the request's own (which override them), so a
        // redirect to another origin drops sensitive ones from both.
        let mut headers: Vec<(String, String)> = inner
            .settings
            .default_headers
            .iter()
            .filter(|(n, _)| !self.headers.iter().any(|(m, _)| m.eq_ignore_ascii_case(n)))
            .cloned()
            .collect();
        headers.extend(self.headers);
        let req = Req {
            method: self.method,
            url,
            headers,
            body: self.body,
            has_body: self.has_body,
            idempotent,
            deadline,
            total,
        };
        execute(inner, req)
    }

    /// Sends the request, fails on a status that is not 2xx, and decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        self.send()?.error_for_status()?.json()
    }
}

/// What is sent, as it evolves across redirects.
struct Req {
    method: String,
    url: Url,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    has_body: bool,
    idempotent: bool,
    deadline: Option<Instant>,
    total: Duration,
}

/// A complete response (the body is read in full, within the size limit).
pub struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    url: Url,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("url", &redact(&self.url))
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The reason phrase.
    pub fn reason(&self) -> &str {
        &self.reason
    }
    /// The URL that answered (after redirects).
    pub fn url(&self) -> &Url {
        &self.url
    }
    /// The first value of a header (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }
    /// All header fields, names lower-cased.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }
    /// The body.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }
    /// The body, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.body
    }
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Err` (naming the status and the start of the body) unless the status is 2xx.
    pub fn error_for_status(self) -> Result<Response, Error> {
        if self.is_success() {
            return Ok(self);
        }
        Err(Error::new(
            ErrorKind::Status,
            &redact(&self.url),
            format!(
                "HTTP {} {}; body starts {}",
                self.status,
                self.reason,
                snippet(&self.body, SNIPPET_CHARS)
            ),
        )
        .with_status(self.status))
    }

    /// Decodes the body as JSON into `T`; the error names the status, serde's reason (with
    /// line and column) and the start of the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                ErrorKind::Json,
                &redact(&self.url),
                format!(
                    "invalid JSON in the response (HTTP {}): {e}; body starts {}",
                    self.status,
                    snippet(&self.body, SNIPPET_CHARS)
                ),
            )
            .with_status(self.status)
        })
    }
}

/// Runs a request: follows redirects, each hop with retries.
fn execute(inner: &Inner, mut req: Req) -> Result<Response, Error> {
    let mut seen: Vec<(String, Url)> = vec![(req.method.clone(), req.url.clone())];
    loop {
        let raw = send_with_retries(inner, &req)?;
        let status = raw.head.status;
        let location = raw.head.header("location").map(str::to_string);
        let is_redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
        if !(is_redirect && inner.settings.max_redirects > 0) || location.is_none() {
            let body = decode_body(inner, &raw.head, raw.body, &req.url)?;
            return Ok(Response {
                status,
                reason: raw.head.reason,
                headers: raw.head.headers,
                body,
                url: req.url,
            });
        }
        let here = redact(&req.url);
        let location = location.unwrap_or_default();
        let next = req.url.join(&location).map_err(|e| {
            Error::new(
                ErrorKind::Malformed,
                &here,
                format!(
                    "redirect ({status}) to an invalid Location {}: {e}",
                    snippet(location.as_bytes(), 100)
                ),
            )
        })?;
        check_url(&next)?;
        if seen.len() > inner.settings.max_redirects {
            return Err(Error::new(
                ErrorKind::Redirect,
                &here,
                format!(
                    "more than {} redirects (last to {})",
                    inner.settings.max_redirects,
                    redact(&next)
                ),
            ));
        }
        // 303 always, and 301/302 after a POST (as browsers and requests do), become a GET.
        if status == 303 || (matches!(status, 301 | 302) && req.method == "POST") {
            if req.method != "HEAD" {
                req.method = "GET".into();
            }
            req.body.clear();
            req.has_body = false;
            req.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
            req.idempotent = true;
        }
        if next.origin() != req.url.origin() {
            req.headers.retain(|(n, _)| !is_sensitive_header(n));
        }
        if seen.iter().any(|(m, u)| *m == req.method && *u == next) {
            let chain: Vec<String> = seen
                .iter()
                .map(|(_, u)| redact(u))
                .chain(std::iter::once(redact(&next)))
                .collect();
            return Err(Error::new(
                ErrorKind::Redirect,
                &here,
                format!("redirect loop: {}", chain.join(" -> ")),
            ));
        }
        seen.push((req.method.clone(), next.clone()));
        log::debug!("redirect {status}: {} -> {}", here, redact(&next));
        req.url = next;
    }
}

/// The body with its `Content-Encoding` undone (gzip, when the client asked for it).
fn decode_body(
    inner: &Inner,
    head: &super::wire::Head,
    body: Vec<u8>,
    url: &Url,
) -> Result<Vec<u8>, Error> {
    let coding = head
        .header("content-encoding")
        .map(|c| c.to_ascii_lowercase())
        .unwrap_or_default();
    if body.is_empty() || coding.is_empty() || coding == "identity" {
        return Ok(body);
    }
    if coding != "gzip" || !inner.settings.gzip {
        return Err(Error::new(
            ErrorKind::Malformed,
            &redact(url),
            format!(
                "the body has Content-Encoding {}, which was not asked for",
                snippet(coding.as_bytes(), 40)
            ),
        ));
    }
    use std::io::Read;
    let limit = inner.settings.limits.max_body_bytes;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::GzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::new(
                ErrorKind::Malformed,
                &redact(url),
                format!("invalid gzip body ({} bytes): {e}", body.len()),
            )
        })?;
    if out.len() > limit {
        return Err(Error::new(
            ErrorKind::TooLarge,
            &redact(url),
            format!("response body larger than the limit of {limit} bytes once decompressed"),
        ));
    }
    Ok(out)
}

/// Whether a failed attempt may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Never (the caller's or the server's fault, or a TLS failure).
    No,
    /// The request may have reached the server: only if it is idempotent.
    IfIdempotent,
    /// The request never left (no connection): always.
    Always,
}

fn send_with_retries(inner: &Inner, req: &Req) -> Result<RawResponse, Error> {
    let s = &inner.settings;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let can_retry = attempt <= s.max_retries;
        match send_once(inner, req) {
            Ok(raw) => {
                let status = raw.head.status;
                if !(can_retry && req.idempotent && matches!(status, 429 | 502 | 503 | 504)) {
                    return Ok(raw);
                }
                let delay = match retry_after(&raw.head) {
                    Some(d) if d > s.max_retry_after => return Ok(raw),
                    Some(d) => d,
                    None => backoff(s, attempt),
                };
                if !time_left_for(req.deadline, delay) {
                    return Ok(raw);
                }
                log::debug!(
                    "{}: HTTP {status}, retry {attempt} of {} in {delay:?}",
                    redact(&req.url),
                    s.max_retries
                );
                inner.retries.set(inner.retries.get() + 1);
                evergreen::sleep(delay);
            }
            Err((e, retry)) => {
                let allowed = match retry {
                    Retry::No => false,
                    Retry::IfIdempotent => req.idempotent,
                    Retry::Always => true,
                };
                let delay = backoff(s, attempt);
                if !(can_retry && allowed && time_left_for(req.deadline, delay)) {
                    return Err(e.retry_count_note(attempt));
                }
                log::debug!("{e}; retry {attempt} of {} in {delay:?}", s.max_retries);
                inner.retries.set(inner.retries.get() + 1);
                evergreen::sleep(delay);
            }
        }
    }
}

fn time_left_for(deadline: Option<Instant>, delay: Duration) -> bool {
    deadline.is_none_or(|d| {
        evergreen::hub::now()
            .checked_add(delay)
            .is_some_and(|t| t < d)
    })
}

/// Exponential back-off with jitter: `base × 2ⁿ⁻¹` capped, then uniformly in `[½, 1]` of it.
fn backoff(s: &ClientBuilder, attempt: u32) -> Duration {
    let exp = s
        .backoff_base
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20));
    let capped = exp.min(s.backoff_max);
    Duration::try_from_secs_f64(capped.as_secs_f64() * (0.5 + fastrand::f64() * 0.5))
        .unwrap_or(capped)
}

/// `Retry-After`: delay-seconds or an HTTP-date.
fn retry_after(head: &super::wire::Head) -> Option<Duration> {
    let v = head.header("retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = parse_http_date(v)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires senders
/// to use.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" || !parts[0].ends_with(',') {
        return None;
    }
    let day: u32 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u32
        + 1;
    let year: i64 = parts[3]
        .parse()
        .ok()
        .filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    if hms.len() != 3 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    if secs < 0 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
}

fn host_key(url: &Url) -> HostKey {
    HostKey {
        https: url.scheme() == "https",
        host: url.host_str().unwrap_or("").to_string(),
        port: url.port_or_known_default().unwrap_or(80),
    }
}

/// One attempt: a connection from the pool (or a new one), the request, the response. A
/// pooled connection that turns out to be dead is replaced once, transparently, for an
/// idempotent request.
fn send_once(inner: &Inner, req: &Req) -> Result<RawResponse, (Error, Retry)> {
    let s = &inner.settings;
    let url_text = redact(&req.url);
    let key = host_key(&req.url);
    let pool_deadline = match s.pool_timeout {
        Some(t) => {
            let d = evergreen::hub::now().checked_add(t);
            match (d, req.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        None => req.deadline,
    };
    let checkout = inner.pool.checkout(&key, pool_deadline).ok_or_else(|| {
        (
            Error::timeout(
                &url_text,
                &format!(
                    "waiting for a free connection to {}:{} (limit {} per host)",
                    key.host, key.port, s.max_per_host
                ),
                s.pool_timeout.unwrap_or(req.total),
            ),
            Retry::No,
        )
    })?;
    let mut pooled = inner.pool.take_idle(&checkout);
    let mut replaced_dead = false;
    loop {
        let reused = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(c) => c,
            None => connect(inner, &key, req, &url_text)?,
        };
        conn.wire
            .get_ref()
            .tcp()
            .set_limits(req.deadline, Some(s.read_timeout));
        match exchange(inner, &mut conn, req) {
            Ok(raw) => {
                if raw.reusable && s.keep_alive && conn.wire.buffered() == 0 {
                    inner.pool.checkin(&checkout, conn);
                }
                return Ok(raw);
            }
            Err(e) => {
                let stale = reused && is_stale_connection_error(&e);
                if stale && req.idempotent && !replaced_dead {
                    log::debug!("{url_text}: pooled connection was dead ({e}); reconnecting");
                    replaced_dead = true;
                    continue;
                }
                return Err(classify(inner, req, &url_text, e, reused));
            }
        }
    }
}

/// Sends the request on `conn` and reads the response.
fn exchange(inner: &Inner, conn: &mut Conn, req: &Req) -> Result<RawResponse, WireError> {
    let head = request_head(inner, req);
    let w = conn.wire.get_mut();
    let mut msg = head;
    msg.extend_from_slice(&req.body);
    w.write_all(&msg)?;
    w.flush()?;
    conn.wire.read_response(&req.method, &inner.settings.limits)
}

fn is_stale_connection_error(e: &WireError) -> bool {
    match e {
        WireError::ClosedBeforeResponse => true,
        WireError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Turns a wire error into the client's error, naming the URL and the phase.
fn classify(inner: &Inner, req: &Req, url: &str, e: WireError, reused: bool) -> (Error, Retry) {
    let s = &inner.settings;
    match e {
        WireError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            let total_out = req.deadline.is_some_and(|d| evergreen::hub::now() >= d);
            let err = if total_out {
                Error::timeout(url, "the request (total timeout)", req.total)
            } else {
                Error::timeout(url, "waiting for the server (read timeout)", s.read_timeout)
            };
            (
                err,
                if total_out {
                    Retry::No
                } else {
                    Retry::IfIdempotent
                },
            )
        }
        WireError::Io(e) => (
            Error::io(ErrorKind::Io, url, "the connection failed mid-request", e),
            Retry::IfIdempotent,
        ),
        WireError::ClosedBeforeResponse => (
            Error::new(
                ErrorKind::Io,
                url,
                if reused {
                    "the server closed the pooled connection before answering"
                } else {
                    "the server closed the connection before sending a response"
                },
            ),
            Retry::IfIdempotent,
        ),
        WireError::Malformed(m) => (
            Error::new(
                ErrorKind::Malformed,
                url,
                format!("malformed response: {m}"),
            ),
            Retry::No,
        ),
        WireError::TooLarge { what, limit } => (
            Error::new(
                ErrorKind::TooLarge,
                url,
                format!("response {what} larger than the limit of {limit} bytes"),
            ),
            Retry::No,
        ),
    }
}

fn request_head(inner: &Inner, req: &Req) -> Vec<u8> {
    let s = &inner.settings;
    let u = &req.url;
    let mut target = u.path().to_string();
    if let Some(q) = u.query() {
        target.push('?');
        target.push_str(q);
    }
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    let mut h = Vec::with_capacity(256);
    let _ = write!(
        h,
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, target, host
    );
    let overridden = |name: &str| {
        req.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !overridden("user-agent") {
        let _ = write!(h, "User-Agent: {}\r\n", s.user_agent);
    }
    if !overridden("accept") {
        h.extend_from_slice(b"Accept: */*\r\n");
    }
    if s.gzip && !overridden("accept-encoding") {
        h.extend_from_slice(b"Accept-Encoding: gzip\r\n");
    }
    for (n, v) in &req.headers {
        if n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("host") {
            continue;
        }
        let _ = write!(h, "{n}: {v}\r\n");
    }
    if req.has_body || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        let _ = write!(h, "Content-Length: {}\r\n", req.body.len());
    }
    if !s.keep_alive {
        h.extend_from_slice(b"Connection: close\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// Opens a connection: resolve (evergreen's resolver, never `getaddrinfo`), connect each
/// address in turn, then the TLS handshake for `https`.
fn connect(inner: &Inner, key: &HostKey, req: &Req, url: &str) -> Result<Conn, (Error, Retry)> {
    let s = &inner.settings;
    let now = evergreen::hub::now();
    let left = |now: Instant| req.deadline.map(|d| d.saturating_duration_since(now));
    if left(now).is_some_and(|l| l.is_zero()) {
        return Err((
            Error::timeout(url, "the request (total timeout)", req.total),
            Retry::No,
        ));
    }
    let host = key.host.trim_start_matches('[').trim_end_matches(']');
    let ips = evergreen::net::dns::resolve(host).map_err(|e| {
        let retry = if e.kind() == io::ErrorKind::TimedOut {
            Retry::Always
        } else {
            Retry::No
        };
        (
            Error::io(ErrorKind::Resolve, url, &format!("resolving {host}"), e),
            retry,
        )
    })?;
    let mut last: Option<io::Error> = None;
    let mut stream = None;
    for ip in ips {
        let t = match left(evergreen::hub::now()) {
            Some(l) if l.is_zero() => break,
            Some(l) => l.min(s.connect_timeout),
            None => s.connect_timeout,
        };
        match TcpStream::connect_timeout((ip, key.port), t) {
            Ok(st) => {
                stream = Some(st);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match stream {
        Some(st) => st,
        None => {
            let e = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no time left"));
            let err = if e.kind() == io::ErrorKind::TimedOut {
                Error::timeout(
                    url,
                    &format!("connecting to {}:{}", key.host, key.port),
                    s.connect_timeout,
                )
            } else {
                Error::io(
                    ErrorKind::Connect,
                    url,
                    &format!("cannot connect to {}:{}", key.host, key.port),
                    e,
                )
            };
            return Err((err, Retry::Always));
        }
    };
    let _ = stream.set_nodelay(true);
    inner.pool.note_opened();
    let tcp = TimedTcp::new(stream);
    tcp.set_limits(req.deadline, Some(s.read_timeout));
    let transport = if key.https {
        Transport::tls(tcp, inner.tls.clone(), host).map_err(|f| match f {
            TlsFailure::Tls(m) => (Error::new(ErrorKind::Tls, url, m), Retry::No),
            TlsFailure::Io(e) if e.kind() == io::ErrorKind::TimedOut => (
                Error::timeout(url, "the TLS handshake", s.read_timeout),
                Retry::Always,
            ),
            TlsFailure::Io(e) => (
                Error::io(ErrorKind::Tls, url, "the TLS handshake failed", e),
                Retry::Always,
            ),
        })?
    } else {
        Transport::Plain(tcp)
    };
    Ok(Conn {
        wire: Wire::new(transport),
        idle_since: evergreen::hub::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
        assert!(parse_http_date("garbage").is_none());
        assert!(parse_http_date("Sun, 99 Nov 1994 08:49:37 GMT").is_none());
        // A year that would overflow the day arithmetic is refused, not a panic.
        assert!(parse_http_date("Sun, 06 Nov 9223372036854775807 08:49:37 GMT").is_none());
        assert!(parse_http_date("Sun, 06 Nov -400 08:49:37 GMT").is_none());
    }

    #[test]
    fn retry_after_values_never_panic() {
        let head = |v: &str| super::super::wire::Head {
            minor_version: 1,
            status: 503,
            reason: String::new(),
            headers: vec![("retry-after".into(), v.as_bytes().to_vec())],
        };
        assert_eq!(retry_after(&head("7")), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&head("18446744073709551615")),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [
            "-1",
            "99999999999999999999999",
            "1.5",
            "",
            "Sun, 06 Nov 99999 08:49:37 GMT",
        ] {
            assert_eq!(retry_after(&head(bad)), None, "{bad:?}");
        }
        // A date in the past means "now".
        assert_eq!(
            retry_after(&head("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO)
        );
        // A huge delay never overflows the deadline arithmetic.
        assert!(!time_left_for(Some(Instant::now()), Duration::MAX));
    }

    #[test]
    fn header_checks_never_show_values() {
        let e = check_header("apikey", "sec\r\nret").unwrap_err();
        assert!(e.contains("apikey") && !e.contains("sec"), "{e}");
        assert!(check_header("bad name", "v").is_err());
        assert!(check_header("x-ok", "fine value").is_ok());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s =
            ClientBuilder::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        let huge = ClientBuilder::default().backoff(Duration::MAX, Duration::MAX);
        for attempt in 1..100 {
            assert!(backoff(&huge, attempt) >= Duration::MAX / 2);
        }
        for attempt in 1..30 {
            let d = backoff(&s, attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(1));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
