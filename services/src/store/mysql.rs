//! The MySQL/MariaDB store, through the green pool of [`crate::fetch::mysql`].
//!
//! Money is `DECIMAL(20,4)` (sent and read as exact text, never a float), dates `DATE`, the
//! upsert is a batched `INSERT … ON DUPLICATE KEY UPDATE` (500 rows a statement, the rest in
//! power-of-two statements so the driver's statement cache stays small, all in one
//! transaction, values as parameters). The cursor moves by a compare-and-set `UPDATE … WHERE date = from`.
//! Connection loss (server restart, `KILL`) is handled by the pool (a reused connection is
//! pinged before a transaction and replaced once); the writer above retries a failed batch.

use ::mysql::prelude::Queryable;

use super::{
    now_utc_string, Date, Decimal, Row, RunRecord, Status, Store, StoreError, Table, Value,
};
use crate::fetch::mysql::{Migration, MySqlPool, PoolOptions, Value as SqlValue};

const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "stats_0001_bulk_sms_networks_cost",
        sql: "CREATE TABLE IF NOT EXISTS bulk_sms_networks_cost (
            username VARCHAR(128) NOT NULL, date DATE NOT NULL, network VARCHAR(64) NOT NULL,
            country VARCHAR(64) NOT NULL, cost DECIMAL(20,4) NOT NULL, currency VARCHAR(8) NOT NULL,
            updated_at DATETIME NOT NULL,
            PRIMARY KEY (username, date, network, country), KEY by_date (date)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    },
    Migration {
        name: "stats_0001_bulk_sms_networks_failed",
        sql: "CREATE TABLE IF NOT EXISTS bulk_sms_networks_failed (
            username VARCHAR(128) NOT NULL, date DATE NOT NULL, network VARCHAR(64) NOT NULL,
            country VARCHAR(64) NOT NULL, failed BIGINT UNSIGNED NOT NULL,
            updated_at DATETIME NOT NULL,
            PRIMARY KEY (username, date, network, country), KEY by_date (date)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    },
    Migration {
        name: "stats_0001_airtime_networks_delivered",
        sql: "CREATE TABLE IF NOT EXISTS airtime_networks_delivered (
            username VARCHAR(128) NOT NULL, date DATE NOT NULL, network VARCHAR(64) NOT NULL,
            country VARCHAR(64) NOT NULL, cost DECIMAL(20,4) NOT NULL, currency VARCHAR(8) NOT NULL,
            updated_at DATETIME NOT NULL,
            PRIMARY KEY (username, date, network, country), KEY by_date (date)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    },
    Migration {
        name: "stats_0001_crunch_cursor",
        sql: "CREATE TABLE IF NOT EXISTS crunch_cursor (
            name VARCHAR(64) NOT NULL PRIMARY KEY, date DATE NOT NULL, updated_at DATETIME NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    },
    Migration {
        name: "stats_0001_pipeline_runs",
        sql: "CREATE TABLE IF NOT EXISTS pipeline_runs (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, date DATE NULL,
            outcome VARCHAR(16) NOT NULL, users BIGINT UNSIGNED NOT NULL,
            failed_users BIGINT UNSIGNED NOT NULL, rows_written BIGINT UNSIGNED NOT NULL,
            malformed BIGINT UNSIGNED NOT NULL, millis BIGINT UNSIGNED NOT NULL,
            finished_at DATETIME NOT NULL, detail TEXT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    },
];

/// Rows per `INSERT` statement (the rest of an upsert goes in power-of-two statements, see
/// [`MySqlPool::upsert`]).
const BATCH: usize = 500;

/// The MySQL store (see the [module docs](self)).
pub struct MySqlStore {
    pool: MySqlPool,
    shown: String,
}

fn err(context: &str) -> impl Fn(crate::fetch::mysql::Error) -> StoreError + '_ {
    move |e| StoreError::new(context, e)
}

impl MySqlStore {
    /// A store on the database `url` names (`mysql://user:pass@host:port/db`); connects lazily.
    pub fn open(url: &str) -> Result<MySqlStore, StoreError> {
        let opts = PoolOptions::from_url(url).map_err(err("opening the MySQL store"))?;
        let shown = match url::Url::parse(url) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                format!("MySQL {u}")
            }
            Err(_) => "MySQL".into(),
        };
        Ok(MySqlStore {
            pool: MySqlPool::new(opts.max_connections(6)),
            shown,
        })
    }

    /// The pool (for tests and metrics).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

fn date_of(s: String) -> Result<Date, StoreError> {
    Date::parse(&s).map_err(|m| StoreError::new("reading a date from MySQL", m))
}

impl Store for MySqlStore {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn location(&self) -> String {
        self.shown.clone()
    }

    fn migrate(&self) -> Result<usize, StoreError> {
        self.pool
            .migrate(MIGRATIONS)
            .map_err(err("migrating the MySQL schema"))
    }

    fn upsert(&self, table: Table, rows: &[Row]) -> Result<u64, StoreError> {
        let now = now_utc_string();
        let mut values = Vec::with_capacity(rows.len());
        for r in rows {
            let mut v: Vec<SqlValue> = vec![
                r.username.as_str().into(),
                r.date.to_string().into(),
                r.network.as_str().into(),
                r.country.as_str().into(),
            ];
            match (&r.value, table.is_money()) {
                (Value::Money { currency, amount }, true) => {
                    v.push(amount.to_string().into());
                    v.push(currency.as_str().into());
                }
                (Value::Count(n), false) => v.push((*n).into()),
                _ => {
                    return Err(StoreError::new(
                        format!("upserting into {}", table.name()),
                        format!("a {:?} value does not fit", r.value),
                    ))
                }
            }
            v.push(now.as_str().into());
            values.push(v);
        }
        let (cols, update) = table.upsert_columns();
        let ctx = format!("upserting {} rows into {}", rows.len(), table.name());
        self.pool
            .upsert(table.name(), cols, update, &values, BATCH)
            .map_err(err(&ctx))?;
        Ok(rows.len() as u64)
    }

    fn cursor(&self, name: &str) -> Result<Option<Date>, StoreError> {
        let ctx = "reading the cursor";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let d: Option<String> = c
            .exec_first(
                "SELECT DATE_FORMAT(date, '%Y-%m-%d') FROM crunch_cursor WHERE name = ?",
                (name,),
            )
            .map_err(err(ctx))?;
        d.map(date_of).transpose()
    }

    fn init_cursor(&self, name: &str, date: Date) -> Result<bool, StoreError> {
        let ctx = "setting the cursor";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let (name, d, now) = (name.to_string(), date.to_string(), now_utc_string());
        let n = c
            .run(ctx, |c| {
                c.exec_drop(
                    "INSERT IGNORE INTO crunch_cursor (name, date, updated_at) VALUES (?, ?, ?)",
                    (&name, &d, &now),
                )?;
                Ok(c.affected_rows())
            })
            .map_err(err(ctx))?;
        Ok(n == 1)
    }

    fn advance_cursor(&self, name: &str, from: Date, to: Date) -> Result<bool, StoreError> {
        let ctx = "advancing the cursor";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let (name, f, t, now) = (
            name.to_string(),
            from.to_string(),
            to.to_string(),
            now_utc_string(),
        );
        let n = c
            .run(ctx, |c| {
                c.exec_drop(
                    "UPDATE crunch_cursor SET date = ?, updated_at = ? WHERE name = ? AND date = ?",
                    (&t, &now, &name, &f),
                )?;
                Ok(c.affected_rows())
            })
            .map_err(err(ctx))?;
        Ok(n == 1)
    }

    fn record_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let ctx = "recording the run";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let finished = if run.finished_at.is_empty() {
            now_utc_string()
        } else {
            run.finished_at.clone()
        };
        let params: Vec<SqlValue> = vec![
            run.date.map(|d| d.to_string()).into(),
            run.outcome.as_str().into(),
            run.users.into(),
            run.failed_users.into(),
            run.rows.into(),
            run.malformed.into(),
            run.millis.into(),
            finished.into(),
            run.detail.as_str().into(),
        ];
        c.exec_drop(
            "INSERT INTO pipeline_runs (date, outcome, users, failed_users, rows_written, malformed, millis, finished_at, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params,
        )
        .map_err(err(ctx))
    }

    fn count_rows(&self, table: Table, date: Date) -> Result<u64, StoreError> {
        let ctx = "counting rows";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let n: Option<u64> = c
            .exec_first(
                &format!("SELECT COUNT(*) FROM {} WHERE date = ?", table.name()),
                (date.to_string(),),
            )
            .map_err(err(ctx))?;
        Ok(n.unwrap_or(0))
    }

    fn rows(&self, table: Table, date: Date) -> Result<Vec<Row>, StoreError> {
        let ctx = "reading rows";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let sql = if table.is_money() {
            format!("SELECT username, network, country, CAST(cost AS CHAR), currency FROM {} WHERE date = ? ORDER BY username, network, country", table.name())
        } else {
            format!("SELECT username, network, country, CAST(failed AS CHAR), '' FROM {} WHERE date = ? ORDER BY username, network, country", table.name())
        };
        let got: Vec<(String, String, String, String, String)> =
            c.exec(&sql, (date.to_string(),)).map_err(err(ctx))?;
        got.into_iter()
            .map(|(username, network, country, v, currency)| {
                let value = if table.is_money() {
                    Value::Money {
                        currency,
                        amount: Decimal::parse(&v).map_err(|m| StoreError::new(ctx, m))?,
                    }
                } else {
                    Value::Count(
                        v.parse()
                            .map_err(|_| StoreError::new(ctx, format!("bad count {v:?}")))?,
                    )
                };
                Ok(Row {
                    username,
                    date,
                    network,
                    country,
                    value,
                })
            })
            .collect()
    }

    fn status(&self, dates: usize, runs: usize) -> Result<Status, StoreError> {
        let cursor = self.cursor(super::CURSOR)?;
        let ctx = "reading the status";
        let mut c = self.pool.get().map_err(err(ctx))?;
        let mut rows = Vec::new();
        for t in Table::ALL {
            let got: Vec<(String, u64)> = c
                .exec(
                    &format!("SELECT DATE_FORMAT(date, '%Y-%m-%d'), COUNT(*) FROM {} GROUP BY date ORDER BY date DESC LIMIT ?", t.name()),
                    (dates as u64,),
                )
                .map_err(err(ctx))?;
            for (d, n) in got {
                rows.push((t, date_of(d)?, n));
            }
        }
        type RunRow = (
            Option<String>,
            String,
            u64,
            u64,
            u64,
            u64,
            u64,
            String,
            String,
        );
        let got: Vec<RunRow> = c
            .exec(
                "SELECT DATE_FORMAT(date, '%Y-%m-%d'), outcome, users, failed_users, rows_written, malformed, millis, \
                 DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:%s'), detail FROM pipeline_runs ORDER BY id DESC LIMIT ?",
                (runs as u64,),
            )
            .map_err(err(ctx))?;
        let mut out = Vec::new();
        for (d, outcome, users, failed_users, rows_w, malformed, millis, finished_at, detail) in got
        {
            out.push(RunRecord {
                date: d.map(date_of).transpose()?,
                outcome,
                users,
                failed_users,
                rows: rows_w,
                malformed,
                millis,
                finished_at,
                detail,
            });
        }
        Ok(Status {
            cursor,
            rows,
            runs: out,
        })
    }
}
