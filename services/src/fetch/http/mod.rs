//! A cooperative HTTP/1.1 client (the part of `requests` the sample used, under gevent's
//! `patch_socket`).
//!
//! ```no_run
//! # fn main() -> Result<(), evergreen_services::fetch::http::Error> {
//! use evergreen_services::fetch::http::Client;
//! let client = Client::builder().default_header("apikey", "s3cret").build()?;
//! let greenlets: Vec<_> = ["alice", "bob"]
//!     .into_iter()
//!     .map(|user| {
//!         let client = client.clone();
//!         evergreen::spawn(move || {
//!             client
//!                 .get("https://api.example.com/bulkSms/sent")
//!                 .query(&[("username", user)])
//!                 .json::<serde_json::Value>()
//!         })
//!     })
//!     .collect();
//! for g in evergreen::joinall(&greenlets) {
//!     println!("{:?}", g.into_result());
//! }
//! # Ok(()) }
//! ```
//!
//! # Implementation
//!
//! A request runs entirely in the calling greenlet, in blocking style; every wait parks the
//! greenlet on the hub, so thousands of requests from thousands of greenlets overlap on one
//! thread.
//!
//! 1. **Pool**: take a permit for the host (FIFO, bounded by
//!    [`ClientBuilder::max_connections_per_host`]), then the most recently used idle
//!    connection, or open one: the name is resolved by evergreen's own resolver
//!    ([`evergreen::net::dns`], never glibc's blocking `getaddrinfo`), each address tried
//!    with the connect timeout, then for `https` a rustls handshake (ring provider, webpki
//!    roots plus any CA added) over the same cooperative `TcpStream`.
//! 2. **Exchange**: the request head and body are written in one buffer; the response is read
//!    by [`wire`] (httparse for the head; `Content-Length`, chunked or until-close bodies;
//!    no body for `HEAD`, 1xx, 204, 304; limits on every size). Every read and write waits at
//!    most `min(read timeout, time left of the total timeout)`.
//! 3. **Reuse**: a response that ended cleanly on a keep-alive connection returns it to the
//!    pool. A pooled connection that the server had closed (EOF or reset before any response
//!    byte) is replaced by a fresh one once, transparently, for idempotent requests.
//! 4. **Retries** ([`ClientBuilder::max_retries`], default 5): connection failures (always:
//!    the request never left), failures mid-request and 429/502/503/504 (idempotent requests
//!    only), after an exponential back-off with jitter, or the `Retry-After` the server asked
//!    for; never past the total timeout.
//! 5. **Redirects**: 301/302/303/307/308 followed up to a limit, a loop detected and named;
//!    headers that carry credentials are dropped when a redirect leaves the origin.
//!
//! A kill or a scoped [`evergreen::Timeout`] around a request unwinds it at its current wait:
//! the connection it held is closed (never returned to the pool half-read) and its pool
//! permit released.
//!
//! # gevent / Python mapping
//!
//! | the sample (gevent + `requests`) | here | differences |
//! |---|---|---|
//! | `requests.Session()` under `monkey.patch_socket()` | [`Client`] | cooperative natively, no patching needed |
//! | `session.get(url, headers={'apikey': k}, timeout=120)` | `client.get(url).header("apikey", k).send()` | the timeout is split into connect, per-read and total (default 120 s) |
//! | `HTTPAdapter(max_retries=5)` | [`ClientBuilder::max_retries`] | also retries 429/502/503/504 for idempotent requests, honouring `Retry-After` |
//! | `pool_connections`, `pool_maxsize`, `pool_block=True` | [`ClientBuilder::max_connections_per_host`] | waiters are served FIFO |
//! | `response.json()`, `raise_for_status()` | [`Response::json`], [`Response::error_for_status`] | errors carry the redacted URL, the status and a snippet of the body |
//! | `verify=...` | [`ClientBuilder::add_root_certificate_pem`], [`ClientBuilder::webpki_roots`] | no way to turn verification off |
//!
//! Bodies are asked for and decoded as gzip ([`ClientBuilder::gzip`], on by default, bounded by
//! the size limit after decompression). Not supported: HTTP/2, proxies, cookies, other
//! content codings, streaming bodies (a response is read whole, within [`ClientBuilder::max_response_bytes`]).

mod client;
mod error;
mod pool;
mod transport;
pub mod wire;

pub use client::{Client, ClientBuilder, RequestBuilder, Response};
pub use error::{redact, Error, ErrorKind};
pub use pool::PoolStats;
