//! `stats-pipeline` as operators run it: child processes (the demo API in one, the pipeline in
//! another), SQLite and MariaDB. Events are ordered by the children's output (a log line says
//! the date started, rows were written), never by sleeping; every wait has a deadline.
mod pipeline_util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use evergreen_services::demo_api::{Dataset, VIEWS};
use evergreen_services::store::{self, Date, Store, CURSOR};
use pipeline_util::{MySqlDb, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_stats-pipeline");
const KEY: &str = "cli-test-key-7f3a";
const DEADLINE: Duration = Duration::from_secs(120);

fn cmd(dir: &TempDir) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir.path());
    for v in [
        "BASE_URL",
        "APIKEY",
        "DATABASE_URL",
        "RUST_LOG",
        "STATS_TODAY",
        "STATS_START_DATE",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs to completion (with a deadline): (status, stdout, stderr).
fn output(mut c: Command) -> (ExitStatus, String, String) {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = rx
        .recv_timeout(DEADLINE)
        .expect("the command finished in time")
        .unwrap();
    (
        o.status,
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Kills the child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn wait(&mut self) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < DEADLINE, "the child did not exit in time");
            std::thread::sleep(Duration::from_millis(20)); // a deadline poll, not ordering
        }
    }
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Lines of a child's pipe, through a channel.
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        let left = DEADLINE.checked_sub(t0.elapsed()).expect("deadline");
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line containing {what:?}: {e}"),
        }
    }
}

/// The demo API in a child process: (process, BASE_URL).
fn serve_api(dir: &TempDir, args: &[&str]) -> (Proc, String) {
    let mut c = cmd(dir);
    c.args(["serve-api", "--port", "0", "--api-key", KEY])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let out = lines(child.stdout.take().unwrap());
    let p = Proc(child);
    let l = wait_line(&out, "BASE_URL=");
    let url = l
        .split("BASE_URL=")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    (p, url)
}

/// `crunch --date 2016-08-18` of the API at `url` into `db_url`.
fn crunch(dir: &TempDir, url: &str, db_url: &str) -> Command {
    let mut c = cmd(dir);
    c.args([
        "crunch",
        "--date",
        "2016-08-18",
        "--base-url",
        url,
        "--database-url",
        db_url,
    ]);
    c
}

/// Starts `c` with stdout and stderr piped: (process, stderr lines, stdout lines).
fn spawn_piped(mut c: Command) -> (Proc, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = lines(child.stderr.take().unwrap());
    let out = lines(child.stdout.take().unwrap());
    (Proc(child), err, out)
}

/// The data `serve-api` serves (its default seed, 1).
fn dataset(users: usize, networks: usize) -> Dataset {
    Dataset {
        seed: 1,
        users,
        networks,
        malformed_rate: 0.0,
    }
}

/// The demo API with `users` users on 3 networks, 2 ms per request: slow enough for a run to
/// be stopped mid-date.
fn serve_slow_api(dir: &TempDir, users: usize) -> (Proc, String) {
    serve_api(
        dir,
        &[
            "--users",
            &users.to_string(),
            "--networks",
            "3",
            "--latency-ms",
            "2",
        ],
    )
}

fn d(s: &str) -> Date {
    Date::parse(s).unwrap()
}

fn assert_exact(s: &dyn Store, data: &Dataset, date: Date) {
    for (v, spec) in VIEWS.iter().enumerate() {
        let (want, _) = data.expected(date, v);
        assert_eq!(
            s.rows(spec.table, date).unwrap(),
            want,
            "{} on {date}",
            spec.table.name()
        );
    }
}

#[test]
fn bad_flags_env_and_dotenv_are_clear_config_errors() {
    let dir = TempDir::new("cli_cfg");
    let mut c = cmd(&dir);
    c.args([
        "crunch",
        "--date",
        "2016-02-30",
        "--base-url",
        "http://127.0.0.1:1/",
        "--api-key",
        KEY,
    ]);
    let (st, _, err) = output(c);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("--date") && err.contains("not a valid calendar date"),
        "{err}"
    );

    let mut c = cmd(&dir);
    c.args(["crunch", "--date", "2016-02-28", "--api-key", KEY])
        .env("BASE_URL", "ftp://example.com/");
    let (st, _, err) = output(c);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("BASE_URL") && err.contains("scheme"), "{err}");

    let mut c = cmd(&dir);
    c.args(["status", "--database-url", "redis://u:hunter2@h/0"]);
    let (st, _, err) = output(c);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("redis") && !err.contains("hunter2"), "{err}");

    let mut c = cmd(&dir);
    c.args([
        "run",
        "--base-url",
        "http://127.0.0.1:1/",
        "--api-key",
        KEY,
        "--concurrency",
        "0",
    ]);
    let (st, _, err) = output(c);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--concurrency"), "{err}");

    // A .env line that does not parse.
    std::fs::write(
        format!("{}/.env", dir.path()),
        "BASE_URL=http://127.0.0.1:1/\nAPIKEY 'oops\n",
    )
    .unwrap();
    let mut c = cmd(&dir);
    c.args(["status"]);
    let (st, _, err) = output(c);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains(".env"), "{err}");
    assert!(!err.contains("oops"), "the .env value is not echoed: {err}");
    assert!(err.contains("line 2") && err.contains("APIKEY"), "{err}");

    // A .env value that is wrong is named like a flag's.
    std::fs::write(
        format!("{}/.env", dir.path()),
        "BASE_URL=\"not a url\"\nAPIKEY=x\n",
    )
    .unwrap();
    let mut c = cmd(&dir);
    c.args(["crunch", "--date", "2016-02-28"]);
    let (st, _, err) = output(c);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("BASE_URL"), "{err}");
}

#[test]
fn wrong_api_key_exits_3_without_printing_keys() {
    let dir = TempDir::new("cli_key");
    let (_api, url) = serve_api(&dir, &["--users", "5"]);
    let crunch_with_key = |key: &str| {
        let mut c = crunch(&dir, &url, "sqlite://./s.db");
        c.env("APIKEY", key).env("RUST_LOG", "debug");
        c
    };
    let (st, out, err) = output(crunch_with_key("wrong-key-zz9"));
    assert_eq!(st.code(), Some(3), "{out}{err}");
    assert!(err.contains("refused the api key"), "{err}");
    assert!(
        !out.contains("wrong-key-zz9") && !err.contains("wrong-key-zz9"),
        "the key was printed"
    );
    // The right key: exit 0, exact data, and still no key anywhere in the output.
    let (st, out, err) = output(crunch_with_key(KEY));
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(
        !out.contains(KEY) && !err.contains(KEY),
        "the key was printed"
    );
    assert!(
        out.contains("complete") && out.contains("bulk-sms-cost"),
        "{out}"
    );
    let s = store::open(&format!("sqlite://{}/s.db", dir.path())).unwrap();
    assert_exact(&*s, &dataset(5, 5), d("2016-08-18"));
}

/// `run` stopped mid-date (`sig`), then restarted: complete, exact, no duplicates, and the
/// cursor never passed the unfinished date.
fn stop_mid_date_then_restart(sig: &str, db_url: &str, dir: &TempDir) {
    let users = 1500;
    let (_api, url) = serve_slow_api(dir, users);
    let run = |once: bool| {
        let mut c = cmd(dir);
        c.args([
            "run",
            "--base-url",
            &url,
            "--database-url",
            db_url,
            "--concurrency",
            "8",
            "--interval-secs",
            "3600",
        ])
        .args([
            "--start-date",
            "2016-08-18",
            "--flush-ms",
            "50",
            "--batch-size",
            "100",
        ])
        .env("APIKEY", KEY)
        .env("STATS_TODAY", "2016-08-19")
        .env("RUST_LOG", "evergreen_services=debug");
        if once {
            c.arg("--once");
        }
        c
    };
    let (mut p, err, _out) = spawn_piped(run(false));
    wait_line(&err, "writer: wrote");
    p.signal(sig);
    let st = p.wait();
    let s = store::open(db_url).unwrap();
    let first = d("2016-08-18");
    assert_eq!(
        s.cursor(CURSOR).unwrap(),
        Some(first),
        "the cursor stays on the unfinished date"
    );
    let partial = s
        .count_rows(evergreen_services::store::Table::BulkSmsNetworksCost, first)
        .unwrap();
    assert!(
        partial < (users * 3) as u64,
        "stopped mid-date ({partial} rows)"
    );
    if sig == "TERM" {
        assert_eq!(st.code(), Some(0), "a graceful stop");
        let runs = s.status(5, 5).unwrap().runs;
        assert_eq!(runs[0].outcome, "interrupted", "{runs:?}");
    } else {
        assert_eq!(st.code(), None, "killed");
    }
    // Restart: one tick catches up both dates.
    let (st, out, err) = output(run(true));
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let data = dataset(users, 3);
    assert_exact(&*s, &data, first);
    assert_exact(&*s, &data, first.succ());
    assert_eq!(s.cursor(CURSOR).unwrap(), Some(first.succ()));
}

fn in_hub<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // MySQL checks from a fresh hub thread (the store's pool is a green pool).
    std::thread::spawn(move || {
        let r = evergreen::spawn(f).into_result().unwrap();
        evergreen::hub::destroy();
        r
    })
    .join()
    .unwrap()
}

/// Runs `f(database URL, dir)` on a SQLite file in a temp dir named after `tag`.
fn on_sqlite(tag: &str, f: impl FnOnce(&str, &TempDir)) {
    let dir = TempDir::new(tag);
    f(&format!("sqlite://{}/s.db", dir.path()), &dir);
}

/// Runs `f(database URL, dir)` on a MariaDB database of its own (named after `tag`, the temp
/// dir after `{tag}_my`), in a fresh hub thread.
fn on_mysql(tag: &str, f: impl FnOnce(&str, &TempDir) + Send + 'static) {
    let dir = TempDir::new(&format!("{tag}_my"));
    let db = MySqlDb::new(tag);
    let url = db.url();
    in_hub(move || f(&url, &dir));
}

#[test]
fn sigterm_mid_date_then_restart_sqlite() {
    on_sqlite("cli_term", |url, dir| {
        stop_mid_date_then_restart("TERM", url, dir)
    });
}

#[test]
fn kill9_mid_date_then_restart_sqlite() {
    on_sqlite("cli_kill", |url, dir| {
        stop_mid_date_then_restart("KILL", url, dir)
    });
}

#[test]
fn sigterm_mid_date_then_restart_mysql() {
    on_mysql("cli_term", |url, dir| {
        stop_mid_date_then_restart("TERM", url, dir)
    });
}

#[test]
fn kill9_mid_date_then_restart_mysql() {
    on_mysql("cli_kill", |url, dir| {
        stop_mid_date_then_restart("KILL", url, dir)
    });
}

#[test]
fn mysql_connections_killed_mid_run_still_completes() {
    let dir = TempDir::new("cli_mykill");
    let db = MySqlDb::new("cli_mykill");
    let users = 1200;
    let (_api, url) = serve_slow_api(&dir, users);
    let mut c = crunch(&dir, &url, &db.url());
    c.args(["--concurrency", "8"])
        .args(["--flush-ms", "50", "--batch-size", "100"])
        .env("APIKEY", KEY)
        .env("RUST_LOG", "evergreen_services=debug");
    let (mut p, err, out) = spawn_piped(c);
    wait_line(&err, "writer: wrote");
    // KILL every connection of the pipeline's database, from the server side.
    let ids: Vec<u64> = MySqlDb::admin_query(&format!(
        "SELECT id FROM information_schema.processlist WHERE db = '{}'",
        db.name
    ));
    assert!(!ids.is_empty(), "the pipeline has connections");
    for id in &ids {
        let _: Vec<u64> = MySqlDb::admin_query(&format!("KILL {id}"));
    }
    let st = p.wait();
    let out: Vec<String> = out.try_iter().collect();
    assert_eq!(st.code(), Some(0), "{out:?}");
    let name = db.url();
    in_hub(move || {
        let s = store::open(&name).unwrap();
        assert_exact(&*s, &dataset(users, 3), d("2016-08-18"));
    });
}

/// A 100,000-user date (300,000 user fetches, 1.5 M rows) with peak RSS under 100 MB, read
/// from the child's own `VmHWM` (printed in its summary). Minutes in a debug build: run them with
/// `cargo test --release -p evergreen-services --test cli -- --ignored hundred_thousand`.
fn hundred_thousand(db_url: &str, dir: &TempDir) {
    let users = 100_000;
    let (_api, url) = serve_api(dir, &["--users", &users.to_string()]);
    let mut c = crunch(dir, &url, db_url);
    c.env("APIKEY", KEY);
    let (st, out, err) = output(c);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let rss: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: "))
        .and_then(|l| l.trim_end_matches(" MB").parse().ok())
        .expect("a peak RSS line");
    eprintln!("peak RSS {rss} MB ({db_url})");
    assert!(rss < 100.0, "peak RSS {rss} MB");
    let s = store::open(db_url).unwrap();
    for t in evergreen_services::store::Table::ALL {
        assert_eq!(
            s.count_rows(t, d("2016-08-18")).unwrap(),
            (users * 5) as u64
        );
    }
}

#[test]
#[ignore = "long: run in release (see hundred_thousand)"]
fn hundred_thousand_users_in_bounded_memory_sqlite() {
    on_sqlite("cli_100k", hundred_thousand);
}

#[test]
#[ignore = "long: run in release (see hundred_thousand)"]
fn hundred_thousand_users_in_bounded_memory_mysql() {
    on_mysql("cli_100k", hundred_thousand);
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn run_serves_metrics_and_healthz_then_stops_on_sigterm() {
    let dir = TempDir::new("cli_metrics");
    let (_api, url) = serve_api(&dir, &["--users", "25", "--networks", "2"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maddr = format!("127.0.0.1:{port}");
    let mut c = cmd(&dir);
    c.args([
        "run",
        "--base-url",
        &url,
        "--database-url",
        "sqlite://./s.db",
        "--metrics",
        &maddr,
    ])
    .args(["--interval-secs", "3600", "--start-date", "2016-08-18"])
    .env("APIKEY", KEY)
    .env("STATS_TODAY", "2016-08-18")
    .env("RUST_LOG", "info");
    let (mut p, err, _out) = spawn_piped(c);
    wait_line(&err, "2016-08-18: complete");
    let m = http_get(&maddr, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("stats_users_fetched_total{service=\"airtime-delivered\"} 25"),
        "{m}"
    );
    assert!(m.contains("stats_rows_written_total 150"), "{m}");
    assert!(m.contains("stats_dates_complete_total 1"), "{m}");
    let h = http_get(&maddr, "/healthz");
    assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
    p.signal("TERM");
    assert_eq!(p.wait().code(), Some(0));
}

#[test]
fn demo_runs_with_no_setup_and_says_where_the_data_is() {
    let dir = TempDir::new("cli_demo");
    let mut c = cmd(&dir);
    c.args(["demo", "--users", "40", "--days", "2"]);
    let before = Date::today_utc();
    let (st, out, err) = output(c);
    let after = Date::today_utc();
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("data:   SQLite file") && out.contains("stats-demo.db"),
        "{out}"
    );
    assert_eq!(
        out.matches(" complete").count(),
        6,
        "2 dates × 3 services: {out}"
    );
    let s = store::open(&format!("sqlite://{}/stats-demo.db", dir.path())).unwrap();
    let today = s.cursor(CURSOR).unwrap().expect("a cursor");
    assert!(
        today == before || today == after,
        "the cursor is today (across midnight too)"
    );
    for t in evergreen_services::store::Table::ALL {
        // 40 users × 5 networks, minus the malformed elements the summary counted.
        let n = s.count_rows(t, today).unwrap();
        assert!(n > 180 && n <= 200, "{} {n}", t.name());
    }
}

#[test]
fn flags_beat_env_and_env_beats_dotenv() {
    let dir = TempDir::new("cli_prec");
    let (_api, url) = serve_api(&dir, &["--users", "3", "--networks", "1"]);
    // .env: a wrong key and a dead URL; the environment fixes the key; a flag fixes the URL.
    std::fs::write(
        format!("{}/.env", dir.path()),
        "APIKEY=wrong\nBASE_URL=http://127.0.0.1:9/\nDATABASE_URL=sqlite://./e.db\n",
    )
    .unwrap();
    let mut c = cmd(&dir);
    c.args(["crunch", "--date", "2016-08-18", "--base-url", &url])
        .env("APIKEY", KEY);
    let (st, out, err) = output(c);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains("e.db"), "DATABASE_URL came from .env: {out}");
    // Without the environment's key, the .env's wrong key is used: refused.
    let mut c = cmd(&dir);
    c.args(["crunch", "--date", "2016-08-18", "--base-url", &url]);
    let (st, out, err) = output(c);
    assert_eq!(st.code(), Some(3), "{out}{err}");
}
