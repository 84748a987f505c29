//! The fetch helper: the I/O the stats services need, cooperative on evergreen's hub.
//!
//! * [`http`]: an HTTP/1.1 client (keep-alive pool, retries, redirects, timeouts, TLS by
//!   rustls) on evergreen's cooperative `TcpStream`.
//! * [`mysql`]: a green pool of the unmodified `mysql` crate's connections, made cooperative
//!   by evergreen's monkey patching.
//!
//! Neither knows anything of stats: they are general-purpose clients for greenlets.

pub mod http;
pub mod mysql;
