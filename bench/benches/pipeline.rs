//! The application on both models: evergreen's stats pipeline (`services/src/stats`, the
//! crunch of one date that `stats-pipeline crunch` does) against its tokio twin
//! (`bench/pipeline/tokio_twin.rs`: reqwest + mysql_async, a task per user, the same bounded
//! concurrency) on tokio current-thread and multi-thread (2 workers).
//!
//! Setup: one demo API process per latency (evergreen-services' `DemoApi`, the code behind
//! `stats-pipeline serve-api`, in a child process of this bench; its user list and data are
//! deterministic, so one process serves every client the same answers) and the local MariaDB
//! (127.0.0.1:3306, root). Every run is a fresh child process crunching one date of `USERS`
//! users × 3 services (50 users in flight per service, upserts of 2000 rows) into a database
//! of its own, created and migrated (with evergreen-services' schema) before the child starts,
//! its row counts checked after, then dropped. Runs are interleaved across runtimes, the
//! order rotated each round; medians.
//!
//! Reported per point: user fetches per second (users × 3 / the child's wall time from the
//! start of the pipeline to its shutdown), the child's CPU time (user + system, all threads)
//! per user fetch, and its peak RSS (`VmHWM`). The API process and MariaDB run beside it on
//! the same 2 cores and are not counted in the CPU time.
//!
//! `cargo bench -p evergreen-bench --bench pipeline` runs the full size and writes its section
//! of `bench/pipeline/RESULTS.md`; `cargo test --benches` (or the report's quick mode) a small
//! one that writes nothing. With `EVERGREEN_RESULTS_JSON` set (by `evergreen-bench all`), the
//! samples go to the report too. Without a server on 127.0.0.1:3306 it says so and exits.

#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "../pipeline/tokio_twin.rs"]
mod tokio_twin;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen_bench::{bench_mode, cpu_model, peak_rss_kib, process_cpu, record, Summary};
use evergreen_services::store::{Date, Table};
use mysql::prelude::Queryable;

const KEY: &str = "bench-key";
const DATE: &str = "2016-08-18";
const NETWORKS: usize = 5;
const LATENCIES_MS: [u64; 2] = [0, 20];
const RUNTIMES: [&str; 3] = ["evergreen", "tokio-ct", "tokio-mt2"];
const ROOT_URL: &str = "mysql://root@127.0.0.1:3306";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve-api") => return serve_api(&args[2..]),
        Some("--crunch") => return crunch_child(&args[2..]),
        _ => {}
    }
    let full = bench_mode();
    let (users, rounds) = if full { (5_000, 3) } else { (300, 1) };
    if std::net::TcpStream::connect("127.0.0.1:3306").is_err() {
        eprintln!("pipeline: no MySQL/MariaDB on 127.0.0.1:3306; skipped");
        return;
    }
    let mut admin = mysql::Conn::new(mysql::Opts::from_url(ROOT_URL).expect("a valid URL"))
        .expect("connect to MariaDB as root");
    let mut md = format!(
        "Stats pipeline, one date of {users} users × 3 services ({NETWORKS} networks each; 50 \
         users in flight per service, upserts of 2000 rows): evergreen's pipeline vs its tokio \
         twin (reqwest + mysql_async). {rounds} interleaved rounds, medians; CPU: {}, {} cores; \
         the demo API (one evergreen process) and MariaDB share the cores.\n\n\
         | latency | runtime | user fetches/s | min | max | ÷ evergreen | CPU µs / user fetch | peak RSS MB |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut failures = Vec::new();
    for latency in LATENCIES_MS {
        let (mut api, base_url) = start_api(users, latency);
        let mut rate: Vec<Vec<f64>> = vec![Vec::new(); RUNTIMES.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); RUNTIMES.len()];
        let mut rss: Vec<Vec<f64>> = vec![Vec::new(); RUNTIMES.len()];
        for round in 0..rounds {
            for k in 0..RUNTIMES.len() {
                let i = (k + round) % RUNTIMES.len();
                let rt = RUNTIMES[i];
                let db = format!("evg_pipe_{}_{latency}_{round}_{i}", std::process::id());
                admin
                    .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
                    .and_then(|_| admin.query_drop(format!("CREATE DATABASE {db}")))
                    .expect("create the run's database");
                let url = format!("{ROOT_URL}/{db}");
                migrate(&url);
                let got = run_child(rt, &base_url, &url);
                let counted = count_rows(&mut admin, &db);
                admin
                    .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
                    .expect("drop the run's database");
                let expected = users * NETWORKS;
                match got {
                    Ok(s) if counted.iter().all(|&n| n == expected as u64) => {
                        let fetches = (users * 3) as f64;
                        eprintln!(
                            "pipeline latency {latency} ms round {round} {rt:<10} {:>7.0} user fetches/s, {:>6.1} µs CPU each, peak RSS {:.1} MB",
                            fetches / s.secs,
                            s.cpu_secs * 1e6 / fetches,
                            s.peak_rss_kib as f64 / 1024.0
                        );
                        rate[i].push(fetches / s.secs);
                        cpu[i].push(s.cpu_secs * 1e6 / fetches);
                        rss[i].push(s.peak_rss_kib as f64 / 1024.0);
                    }
                    Ok(_) => failures.push(format!(
                        "{rt} at {latency} ms: rows per table {counted:?}, expected {expected} each"
                    )),
                    Err(e) => failures.push(format!("{rt} at {latency} ms: {e}")),
                }
            }
        }
        let _ = api.kill();
        let _ = api.wait();
        let reference = (!rate[0].is_empty()).then(|| Summary::of(&rate[0]).median);
        for (i, rt) in RUNTIMES.iter().enumerate() {
            if rate[i].is_empty() {
                continue;
            }
            let (r, c, m) = (
                Summary::of(&rate[i]),
                Summary::of(&cpu[i]),
                Summary::of(&rss[i]),
            );
            md.push_str(&format!(
                "| {latency} ms | {rt} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} |\n",
                r.median,
                r.min,
                r.max,
                reference.map_or("n/a".into(), |x| format!("{:.2}", r.median / x)),
                c.median,
                m.median
            ));
            record(
                &format!("pipeline/rate/{latency}"),
                rt,
                "user fetches/s",
                true,
                &rate[i],
            );
            record(
                &format!("pipeline/cpu/{latency}"),
                rt,
                "CPU µs per user fetch",
                false,
                &cpu[i],
            );
            record(
                &format!("pipeline/rss/{latency}"),
                rt,
                "peak RSS MB",
                false,
                &rss[i],
            );
        }
    }
    for f in &failures {
        md.push_str(&format!("\nFailed: {f}\n"));
    }
    println!("{md}");
    if full {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline/RESULTS.md");
        if let Err(e) = evergreen_bench::write_section(path, "tokio-twin", &md) {
            eprintln!("pipeline: write {path}: {e}");
        }
    }
    assert!(failures.is_empty(), "pipeline runs failed: {failures:?}");
}

/// Starts the demo API in a child process; returns it and its base URL.
fn start_api(users: usize, latency_ms: u64) -> (Child, String) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--serve-api", &users.to_string(), &latency_ms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the demo API process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the demo API's address");
    let url = line
        .trim()
        .strip_prefix("BASE_URL=")
        .unwrap_or_else(|| panic!("the demo API printed {line:?}"))
        .to_string();
    (child, url)
}

/// `--serve-api <users> <latency_ms>`: serves the demo API until stdin closes.
fn serve_api(args: &[String]) {
    use evergreen_services::demo_api::{ApiConfig, Dataset, DemoApi};
    let users: usize = args[0].parse().expect("users");
    let latency: u64 = args[1].parse().expect("latency");
    // The parent closes our stdin (or dies): then exit.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    evergreen::spawn(move || {
        let api = DemoApi::start(
            "127.0.0.1:0",
            ApiConfig {
                data: Dataset {
                    seed: 1,
                    users,
                    networks: NETWORKS,
                    malformed_rate: 0.0,
                },
                api_key: KEY.into(),
                latency: Duration::from_millis(latency),
                error_rate: 0.0,
                drop_rate: 0.0,
            },
        )
        .expect("start the demo API");
        println!("BASE_URL={}", api.base_url());
        api.serve_forever();
    })
    .join();
}

/// Creates the schema with evergreen-services' own migrations.
fn migrate(url: &str) {
    let url = url.to_string();
    evergreen::spawn(move || {
        let store = evergreen_services::store::open(&url).expect("open the store");
        store.migrate().expect("migrate");
    })
    .join();
}

fn count_rows(admin: &mut mysql::Conn, db: &str) -> Vec<u64> {
    Table::ALL
        .iter()
        .map(|t| {
            admin
                .query_first::<u64, _>(format!("SELECT COUNT(*) FROM {db}.{}", t.name()))
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .collect()
}

struct ChildRun {
    secs: f64,
    cpu_secs: f64,
    peak_rss_kib: u64,
}

fn run_child(rt: &str, base_url: &str, db_url: &str) -> Result<ChildRun, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["--crunch", rt, base_url, db_url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("start the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "));
    let (true, Some(line)) = (out.status.success(), line) else {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "child failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("no output")
        ));
    };
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let num = |k: &str| v[k].as_f64().ok_or(format!("no {k} in {line}"));
    Ok(ChildRun {
        secs: num("secs")?,
        cpu_secs: num("cpu_secs")?,
        peak_rss_kib: num("peak_rss_kib")? as u64,
    })
}

/// `--crunch <runtime> <base_url> <db_url>`: one crunch of [`DATE`], timed; prints `RESULT`.
fn crunch_child(args: &[String]) {
    let [rt, base_url, db_url] = args else {
        panic!("--crunch needs <runtime> <base_url> <db_url>")
    };
    let date = Date::parse(DATE).expect("a valid date");
    let (cpu0, t0) = (process_cpu().as_secs_f64(), Instant::now());
    let (users, done, rows) = match rt.as_str() {
        "evergreen" => {
            use evergreen_services::stats::{Metrics, Outcome, Pipeline, PipelineConfig};
            let (base_url, db_url) = (base_url.clone(), db_url.clone());
            evergreen::spawn(move || {
                let store = evergreen_services::store::open(&db_url).expect("open the store");
                let cfg = PipelineConfig::new(&base_url, KEY);
                let p = Pipeline::start(&cfg, store, Rc::new(Metrics::new()))
                    .expect("start the pipeline");
                let r = p.crunch_date(date, &[]);
                p.shutdown(Duration::from_secs(30));
                assert_eq!(
                    r.outcome(),
                    Outcome::Complete,
                    "incomplete crunch: {:?}",
                    r.record()
                );
                let rec = r.record();
                (
                    rec.users,
                    r.services.iter().map(|s| s.done).sum::<u64>(),
                    rec.rows,
                )
            })
            .into_result()
            .expect("the evergreen pipeline failed")
        }
        "tokio-ct" | "tokio-mt2" => {
            let mut b = if rt == "tokio-ct" {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            };
            let runtime = b.enable_all().build().expect("build the tokio runtime");
            let cfg = tokio_twin::Config {
                base_url: base_url.clone(),
                api_key: KEY.into(),
                database_url: db_url.clone(),
                concurrency: 50,
                batch: 2000,
                flush_interval: Duration::from_secs(1),
            };
            let reports = runtime
                .block_on(tokio_twin::crunch_date(&cfg, date))
                .expect("the tokio pipeline failed");
            for r in &reports {
                assert!(
                    r.error.is_none() && r.failed == 0 && r.done == r.users,
                    "incomplete crunch: {r:?}"
                );
            }
            (
                reports.iter().map(|r| r.users).sum::<u64>(),
                reports.iter().map(|r| r.done).sum::<u64>(),
                reports.iter().map(|r| r.rows).sum::<u64>(),
            )
        }
        other => panic!("unknown runtime {other:?}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu().as_secs_f64() - cpu0;
    println!(
        "RESULT {}",
        serde_json::json!({
            "users": users, "done": done, "rows": rows, "secs": secs, "cpu_secs": cpu,
            "peak_rss_kib": peak_rss_kib().unwrap_or(0),
        })
    );
}
