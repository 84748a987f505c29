//! The demo stats API: a stand-in for the upstream provider, on evergreen's `StreamServer`.
//!
//! It answers the three views of DESIGN.md ("services/") directly under the root
//! (`BASE_URL=http://127.0.0.1:P/`), with the upstream's shapes exactly, from deterministic
//! data: a [`Dataset`] of `users` users and `networks` (country, network) pairs whose values are
//! a hash of (seed, user, date, view, network), so every run with the same seed serves the same
//! numbers and tests can compute the expected rows without going through HTTP
//! ([`Dataset::expected`]).
//!
//! * `apikey` header checked: a missing or wrong key is `401 {"error": "…"}`;
//! * query validated: an unknown, missing or wrong parameter is `400 {"error": "…"}` naming it;
//! * `latency` before each answer; fault injection, each a probability: `error_rate` (a `503`
//!   with `Retry-After: 0`), `drop_rate` (the connection is closed without an answer),
//!   `malformed_rate` (per element, deterministic: a key without parentheses, a bad amount, a
//!   value of the wrong type);
//! * HTTP/1.1 keep-alive, one greenlet per connection (gevent's `StreamServer` model).

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use evergreen::net::{StreamServer, TcpStream};
use serde_json::{json, Value as Json};

use crate::store::{Date, Decimal, Row, Table, Value};

/// (country, network) pairs served, in order; `--networks M` takes the first M.
pub const NETWORKS: [(&str, &str); 12] = [
    ("Kenya", "Safaricom"),
    ("Kenya", "Airtel"),
    ("Uganda", "MTN"),
    ("Uganda", "Airtel"),
    ("Tanzania", "Vodacom"),
    ("Tanzania", "Tigo"),
    ("Nigeria", "MTN"),
    ("Nigeria", "Glo"),
    ("Rwanda", "MTN"),
    ("Ghana", "Vodafone"),
    ("Zambia", "Airtel"),
    ("Malawi", "TNM"),
];

/// One of the three views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewSpec {
    /// The path under the root.
    pub path: &'static str,
    /// `cost` or `count`.
    pub metric: &'static str,
    /// The table its rows go to.
    pub table: Table,
}

/// The three views, as the upstream serves them.
pub const VIEWS: [ViewSpec; 3] = [
    ViewSpec {
        path: "bulkSms/sent",
        metric: "cost",
        table: Table::BulkSmsNetworksCost,
    },
    ViewSpec {
        path: "bulkSms/failed",
        metric: "count",
        table: Table::BulkSmsNetworksFailed,
    },
    ViewSpec {
        path: "airtime/delivered",
        metric: "cost",
        table: Table::AirtimeNetworksDelivered,
    },
];

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The deterministic data the demo API serves.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The seed.
    pub seed: u64,
    /// How many users.
    pub users: usize,
    /// How many (country, network) pairs (1..=12).
    pub networks: usize,
    /// Probability that an element is served malformed (deterministic per element).
    pub malformed_rate: f64,
}

/// An element as served: the key and the JSON value.
pub type Element = (String, Json);

impl Dataset {
    /// The user name of user `i`: most are `user000042`; every tenth has characters that need
    /// urlencoding (`+`, `@`, a space, `/`, non-ASCII).
    pub fn username(&self, i: usize) -> String {
        match i % 10 {
            3 => format!("user+{i:06}@example.com"),
            7 => format!("user {i:06}/é"),
            _ => format!("user{i:06}"),
        }
    }

    fn hash(&self, user: usize, date: Date, view: usize, net: usize, salt: u64) -> u64 {
        let mut h = mix(self.seed ^ 0x5EED);
        for x in [
            user as u64,
            date.days() as u64,
            view as u64,
            net as u64,
            salt,
        ] {
            h = mix(h ^ x);
        }
        h
    }

    fn is_malformed(&self, user: usize, date: Date, view: usize, net: usize) -> Option<u64> {
        if self.malformed_rate <= 0.0 {
            return None;
        }
        let h = self.hash(user, date, view, net, 1);
        let p = (h >> 11) as f64 / (1u64 << 53) as f64;
        (p < self.malformed_rate).then_some(h % 4)
    }

    fn amount_units(&self, user: usize, date: Date, view: usize, net: usize) -> i64 {
        // Up to 999.99, two decimals, as the provider sends.
        (self.hash(user, date, view, net, 0) % 100_000) as i64 * 100
    }

    fn count(&self, user: usize, date: Date, view: usize, net: usize) -> u64 {
        self.hash(user, date, view, net, 0) % 50
    }

    /// The elements served for user `user` on `date` in view `view` (index into [`VIEWS`]).
    pub fn elements(&self, user: usize, date: Date, view: usize) -> Vec<Element> {
        let money = VIEWS[view].metric == "cost";
        (0..self.networks)
            .map(|n| {
                let (country, network) = NETWORKS[n];
                let key = format!("{country} ({network})");
                let good = if money {
                    let units = self.amount_units(user, date, view, n);
                    json!(format!(
                        "USD {}.{:02}",
                        units / 10_000,
                        units % 10_000 / 100
                    ))
                } else {
                    json!(self.count(user, date, view, n))
                };
                match self.is_malformed(user, date, view, n) {
                    None => (key, good),
                    Some(0) => (format!("{country} {network}"), good),
                    Some(1) if money => (key, json!("USD 12,50")),
                    Some(1) => (key, json!("seven")),
                    Some(2) if money => (key, json!(12.5)),
                    Some(2) => (key, json!(-3)),
                    Some(_) => (key, Json::Null),
                }
            })
            .collect()
    }

    /// What a complete crunch of `date` must store in `view`'s table, and how many malformed
    /// elements it must count, computed without HTTP or parsing.
    pub fn expected(&self, date: Date, view: usize) -> (Vec<Row>, u64) {
        let money = VIEWS[view].metric == "cost";
        let mut rows = Vec::new();
        let mut bad = 0;
        for u in 0..self.users {
            for (n, &(country, network)) in NETWORKS.iter().enumerate().take(self.networks) {
                if self.is_malformed(u, date, view, n).is_some() {
                    bad += 1;
                    continue;
                }
                let value = if money {
                    Value::Money {
                        currency: "USD".into(),
                        amount: Decimal::from_units(self.amount_units(u, date, view, n)),
                    }
                } else {
                    Value::Count(self.count(u, date, view, n))
                };
                rows.push(Row {
                    username: self.username(u),
                    date,
                    network: network.into(),
                    country: country.into(),
                    value,
                });
            }
        }
        rows.sort_by(|a, b| {
            (&a.username, &a.network, &a.country).cmp(&(&b.username, &b.network, &b.country))
        });
        (rows, bad)
    }

    fn user_index(&self, name: &str) -> Option<usize> {
        // Names embed their index; check the round trip.
        let digits: String = name.chars().filter(|c| c.is_ascii_digit()).collect();
        let i: usize = digits.parse().ok()?;
        (i < self.users && self.username(i) == name).then_some(i)
    }
}

/// The demo API's settings (`Debug` shows the api key as `***`).
#[derive(Clone)]
pub struct ApiConfig {
    /// The data served.
    pub data: Dataset,
    /// The key every request must carry in its `apikey` header.
    pub api_key: String,
    /// Delay before each answer.
    pub latency: Duration,
    /// Probability of a `503` (with `Retry-After: 0`).
    pub error_rate: f64,
    /// Probability of closing the connection without answering.
    pub drop_rate: f64,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("data", &self.data)
            .field("api_key", &"***")
            .field("latency", &self.latency)
            .field("error_rate", &self.error_rate)
            .field("drop_rate", &self.drop_rate)
            .finish()
    }
}

/// Counters of what the demo API did.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Requests answered (any status).
    pub requests: Cell<u64>,
    /// `503`s injected.
    pub errors: Cell<u64>,
    /// Connections dropped on purpose.
    pub drops: Cell<u64>,
    /// `401`s.
    pub unauthorized: Cell<u64>,
    /// Requests being answered now, per view (index into [`VIEWS`]).
    pub in_flight: [Cell<u64>; 3],
    /// The most requests answered at once, per view.
    pub max_in_flight: [Cell<u64>; 3],
}

struct State {
    cfg: ApiConfig,
    rng: RefCell<fastrand::Rng>,
    counters: Rc<ApiCounters>,
}

/// A running demo API.
pub struct DemoApi {
    server: StreamServer,
    counters: Rc<ApiCounters>,
}

impl DemoApi {
    /// Binds `addr` (port 0 for any) and starts serving in greenlets of the current hub.
    pub fn start(addr: &str, cfg: ApiConfig) -> io::Result<DemoApi> {
        if cfg.data.networks == 0 || cfg.data.networks > NETWORKS.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("networks must be 1..={}", NETWORKS.len()),
            ));
        }
        let counters = Rc::new(ApiCounters::default());
        let state = Rc::new(State {
            rng: RefCell::new(fastrand::Rng::with_seed(cfg.data.seed)),
            cfg,
            counters: counters.clone(),
        });
        let server = StreamServer::bind(addr, move |conn, peer| serve_conn(&state, conn, peer))?;
        server.start();
        Ok(DemoApi { server, counters })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr().expect("a bound listener")
    }

    /// `http://127.0.0.1:P/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.local_addr())
    }

    /// What it did so far.
    pub fn counters(&self) -> &ApiCounters {
        &self.counters
    }

    /// Stops accepting, waits up to `timeout` for open connections, then closes them.
    pub fn stop(&self, timeout: Duration) {
        self.server.stop(Some(timeout));
    }

    /// Serves until the server is stopped.
    pub fn serve_forever(&self) {
        self.server.serve_forever();
    }
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

fn serve_conn(state: &State, mut conn: TcpStream, _peer: SocketAddr) {
    let _ = conn.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut tmp = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 * 1024 {
                let _ = write_response(
                    &mut conn,
                    431,
                    &json!({"error": "request head too large"}),
                    false,
                    &[],
                );
                return;
            }
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let (method, target, key, close, body_len) = match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(_)) => {
                let h = |n: &str| {
                    req.headers
                        .iter()
                        .find(|x| x.name.eq_ignore_ascii_case(n))
                        .map(|x| String::from_utf8_lossy(x.value).into_owned())
                };
                let close = h("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    || req.version == Some(0);
                let len = h("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    h("apikey"),
                    close,
                    len,
                )
            }
            _ => {
                let _ = write_response(
                    &mut conn,
                    400,
                    &json!({"error": "malformed HTTP request"}),
                    false,
                    &[],
                );
                return;
            }
        };
        buf.drain(..end);
        // Discard a body (the views are GETs).
        let mut left = body_len;
        while left > 0 {
            if !buf.is_empty() {
                let k = left.min(buf.len());
                buf.drain(..k);
                left -= k;
                continue;
            }
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let c = &state.counters;
        c.requests.set(c.requests.get() + 1);
        let path = target
            .split('?')
            .next()
            .unwrap_or("")
            .trim_start_matches('/');
        let view = VIEWS.iter().position(|v| v.path == path);
        if let Some(v) = view {
            let n = c.in_flight[v].get() + 1;
            c.in_flight[v].set(n);
            c.max_in_flight[v].set(c.max_in_flight[v].get().max(n));
        }
        if !state.cfg.latency.is_zero() {
            evergreen::sleep(state.cfg.latency);
        }
        if let Some(v) = view {
            c.in_flight[v].set(c.in_flight[v].get() - 1);
        }
        let roll = |p: f64| p > 0.0 && state.rng.borrow_mut().f64() < p;
        if roll(state.cfg.drop_rate) {
            c.drops.set(c.drops.get() + 1);
            return;
        }
        let (status, body) = answer(state, &method, &target, key.as_deref());
        if status == 401 {
            c.unauthorized.set(c.unauthorized.get() + 1);
        }
        let (status, body, extra): (u16, Json, &[(&str, &str)]) =
            if status == 200 && roll(state.cfg.error_rate) {
                c.errors.set(c.errors.get() + 1);
                (
                    503,
                    json!({"error": "service unavailable (injected)"}),
                    &[("Retry-After", "0")],
                )
            } else {
                (status, body, &[])
            };
        if write_response(&mut conn, status, &body, !close, extra).is_err() || close {
            return;
        }
    }
}

fn write_response(
    conn: &mut TcpStream,
    status: u16,
    body: &Json,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let body = serde_json::to_vec(body).expect("JSON values serialise");
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    conn.write_all(&out)
}

fn bad(msg: String) -> (u16, Json) {
    (400, json!({ "error": msg }))
}

/// Answers one request: `(status, JSON body)`.
fn answer(state: &State, method: &str, target: &str, key: Option<&str>) -> (u16, Json) {
    if key != Some(state.cfg.api_key.as_str()) {
        let why = if key.is_none() {
            "missing apikey header"
        } else {
            "invalid apikey"
        };
        return (401, json!({ "error": why }));
    }
    if method != "GET" {
        return (
            405,
            json!({"error": format!("method {method} not allowed; use GET")}),
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.trim_start_matches('/');
    let Some(view) = VIEWS.iter().position(|v| v.path == path) else {
        let known: Vec<&str> = VIEWS.iter().map(|v| v.path).collect();
        return (
            404,
            json!({"error": format!("unknown view {path:?}; the views are {}", known.join(", "))}),
        );
    };
    let spec = VIEWS[view];
    let mut got: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if got.iter().any(|(g, _)| *g == k) {
            return bad(format!("parameter {k} given twice"));
        }
        got.push((k.into_owned(), v.into_owned()));
    }
    let money = spec.metric == "cost";
    let allowed: &[&str] = if money {
        &[
            "granularity",
            "metric",
            "currencyCode",
            "startDate",
            "endDate",
            "username",
        ]
    } else {
        &["granularity", "metric", "startDate", "endDate", "username"]
    };
    if let Some((k, _)) = got.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return bad(format!("unknown parameter {k} for view {path}"));
    }
    let get = |k: &str| got.iter().find(|(g, _)| g == k).map(|(_, v)| v.as_str());
    for k in allowed.iter().filter(|k| **k != "username") {
        if get(k).is_none() {
            return bad(format!("missing parameter {k}"));
        }
    }
    if get("granularity") != Some("day") {
        return bad("parameter granularity must be day".into());
    }
    if get("metric") != Some(spec.metric) {
        return bad(format!(
            "parameter metric must be {} for view {path}",
            spec.metric
        ));
    }
    if money && get("currencyCode") != Some("USD") {
        return bad("parameter currencyCode must be USD".into());
    }
    let start = match Date::parse(get("startDate").unwrap_or("")) {
        Ok(d) => d,
        Err(e) => return bad(format!("parameter startDate: {e}")),
    };
    match Date::parse(get("endDate").unwrap_or("")) {
        Ok(d) if d == start => {}
        Ok(_) => return bad("parameter endDate must equal startDate (one day per request)".into()),
        Err(e) => return bad(format!("parameter endDate: {e}")),
    }
    let data = &state.cfg.data;
    match get("username") {
        None => {
            let users: Vec<String> = (0..data.users).map(|i| data.username(i)).collect();
            (
                200,
                json!({"responses": {"userStats": [{"elements": users}]}}),
            )
        }
        Some(u) => match data.user_index(u) {
            None => (
                404,
                json!({"error": format!("parameter username: no such user {u:?}")}),
            ),
            Some(i) => {
                let elements: serde_json::Map<String, Json> =
                    data.elements(i, start, view).into_iter().collect();
                (
                    200,
                    json!({"responses": {"networkStats": [{"date": start.to_string(), "elements": elements}]}}),
                )
            }
        },
    }
}
