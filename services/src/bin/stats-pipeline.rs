//! `stats-pipeline`: the stats pipeline's command line (see NOTES-pipeline.md).
//!
//! `demo` starts the demo stats API in-process and crunches a few dates into the embedded
//! SQLite store; `run` is the daemon; `crunch` one date; `serve-api` the demo API alone;
//! `migrate` and `status` look after the store. Configuration: flags, then the environment,
//! then `.env`. Exit codes: see `evergreen_services::config::exit`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use evergreen_services::config::{self, exit};
use evergreen_services::demo_api::{ApiConfig, Dataset, DemoApi};
use evergreen_services::stats::{
    CrunchReport, Metrics, Outcome, Pipeline, PipelineConfig, ServiceId,
};
use evergreen_services::store::{self, Date, Store, DEFAULT_DATABASE_URL};

#[derive(Parser)]
#[command(
    name = "stats-pipeline",
    version,
    about = "Per-user network stats from an HTTP API into MySQL or SQLite, on evergreen's green threads",
    long_about = "Per-user network stats from an HTTP API into MySQL or SQLite, on evergreen's green threads.\n\nConfiguration comes from flags, then environment variables, then a .env file in the working directory.\nExit codes: 0 ok, 1 failure, 2 bad configuration, 3 the upstream refused the api key, 4 partial (some users failed), 5 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the demo API in-process and crunch a few dates into the embedded store.
    Demo(DemoArgs),
    /// The daemon: crunch the cursor's date every interval, catching up as needed.
    Run(RunArgs),
    /// Crunch one date now (the cursor does not move).
    Crunch(CrunchArgs),
    /// Serve the demo stats API.
    ServeApi(ServeArgs),
    /// Create the schema.
    Migrate(DbArgs),
    /// Show the cursor, rows per table and date, and the last runs.
    Status(DbArgs),
}

#[derive(Args)]
struct DbArgs {
    /// sqlite://PATH or mysql://USER:PASSWORD@HOST:PORT/DATABASE
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    database_url: String,
}

#[derive(Args)]
struct UpstreamArgs {
    /// The stats API's root; the views are appended (e.g. http://127.0.0.1:8080/)
    #[arg(long, env = "BASE_URL", hide_env_values = true)]
    base_url: String,
    /// The api key, sent as the `apikey` header (never printed)
    #[arg(long, env = "APIKEY", hide_env_values = true)]
    api_key: String,
    /// Users in flight per service
    #[arg(long, env = "STATS_CONCURRENCY", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Rows per upsert flush
    #[arg(long, env = "STATS_BATCH_SIZE", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    batch_size: u32,
    /// The writer's flush interval in milliseconds
    #[arg(long, env = "STATS_FLUSH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    flush_ms: u64,
    /// Total timeout of one HTTP request, retries included, in seconds
    #[arg(long, env = "STATS_HTTP_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_timeout_secs: u64,
    /// Use this date as today (replays, tests)
    #[arg(long, env = "STATS_TODAY", value_parser = config::date, hide = true)]
    today: Option<Date>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    up: UpstreamArgs,
    /// Seconds between ticks
    #[arg(long, env = "STATS_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    interval_secs: u64,
    /// The first date to crunch when the cursor is unset (default: today)
    #[arg(long, env = "STATS_START_DATE", value_parser = config::date)]
    start_date: Option<Date>,
    /// Serve Prometheus /metrics and /healthz on this address (e.g. 127.0.0.1:9100)
    #[arg(long, env = "STATS_METRICS_ADDR")]
    metrics: Option<SocketAddr>,
    /// One tick (catch up to today), then exit
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct CrunchArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    up: UpstreamArgs,
    /// The date, YYYY-MM-DD
    #[arg(long, value_parser = config::date)]
    date: Date,
    /// Only these services (repeatable): bulk-sms-cost, bulk-sms-failed, airtime-delivered
    #[arg(long = "service", value_parser = ServiceId::parse)]
    services: Vec<ServiceId>,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Seed of the deterministic data
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of users
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    users: Option<u64>,
    /// Number of (country, network) pairs, 1 to 12
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=12))]
    networks: u64,
    /// Delay before each answer, in milliseconds
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Probability of a 503 answer (retried by the client)
    #[arg(long, value_parser = config::rate)]
    error_rate: Option<f64>,
    /// Probability that an element is malformed
    #[arg(long, value_parser = config::rate)]
    malformed_rate: Option<f64>,
    /// Probability of closing the connection without an answer
    #[arg(long, default_value_t = 0.0, value_parser = config::rate)]
    drop_rate: f64,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed)
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// The key requests must carry in their `apikey` header (never printed)
    #[arg(long, env = "APIKEY", hide_env_values = true)]
    api_key: String,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// Where to store (default: an SQLite file in the working directory)
    #[arg(long, default_value = "sqlite://./stats-demo.db")]
    database_url: String,
    /// How many dates, ending today
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=366))]
    days: u32,
    /// Users in flight per service
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    #[command(flatten)]
    data: DataArgs,
}

struct Fail(i32, String);

impl<E: std::fmt::Display> From<(i32, E)> for Fail {
    fn from((c, e): (i32, E)) -> Fail {
        Fail(c, e.to_string())
    }
}

fn main() {
    // .env first: it never overrides the environment, and flags override both.
    let env_problem = match dotenvy::from_filename(".env") {
        Ok(_) => None,
        Err(e) if e.not_found() => None,
        Err(dotenvy::Error::LineParse(snippet, _)) => {
            // Name the line and its variable only: the value may be a secret.
            let text = std::fs::read_to_string(".env").unwrap_or_default();
            let snippet = snippet.lines().next().unwrap_or("").trim();
            let found = text
                .lines()
                .enumerate()
                .find(|(_, l)| !snippet.is_empty() && l.contains(snippet));
            Some(match found {
                Some((i, l)) => {
                    let name: String = l
                        .trim_start()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .take(64)
                        .collect();
                    format!(".env line {}: cannot parse the value of {name:?}; expected NAME=value (quote values with spaces)", i + 1)
                }
                None => {
                    ".env: a line cannot be parsed; expected NAME=value (quote values with spaces)"
                        .to_string()
                }
            })
        }
        Err(e) => Some(format!(".env: {e}")),
    };
    if let Some(p) = env_problem {
        eprintln!("error: {p}");
        std::process::exit(exit::CONFIG);
    }
    let cli = Cli::parse();
    let tty = std::io::stderr().is_terminal();
    let default_level = if matches!(cli.cmd, Cmd::Demo(_))
        || (tty && matches!(cli.cmd, Cmd::Crunch(_) | Cmd::Run(_)))
    {
        "warn"
    } else {
        "info"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    let g = evergreen::spawn(move || match cli.cmd {
        Cmd::Demo(a) => demo(a, tty),
        Cmd::Run(a) => run(a, tty),
        Cmd::Crunch(a) => crunch(a, tty),
        Cmd::ServeApi(a) => serve_api(a),
        Cmd::Migrate(a) => migrate(a),
        Cmd::Status(a) => status(a),
    });
    let code = match g.into_result() {
        Ok(Ok(())) => exit::OK,
        Ok(Err(Fail(code, msg))) => {
            eprintln!("error: {msg}");
            code
        }
        Err(e) => {
            eprintln!("error: the pipeline failed: {e:?}");
            exit::FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn open_store(url: &str) -> Result<Rc<dyn Store>, Fail> {
    // Checked here, not by clap: clap's errors echo the value, which may hold a password.
    config::database_url(url).map_err(|e| Fail(exit::CONFIG, format!("--database-url / {e}")))?;
    let s = store::open(url).map_err(|e| Fail(exit::CONFIG, e.to_string()))?;
    s.migrate()
        .map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    Ok(s)
}

fn pipeline_config(up: &UpstreamArgs) -> Result<PipelineConfig, Fail> {
    let key = config::api_key(&up.api_key).map_err(|e| Fail(exit::CONFIG, e))?;
    // Checked here, not by clap: clap's errors echo the value, which may hold a password.
    let base = config::base_url(&up.base_url)
        .map_err(|e| Fail(exit::CONFIG, format!("--base-url / BASE_URL: {e}")))?;
    let mut c = PipelineConfig::new(&base, &key);
    c.concurrency = up.concurrency as usize;
    c.batch = up.batch_size as usize;
    c.flush_interval = Duration::from_millis(up.flush_ms);
    c.http_timeout = Duration::from_secs(up.http_timeout_secs);
    c.today = up.today;
    Ok(c)
}

/// Stops `p` gracefully on SIGINT/SIGTERM. Keep the handles.
fn on_signals(
    stop: Rc<evergreen_services::stats::StopFlag>,
) -> Vec<evergreen::signal::SignalHandler> {
    [libc::SIGINT, libc::SIGTERM]
        .into_iter()
        .filter_map(|sig| {
            let stop = stop.clone();
            evergreen::signal::signal_handler(sig, move || {
                if !stop.is_set() {
                    log::warn!("signal {sig}: stopping gracefully (in-flight users finish, the writer flushes)");
                    eprintln!("stopping: in-flight users finish, the writer flushes, the cursor stays on an unfinished date");
                }
                stop.set();
            })
            .ok()
        })
        .collect()
}

/// The live display on a terminal: one bar per service, updated from the counters.
struct Progress {
    done: Rc<std::cell::Cell<bool>>,
    g: Option<evergreen::Greenlet<()>>,
}

impl Progress {
    fn start(
        tty: bool,
        metrics: Rc<Metrics>,
        http: evergreen_services::fetch::http::Client,
    ) -> Progress {
        let done = Rc::new(std::cell::Cell::new(false));
        if !tty {
            return Progress { done, g: None };
        }
        let d = done.clone();
        let g = evergreen::spawn(move || {
            use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
            let mp = MultiProgress::new();
            let style = ProgressStyle::with_template(
                "{prefix:>18} [{bar:30}] {pos:>7}/{len:7} users {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            let bars: Vec<ProgressBar> = ServiceId::ALL
                .iter()
                .map(|id| {
                    let b = mp.add(ProgressBar::new(0));
                    b.set_style(style.clone());
                    b.set_prefix(id.name());
                    b
                })
                .collect();
            let t0 = std::time::Instant::now();
            while !d.get() {
                for (id, b) in ServiceId::ALL.iter().zip(&bars) {
                    let c = metrics.service(*id);
                    b.set_length(c.users_total.get());
                    b.set_position(c.users_done.get());
                    let secs = t0.elapsed().as_secs_f64().max(0.001);
                    b.set_message(format!(
                        "| {} rows | {} failed | {} malformed | {} retries | {:.0} users/s | {}",
                        c.rows.get(),
                        c.users_failed.get(),
                        c.malformed.get(),
                        http.pool_stats().retries,
                        c.users_fetched.get() as f64 / secs,
                        metrics.current_date.borrow().clone().unwrap_or_default()
                    ));
                }
                evergreen::sleep(Duration::from_millis(200));
            }
            for b in bars {
                b.finish_and_clear();
            }
        });
        Progress { done, g: Some(g) }
    }

    fn stop(self) {
        self.done.set(true);
        if let Some(g) = self.g {
            g.join();
        }
    }
}

fn print_summary(reports: &[CrunchReport]) {
    if reports.is_empty() {
        return;
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{:<10}  {:<18} {:>8} {:>7} {:>9} {:>9}  {:>8}  {}\n",
        "date", "service", "users", "failed", "rows", "malformed", "time", "outcome"
    ));
    for r in reports {
        for s in &r.services {
            out.push_str(&format!(
                "{:<10}  {:<18} {:>8} {:>7} {:>9} {:>9}  {:>7.2}s  {}\n",
                r.date.to_string(),
                s.service.map_or("?", |i| i.name()),
                s.users,
                s.failed_users,
                s.rows,
                s.malformed,
                s.millis as f64 / 1000.0,
                if s.is_complete() {
                    "complete"
                } else if s.refused {
                    "refused"
                } else if s.interrupted {
                    "interrupted"
                } else {
                    "partial"
                }
            ));
        }
    }
    if let Some(mb) = peak_rss_mb() {
        out.push_str(&format!("peak RSS: {mb:.1} MB\n"));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// The process's peak resident set (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn outcome_code(reports: &[CrunchReport]) -> Result<(), Fail> {
    let worst = |o: Outcome| reports.iter().find(|r| r.outcome() == o);
    if let Some(r) = worst(Outcome::Refused) {
        return Err(Fail(
            exit::REFUSED,
            format!(
                "the upstream refused the api key (check APIKEY): {}",
                r.record().detail
            ),
        ));
    }
    if let Some(r) = worst(Outcome::Interrupted) {
        return Err(Fail(
            exit::INTERRUPTED,
            format!(
                "stopped before {} was complete; run again to finish it",
                r.date
            ),
        ));
    }
    if let Some(r) = worst(Outcome::Partial) {
        let rec = r.record();
        return Err(Fail(
            exit::PARTIAL,
            format!(
                "{} is incomplete ({} failed users): {}",
                r.date, rec.failed_users, rec.detail
            ),
        ));
    }
    Ok(())
}

fn crunch(a: CrunchArgs, tty: bool) -> Result<(), Fail> {
    let store = open_store(&a.db.database_url)?;
    let cfg = pipeline_config(&a.up)?;
    let metrics = Rc::new(Metrics::new());
    let p = Pipeline::start(&cfg, store.clone(), metrics.clone())
        .map_err(|e| Fail(exit::FAILURE, e))?;
    let _sig = on_signals(p.stop_flag().clone());
    let progress = Progress::start(tty, metrics, p.http().clone());
    let r = p.crunch_date(a.date, &a.services);
    progress.stop();
    p.shutdown(Duration::from_secs(30));
    print_summary(std::slice::from_ref(&r));
    println!("data: {}", store.location());
    outcome_code(&[r])
}

fn run(a: RunArgs, tty: bool) -> Result<(), Fail> {
    let store = open_store(&a.db.database_url)?;
    let mut cfg = pipeline_config(&a.up)?;
    cfg.start_date = a.start_date;
    let metrics = Rc::new(Metrics::new());
    let p = Rc::new(
        Pipeline::start(&cfg, store.clone(), metrics.clone())
            .map_err(|e| Fail(exit::FAILURE, e))?,
    );
    let _sig = on_signals(p.stop_flag().clone());
    let metrics_server = match a.metrics {
        Some(addr) => Some(
            serve_metrics(addr, metrics.clone())
                .map_err(|e| Fail(exit::CONFIG, format!("--metrics {addr}: {e}")))?,
        ),
        None => None,
    };
    log::info!(
        "running against {} into {}, every {} s",
        cfg.base_url,
        store.location(),
        a.interval_secs
    );
    let progress = Progress::start(tty, metrics.clone(), p.http().clone());
    let result = if a.once {
        let r = p.catch_up().map_err(|e| Fail(exit::FAILURE, e.to_string()));
        progress.stop();
        p.shutdown(Duration::from_secs(30));
        match r {
            Ok(reports) => {
                print_summary(&reports);
                outcome_code(&reports)
            }
            Err(e) => Err(e),
        }
    } else {
        let last: Rc<std::cell::RefCell<Vec<CrunchReport>>> = Rc::default();
        let l = last.clone();
        let stop = p.stop_flag().clone();
        p.start_scheduler(
            Duration::from_secs(a.interval_secs),
            Rc::new(move |reports: &[CrunchReport]| {
                if !tty {
                    print_summary(reports);
                }
                // A refused key will not fix itself: stop, with its exit code.
                if reports.iter().any(|r| r.outcome() == Outcome::Refused) {
                    stop.set();
                }
                *l.borrow_mut() = reports.to_vec();
            }),
        )
        .map_err(|e| Fail(exit::FAILURE, e))?;
        // If the supervisor gives up (restart intensity exceeded), nothing would tick any
        // more: stop, with exit code 1, instead of idling.
        let gave_up = Rc::new(std::cell::Cell::new(false));
        let watcher = {
            let (sup, stop, gave_up) = (
                p.supervisor().clone(),
                p.stop_flag().clone(),
                gave_up.clone(),
            );
            evergreen::spawn(move || {
                let r = sup.join();
                if !stop.is_set() {
                    log::error!("the pipeline's supervisor exited ({r:?}); stopping");
                    gave_up.set(true);
                    stop.set();
                }
            })
        };
        p.stop_flag().wait();
        progress.stop();
        let reports = last.borrow().clone();
        let r = if gave_up.get() {
            Err(Fail(
                exit::FAILURE,
                "the pipeline's supervisor gave up after repeated crashes (see the log)".into(),
            ))
        } else if reports.iter().any(|r| r.outcome() == Outcome::Refused) {
            outcome_code(&reports)
        } else {
            Ok(())
        };
        p.shutdown(Duration::from_secs(30));
        watcher.join();
        r
    };
    if let Some(s) = metrics_server {
        s.stop(Some(Duration::from_secs(1)));
    }
    if let Ok(st) = store.status(1, 1) {
        if let Some(c) = st.cursor {
            eprintln!("cursor: {c}; data: {}", store.location());
        }
    }
    result
}

fn serve_metrics(
    addr: SocketAddr,
    metrics: Rc<Metrics>,
) -> std::io::Result<evergreen::net::StreamServer> {
    let server = evergreen::net::StreamServer::bind(addr, move |mut conn, _| {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, ctype, body) = match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
            "/healthz" if metrics.healthy.get() => ("200 OK", "text/plain", "ok\n".to_string()),
            "/healthz" => (
                "503 Service Unavailable",
                "text/plain",
                "the last crunch was incomplete\n".to_string(),
            ),
            _ => (
                "404 Not Found",
                "text/plain",
                "try /metrics or /healthz\n".to_string(),
            ),
        };
        let _ = conn.write_all(
            format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
        );
    })?;
    server.start();
    Ok(server)
}

fn dataset(d: &DataArgs, default_users: u64, default_malformed: f64) -> Dataset {
    Dataset {
        seed: d.seed,
        users: d.users.unwrap_or(default_users) as usize,
        networks: d.networks as usize,
        malformed_rate: d.malformed_rate.unwrap_or(default_malformed),
    }
}

fn serve_api(a: ServeArgs) -> Result<(), Fail> {
    let key = config::api_key(&a.api_key).map_err(|e| Fail(exit::CONFIG, e))?;
    let cfg = ApiConfig {
        data: dataset(&a.data, 1000, 0.0),
        api_key: key,
        latency: Duration::from_millis(a.data.latency_ms),
        error_rate: a.data.error_rate.unwrap_or(0.0),
        drop_rate: a.data.drop_rate,
    };
    let api = DemoApi::start(&format!("{}:{}", a.host, a.port), cfg).map_err(|e| {
        Fail(
            exit::CONFIG,
            format!("cannot listen on {}:{}: {e}", a.host, a.port),
        )
    })?;
    println!(
        "serving the demo stats API on {} (BASE_URL={})",
        api.local_addr(),
        api.base_url()
    );
    let _ = std::io::stdout().flush();
    let stop = Rc::new(evergreen_services::stats::StopFlag::default());
    let _sig = on_signals(stop.clone());
    stop.wait();
    api.stop(Duration::from_secs(2));
    Ok(())
}

fn migrate(a: DbArgs) -> Result<(), Fail> {
    config::database_url(&a.database_url)
        .map_err(|e| Fail(exit::CONFIG, format!("--database-url / {e}")))?;
    let s = store::open(&a.database_url).map_err(|e| Fail(exit::CONFIG, e.to_string()))?;
    let n = s
        .migrate()
        .map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    println!(
        "{n} migration(s) applied; the schema is current in {}",
        s.location()
    );
    Ok(())
}

fn status(a: DbArgs) -> Result<(), Fail> {
    let s = open_store(&a.database_url)?;
    let st = s
        .status(10, 5)
        .map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    println!("store:  {}", s.location());
    println!(
        "cursor: {}",
        st.cursor.map_or("unset".to_string(), |d| d.to_string())
    );
    println!("\nrows per table and date (last 10 dates):");
    for (t, d, n) in &st.rows {
        println!("  {:<28} {d}  {n:>9}", t.name());
    }
    println!("\nlast runs:");
    for r in &st.runs {
        println!(
            "  {}  {}  {:<11} users {:>7}  failed {:>5}  rows {:>8}  malformed {:>5}  {:>7.2}s  {}",
            r.finished_at,
            r.date.map_or("-".into(), |d| d.to_string()),
            r.outcome,
            r.users,
            r.failed_users,
            r.rows,
            r.malformed,
            r.millis as f64 / 1000.0,
            r.detail
        );
    }
    Ok(())
}

fn demo(a: DemoArgs, tty: bool) -> Result<(), Fail> {
    let data = dataset(&a.data, 1000, 0.002);
    let key = format!("demo-{}", fastrand_key());
    let api_cfg = ApiConfig {
        data: data.clone(),
        api_key: key.clone(),
        latency: Duration::from_millis(a.data.latency_ms),
        error_rate: a.data.error_rate.unwrap_or(0.01),
        drop_rate: a.data.drop_rate,
    };
    let api = DemoApi::start("127.0.0.1:0", api_cfg)
        .map_err(|e| Fail(exit::FAILURE, format!("starting the demo API: {e}")))?;
    let store = open_store(&a.database_url)?;
    let today = Date::today_utc();
    let mut cfg = PipelineConfig::new(&api.base_url(), &key);
    cfg.concurrency = a.concurrency as usize;
    cfg.start_date = Some(today.add_days(1 - a.days as i32));
    println!(
        "demo: the demo stats API on {} ({} users, {} networks, seed {}; 1% of answers are 503s, 0.2% of elements malformed)",
        api.base_url(),
        data.users,
        data.networks,
        data.seed
    );
    println!(
        "demo: crunching {} dates up to today ({today}) into {}",
        a.days,
        store.location()
    );
    let metrics = Rc::new(Metrics::new());
    let p = Pipeline::start(&cfg, store.clone(), metrics.clone())
        .map_err(|e| Fail(exit::FAILURE, e))?;
    let _sig = on_signals(p.stop_flag().clone());
    let progress = Progress::start(tty, metrics.clone(), p.http().clone());
    let t0 = std::time::Instant::now();
    let reports = p.catch_up().map_err(|e| Fail(exit::FAILURE, e.to_string()));
    progress.stop();
    let secs = t0.elapsed().as_secs_f64();
    p.shutdown(Duration::from_secs(30));
    api.stop(Duration::from_secs(1));
    let reports = reports?;
    println!();
    print_summary(&reports);
    let users: u64 = reports.iter().map(|r| r.record().users).sum();
    let rows: u64 = reports.iter().map(|r| r.record().rows).sum();
    println!(
        "\n{} date(s), {users} user fetches, {rows} rows in {secs:.2}s ({:.0} users/s); {} HTTP retries, {} rows written in {} transactions",
        reports.len(),
        users as f64 / secs.max(0.001),
        p.http().pool_stats().retries,
        metrics.rows_written.get(),
        metrics.batches.get()
    );
    let st = store
        .status(1, 1)
        .map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    println!(
        "cursor: {} (today is re-crunched on every run; past dates are done)",
        st.cursor.map_or("unset".into(), |d| d.to_string())
    );
    println!("data:   {}", store.location());
    println!("        tables bulk_sms_networks_cost, bulk_sms_networks_failed, airtime_networks_delivered; crunch_cursor; pipeline_runs");
    println!("next:   cargo run --release -p evergreen-services --bin stats-pipeline -- status --database-url {}", a.database_url);
    outcome_code(&reports)
}

fn fastrand_key() -> String {
    let mut rng = fastrand::Rng::new();
    (0..24).map(|_| rng.alphanumeric()).collect()
}
