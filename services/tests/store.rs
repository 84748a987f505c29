//! The store against real SQLite (a temp file) and the real MariaDB (a database per test).
mod common;
mod pipeline_util;

use evergreen_services::store::{self, Date, Decimal, Row, RunRecord, Store, Table, Value, CURSOR};
use pipeline_util::{MySqlDb, TempDir};

fn row(user: &str, d: Date, net: &str, country: &str, v: Value) -> Row {
    Row {
        username: user.into(),
        date: d,
        network: net.into(),
        country: country.into(),
        value: v,
    }
}

fn usd(s: &str) -> Value {
    Value::Money {
        currency: "USD".into(),
        amount: Decimal::parse(s).unwrap(),
    }
}

/// The same checks for both stores.
fn exercise(s: &dyn Store) {
    assert_eq!(
        s.migrate().unwrap(),
        if s.kind() == "mysql" { 5 } else { 1 }
    );
    assert_eq!(s.migrate().unwrap(), 0, "migrations run once");
    let d = Date::parse("2016-08-18").unwrap();
    let rows = vec![
        row("alice", d, "Safaricom", "Kenya", usd("12.50")),
        row("alice", d, "Airtel", "Kenya", usd("0.0001")),
        row("bob+x@y", d, "MTN", "Uganda", usd("99999999.9999")),
    ];
    assert_eq!(s.upsert(Table::BulkSmsNetworksCost, &rows).unwrap(), 3);
    assert_eq!(s.count_rows(Table::BulkSmsNetworksCost, d).unwrap(), 3);
    // Re-crunch with a changed value: updated, not duplicated.
    let mut again = rows.clone();
    again[0].value = usd("13.75");
    assert_eq!(s.upsert(Table::BulkSmsNetworksCost, &again).unwrap(), 3);
    assert_eq!(s.count_rows(Table::BulkSmsNetworksCost, d).unwrap(), 3);
    let got = s.rows(Table::BulkSmsNetworksCost, d).unwrap();
    let mut want = again.clone();
    want.sort_by(|a, b| {
        (&a.username, &a.network, &a.country).cmp(&(&b.username, &b.network, &b.country))
    });
    assert_eq!(got, want, "values exact (DECIMAL), currency kept");
    // Counts.
    let f = vec![row("alice", d, "Safaricom", "Kenya", Value::Count(7))];
    s.upsert(Table::BulkSmsNetworksFailed, &f).unwrap();
    assert_eq!(s.rows(Table::BulkSmsNetworksFailed, d).unwrap(), f);
    // A value of the wrong kind fails the whole call and writes nothing.
    let mixed = vec![
        row("carol", d, "MTN", "Uganda", usd("1")),
        row("dave", d, "MTN", "Uganda", Value::Count(1)),
    ];
    assert!(s.upsert(Table::AirtimeNetworksDelivered, &mixed).is_err());
    assert_eq!(s.count_rows(Table::AirtimeNetworksDelivered, d).unwrap(), 0);
    // Many rows in one call.
    let many: Vec<Row> = (0..1234)
        .map(|i| {
            row(
                &format!("u{i}"),
                d,
                "Glo",
                "Nigeria",
                Value::Money {
                    currency: "USD".into(),
                    amount: Decimal::from_units(i),
                },
            )
        })
        .collect();
    assert_eq!(
        s.upsert(Table::AirtimeNetworksDelivered, &many).unwrap(),
        1234
    );
    assert_eq!(
        s.count_rows(Table::AirtimeNetworksDelivered, d).unwrap(),
        1234
    );
    assert_eq!(
        s.count_rows(Table::AirtimeNetworksDelivered, d.succ())
            .unwrap(),
        0
    );
    // Cursor: unset, init once, compare-and-set advance.
    assert_eq!(s.cursor(CURSOR).unwrap(), None);
    assert!(s.init_cursor(CURSOR, d).unwrap());
    assert!(
        !s.init_cursor(CURSOR, d.succ()).unwrap(),
        "init never moves a set cursor"
    );
    assert_eq!(s.cursor(CURSOR).unwrap(), Some(d));
    assert!(
        !s.advance_cursor(CURSOR, d.succ(), d.add_days(2)).unwrap(),
        "stale from"
    );
    assert!(s.advance_cursor(CURSOR, d, d.succ()).unwrap());
    assert_eq!(s.cursor(CURSOR).unwrap(), Some(d.succ()));
    // Runs and status.
    s.record_run(&RunRecord {
        date: Some(d),
        outcome: "complete".into(),
        users: 3,
        rows: 4,
        ..Default::default()
    })
    .unwrap();
    s.record_run(&RunRecord {
        date: Some(d.succ()),
        outcome: "partial".into(),
        failed_users: 1,
        detail: "x".into(),
        ..Default::default()
    })
    .unwrap();
    let st = s.status(10, 10).unwrap();
    assert_eq!(st.cursor, Some(d.succ()));
    assert_eq!(st.runs.len(), 2);
    assert_eq!(st.runs[0].outcome, "partial");
    assert_eq!(st.runs[1].date, Some(d));
    assert!(st
        .rows
        .contains(&(Table::AirtimeNetworksDelivered, d, 1234)));
    assert!(st.rows.contains(&(Table::BulkSmsNetworksCost, d, 3)));
}

#[test]
fn sqlite_store() {
    common::run(|| {
        let dir = TempDir::new("store");
        let url = format!("sqlite://{}/s.db", dir.path());
        let s = store::open(&url).unwrap();
        exercise(&*s);
        assert!(s.location().contains("s.db"));
        // The data survives a reopen.
        drop(s);
        let s = store::open(&url).unwrap();
        assert_eq!(
            s.count_rows(
                Table::AirtimeNetworksDelivered,
                Date::parse("2016-08-18").unwrap()
            )
            .unwrap(),
            1234
        );
    });
}

#[test]
fn mysql_store() {
    common::run(|| {
        let db = MySqlDb::new("store");
        let s = store::open(&db.url()).unwrap();
        let g = evergreen::spawn(move || {
            exercise(&*s);
            assert!(!s.location().contains("hunter"));
        });
        g.into_result().unwrap();
    });
}

#[test]
fn bad_urls_are_named() {
    let e = store::open("postgres://u:hunter2@h/db")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("postgres") && !e.contains("hunter2"), "{e}");
    let e = store::open("mysql://u:hunter2@h/db?ssl=1")
        .err()
        .unwrap()
        .to_string();
    assert!(!e.contains("hunter2"), "{e}");
}
