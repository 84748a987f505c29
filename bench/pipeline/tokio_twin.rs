//! The stats pipeline written idiomatically on tokio: reqwest + mysql_async, a task per user,
//! the same bounded concurrency. A peer for benchmarking only (`bench/benches/pipeline.rs`
//! runs it beside evergreen's `stats-pipeline` against the same demo API and MariaDB).
//!
//! It does what one crunch of one date does in `services/src/stats` (`Pipeline::crunch_date`),
//! step for step, so that the two differ in their runtime and I/O stack only:
//!
//! | evergreen (`services/src/stats`) | here |
//! |---|---|
//! | three `BaseService<S>` actors asked concurrently | three `tokio::spawn`ed service tasks, joined |
//! | user list: one GET, `parse::user_list` | the same GET with reqwest, the same parser |
//! | ≤ 50 users in flight per service (an evergreen `Pool`, `spawn` parks when full) | a task per user, each holding a permit of a `Semaphore(50)` acquired before it is spawned |
//! | one GET per user (`apikey` header, JSON decoded to `serde_json::Value`), `parse::user_stats` | the same |
//! | rows told to the `Writer` actor (bounded mailbox 256, `Policy::Block`) | sent on a bounded `mpsc` channel (256) to a writer task |
//! | writer: flush at 2000 buffered rows, every 1 s, and on a service's `Flush` ask; ≤ 4 batches in flight | the same, flusher tasks in a `JoinSet` of at most 4 |
//! | upsert: one transaction, `INSERT … ON DUPLICATE KEY UPDATE` of 500 rows then powers of two, prepared, values as parameters, 3 attempts | the same SQL with mysql_async (pool of 6 connections, no reset on return, like evergreen's pool) |
//! | `record_run`: one row into `pipeline_runs` | the same |
//! | HTTP client: keep-alive pool of 150 connections, 120 s timeout, 5 retries on 429/502/503/504 and connection errors | reqwest, 120 s timeout, idle pool of 150, the same retry rule |
//!
//! The parsing and the row types are evergreen-services' own (`stats::parse`, `store::Row`):
//! they are plain functions on `serde_json::Value`, so both pipelines parse with the same code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use evergreen_services::stats::{
    parse, AirtimeDelivered, BulkSmsCost, BulkSmsFailed, Service, ServiceId,
};
use evergreen_services::store::{now_utc_string, Date, Row, Table, Value};
use mysql_async::prelude::Queryable as _;
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

/// The twin's settings: the defaults of evergreen's `PipelineConfig`.
#[derive(Clone)]
pub struct Config {
    /// The upstream's root, ending in `/`.
    pub base_url: String,
    /// Sent as the `apikey` header.
    pub api_key: String,
    /// `mysql://…/db`.
    pub database_url: String,
    /// Users in flight per service (50).
    pub concurrency: usize,
    /// Rows per upsert flush (2000).
    pub batch: usize,
    /// The writer's flush interval (1 s).
    pub flush_interval: Duration,
}

/// What one service did with one date (the counters of evergreen's `DateReport`).
#[derive(Clone, Debug, Default)]
pub struct ServiceReport {
    /// Users in the list.
    pub users: u64,
    /// Users fetched and parsed.
    pub done: u64,
    /// Users whose fetch failed.
    pub failed: u64,
    /// Rows handed to the writer.
    pub rows: u64,
    /// Malformed elements skipped.
    pub malformed: u64,
    /// The first error.
    pub error: Option<String>,
}

const CONNECTIONS: usize = 6;
const MAILBOX: usize = 256;
const FLUSHERS: usize = 4;
const STATEMENT_ROWS: usize = 500;
const HTTP_RETRIES: u32 = 5;

fn view(id: ServiceId) -> &'static str {
    match id {
        ServiceId::BulkSmsCost => BulkSmsCost::get_view(),
        ServiceId::BulkSmsFailed => BulkSmsFailed::get_view(),
        ServiceId::AirtimeDelivered => AirtimeDelivered::get_view(),
    }
}

fn build_url(base: &str, id: ServiceId, date: Date, username: Option<&str>) -> String {
    let mut u = format!("{base}{}&startDate={date}&endDate={date}", view(id));
    if let Some(name) = username {
        u.push_str("&username=");
        u.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
    }
    u
}

/// GET `url`, JSON-decoded; retried like evergreen's client (429/502/503/504 and connection
/// errors, back-off 100 ms × 2ⁿ⁻¹).
async fn fetch(http: &reqwest::Client, url: &str) -> Result<Json, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let retry = match http.get(url).send().await {
            Ok(resp) if matches!(resp.status().as_u16(), 429 | 502 | 503 | 504) => {
                format!("HTTP {}", resp.status())
            }
            Ok(resp) if !resp.status().is_success() => {
                return Err(format!("HTTP {}", resp.status()))
            }
            Ok(resp) => {
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                return serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"));
            }
            Err(e) if e.is_connect() || e.is_request() => e.to_string(),
            Err(e) => return Err(e.to_string()),
        };
        if attempt > HTTP_RETRIES {
            return Err(retry);
        }
        tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
    }
}

enum WriterMsg {
    Rows(Table, Vec<Row>),
    Flush(Table, oneshot::Sender<Result<(), String>>),
}

fn slot(t: Table) -> usize {
    match t {
        Table::BulkSmsNetworksCost => 0,
        Table::BulkSmsNetworksFailed => 1,
        Table::AirtimeNetworksDelivered => 2,
    }
}

/// Rows in the next statement: 500, else the largest power of two that fits (as evergreen's
/// MySQL store, so both prepare the same statement shapes).
fn chunk_len(left: usize) -> usize {
    if left >= STATEMENT_ROWS {
        STATEMENT_ROWS
    } else {
        1 << (usize::BITS - 1 - left.leading_zeros())
    }
}

fn upsert_sql(t: Table, n: usize) -> String {
    let (cols, update) = t.upsert_columns();
    let one = format!("({})", vec!["?"; cols.len()].join(", "));
    format!(
        "INSERT INTO `{}` ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
        t.name(),
        cols.iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", "),
        vec![one.as_str(); n].join(", "),
        update
            .iter()
            .map(|u| format!("`{u}` = VALUES(`{u}`)"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One batch in one transaction.
async fn upsert(pool: &mysql_async::Pool, t: Table, rows: &[Row]) -> Result<(), String> {
    let now = now_utc_string();
    let mut values: Vec<mysql_async::Value> = Vec::with_capacity(rows.len() * 7);
    for r in rows {
        values.push(r.username.as_str().into());
        values.push(r.date.to_string().into());
        values.push(r.network.as_str().into());
        values.push(r.country.as_str().into());
        match &r.value {
            Value::Money { currency, amount } => {
                values.push(amount.to_string().into());
                values.push(currency.as_str().into());
            }
            Value::Count(n) => values.push((*n).into()),
        }
        values.push(now.as_str().into());
    }
    let per_row = t.upsert_columns().0.len();
    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut i = 0;
    while i < rows.len() {
        let n = chunk_len(rows.len() - i);
        let params = values[i * per_row..(i + n) * per_row].to_vec();
        tx.exec_drop(upsert_sql(t, n), mysql_async::Params::Positional(params))
            .await
            .map_err(|e| e.to_string())?;
        i += n;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

type Errors = Arc<Mutex<[Option<String>; 3]>>;

/// The writer task: buffers rows, hands a batch per table to a flusher task at `batch` rows,
/// every `flush_interval` and on a `Flush`; at most [`FLUSHERS`] batches in flight (the writer
/// waits for one to finish when all are busy, which is the back-pressure).
async fn writer(
    mut rx: mpsc::Receiver<WriterMsg>,
    pool: mysql_async::Pool,
    batch: usize,
    every: Duration,
) {
    let mut buf: [Vec<Row>; 3] = Default::default();
    let mut buffered = 0usize;
    let errors: Errors = Arc::default();
    let mut flushers: JoinSet<()> = JoinSet::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick() => {
                flush_all(&mut buf, &mut buffered, &mut flushers, &pool, &errors).await;
                continue;
            }
        };
        match msg {
            Some(WriterMsg::Rows(t, rows)) => {
                buffered += rows.len();
                buf[slot(t)].extend(rows);
                if buffered >= batch {
                    flush_all(&mut buf, &mut buffered, &mut flushers, &pool, &errors).await;
                }
            }
            Some(WriterMsg::Flush(t, reply)) => {
                flush_all(&mut buf, &mut buffered, &mut flushers, &pool, &errors).await;
                while flushers.join_next().await.is_some() {}
                let err = errors.lock().expect("errors lock")[slot(t)].take();
                let _ = reply.send(err.map_or(Ok(()), Err));
            }
            None => {
                flush_all(&mut buf, &mut buffered, &mut flushers, &pool, &errors).await;
                while flushers.join_next().await.is_some() {}
                return;
            }
        }
    }
}

async fn flush_all(
    buf: &mut [Vec<Row>; 3],
    buffered: &mut usize,
    flushers: &mut JoinSet<()>,
    pool: &mysql_async::Pool,
    errors: &Errors,
) {
    for t in Table::ALL {
        let rows = std::mem::take(&mut buf[slot(t)]);
        if rows.is_empty() {
            continue;
        }
        *buffered -= rows.len();
        while flushers.len() >= FLUSHERS {
            flushers.join_next().await;
        }
        let (pool, errors) = (pool.clone(), errors.clone());
        flushers.spawn(async move {
            let mut attempt = 0;
            loop {
                match upsert(&pool, t, &rows).await {
                    Ok(()) => return,
                    Err(e) => {
                        attempt += 1;
                        if attempt >= 3 {
                            errors.lock().expect("errors lock")[slot(t)].get_or_insert(e);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                    }
                }
            }
        });
    }
}

/// What a user task gives back.
enum UserOutcome {
    Done { rows: u64, malformed: u64 },
    Failed(String),
}

async fn crunch_user(
    http: reqwest::Client,
    base: Arc<str>,
    id: ServiceId,
    date: Date,
    username: String,
    writer: mpsc::Sender<WriterMsg>,
) -> UserOutcome {
    let url = build_url(&base, id, date, Some(&username));
    let parsed = match fetch(&http, &url).await {
        Ok(j) => parse::user_stats(&j, &username, date, id.table().is_money())
            .map_err(|e| format!("user {username:?}: {e}")),
        Err(e) => Err(e),
    };
    match parsed {
        Ok((rows, bad)) => {
            let n = rows.len() as u64;
            if !rows.is_empty()
                && writer
                    .send(WriterMsg::Rows(id.table(), rows))
                    .await
                    .is_err()
            {
                return UserOutcome::Failed("the writer is gone".into());
            }
            UserOutcome::Done {
                rows: n,
                malformed: bad.len() as u64,
            }
        }
        Err(e) => UserOutcome::Failed(e),
    }
}

/// One service's crunch of `date`: the user list, a task per user (≤ `concurrency` at once),
/// then a `Flush` of its table.
async fn crunch_service(
    http: reqwest::Client,
    base: Arc<str>,
    id: ServiceId,
    date: Date,
    concurrency: usize,
    writer: mpsc::Sender<WriterMsg>,
) -> ServiceReport {
    let mut report = ServiceReport::default();
    let users = match fetch(&http, &build_url(&base, id, date, None))
        .await
        .and_then(|j| parse::user_list(&j))
    {
        Ok(u) => u,
        Err(e) => {
            report.error = Some(format!("the user list of {}: {e}", id.name()));
            return report;
        }
    };
    report.users = users.len() as u64;
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let fold = |report: &mut ServiceReport, r: Result<UserOutcome, tokio::task::JoinError>| match r
    {
        Ok(UserOutcome::Done { rows, malformed }) => {
            report.done += 1;
            report.rows += rows;
            report.malformed += malformed;
        }
        Ok(UserOutcome::Failed(e)) => {
            report.failed += 1;
            report.error.get_or_insert(e);
        }
        Err(e) => {
            report.failed += 1;
            report.error.get_or_insert(e.to_string());
        }
    };
    for username in users {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (http, base, writer) = (http.clone(), base.clone(), writer.clone());
        tasks.spawn(async move {
            let r = crunch_user(http, base, id, date, username, writer).await;
            drop(permit);
            r
        });
        while let Some(r) = tasks.try_join_next() {
            fold(&mut report, r);
        }
    }
    while let Some(r) = tasks.join_next().await {
        fold(&mut report, r);
    }
    let (tx, rx) = oneshot::channel();
    let flushed = match writer.send(WriterMsg::Flush(id.table(), tx)).await {
        Ok(()) => rx
            .await
            .unwrap_or(Err("the writer dropped the flush".into())),
        Err(_) => Err("the writer is gone".into()),
    };
    if let Err(e) = flushed {
        report
            .error
            .get_or_insert(format!("writing {}: {e}", id.table().name()));
    }
    report
}

/// Crunches `date` with the three services concurrently, records the run in `pipeline_runs`,
/// stops the writer and the pool. The schema must exist.
pub async fn crunch_date(cfg: &Config, date: Date) -> Result<Vec<ServiceReport>, String> {
    let started = std::time::Instant::now();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "apikey",
        reqwest::header::HeaderValue::from_str(&cfg.api_key).map_err(|e| e.to_string())?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(cfg.concurrency * 3)
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let opts = mysql_async::Opts::from_url(&cfg.database_url).map_err(|e| e.to_string())?;
    let pool = mysql_async::Pool::new(
        mysql_async::OptsBuilder::from_opts(opts).pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(0, CONNECTIONS).expect("0 ≤ 6"))
                .with_reset_connection(false),
        ),
    );
    let (tx, rx) = mpsc::channel(MAILBOX);
    let writer = tokio::spawn(writer(rx, pool.clone(), cfg.batch, cfg.flush_interval));
    let base: Arc<str> = Arc::from(cfg.base_url.as_str());
    let services: Vec<_> = ServiceId::ALL
        .into_iter()
        .map(|id| {
            tokio::spawn(crunch_service(
                http.clone(),
                base.clone(),
                id,
                date,
                cfg.concurrency,
                tx.clone(),
            ))
        })
        .collect();
    drop(tx);
    let mut reports = Vec::new();
    for s in services {
        reports.push(s.await.map_err(|e| format!("a service task failed: {e}"))?);
    }
    writer
        .await
        .map_err(|e| format!("the writer failed: {e}"))?;
    // The run record, as `Pipeline::crunch_date` writes it.
    let sum = |f: fn(&ServiceReport) -> u64| reports.iter().map(f).sum::<u64>();
    let complete = reports
        .iter()
        .all(|r| r.error.is_none() && r.failed == 0 && r.done == r.users);
    let detail: String = reports
        .iter()
        .find_map(|r| r.error.clone())
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
    conn.exec_drop(
        "INSERT INTO pipeline_runs (date, outcome, users, failed_users, rows_written, malformed, millis, finished_at, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            date.to_string(),
            if complete { "complete" } else { "partial" },
            sum(|r| r.users),
            sum(|r| r.failed),
            sum(|r| r.rows),
            sum(|r| r.malformed),
            started.elapsed().as_millis() as u64,
            now_utc_string(),
            detail,
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    drop(conn);
    pool.disconnect().await.map_err(|e| e.to_string())?;
    Ok(reports)
}
