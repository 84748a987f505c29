//! # evergreen-services
//!
//! The services layer of evergreen: the [`fetch`] helper (a cooperative HTTP/1.1 client and a
//! green MySQL pool) on which the stats pipeline is built.
#![forbid(unsafe_code)]

pub mod fetch;
