//! # evergreen-services
//!
//! The services layer of evergreen. This crate holds the [`fetch`] helper, the I/O the stats
//! services need, made cooperative on evergreen's hub:
//!
//! * [`fetch::http`]: an HTTP/1.1 client (keep-alive pool, retries with back-off, redirects,
//!   timeouts, gzip, TLS by rustls) on evergreen's cooperative `TcpStream`;
//! * [`fetch::mysql`]: a green pool over the unmodified `mysql` crate's connections, which
//!   evergreen's monkey patching makes cooperative.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use evergreen_services::fetch::{http::Client, mysql::{MySqlPool, PoolOptions}};
//!
//! let http = Client::builder().default_header("apikey", "s3cret").build()?;
//! let db = MySqlPool::new(PoolOptions::from_url("mysql://root@127.0.0.1/stats")?);
//! let g = evergreen::spawn(move || -> Result<u64, Box<dyn std::error::Error>> {
//!     let users: Vec<String> = http.get("https://api.example.com/users").json()?;
//!     let rows: Vec<Vec<mysql::Value>> = users.into_iter().map(|u| vec![u.into()]).collect();
//!     Ok(db.upsert("users", &["name"], &[], &rows, 500)?.rows)
//! });
//! println!("{:?}", g.into_result());
//! # Ok(()) }
//! ```
//!
//! # How it maps to the sample's gevent stack
//!
//! The sample ran `requests` and a blocking MySQL driver under `gevent.monkey.patch_all()`.
//! Here the HTTP client is cooperative natively (it is written on evergreen's sockets), and the
//! MySQL driver is the unmodified blocking crate, made cooperative by evergreen's libc-level
//! hooks exactly as gevent's patching made the Python driver cooperative. Each module's docs
//! describe its mechanism and map its items to their Python counterparts.
//!
//! # The stats pipeline
//!
//! On top of the fetch helper, one way only (each layer knows nothing of the ones above it):
//!
//! * [`store`]: one [`store::Store`] interface, MySQL (through [`fetch::mysql`]) and SQLite
//!   (embedded, the default): the three stats tables, the crunch-date cursor, the runs log;
//!   knows nothing of HTTP;
//! * [`stats`]: [`stats::BaseService`] and the three services (bulk SMS cost, bulk SMS failed,
//!   airtime delivered) as supervised actors, the [`stats::Writer`] batching upserts, the
//!   [`stats::Pipeline`] and its [`stats::Scheduler`] with the cursor logic; parsing in
//!   [`stats::parse`];
//! * [`demo_api`]: a stand-in for the upstream stats API (deterministic data, faults) on
//!   evergreen's `StreamServer`;
//! * [`config`]: checked configuration values and the exit codes of the `stats-pipeline`
//!   binary (`src/bin/stats-pipeline.rs`), which sits on top of everything.
//!
//! `unsafe` is forbidden in this crate: everything unsafe lives in the runtime.
#![forbid(unsafe_code)]

pub mod config;
pub mod demo_api;
pub mod fetch;
pub mod stats;
pub mod store;
