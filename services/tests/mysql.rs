//! The green MySQL pool against the real MariaDB on 127.0.0.1:3306 (user root, no password),
//! each test in a database of its own, dropped at the end. Real clock: the server's work
//! takes real time.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::run;
use evergreen_services::fetch::mysql::{ErrorKind, Migration, MySqlPool, PoolOptions};
use mysql::Value;

/// A database of its own for one test; dropped (with its pool's connections closed first)
/// at the end.
struct TestDb {
    name: String,
    admin: MySqlPool,
}

impl TestDb {
    fn new(test: &str) -> TestDb {
        let name = format!("evg_{test}_{}_{}", std::process::id(), fastrand::u32(..));
        let admin = MySqlPool::new(
            PoolOptions::new("127.0.0.1", 3306)
                .user("root")
                .max_connections(2),
        );
        admin
            .get()
            .unwrap()
            .query_drop(&format!("CREATE DATABASE `{name}`"))
            .unwrap();
        TestDb { name, admin }
    }

    fn opts(&self) -> PoolOptions {
        PoolOptions::from_url(&format!("mysql://root@127.0.0.1:3306/{}", self.name)).unwrap()
    }

    /// Runs `sql` as root (on the admin pool).
    fn admin_exec(&self, sql: &str) {
        self.admin.get().unwrap().query_drop(sql).unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admin.get() {
            let _ = c.query_drop(&format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

const SCHEMA: &[Migration] = &[Migration {
    name: "001_costs",
    sql: "CREATE TABLE IF NOT EXISTS costs (\
          username VARCHAR(64) NOT NULL, date DATE NOT NULL, network VARCHAR(64) NOT NULL, \
          country VARCHAR(64) NOT NULL, cost DECIMAL(18,4) NOT NULL, \
          PRIMARY KEY (username, date, network, country))",
}];

/// The columns of `costs`, in order.
const COLS: [&str; 5] = ["username", "date", "network", "country", "cost"];

/// A row of `costs`.
fn cost_row(username: &str, date: &str, network: &str, country: &str, cost: &str) -> Vec<Value> {
    vec![
        username.into(),
        date.into(),
        network.into(),
        country.into(),
        cost.into(),
    ]
}

fn count(pool: &MySqlPool, table: &str) -> u64 {
    pool.get()
        .unwrap()
        .query::<u64>(&format!("SELECT COUNT(*) FROM {table}"))
        .unwrap()[0]
}

#[test]
fn fifty_sleeps_overlap() {
    run(|| {
        let db = TestDb::new("overlap");
        let pool = MySqlPool::new(db.opts().max_connections(50));
        let start = Instant::now();
        let gs: Vec<_> = (0..50)
            .map(|_| {
                let pool = pool.clone();
                evergreen::spawn(move || {
                    pool.get()
                        .and_then(|mut c| c.query::<i64>("SELECT SLEEP(0.2)"))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for g in evergreen::joinall(&gs) {
            assert_eq!(g.into_result().unwrap().unwrap(), vec![0]);
        }
        let took = start.elapsed();
        // Serially: 50 × 0.2 s = 10 s.
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(pool.stats().max_in_use, 50);
        drop(pool);
        drop(db);
    });
}

#[test]
fn the_pool_bound_holds_under_500_greenlets() {
    run(|| {
        let db = TestDb::new("bound");
        let pool = MySqlPool::new(db.opts().max_connections(10));
        let ids = Rc::new(std::cell::RefCell::new(std::collections::BTreeSet::new()));
        let gs: Vec<_> = (0..500)
            .map(|i| {
                let pool = pool.clone();
                let ids = ids.clone();
                evergreen::spawn(move || {
                    let mut c = pool.get().map_err(|e| e.to_string())?;
                    let (id, v): (u32, i64) = c
                        .exec_first("SELECT CONNECTION_ID(), ?", (i,))
                        .map_err(|e| e.to_string())?
                        .unwrap();
                    ids.borrow_mut().insert(id);
                    Ok::<i64, String>(v)
                })
            })
            .collect();
        for (i, g) in evergreen::joinall(&gs).into_iter().enumerate() {
            let _ = i;
            g.into_result().unwrap().unwrap();
        }
        let s = pool.stats();
        assert!(s.max_in_use <= 10, "{s:?}");
        assert!(s.opened <= 10, "{s:?}");
        // The server saw at most 10 distinct connections.
        assert!(
            ids.borrow().len() <= 10,
            "{} connection ids",
            ids.borrow().len()
        );
        assert_eq!((s.in_use, s.waiting), (0, 0));
        drop(pool);
        drop(db);
    });
}

#[test]
fn a_pooled_connection_killed_on_the_server_is_replaced() {
    run(|| {
        let db = TestDb::new("kill");
        let pool = MySqlPool::new(db.opts().max_connections(1));
        let id = pool.get().unwrap().connection_id();
        assert_eq!(pool.stats().idle, 1);
        db.admin_exec(&format!("KILL {id}"));
        // The next checkout gets the dead connection back (it was idle only briefly, so it
        // is not pinged); its first statement fails as lost and is retried on a new one.
        let mut c = pool.get().unwrap();
        let v: Vec<i64> = c.query("SELECT 41 + 1").unwrap();
        assert_eq!(v, vec![42]);
        assert_ne!(c.connection_id(), id);
        drop(c);
        let s = pool.stats();
        assert_eq!((s.opened, s.discarded), (2, 1), "{s:?}");
        // A transaction on a reused connection that was killed: the ping before it replaces
        // the connection, and the body runs once.
        pool.migrate(SCHEMA).unwrap();
        let id = pool.get().unwrap().connection_id();
        db.admin_exec(&format!("KILL {id}"));
        let runs = Cell::new(0);
        let mut c = pool.get().unwrap();
        c.transaction("inserting after a kill", |tx| {
            use mysql::prelude::Queryable;
            runs.set(runs.get() + 1);
            tx.exec_drop(
                "INSERT INTO costs VALUES ('a', '2016-08-18', 'n', 'c', 1)",
                (),
            )
        })
        .unwrap();
        assert_ne!(c.connection_id(), id);
        drop(c);
        assert_eq!((runs.get(), count(&pool, "costs")), (1, 1));
        // A ping after idleness catches it too.
        let pool = MySqlPool::new(
            db.opts()
                .max_connections(1)
                .check_after_idle(Duration::ZERO),
        );
        let id = pool.get().unwrap().connection_id();
        db.admin_exec(&format!("KILL {id}"));
        let mut c = pool.get().unwrap();
        assert_ne!(c.connection_id(), id);
        assert_eq!(c.query::<i64>("SELECT 1").unwrap(), vec![1]);
        drop(c);
        assert_eq!(pool.stats().pings, 1);
        drop(pool);
        drop(db);
    });
}

#[test]
fn a_failed_transaction_rolls_back_and_leaves_no_rows() {
    run(|| {
        let db = TestDb::new("rollback");
        let pool = MySqlPool::new(db.opts());
        assert_eq!(pool.migrate(SCHEMA).unwrap(), 1);
        assert_eq!(pool.migrate(SCHEMA).unwrap(), 0, "migrations run once");
        let mut c = pool.get().unwrap();
        let e = c
            .transaction("inserting two rows", |tx| {
                use mysql::prelude::Queryable;
                tx.exec_drop(
                    "INSERT INTO costs VALUES (?, ?, ?, ?, ?)",
                    ("alice", "2016-08-18", "Safaricom", "Kenya", "1.5"),
                )?;
                // The same key again: a duplicate-key error from the server.
                tx.exec_drop(
                    "INSERT INTO costs VALUES (?, ?, ?, ?, ?)",
                    ("alice", "2016-08-18", "Safaricom", "Kenya", "2.5"),
                )
            })
            .unwrap_err();
        assert_eq!((e.kind(), e.code()), (ErrorKind::Server, Some(1062)), "{e}");
        assert!(e.to_string().contains("inserting two rows"), "{e}");
        drop(c);
        assert_eq!(count(&pool, "costs"), 0);
        // An upsert batch with a bad row rolls back every batch before it.
        let mut rows: Vec<Vec<Value>> = (0..250)
            .map(|i| cost_row(&format!("u{i}"), "2016-08-18", "N", "C", "1.00"))
            .collect();
        rows.push(cost_row("bad", "not a date", "N", "C", "1"));
        let e = pool
            .upsert("costs", &COLS, &["cost"], &rows, 100)
            .unwrap_err();
        assert!(
            e.to_string().contains("upserting 251 rows into costs"),
            "{e}"
        );
        assert_eq!(count(&pool, "costs"), 0);
        drop(pool);
        drop(db);
    });
}

#[test]
fn upsert_batches_are_idempotent_and_update_values() {
    run(|| {
        let db = TestDb::new("upsert");
        let pool = MySqlPool::new(db.opts());
        pool.migrate(SCHEMA).unwrap();
        let rows = |cost: &str| -> Vec<Vec<Value>> {
            (0..1000)
                .map(|i| {
                    cost_row(
                        &format!("user{}", i / 5),
                        "2016-08-18",
                        &format!("net{}", i % 5),
                        "Kenya",
                        cost,
                    )
                })
                .collect()
        };
        let s = pool
            .upsert("costs", &COLS, &["cost"], &rows("1.25"), 300)
            .unwrap();
        // 300, 300, 300, then the remaining 100 as 64 + 32 + 4.
        assert_eq!((s.rows, s.batches, s.affected), (1000, 6, 1000));
        let s = pool
            .upsert("costs", &COLS, &["cost"], &rows("1.25"), 300)
            .unwrap();
        assert_eq!(s.affected, 0, "nothing changed");
        assert_eq!(count(&pool, "costs"), 1000);
        let s = pool
            .upsert("costs", &COLS, &["cost"], &rows("2.50"), 300)
            .unwrap();
        assert_eq!(s.affected, 2000, "every row updated");
        assert_eq!(count(&pool, "costs"), 1000);
        let sum: Vec<String> = pool
            .get()
            .unwrap()
            .query("SELECT CAST(SUM(cost) AS CHAR) FROM costs")
            .unwrap();
        assert_eq!(sum, vec!["2500.0000".to_string()]);
        // Bad identifiers and row shapes are refused before any SQL is sent.
        let e = pool
            .upsert("costs; DROP TABLE costs", &COLS, &[], &rows("1"), 10)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e = pool
            .upsert("costs", &COLS, &["cost"], &[vec![Value::from(1)]], 10)
            .unwrap_err();
        assert!(
            e.to_string().contains("row 0 has 1 values for 5 columns"),
            "{e}"
        );
        drop(pool);
        drop(db);
    });
}

/// The prepared statements this session has prepared so far.
fn session_prepares(c: &mut evergreen_services::fetch::mysql::PooledConn) -> u64 {
    let rows: Vec<(String, u64)> = c
        .query("SHOW SESSION STATUS LIKE 'Com_stmt_prepare'")
        .unwrap();
    rows[0].1
}

#[test]
fn upserts_of_any_size_prepare_a_bounded_set_of_statements() {
    run(|| {
        let db = TestDb::new("upsert_stmts");
        // One connection: every statement goes through the same session.
        let pool = MySqlPool::new(db.opts().max_connections(1));
        pool.migrate(SCHEMA).unwrap();
        let rows = |n: usize| -> Vec<Vec<Value>> {
            (0..n)
                .map(|i| cost_row(&format!("user{i}"), "2016-08-18", "net", "Kenya", "1.50"))
                .collect()
        };
        let (id, before) = {
            let mut c = pool.get().unwrap();
            (c.connection_id(), session_prepares(&mut c))
        };
        // Every row count from 1 to 40, with batch 16: one statement per row count would
        // prepare 16 distinct statements (1..=16 rows); the bounded sizes are 16, 8, 4, 2, 1.
        let mut inserted = 0;
        for n in 1..=40 {
            let s = pool
                .upsert("costs", &COLS, &["cost"], &rows(n), 16)
                .unwrap();
            assert_eq!(s.rows, n as u64);
            assert!(
                s.batches <= (n / 16 + 4) as u64,
                "{n} rows: {} statements",
                s.batches
            );
            inserted += s.affected;
        }
        assert_eq!(
            inserted, 40,
            "each call inserts one new row, the rest unchanged"
        );
        // Idempotent: the same upserts again change nothing.
        for n in 1..=40 {
            let s = pool
                .upsert("costs", &COLS, &["cost"], &rows(n), 16)
                .unwrap();
            assert_eq!(s.affected, 0, "{n} rows: nothing changed");
        }
        assert_eq!(count(&pool, "costs"), 40);
        let mut c = pool.get().unwrap();
        assert_eq!(c.connection_id(), id, "the same session throughout");
        let prepared = session_prepares(&mut c) - before;
        assert!(
            prepared <= 5,
            "80 upserts of 1..=40 rows prepared {prepared} statements; at most 5 distinct sizes"
        );
        drop(c);
        drop(pool);
        drop(db);
    });
}

#[test]
fn checkout_timeout_is_a_clear_error() {
    run(|| {
        let db = TestDb::new("checkout");
        let pool = MySqlPool::new(
            db.opts()
                .max_connections(1)
                .checkout_timeout(Duration::from_millis(200)),
        );
        let held = pool.get().unwrap();
        // The wait below involves no I/O: time it on the virtual clock, exactly.
        assert!(evergreen::hub::use_virtual_clock());
        let start = evergreen::hub::now();
        let e = pool.get().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CheckoutTimeout);
        assert_eq!(evergreen::hub::now() - start, Duration::from_millis(200));
        let msg = e.to_string();
        assert!(
            msg.contains("no connection became free within 200ms") && msg.contains("all 1 in use"),
            "{msg}"
        );
        drop(held);
        assert!(pool.get().is_ok());
        drop(pool);
        drop(db);
    });
}

#[test]
fn waiters_are_served_in_arrival_order() {
    run(|| {
        let db = TestDb::new("fifo");
        let pool = MySqlPool::new(db.opts().max_connections(1));
        let order = Rc::new(std::cell::RefCell::new(Vec::new()));
        let held = pool.get().unwrap();
        let gs: Vec<_> = (0..10)
            .map(|i| {
                let pool = pool.clone();
                let order = order.clone();
                evergreen::spawn(move || {
                    let mut c = pool.get().unwrap();
                    order.borrow_mut().push(i);
                    c.query_drop("DO 1").unwrap();
                })
            })
            .collect();
        evergreen::sleep(Duration::ZERO);
        assert_eq!(pool.stats().waiting, 10);
        drop(held);
        evergreen::joinall(&gs);
        assert_eq!(*order.borrow(), (0..10).collect::<Vec<_>>());
        drop(pool);
        drop(db);
    });
}

#[test]
fn the_servers_connection_limit_is_reported_clearly_not_a_hang() {
    run(|| {
        let db = TestDb::new("limit");
        let user = format!("evg_lim_{}", fastrand::u32(..));
        let mut admin = db.admin.get().unwrap();
        admin
            .query_drop(&format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-SECRET' WITH MAX_USER_CONNECTIONS 2"
            ))
            .unwrap();
        admin
            .query_drop(&format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name))
            .unwrap();
        drop(admin);
        let pool = MySqlPool::new(
            PoolOptions::from_url(&format!(
                "mysql://{user}:pw-SECRET@127.0.0.1:3306/{}",
                db.name
            ))
            .unwrap()
            .max_connections(5)
            .connect_attempts(2),
        );
        // Each greenlet keeps what it got until all five have an answer, so the two that
        // connected hold the user's two connections while the other three try.
        let hold = Rc::new(evergreen::Event::new());
        let answered = Rc::new(Cell::new(0));
        let all_answered = Rc::new(evergreen::Event::new());
        let gs: Vec<_> = (0..5)
            .map(|_| {
                let (pool, hold) = (pool.clone(), hold.clone());
                let (answered, all_answered) = (answered.clone(), all_answered.clone());
                evergreen::spawn(move || {
                    let c = pool.get();
                    let r = c
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| (e.kind(), e.to_string()));
                    answered.set(answered.get() + 1);
                    if answered.get() == 5 {
                        all_answered.set();
                    }
                    hold.wait();
                    r
                })
            })
            .collect();
        all_answered.wait();
        hold.set();
        let results: Vec<_> = evergreen::joinall(&gs)
            .into_iter()
            .map(|g| g.into_result().unwrap())
            .collect();
        let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(failures.len(), 3, "{results:?}");
        for (kind, msg) in failures {
            assert_eq!(*kind, ErrorKind::TooManyConnections, "{msg}");
            assert!(
                msg.contains("max_user_connections") && msg.contains("MAX_USER_CONNECTIONS"),
                "{msg}"
            );
            assert!(!msg.contains("pw-SECRET"), "{msg}");
        }
        drop(pool);
        db.admin_exec(&format!("DROP USER '{user}'@'%'"));
        drop(db);
    });
}

#[test]
fn a_killed_query_discards_its_connection_and_maps_to_cancelled() {
    run(|| {
        let db = TestDb::new("cancel");
        let pool = MySqlPool::new(db.opts().max_connections(1));
        let started = Rc::new(evergreen::Event::new());
        let kind = Rc::new(Cell::new(None));
        let g = {
            let (pool, started, kind) = (pool.clone(), started.clone(), kind.clone());
            evergreen::spawn(move || {
                let mut c = pool.get().unwrap();
                started.set();
                let r = c.query::<i64>("SELECT SLEEP(5)");
                kind.set(r.err().map(|e| e.kind()));
            })
        };
        started.wait();
        evergreen::sleep(Duration::from_millis(50));
        let t = Instant::now();
        assert!(
            g.kill_timeout(Duration::from_secs(2)),
            "the kill must not hang"
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(kind.get(), Some(ErrorKind::Cancelled));
        let s = pool.stats();
        assert_eq!((s.in_use, s.idle, s.discarded), (0, 0, 1), "{s:?}");
        // The permit came back and a new connection answers correctly (not with a stale
        // result of the killed query).
        assert_eq!(
            pool.get().unwrap().query::<i64>("SELECT 7").unwrap(),
            vec![7]
        );
        // A scoped Timeout maps to Interrupted (in a greenlet: in the root context hooked
        // calls are plain blocking calls that no Timeout can interrupt).
        let p2 = pool.clone();
        let g = evergreen::spawn(move || {
            evergreen::with_timeout(Duration::from_millis(100), || {
                let mut c = p2.get().unwrap();
                c.query::<i64>("SELECT SLEEP(5)").err().map(|e| e.kind())
            })
        });
        let t = Instant::now();
        let r = g.into_result().unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // The greenlet returned before its next blocking point, so the mapped error is what
        // it saw, and the scope ended without the Timeout unwinding it.
        assert_eq!(r, Ok(Some(ErrorKind::Interrupted)));
        assert_eq!(pool.stats().discarded, 2);
        assert_eq!(
            pool.get().unwrap().query::<i64>("SELECT 8").unwrap(),
            vec![8]
        );
        drop(pool);
        drop(db);
    });
}

#[test]
fn bad_urls_are_config_errors_without_the_password() {
    let e = PoolOptions::from_url("postgres://u:hunter2@h/db").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(PoolOptions::from_url("mysql://").is_err());
    let e = PoolOptions::from_url("mysql://u:hunter2@h/db?ssl=true&pool_max=3").unwrap_err();
    assert!(
        e.to_string().contains("ssl, pool_max") && !e.to_string().contains("hunter2"),
        "{e}"
    );
    let o = PoolOptions::from_url("mysql://u%40x:p%3Aw@db.example:3307/stats").unwrap();
    let dbg = format!("{o:?}");
    assert!(
        dbg.contains("u@x") && dbg.contains("3307") && !dbg.contains("p:w"),
        "{dbg}"
    );
}

#[test]
fn a_zero_timeout_is_a_config_error() {
    run(|| {
        let pool = MySqlPool::new(
            PoolOptions::new("127.0.0.1", 3306)
                .user("root")
                .read_timeout(Duration::ZERO),
        );
        let e = pool.get().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("read_timeout must be greater than zero"),
            "{e}"
        );
    });
}

#[test]
fn refused_connections_are_retried_then_reported() {
    run(|| {
        let port = common::refused_addr().port();
        let pool = MySqlPool::new(
            PoolOptions::new("127.0.0.1", port)
                .user("root")
                .connect_attempts(3),
        );
        let e = pool.get().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
        assert_eq!(pool.stats().in_use, 0);
    });
}

#[test]
fn a_read_timeout_is_a_timeout_and_the_connection_is_never_reused() {
    run(|| {
        let db = TestDb::new("readtimeout");
        let pool = MySqlPool::new(
            db.opts()
                .max_connections(1)
                .read_timeout(Duration::from_millis(300)),
        );
        let p = pool.clone();
        let g = evergreen::spawn(move || {
            let mut c = p.get().unwrap();
            let e = c.query::<i64>("SELECT SLEEP(3)").unwrap_err();
            (e.kind(), e.to_string())
        });
        let (kind, msg) = g.into_result().unwrap();
        assert_eq!(kind, ErrorKind::Timeout, "{msg}");
        assert!(
            msg.contains("SELECT SLEEP(3)") && msg.contains("read/write timeout"),
            "{msg}"
        );
        // The crate would answer the next query on that connection with SLEEP's result; the
        // pool closed it, so the next query gets its own answer.
        let p = pool.clone();
        let g = evergreen::spawn(move || p.get().unwrap().query::<i64>("SELECT 5").unwrap());
        assert_eq!(g.into_result().unwrap(), vec![5]);
        let s = pool.stats();
        assert_eq!((s.opened, s.discarded), (2, 1), "{s:?}");
        drop(pool);
        drop(db);
    });
}
