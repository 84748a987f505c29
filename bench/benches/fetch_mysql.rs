//! MySQL through a pool of 10 connections, against the local MariaDB (127.0.0.1:3306, root):
//!
//! * evergreen: `evergreen_services::fetch::mysql::MySqlPool` (10 connections, the unmodified
//!   `mysql` crate made cooperative by monkey patching), 200 greenlets on one hub;
//! * evergreen with two hubs (two OS threads, the gevent way to use two cores), each with 100
//!   greenlets and a pool of 5 (shown for reference; the target compares the one-hub row);
//! * `mysql::Pool` (10 connections) on 10 OS threads;
//! * `mysql_async` (pool of 10) with 200 tasks on tokio current-thread and on tokio
//!   multi-thread (2 workers).
//!
//! The peers are configured to do the same work per operation as evergreen's pool: no
//! `COM_RESET_CONNECTION` when a connection goes back to the pool (their default, which also
//! empties the prepared-statement cache, so every operation re-prepares) and, for
//! `mysql::Pool`, no ping on every checkout (its default `check_health`). evergreen's pool
//! pings only a connection idle for more than 5 s and never resets.
//!
//! Two workloads, each a run of `OPS` operations, every operation checking a connection out
//! and in: point SELECTs by primary key (prepared, `SELECT v FROM kv WHERE id = ?` over 10,000
//! rows), and single-row autocommit INSERTs into an InnoDB table. Runs interleaved across
//! clients, `ROUNDS` rounds, medians; operations per second and the client process's CPU time
//! per operation (the server's is not counted).
//!
//! `cargo bench -p evergreen-bench --bench fetch_mysql` writes its section of `bench/FETCH.md`;
//! `cargo test --benches` runs one short round and writes nothing. `EVG_FETCH_ONLY=name` runs
//! only the matching clients and `EVG_FETCH_WORKERS=n` changes evergreen's 200 greenlets (for
//! experiments; neither writes the report), as do `EVG_FETCH_OPS`, `EVG_FETCH_ROUNDS` and
//! `EVG_FETCH_WORK=select|insert` (sizes and one workload, for profiling). Without a server on
//! 127.0.0.1:3306 it says so and exits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use evergreen_bench::{bench_mode, cpu_model, process_cpu, Summary};
use mysql::prelude::Queryable;

const POOL: usize = 10;
const GREEN_WORKERS: usize = 200;
const ROWS: u32 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    Select,
    Insert,
}

fn main() {
    let full = bench_mode();
    let (ops, rounds) = if full { (20_000, 7) } else { (1_000, 1) };
    // Experiment knobs (none of them writes the report): EVG_FETCH_OPS, EVG_FETCH_ROUNDS,
    // EVG_FETCH_WORK=select|insert.
    let knob = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let (ops, rounds) = (
        knob("EVG_FETCH_OPS").unwrap_or(ops),
        knob("EVG_FETCH_ROUNDS").unwrap_or(rounds),
    );
    let only_work = std::env::var("EVG_FETCH_WORK").unwrap_or_default();
    let experiment = [
        "EVG_FETCH_OPS",
        "EVG_FETCH_ROUNDS",
        "EVG_FETCH_WORK",
        "EVG_FETCH_WORKERS",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some());
    if std::net::TcpStream::connect("127.0.0.1:3306").is_err() {
        eprintln!("fetch_mysql: no MySQL/MariaDB on 127.0.0.1:3306; skipped");
        return;
    }
    let db = format!("evg_bench_{}", std::process::id());
    setup(&db);
    type Runner = fn(&str, Work, usize) -> usize;
    let clients: &[(&str, Runner)] = &[
        ("evergreen (200 greenlets)", run_evergreen),
        (
            "evergreen 2 hubs (2 × 100 greenlets, 2 × 5 conns)",
            run_evergreen_2hubs,
        ),
        ("mysql::Pool (10 threads)", run_mysql_pool),
        ("mysql_async tokio-ct (200 tasks)", run_async_ct),
        ("mysql_async tokio-mt2 (200 tasks)", run_async_mt),
    ];
    // EVG_FETCH_ONLY=substring runs only the matching clients (for profiling one of them).
    let only = std::env::var("EVG_FETCH_ONLY").unwrap_or_default();
    let clients: Vec<_> = clients
        .iter()
        .filter(|(n, _)| n.contains(only.as_str()))
        .collect();
    let mut out = String::new();
    out.push_str(&format!(
        "MySQL (MariaDB on 127.0.0.1), a pool of {POOL} connections, {ops} operations per run, \
         median of {rounds} interleaved runs; CPU: {}, {} cores.\n\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let mut verdicts = Vec::new();
    for work in [Work::Select, Work::Insert] {
        if !only_work.is_empty() && !format!("{work:?}").eq_ignore_ascii_case(&only_work) {
            continue;
        }
        for (_, f) in &clients {
            assert_eq!(f(&db, work, ops / 10), ops / 10);
        }
        let mut rate: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
        let mut wait: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
        for round in 0..rounds {
            for (i, (name, f)) in clients.iter().enumerate() {
                let c0 = process_cpu();
                let w0 = RUNQ_WAIT_NS.load(Ordering::Relaxed);
                let t = Instant::now();
                let done = f(&db, work, ops);
                let secs = t.elapsed().as_secs_f64();
                let cpu_us = (process_cpu() - c0).as_secs_f64() * 1e6 / ops as f64;
                let wait_us = (RUNQ_WAIT_NS.load(Ordering::Relaxed) - w0) as f64 / 1e3 / ops as f64;
                assert_eq!(done, ops, "{name}: every operation must succeed");
                rate[i].push(ops as f64 / secs);
                cpu[i].push(cpu_us);
                wait[i].push(wait_us);
                eprintln!(
                    "{work:?} round {round}: {name:<34} {:>8.0} ops/s {cpu_us:>6.1} µs CPU/op {wait_us:>6.1} µs run-queue wait/op",
                    ops as f64 / secs
                );
            }
        }
        for (i, (name, _)) in clients.iter().enumerate() {
            let key = match work {
                Work::Select => "mysql_select",
                Work::Insert => "mysql_insert",
            };
            evergreen_bench::record(key, name, "operations/s", true, &rate[i]);
        }
        let med: Vec<Summary> = rate.iter().map(|r| Summary::of(r)).collect();
        // The peers: every client that is not evergreen.
        let peers: Vec<usize> = (0..clients.len())
            .filter(|&i| !clients[i].0.starts_with("evergreen"))
            .collect();
        let best_peer = peers.iter().map(|&i| med[i].median).fold(0.0, f64::max);
        out.push_str(&format!(
            "{}:\n\n| client | ops/s (median) | ÷ best peer | client CPU µs/op | client run-queue wait µs/op | runs (ops/s) |\n|---|---:|---:|---:|---:|---|\n",
            match work {
                Work::Select => "Point SELECTs by primary key",
                Work::Insert => "Single-row INSERTs (autocommit)",
            }
        ));
        for (i, (name, _)) in clients.iter().enumerate() {
            out.push_str(&format!(
                "| {name} | {:.0} | {:.2} | {:.1} | {:.1} | {} |\n",
                med[i].median,
                med[i].median / best_peer,
                Summary::of(&cpu[i]).median,
                Summary::of(&wait[i]).median,
                rate[i]
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push('\n');
        // Paired: evergreen ÷ the best peer *of the same round*, so drift between rounds
        // (this machine is shared) cancels; the median of those ratios.
        let paired = Summary::of(
            &(0..rate[0].len())
                .map(|r| rate[0][r] / peers.iter().map(|&i| rate[i][r]).fold(0.0, f64::max))
                .collect::<Vec<_>>(),
        );
        verdicts.push(format!(
            "{work:?}: evergreen {:.2}× the best peer's median, {:.2}× the best peer of the same round (median of the {} paired ratios, {:.2}–{:.2}) ({})",
            med[0].median / best_peer,
            paired.median,
            paired.runs,
            paired.min,
            paired.max,
            if med[0].median >= best_peer {
                "PASS"
            } else {
                "FAIL"
            }
        ));
    }
    out.push_str(&format!(
        "Target ≥ 1.0× the best of the peers: {}.\n",
        verdicts.join("; ")
    ));
    teardown(&db);
    println!("{out}");
    if full && only.is_empty() && !experiment {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/FETCH.md");
        evergreen_bench::write_section(path, "fetch_mysql", &out).expect("write FETCH.md");
        eprintln!("wrote the fetch_mysql section of {path}");
    }
}

fn admin() -> mysql::Conn {
    mysql::Conn::new(
        mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .user(Some("root"))
            .prefer_socket(false),
    )
    .expect("connect to MariaDB as root")
}

fn setup(db: &str) {
    let mut c = admin();
    c.query_drop(format!("CREATE DATABASE `{db}`")).unwrap();
    c.query_drop(format!("USE `{db}`")).unwrap();
    c.query_drop("CREATE TABLE kv (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL) ENGINE=InnoDB")
        .unwrap();
    c.query_drop(
        "CREATE TABLE log (id BIGINT AUTO_INCREMENT PRIMARY KEY, worker INT NOT NULL, \
         n INT NOT NULL, v VARCHAR(64) NOT NULL) ENGINE=InnoDB",
    )
    .unwrap();
    let mut tx = c.start_transaction(mysql::TxOpts::default()).unwrap();
    tx.exec_batch(
        "INSERT INTO kv VALUES (?, ?)",
        (0..ROWS).map(|i| (i, format!("value-{i}"))),
    )
    .unwrap();
    tx.commit().unwrap();
}

fn teardown(db: &str) {
    let _ = admin().query_drop(format!("DROP DATABASE IF EXISTS `{db}`"));
}

fn sql(work: Work) -> &'static str {
    match work {
        Work::Select => "SELECT v FROM kv WHERE id = ?",
        Work::Insert => "INSERT INTO log (worker, n, v) VALUES (?, ?, 'payload')",
    }
}

/// Nanoseconds the client's threads spent runnable but waiting for a CPU (the kernel's
/// run-queue delay, `/proc/thread-self/schedstat`), added by each thread when it ends.
static RUNQ_WAIT_NS: AtomicU64 = AtomicU64::new(0);

/// This thread's run-queue delay so far, in ns (0 if the kernel does not say).
fn thread_runq_wait() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Adds what the calling thread waited for a CPU while `f` ran to [`RUNQ_WAIT_NS`].
fn counting_runq_wait<R>(f: impl FnOnce() -> R) -> R {
    let w0 = thread_runq_wait();
    let r = f();
    RUNQ_WAIT_NS.fetch_add(thread_runq_wait().saturating_sub(w0), Ordering::Relaxed);
    r
}

/// The two statements on a blocking connection checked out of a pool: evergreen's green
/// pool's or `mysql::Pool`'s, each through its own methods (evergreen's wrap the `mysql`
/// crate's with error mapping and a retry on a lost connection).
trait Statements {
    /// The point SELECT of row `id`.
    fn select(&mut self, id: u32) -> Option<String>;
    /// The INSERT of row `n` by worker `w`.
    fn insert(&mut self, w: u32, n: u32);
}

/// The same calls for each type, each resolving to that type's own methods (evergreen's
/// inherent ones, `mysql`'s `Queryable`), so both clients run the same statements.
macro_rules! impl_statements {
    ($($conn:ty),*) => {$(
        impl Statements for $conn {
            fn select(&mut self, id: u32) -> Option<String> {
                self.exec_first(sql(Work::Select), (id,)).unwrap()
            }
            fn insert(&mut self, w: u32, n: u32) {
                self.exec_drop(sql(Work::Insert), (w, n)).unwrap()
            }
        }
    )*};
}

impl_statements!(
    evergreen_services::fetch::mysql::PooledConn,
    mysql::PooledConn
);

/// One blocking worker (`w`) of a run: takes operation numbers from `next` until `ops`, each
/// on a connection from `checkout` (given back after it); how many did their work.
fn blocking_worker<C: Statements>(
    next: &AtomicUsize,
    ops: usize,
    work: Work,
    w: u32,
    mut checkout: impl FnMut() -> C,
) -> usize {
    let mut done = 0;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= ops {
            return done;
        }
        let mut c = checkout();
        match work {
            Work::Select => done += c.select((n as u32 * 7919) % ROWS).is_some() as usize,
            Work::Insert => {
                c.insert(w, n as u32);
                done += 1;
            }
        }
    }
}

fn run_evergreen(db: &str, work: Work, ops: usize) -> usize {
    let workers: usize = std::env::var("EVG_FETCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(GREEN_WORKERS);
    run_hubs(db, work, ops, 1, workers, POOL)
}

/// The gevent way to use two cores: two hubs (OS threads), each with half the greenlets and
/// half the connections.
fn run_evergreen_2hubs(db: &str, work: Work, ops: usize) -> usize {
    run_hubs(db, work, ops, 2, GREEN_WORKERS / 2, POOL / 2)
}

/// `hubs` OS threads, each a hub with `workers` greenlets sharing a pool of `conns`; the
/// operations are numbered from one shared counter.
fn run_hubs(db: &str, work: Work, ops: usize, hubs: usize, workers: usize, conns: usize) -> usize {
    use evergreen_services::fetch::mysql::{MySqlPool, PoolOptions};
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..hubs)
        .map(|h| {
            let (db, next) = (db.to_string(), next.clone());
            std::thread::spawn(move || {
                counting_runq_wait(|| {
                    let pool = MySqlPool::new(
                        PoolOptions::new("127.0.0.1", 3306)
                            .user("root")
                            .database(Some(&db))
                            .max_connections(conns),
                    );
                    let gs: Vec<_> = (0..workers)
                        .map(|w| {
                            let (pool, next) = (pool.clone(), next.clone());
                            let w = (h * workers + w) as u32;
                            evergreen::spawn(move || {
                                blocking_worker(&next, ops, work, w, || pool.get().unwrap())
                            })
                        })
                        .collect();
                    let total: usize = evergreen::joinall(&gs)
                        .iter()
                        .map(|g| g.get().unwrap())
                        .sum();
                    drop(pool);
                    evergreen::hub::destroy();
                    total
                })
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

fn run_mysql_pool(db: &str, work: Work, ops: usize) -> usize {
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .user(Some("root"))
        .db_name(Some(db))
        .prefer_socket(false)
        .pool_opts(
            mysql::PoolOpts::new()
                .with_constraints(mysql::PoolConstraints::new(POOL, POOL).unwrap())
                .with_reset_connection(false)
                .with_check_health(false),
        );
    let pool = mysql::Pool::new(opts).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..POOL)
        .map(|w| {
            let (pool, next) = (pool.clone(), next.clone());
            std::thread::spawn(move || {
                counting_runq_wait(|| {
                    blocking_worker(&next, ops, work, w as u32, || pool.get_conn().unwrap())
                })
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

async fn async_load(db: String, work: Work, ops: usize) -> usize {
    use mysql_async::prelude::Queryable as _;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .user(Some("root"))
        .db_name(Some(db))
        .prefer_socket(false)
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(POOL, POOL).unwrap())
                .with_reset_connection(false),
        );
    let pool = mysql_async::Pool::new(opts);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..GREEN_WORKERS {
        let (pool, next) = (pool.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ops {
                    return done;
                }
                let mut c = pool.get_conn().await.unwrap();
                match work {
                    Work::Select => {
                        let v: Option<String> = c
                            .exec_first(sql(work), ((n as u32 * 7919) % ROWS,))
                            .await
                            .unwrap();
                        done += v.is_some() as usize;
                    }
                    Work::Insert => {
                        c.exec_drop(sql(work), (w as u32, n as u32)).await.unwrap();
                        done += 1;
                    }
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    pool.disconnect().await.unwrap();
    total
}

fn run_async_ct(db: &str, work: Work, ops: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    counting_runq_wait(|| rt.block_on(async_load(db.to_string(), work, ops)))
}

thread_local! {
    static START_WAIT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn run_async_mt(db: &str, work: Work, ops: usize) -> usize {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| START_WAIT.with(|w| w.set(thread_runq_wait())))
        .on_thread_stop(|| {
            let w0 = START_WAIT.with(|w| w.get());
            RUNQ_WAIT_NS.fetch_add(thread_runq_wait().saturating_sub(w0), Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let n = counting_runq_wait(|| rt.block_on(async_load(db.to_string(), work, ops)));
    drop(rt); // the workers stop (and count their wait) before the run ends
    n
}
