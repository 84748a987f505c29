//! The embedded store: SQLite through rusqlite (bundled SQLite), in one file.
//!
//! Money is kept as exact text (`12.5000`, a `TEXT` column: SQLite's `NUMERIC` affinity would
//! turn it into a float), counts as integers, dates as `YYYY-MM-DD` text. Upserts are
//! `INSERT … ON CONFLICT (username, date, network, country) DO UPDATE`, all rows of a call in
//! one transaction. The file runs in WAL mode with `busy_timeout`, so `status` can read while
//! the pipeline writes. Calls run on the hub's thread and do not yield (short local file I/O).

use std::cell::RefCell;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    now_utc_string, Date, Decimal, Row, RunRecord, Status, Store, StoreError, Table, Value,
};

const SCHEMA: &[(&str, &str)] = &[(
    "0001_stats_tables",
    "CREATE TABLE IF NOT EXISTS bulk_sms_networks_cost (
        username TEXT NOT NULL, date TEXT NOT NULL, network TEXT NOT NULL, country TEXT NOT NULL,
        cost TEXT NOT NULL, currency TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (username, date, network, country));
     CREATE TABLE IF NOT EXISTS bulk_sms_networks_failed (
        username TEXT NOT NULL, date TEXT NOT NULL, network TEXT NOT NULL, country TEXT NOT NULL,
        failed INTEGER NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (username, date, network, country));
     CREATE TABLE IF NOT EXISTS airtime_networks_delivered (
        username TEXT NOT NULL, date TEXT NOT NULL, network TEXT NOT NULL, country TEXT NOT NULL,
        cost TEXT NOT NULL, currency TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (username, date, network, country));
     CREATE TABLE IF NOT EXISTS crunch_cursor (
        name TEXT NOT NULL PRIMARY KEY, date TEXT NOT NULL, updated_at TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS pipeline_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, date TEXT, outcome TEXT NOT NULL,
        users INTEGER NOT NULL, failed_users INTEGER NOT NULL, rows_written INTEGER NOT NULL,
        malformed INTEGER NOT NULL, millis INTEGER NOT NULL, finished_at TEXT NOT NULL,
        detail TEXT NOT NULL);",
)];

/// The SQLite store (see the [module docs](self)).
pub struct SqliteStore {
    conn: RefCell<Connection>,
    path: String,
}

fn err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::new(context, e)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` (`:memory:` for a private one).
    pub fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let ctx = format!("opening the SQLite database {path}");
        let conn = Connection::open(path).map_err(|e| StoreError::new(&ctx, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| StoreError::new(&ctx, e))?;
        if path != ":memory:" {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(|e| StoreError::new(&ctx, e))?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| StoreError::new(&ctx, e))?;
        }
        Ok(SqliteStore {
            conn: RefCell::new(conn),
            path: path.to_string(),
        })
    }
}

fn parse_date(s: String) -> Result<Date, StoreError> {
    Date::parse(&s).map_err(|m| StoreError::new("reading a date from SQLite", m))
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        match std::fs::canonicalize(&self.path) {
            Ok(p) => format!("SQLite file {}", p.display()),
            Err(_) => format!("SQLite file {}", self.path),
        }
    }

    fn migrate(&self) -> Result<usize, StoreError> {
        let mut c = self.conn.borrow_mut();
        let ctx = "migrating the SQLite schema";
        let tx = c.transaction().map_err(err(ctx))?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS _evergreen_migrations (name TEXT NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)",
        )
        .map_err(err(ctx))?;
        let mut applied = 0;
        for (name, sql) in SCHEMA {
            let done: Option<String> = tx
                .query_row(
                    "SELECT name FROM _evergreen_migrations WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err(ctx))?;
            if done.is_none() {
                tx.execute_batch(sql).map_err(err(ctx))?;
                tx.execute(
                    "INSERT INTO _evergreen_migrations (name, applied_at) VALUES (?1, ?2)",
                    params![name, now_utc_string()],
                )
                .map_err(err(ctx))?;
                applied += 1;
            }
        }
        tx.commit().map_err(err(ctx))?;
        Ok(applied)
    }

    fn upsert(&self, table: Table, rows: &[Row]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ctx = format!("upserting {} rows into {}", rows.len(), table.name());
        let mut c = self.conn.borrow_mut();
        let tx = c.transaction().map_err(|e| StoreError::new(&ctx, e))?;
        let now = now_utc_string();
        {
            let sql = if table.is_money() {
                format!(
                    "INSERT INTO {} (username, date, network, country, cost, currency, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (username, date, network, country) \
                     DO UPDATE SET cost = excluded.cost, currency = excluded.currency, updated_at = excluded.updated_at",
                    table.name()
                )
            } else {
                format!(
                    "INSERT INTO {} (username, date, network, country, failed, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (username, date, network, country) \
                     DO UPDATE SET failed = excluded.failed, updated_at = excluded.updated_at",
                    table.name()
                )
            };
            let mut st = tx
                .prepare_cached(&sql)
                .map_err(|e| StoreError::new(&ctx, e))?;
            for r in rows {
                let date = r.date.to_string();
                let res = match (&r.value, table.is_money()) {
                    (Value::Money { currency, amount }, true) => st.execute(params![
                        r.username,
                        date,
                        r.network,
                        r.country,
                        amount.to_string(),
                        currency,
                        now
                    ]),
                    (Value::Count(n), false) => st.execute(params![
                        r.username, date, r.network, r.country, *n as i64, now
                    ]),
                    _ => {
                        return Err(StoreError::new(
                            &ctx,
                            format!("a {:?} value does not fit table {}", r.value, table.name()),
                        ))
                    }
                };
                res.map_err(|e| StoreError::new(&ctx, e))?;
            }
        }
        tx.commit().map_err(|e| StoreError::new(&ctx, e))?;
        Ok(rows.len() as u64)
    }

    fn cursor(&self, name: &str) -> Result<Option<Date>, StoreError> {
        let c = self.conn.borrow();
        let d: Option<String> = c
            .query_row(
                "SELECT date FROM crunch_cursor WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(err("reading the cursor"))?;
        d.map(parse_date).transpose()
    }

    fn init_cursor(&self, name: &str, date: Date) -> Result<bool, StoreError> {
        let c = self.conn.borrow();
        let n = c
            .execute(
                "INSERT INTO crunch_cursor (name, date, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                params![name, date.to_string(), now_utc_string()],
            )
            .map_err(err("setting the cursor"))?;
        Ok(n == 1)
    }

    fn advance_cursor(&self, name: &str, from: Date, to: Date) -> Result<bool, StoreError> {
        let c = self.conn.borrow();
        let n = c
            .execute(
                "UPDATE crunch_cursor SET date = ?1, updated_at = ?2 WHERE name = ?3 AND date = ?4",
                params![to.to_string(), now_utc_string(), name, from.to_string()],
            )
            .map_err(err("advancing the cursor"))?;
        Ok(n == 1)
    }

    fn record_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let c = self.conn.borrow();
        let finished = if run.finished_at.is_empty() {
            now_utc_string()
        } else {
            run.finished_at.clone()
        };
        c.execute(
            "INSERT INTO pipeline_runs (date, outcome, users, failed_users, rows_written, malformed, millis, finished_at, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run.date.map(|d| d.to_string()),
                run.outcome,
                run.users as i64,
                run.failed_users as i64,
                run.rows as i64,
                run.malformed as i64,
                run.millis as i64,
                finished,
                run.detail
            ],
        )
        .map_err(err("recording the run"))?;
        Ok(())
    }

    fn count_rows(&self, table: Table, date: Date) -> Result<u64, StoreError> {
        let c = self.conn.borrow();
        let n: i64 = c
            .query_row(
                &format!("SELECT COUNT(*) FROM {} WHERE date = ?1", table.name()),
                [date.to_string()],
                |r| r.get(0),
            )
            .map_err(err("counting rows"))?;
        Ok(n as u64)
    }

    fn rows(&self, table: Table, date: Date) -> Result<Vec<Row>, StoreError> {
        let c = self.conn.borrow();
        let ctx = "reading rows";
        let sql = if table.is_money() {
            format!("SELECT username, network, country, cost, currency FROM {} WHERE date = ?1 ORDER BY username, network, country", table.name())
        } else {
            format!("SELECT username, network, country, failed, '' FROM {} WHERE date = ?1 ORDER BY username, network, country", table.name())
        };
        let mut st = c.prepare(&sql).map_err(err(ctx))?;
        let mut out = Vec::new();
        let mut q = st.query([date.to_string()]).map_err(err(ctx))?;
        while let Some(r) = q.next().map_err(err(ctx))? {
            let value = if table.is_money() {
                let a: String = r.get(3).map_err(err(ctx))?;
                Value::Money {
                    currency: r.get(4).map_err(err(ctx))?,
                    amount: Decimal::parse(&a).map_err(|m| StoreError::new(ctx, m))?,
                }
            } else {
                Value::Count(r.get::<_, i64>(3).map_err(err(ctx))? as u64)
            };
            out.push(Row {
                username: r.get(0).map_err(err(ctx))?,
                date,
                network: r.get(1).map_err(err(ctx))?,
                country: r.get(2).map_err(err(ctx))?,
                value,
            });
        }
        Ok(out)
    }

    fn status(&self, dates: usize, runs: usize) -> Result<Status, StoreError> {
        let cursor = self.cursor(super::CURSOR)?;
        let c = self.conn.borrow();
        let ctx = "reading the status";
        let mut rows = Vec::new();
        for t in Table::ALL {
            let mut st = c
                .prepare(&format!(
                    "SELECT date, COUNT(*) FROM {} GROUP BY date ORDER BY date DESC LIMIT ?1",
                    t.name()
                ))
                .map_err(err(ctx))?;
            let got = st
                .query_map([dates as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(err(ctx))?;
            for g in got {
                let (d, n) = g.map_err(err(ctx))?;
                rows.push((t, parse_date(d)?, n as u64));
            }
        }
        let mut st = c
            .prepare("SELECT date, outcome, users, failed_users, rows_written, malformed, millis, finished_at, detail FROM pipeline_runs ORDER BY id DESC LIMIT ?1")
            .map_err(err(ctx))?;
        let got = st
            .query_map([runs as i64], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    RunRecord {
                        date: None,
                        outcome: r.get(1)?,
                        users: r.get::<_, i64>(2)? as u64,
                        failed_users: r.get::<_, i64>(3)? as u64,
                        rows: r.get::<_, i64>(4)? as u64,
                        malformed: r.get::<_, i64>(5)? as u64,
                        millis: r.get::<_, i64>(6)? as u64,
                        finished_at: r.get(7)?,
                        detail: r.get(8)?,
                    },
                ))
            })
            .map_err(err(ctx))?;
        let mut runs_out = Vec::new();
        for g in got {
            let (d, mut run) = g.map_err(err(ctx))?;
            run.date = d.map(parse_date).transpose()?;
            runs_out.push(run);
        }
        Ok(Status {
            cursor,
            rows,
            runs: runs_out,
        })
    }
}
