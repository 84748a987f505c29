//! The pipeline end to end, in-process: the demo API and the pipeline as greenlets on one hub,
//! against a temp SQLite file and a MariaDB database of the test's own.
mod common;
mod pipeline_util;

use std::rc::Rc;
use std::time::Duration;

use evergreen_services::demo_api::{ApiConfig, Dataset, DemoApi, VIEWS};
use evergreen_services::stats::{Metrics, Outcome, Pipeline, PipelineConfig, ServiceId};
use evergreen_services::store::{self, Date, Store, Table, CURSOR};
use pipeline_util::{MySqlDb, TempDir};

const KEY: &str = "k3y-for-tests";

/// The data every test's API serves (seed 42).
fn dataset(users: usize, networks: usize, malformed_rate: f64) -> Dataset {
    Dataset {
        seed: 42,
        users,
        networks,
        malformed_rate,
    }
}

/// The demo API's settings: `data`, the test's key, no latency, these fault rates.
fn api_config(data: &Dataset, error_rate: f64, drop_rate: f64) -> ApiConfig {
    ApiConfig {
        data: data.clone(),
        api_key: KEY.into(),
        latency: Duration::ZERO,
        error_rate,
        drop_rate,
    }
}

fn api(data: &Dataset, error_rate: f64, drop_rate: f64) -> DemoApi {
    DemoApi::start("127.0.0.1:0", api_config(data, error_rate, drop_rate)).unwrap()
}

fn config(api: &DemoApi, key: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(&api.base_url(), key);
    c.concurrency = 20;
    c.http_timeout = Duration::from_secs(20);
    c
}

/// A pipeline on `s` with metrics of its own.
fn start(cfg: &PipelineConfig, s: &Rc<dyn Store>) -> Pipeline {
    Pipeline::start(cfg, s.clone(), Rc::new(Metrics::new())).unwrap()
}

fn d(s: &str) -> Date {
    Date::parse(s).unwrap()
}

/// Every table holds exactly what the dataset says for `date`.
fn check_exact(s: &dyn Store, data: &Dataset, date: Date) -> u64 {
    let mut malformed = 0;
    for (v, spec) in VIEWS.iter().enumerate() {
        let (want, bad) = data.expected(date, v);
        let got = s.rows(spec.table, date).unwrap();
        assert_eq!(
            got.len(),
            want.len(),
            "{} rows on {date}",
            spec.table.name()
        );
        assert_eq!(got, want, "{} values on {date}", spec.table.name());
        malformed += bad;
    }
    malformed
}

fn with_store(kind: &str, f: impl FnOnce(Rc<dyn Store>) + 'static) {
    match kind {
        "sqlite" => {
            let dir = TempDir::new("e2e");
            let s = store::open(&format!("sqlite://{}/s.db", dir.path())).unwrap();
            s.migrate().unwrap();
            f(s);
        }
        _ => {
            let db = MySqlDb::new("e2e");
            let s = store::open(&db.url()).unwrap();
            let g = evergreen::spawn(move || {
                s.migrate().unwrap();
                f(s);
            });
            g.into_result().unwrap();
        }
    }
}

fn exact_and_idempotent(kind: &'static str) {
    common::run(move || {
        with_store(kind, |s| {
            let data = dataset(120, 5, 0.0);
            let api = api(&data, 0.0, 0.0);
            let p = start(&config(&api, KEY), &s);
            let date = d("2016-08-18");
            let r = p.crunch_date(date, &[]);
            assert_eq!(r.outcome(), Outcome::Complete, "{r:?}");
            assert_eq!(r.record().users, 360);
            assert_eq!(r.record().rows, 3 * 120 * 5);
            for t in Table::ALL {
                assert_eq!(s.count_rows(t, date).unwrap(), 600, "{}", t.name());
            }
            assert_eq!(check_exact(&*s, &data, date), 0);
            // Idempotent re-run: same rows, same values, no duplicates.
            let r = p.crunch_date(date, &[]);
            assert_eq!(r.outcome(), Outcome::Complete);
            check_exact(&*s, &data, date);
            // One service only.
            let r = p.crunch_date(date.succ(), &[ServiceId::BulkSmsFailed]);
            assert_eq!(r.services.len(), 1);
            assert_eq!(
                s.count_rows(Table::BulkSmsNetworksFailed, date.succ())
                    .unwrap(),
                600
            );
            assert_eq!(
                s.count_rows(Table::BulkSmsNetworksCost, date.succ())
                    .unwrap(),
                0
            );
            let st = s.status(10, 10).unwrap();
            assert_eq!(st.runs.len(), 3);
            assert!(st.runs.iter().all(|r| r.outcome == "complete"));
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

#[test]
fn sqlite_exact_rows_and_idempotent_rerun() {
    exact_and_idempotent("sqlite");
}

#[test]
fn mysql_exact_rows_and_idempotent_rerun() {
    exact_and_idempotent("mysql");
}

fn faults_and_malformed(kind: &'static str) {
    common::run(move || {
        with_store(kind, |s| {
            let data = dataset(150, 6, 0.05);
            let api = api(&data, 0.1, 0.03);
            let p = start(&config(&api, KEY), &s);
            let date = d("2020-02-29");
            // A user fails only if 6 attempts in a row hit a fault (p = 0.13^6 each); the
            // scheduler would retry the date on its next tick: so does this test, at most twice.
            let mut r = p.crunch_date(date, &[]);
            for _ in 0..2 {
                if r.outcome() == Outcome::Complete {
                    break;
                }
                r = p.crunch_date(date, &[]);
            }
            assert_eq!(r.outcome(), Outcome::Complete, "{r:?}");
            let malformed = check_exact(&*s, &data, date);
            assert!(malformed > 0, "the seed gives malformed elements");
            assert_eq!(
                r.record().malformed,
                malformed,
                "every malformed element counted"
            );
            assert!(
                api.counters().errors.get() > 0 && api.counters().drops.get() > 0,
                "faults were injected"
            );
            assert!(p.http().pool_stats().retries > 0, "and retried");
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

#[test]
fn sqlite_faults_retried_and_malformed_counted() {
    faults_and_malformed("sqlite");
}

#[test]
fn mysql_faults_retried_and_malformed_counted() {
    faults_and_malformed("mysql");
}

#[test]
fn wrong_api_key_is_refused_and_nothing_written() {
    common::run(|| {
        with_store("sqlite", |s| {
            let api = api(&dataset(10, 2, 0.0), 0.0, 0.0);
            let p = start(&config(&api, "wrong-key-123"), &s);
            let r = p.crunch_date(d("2016-08-18"), &[]);
            assert_eq!(r.outcome(), Outcome::Refused);
            let detail = r.record().detail;
            assert!(detail.contains("401"), "{detail}");
            assert!(
                !detail.contains("wrong-key-123") && !detail.contains(KEY),
                "no key in errors: {detail}"
            );
            assert_eq!(
                api.counters().unauthorized.get(),
                3,
                "one refused user-list request per service, not retried"
            );
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

fn cursor_days(kind: &'static str) {
    common::run(move || {
        with_store(kind, |s| {
            let data = dataset(30, 3, 0.0);
            let api = api(&data, 0.0, 0.0);
            let today = d("2016-08-20");
            let mut cfg = config(&api, KEY);
            cfg.today = Some(today);
            cfg.start_date = Some(d("2016-08-16"));
            let p = start(&cfg, &s);
            // Catch-up: four past dates and today in one tick, the cursor stops at today.
            let done = p.catch_up().unwrap();
            let dates: Vec<String> = done.iter().map(|r| r.date.to_string()).collect();
            assert_eq!(
                dates,
                [
                    "2016-08-16",
                    "2016-08-17",
                    "2016-08-18",
                    "2016-08-19",
                    "2016-08-20"
                ]
            );
            assert_eq!(s.cursor(CURSOR).unwrap(), Some(today));
            for r in &done {
                check_exact(&*s, &data, r.date);
            }
            // Next tick: today again (re-crunched), no duplicates, the cursor stays.
            let done = p.catch_up().unwrap();
            assert_eq!(done.len(), 1);
            assert_eq!(done[0].date, today);
            assert_eq!(s.cursor(CURSOR).unwrap(), Some(today));
            assert_eq!(s.count_rows(Table::BulkSmsNetworksCost, today).unwrap(), 90);
            p.shutdown(Duration::from_secs(5));
            // The day after: a new pipeline with a later "today" advances past the old today.
            cfg.today = Some(today.succ());
            let p = start(&cfg, &s);
            let done = p.catch_up().unwrap();
            assert_eq!(
                done.iter().map(|r| r.date).collect::<Vec<_>>(),
                [today, today.succ()]
            );
            assert_eq!(s.cursor(CURSOR).unwrap(), Some(today.succ()));
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

#[test]
fn sqlite_cursor_catch_up_and_today() {
    cursor_days("sqlite");
}

#[test]
fn mysql_cursor_catch_up_and_today() {
    cursor_days("mysql");
}

#[test]
fn a_failed_date_keeps_the_cursor_and_is_retried() {
    common::run(|| {
        with_store("sqlite", |s| {
            // The API refuses every request for the first tick (wrong key), then a pipeline
            // with the right key completes the same date: the cursor never skipped it.
            let api = api(&dataset(20, 2, 0.0), 0.0, 0.0);
            let mut cfg = config(&api, "nope");
            cfg.today = Some(d("2016-08-19"));
            cfg.start_date = Some(d("2016-08-18"));
            let p = start(&cfg, &s);
            let done = p.catch_up().unwrap();
            assert_eq!(done.len(), 1);
            assert_eq!(done[0].outcome(), Outcome::Refused);
            assert_eq!(s.cursor(CURSOR).unwrap(), Some(d("2016-08-18")));
            p.shutdown(Duration::from_secs(5));
            cfg.api_key = KEY.into();
            let p = start(&cfg, &s);
            let done = p.catch_up().unwrap();
            assert_eq!(
                done.iter().map(|r| r.outcome()).collect::<Vec<_>>(),
                [Outcome::Complete, Outcome::Complete]
            );
            assert_eq!(s.cursor(CURSOR).unwrap(), Some(d("2016-08-19")));
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

#[test]
fn a_crashed_service_is_restarted_and_its_date_retried() {
    use evergreen_services::stats::{BaseService, BulkSmsCost};
    common::run(|| {
        with_store("sqlite", |s| {
            let data = dataset(40, 2, 0.0);
            let api = api(&data, 0.0, 0.0);
            let p = start(&config(&api, KEY), &s);
            let svc = p
                .supervisor()
                .child::<BaseService<BulkSmsCost>>("bulk-sms-cost")
                .unwrap();
            let date = d("2016-08-18");
            // Kill the service while it crunches (once its first user is done: ordered by a
            // ticker greenlet that yields until the counter moves, no sleep).
            let m = p.metrics().clone();
            let killer = {
                let svc = svc.clone();
                evergreen::spawn(move || {
                    while m.service(ServiceId::BulkSmsCost).users_done.get() == 0 {
                        evergreen::sleep(Duration::ZERO);
                    }
                    svc.kill();
                })
            };
            let r = p.crunch_date(date, &[]);
            killer.join();
            assert_eq!(r.outcome(), Outcome::Partial, "{r:?}");
            let cost = r
                .services
                .iter()
                .find(|x| x.service == Some(ServiceId::BulkSmsCost))
                .unwrap();
            assert!(
                cost.error
                    .as_deref()
                    .unwrap_or("")
                    .contains("bulk-sms-cost"),
                "{cost:?}"
            );
            // The same reference works again (the supervisor restarted it; the ask waits in
            // its mailbox meanwhile), and the retried date is complete and exact.
            let r = p.crunch_date(date, &[]);
            assert_eq!(r.outcome(), Outcome::Complete, "{r:?}");
            assert_eq!(svc.stats().restarts, 1, "the supervisor restarted it");
            check_exact(&*s, &data, date);
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

#[test]
fn scheduler_actor_ticks_and_metrics_render() {
    use evergreen_services::stats::CrunchReport;
    common::run(|| {
        with_store("sqlite", |s| {
            let api = api(&dataset(10, 2, 0.0), 0.0, 0.0);
            let mut cfg = config(&api, KEY);
            cfg.today = Some(d("2016-08-19"));
            cfg.start_date = Some(d("2016-08-17"));
            let metrics = Rc::new(Metrics::new());
            let p = Rc::new(Pipeline::start(&cfg, s.clone(), metrics.clone()).unwrap());
            // Each tick reports to a queue; the test waits on it (the first tick runs at once,
            // the second after the interval).
            // The metrics are rendered inside the callback: a snapshot taken at the tick's end.
            type Tick = (Vec<String>, String);
            let q: Rc<evergreen::Queue<Tick>> = Rc::new(evergreen::Queue::new());
            let (q2, m2) = (q.clone(), metrics.clone());
            p.start_scheduler(
                Duration::from_millis(50),
                Rc::new(move |rs: &[CrunchReport]| {
                    let dates = rs
                        .iter()
                        .map(|r| format!("{} {}", r.date, r.outcome().as_str()))
                        .collect();
                    q2.put((dates, m2.render())).unwrap();
                }),
            )
            .unwrap();
            let (first, _) = q.get().unwrap();
            assert_eq!(
                first,
                [
                    "2016-08-17 complete",
                    "2016-08-18 complete",
                    "2016-08-19 complete"
                ]
            );
            let (second, text) = q.get().unwrap();
            assert_eq!(
                second,
                ["2016-08-19 complete"],
                "today again on the next tick"
            );
            assert_eq!(s.cursor(CURSOR).unwrap(), Some(d("2016-08-19")));
            assert!(
                text.contains("stats_users_fetched_total{service=\"bulk-sms-cost\"} 40"),
                "{text}"
            );
            assert!(text.contains("stats_dates_complete_total 4"), "{text}");
            assert!(metrics.healthy.get());
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}

#[test]
fn configs_never_show_the_api_key() {
    let c = PipelineConfig::new("http://127.0.0.1:1/", "s3cr3t-key");
    assert!(!format!("{c:?}").contains("s3cr3t-key"));
    let a = ApiConfig {
        data: Dataset {
            seed: 1,
            users: 1,
            networks: 1,
            malformed_rate: 0.0,
        },
        api_key: "s3cr3t-key".into(),
        latency: Duration::ZERO,
        error_rate: 0.0,
        drop_rate: 0.0,
    };
    assert!(!format!("{a:?}").contains("s3cr3t-key"));
}

#[test]
fn demo_api_shapes_auth_and_validation() {
    use evergreen_services::fetch::http::Client;
    use serde_json::{json, Value as Json};
    common::run(|| {
        let api = api(&dataset(12, 2, 0.0), 0.0, 0.0);
        let base = api.base_url();
        let http = Client::builder().max_retries(0).build().unwrap();
        let get = |path: &str, key: Option<&str>| -> (u16, Json) {
            let mut r = http.get(&format!("{base}{path}"));
            if let Some(k) = key {
                r = r.header("apikey", k);
            }
            let resp = r.send().unwrap();
            (resp.status(), resp.json().unwrap())
        };
        let view = "bulkSms/sent?granularity=day&metric=cost&currencyCode=USD&startDate=2016-08-18&endDate=2016-08-18";
        // The user list, exactly the upstream's shape.
        let (st, body) = get(view, Some(KEY));
        assert_eq!(st, 200);
        let users = body["responses"]["userStats"][0]["elements"]
            .as_array()
            .unwrap();
        assert_eq!(users.len(), 12);
        assert_eq!(users[3], json!("user+000003@example.com"));
        // One user's stats (urlencoded name), exactly the upstream's shape.
        let (st, body) = get(
            &format!("{view}&username=user%2B000003%40example.com"),
            Some(KEY),
        );
        assert_eq!(st, 200);
        let stats = &body["responses"]["networkStats"][0];
        assert_eq!(stats["date"], json!("2016-08-18"));
        let el = stats["elements"].as_object().unwrap();
        assert_eq!(el.len(), 2);
        let v = el["Kenya (Safaricom)"].as_str().unwrap();
        assert!(v.starts_with("USD ") && v[4..].contains('.'), "{v}");
        let (_, body) = get(
            "bulkSms/failed?granularity=day&metric=count&startDate=2016-08-18&endDate=2016-08-18&username=user000001",
            Some(KEY),
        );
        assert!(body["responses"]["networkStats"][0]["elements"]["Kenya (Airtel)"].is_u64());
        // The api key: missing or wrong → 401 with a JSON error.
        for key in [None, Some("nope")] {
            let (st, body) = get(view, key);
            assert_eq!(st, 401);
            assert!(body["error"].as_str().unwrap().contains("apikey"), "{body}");
        }
        // Validation: 400 naming the parameter.
        let cases = [
            ("bulkSms/sent?granularity=day&metric=cost&currencyCode=USD&endDate=2016-08-18", "startDate"),
            ("bulkSms/sent?granularity=day&metric=count&currencyCode=USD&startDate=2016-08-18&endDate=2016-08-18", "metric"),
            ("bulkSms/sent?granularity=week&metric=cost&currencyCode=USD&startDate=2016-08-18&endDate=2016-08-18", "granularity"),
            ("bulkSms/sent?granularity=day&metric=cost&currencyCode=EUR&startDate=2016-08-18&endDate=2016-08-18", "currencyCode"),
            ("bulkSms/sent?granularity=day&metric=cost&currencyCode=USD&startDate=2016-02-30&endDate=2016-02-30", "startDate"),
            ("bulkSms/sent?granularity=day&metric=cost&currencyCode=USD&startDate=2016-08-18&endDate=2016-08-19", "endDate"),
            ("bulkSms/sent?granularity=day&metric=cost&currencyCode=USD&startDate=2016-08-18&endDate=2016-08-18&foo=1", "foo"),
            ("bulkSms/failed?granularity=day&metric=count&currencyCode=USD&startDate=2016-08-18&endDate=2016-08-18", "currencyCode"),
        ];
        for (path, param) in cases {
            let (st, body) = get(path, Some(KEY));
            assert_eq!(st, 400, "{path}");
            assert!(
                body["error"].as_str().unwrap().contains(param),
                "{path}: {body}"
            );
        }
        let (st, body) = get("nope/view?x=1", Some(KEY));
        assert_eq!(st, 404);
        assert!(
            body["error"].as_str().unwrap().contains("nope/view"),
            "{body}"
        );
        let (st, _) = get(&format!("{view}&username=nobody"), Some(KEY));
        assert_eq!(st, 404);
        api.stop(Duration::from_secs(1));
    });
}

#[test]
fn users_in_flight_per_service_are_bounded_by_the_pool() {
    common::run(|| {
        with_store("sqlite", |s| {
            let api = DemoApi::start(
                "127.0.0.1:0",
                ApiConfig {
                    latency: Duration::from_millis(20),
                    ..api_config(&dataset(60, 1, 0.0), 0.0, 0.0)
                },
            )
            .unwrap();
            let mut cfg = config(&api, KEY);
            cfg.concurrency = 7;
            let p = start(&cfg, &s);
            let r = p.crunch_date(d("2016-08-18"), &[]);
            assert_eq!(r.outcome(), Outcome::Complete);
            for v in 0..3 {
                let max = api.counters().max_in_flight[v].get();
                assert!(
                    max <= 7,
                    "view {v}: {max} requests at once with a pool of 7"
                );
                assert!(max >= 2, "view {v}: users are fetched concurrently ({max})");
            }
            p.shutdown(Duration::from_secs(5));
            api.stop(Duration::from_secs(1));
        })
    });
}
