//! The store: where the stats pipeline keeps its rows, its crunch-date cursor and its run log.
//!
//! One interface, [`Store`], two implementations chosen by `DATABASE_URL`:
//!
//! * [`mysql::MySqlStore`] (`mysql://user:pass@host:port/db`): the production store, through the
//!   green pool of [`crate::fetch::mysql`] (the unmodified `mysql` crate made cooperative by
//!   evergreen's monkey patching);
//! * [`sqlite::SqliteStore`] (`sqlite://path`, the default `sqlite://./stats.db`): the embedded
//!   store, rusqlite with its bundled SQLite, so the pipeline runs on a machine with nothing
//!   installed. SQLite calls are short local file I/O and run on the hub's thread (they do not
//!   yield; a write transaction of a few thousand rows takes milliseconds).
//!
//! Both have the same schema (three stats tables with primary key `(username, date, network,
//! country)`, a cursor table, a runs table), the same upsert semantics (insert or update, in
//! one transaction: all rows or none), and the same cursor. The store knows nothing of HTTP.
//!
//! | the sample | here | difference |
//! |---|---|---|
//! | one `INSERT` + `commit` per row (a Celery task run eagerly) | [`Store::upsert`] | batched, idempotent on the primary key, one transaction |
//! | `CrunchDate` in Redis, advanced before the crunch | [`Store::cursor`], [`Store::advance_cursor`] | in the database, advanced only after a complete date, compare-and-set |
//! | money as a float column | [`Decimal`] (`DECIMAL(20,4)` / exact text) and the currency code | never a float |

pub mod mysql;
pub mod sqlite;

use std::fmt;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A calendar date (proleptic Gregorian, UTC), as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(i32);

impl Date {
    /// The date of `y-m-d`, or `None` if it does not exist.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Option<Date> {
        if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m as i32 + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d as i32 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(Date(era * 146_097 + doe - 719_468))
    }

    /// Parses `YYYY-MM-DD` (exactly that form).
    pub fn parse(s: &str) -> Result<Date, String> {
        let b = s.as_bytes();
        let bad = || format!("{s:?} is not a date of the form YYYY-MM-DD");
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let t = &s[r];
            if t.bytes().all(|c| c.is_ascii_digit()) {
                t.parse().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        Date::from_ymd(y as i32, m, d).ok_or_else(|| format!("{s:?} is not a valid calendar date"))
    }

    /// Today's date in UTC, from the system clock.
    pub fn today_utc() -> Date {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Date((secs / 86_400) as i32)
    }

    /// `(year, month, day)`.
    pub fn ymd(self) -> (i32, u32, u32) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    /// The date `n` days later (earlier if negative).
    pub fn add_days(self, n: i32) -> Date {
        Date(self.0 + n)
    }

    /// The next day.
    pub fn succ(self) -> Date {
        self.add_days(1)
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i32 {
        self.0
    }
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS` (the rows' `updated_at`).
pub fn now_utc_string() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = Date((secs / 86_400) as i32);
    let s = secs % 86_400;
    format!("{day} {:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// An exact decimal amount with 4 fractional digits (`DECIMAL(20,4)`), never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal(i64);

impl Decimal {
    /// Fractional digits kept.
    pub const SCALE: u32 = 4;

    /// From a count of 1/10,000 units.
    pub fn from_units(units: i64) -> Decimal {
        Decimal(units)
    }

    /// The amount in 1/10,000 units.
    pub fn units(self) -> i64 {
        self.0
    }

    /// Parses a plain decimal number (`12`, `12.5`, `-0.0001`): optional sign, digits, at most
    /// 4 fractional digits, at most 15 integer digits; no exponent, no spaces.
    pub fn parse(s: &str) -> Result<Decimal, String> {
        let (neg, body) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) {
            return Err(format!("{s:?} is not a decimal number"));
        }
        if frac.len() > Self::SCALE as usize {
            return Err(format!(
                "{s:?} has more than {} decimal places",
                Self::SCALE
            ));
        }
        if int.trim_start_matches('0').len() > 15 {
            return Err(format!("{s:?} is too large"));
        }
        let i: i64 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| format!("{s:?} is not a decimal number"))?
        };
        let mut f: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse()
                .map_err(|_| format!("{s:?} is not a decimal number"))?
        };
        for _ in frac.len()..Self::SCALE as usize {
            f *= 10;
        }
        let u = i * 10_000 + f;
        Ok(Decimal(if neg { -u } else { u }))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:04}", a / 10_000, a % 10_000)
    }
}

/// The three stats tables, one per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `bulk_sms_networks_cost` (money).
    BulkSmsNetworksCost,
    /// `bulk_sms_networks_failed` (counts).
    BulkSmsNetworksFailed,
    /// `airtime_networks_delivered` (money).
    AirtimeNetworksDelivered,
}

impl Table {
    /// All three, in the services' order.
    pub const ALL: [Table; 3] = [
        Table::BulkSmsNetworksCost,
        Table::BulkSmsNetworksFailed,
        Table::AirtimeNetworksDelivered,
    ];

    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::BulkSmsNetworksCost => "bulk_sms_networks_cost",
            Table::BulkSmsNetworksFailed => "bulk_sms_networks_failed",
            Table::AirtimeNetworksDelivered => "airtime_networks_delivered",
        }
    }

    /// The value column (`cost` or `failed`).
    pub fn value_column(self) -> &'static str {
        if self.is_money() {
            "cost"
        } else {
            "failed"
        }
    }

    /// Whether the value is money (with a currency) rather than a count.
    pub fn is_money(self) -> bool {
        !matches!(self, Table::BulkSmsNetworksFailed)
    }

    /// The SQL columns of an upsert into this table, in parameter order, and those of them an
    /// existing row takes over (`ON DUPLICATE KEY UPDATE`): the key (`username`, `date`,
    /// `network`, `country`), the value (`cost`, `currency` or `failed`), `updated_at`.
    pub fn upsert_columns(self) -> (&'static [&'static str], &'static [&'static str]) {
        if self.is_money() {
            (
                &[
                    "username",
                    "date",
                    "network",
                    "country",
                    "cost",
                    "currency",
                    "updated_at",
                ],
                &["cost", "currency", "updated_at"],
            )
        } else {
            (
                &[
                    "username",
                    "date",
                    "network",
                    "country",
                    "failed",
                    "updated_at",
                ],
                &["failed", "updated_at"],
            )
        }
    }
}

/// A row's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// An amount of money and its currency code (`USD`).
    Money {
        /// ISO 4217 code as given by the API.
        currency: String,
        /// The amount.
        amount: Decimal,
    },
    /// A count (failed messages).
    Count(u64),
}

/// One row of a stats table: its key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The upstream user.
    pub username: String,
    /// The day.
    pub date: Date,
    /// The network (the text inside the parentheses of the element key).
    pub network: String,
    /// The country (the text before the parentheses).
    pub country: String,
    /// The value.
    pub value: Value,
}

/// One crunch of one date, as recorded in the runs table (`status` shows the last ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// The date crunched.
    pub date: Option<Date>,
    /// `complete`, `partial`, `refused`, `interrupted` or `failed`.
    pub outcome: String,
    /// Users seen (summed over the services).
    pub users: u64,
    /// Users whose fetch failed after retries.
    pub failed_users: u64,
    /// Rows written.
    pub rows: u64,
    /// Malformed elements skipped.
    pub malformed: u64,
    /// Wall time in milliseconds.
    pub millis: u64,
    /// When it finished (`YYYY-MM-DD HH:MM:SS` UTC); filled by the store when empty.
    pub finished_at: String,
    /// A short human-readable note (first error), never a secret.
    pub detail: String,
}

/// What `status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The crunch-date cursor, if set.
    pub cursor: Option<Date>,
    /// `(table, date, rows)` for the most recent dates, newest first.
    pub rows: Vec<(Table, Date, u64)>,
    /// The most recent runs, newest first.
    pub runs: Vec<RunRecord>,
}

/// A store error: what was being done, and what went wrong (never a password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    /// What the store was doing.
    pub context: String,
    /// What went wrong.
    pub message: String,
}

impl StoreError {
    pub(crate) fn new(context: impl Into<String>, message: impl fmt::Display) -> StoreError {
        StoreError {
            context: context.into(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.message)
    }
}

impl std::error::Error for StoreError {}

/// The name of the pipeline's cursor row.
pub const CURSOR: &str = "crunch_date";

/// The storage interface of the stats pipeline.
pub trait Store {
    /// `mysql` or `sqlite`.
    fn kind(&self) -> &'static str;
    /// Where the data is, for people (the URL without its password, or the file's path).
    fn location(&self) -> String;
    /// Creates the schema if needed; returns how many migrations were applied now.
    fn migrate(&self) -> Result<usize, StoreError>;
    /// Inserts or updates `rows` of `table` on their primary key, all in one transaction.
    /// Returns the number of rows written.
    fn upsert(&self, table: Table, rows: &[Row]) -> Result<u64, StoreError>;
    /// The cursor `name`, if set.
    fn cursor(&self, name: &str) -> Result<Option<Date>, StoreError>;
    /// Sets the cursor `name` to `date` if it is unset (returns whether it set it).
    fn init_cursor(&self, name: &str, date: Date) -> Result<bool, StoreError>;
    /// Moves the cursor `name` from `from` to `to` if it still is at `from` (compare-and-set;
    /// returns whether it moved).
    fn advance_cursor(&self, name: &str, from: Date, to: Date) -> Result<bool, StoreError>;
    /// Appends a run to the runs table.
    fn record_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    /// Rows of `table` for `date`.
    fn count_rows(&self, table: Table, date: Date) -> Result<u64, StoreError>;
    /// All rows of `table` for `date`, ordered by key (for checks and exports).
    fn rows(&self, table: Table, date: Date) -> Result<Vec<Row>, StoreError>;
    /// Cursor, rows per table for the last `dates` dates, the last `runs` runs.
    fn status(&self, dates: usize, runs: usize) -> Result<Status, StoreError>;
}

/// The default `DATABASE_URL`: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./stats.db";

/// Which store a `DATABASE_URL` names (checked without connecting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://path` (or `sqlite::memory:`).
    Sqlite(String),
    /// `mysql://…` (kept whole; the pool parses it).
    MySql(String),
}

impl StoreUrl {
    /// Parses a `DATABASE_URL`. Errors name the problem, never the password.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "DATABASE_URL sqlite:// needs a file path, e.g. sqlite://./stats.db".into(),
                );
            }
            Ok(StoreUrl::Sqlite(path.to_string()))
        } else if url == "sqlite::memory:" {
            Ok(StoreUrl::Sqlite(":memory:".into()))
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let u = url.replacen("mariadb://", "mysql://", 1);
            crate::fetch::mysql::PoolOptions::from_url(&u)
                .map_err(|e| format!("DATABASE_URL is not a usable MySQL URL: {e}"))?;
            Ok(StoreUrl::MySql(u))
        } else {
            let scheme = url.split("://").next().unwrap_or(url);
            let shown = if url.contains("://") {
                format!("{scheme}://…")
            } else {
                "(no scheme)".to_string()
            };
            Err(format!(
                "DATABASE_URL {shown} is not supported: use sqlite://PATH or mysql://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        }
    }
}

/// Opens the store a `DATABASE_URL` names (does not migrate).
pub fn open(url: &str) -> Result<Rc<dyn Store>, StoreError> {
    match StoreUrl::parse(url).map_err(|m| StoreError::new("opening the store", m))? {
        StoreUrl::Sqlite(path) => Ok(Rc::new(sqlite::SqliteStore::open(&path)?)),
        StoreUrl::MySql(u) => Ok(Rc::new(mysql::MySqlStore::open(&u)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_validate() {
        for s in [
            "1970-01-01",
            "2016-08-18",
            "2000-02-29",
            "2024-12-31",
            "1969-12-31",
        ] {
            assert_eq!(Date::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Date::parse("1970-01-02").unwrap().days(), 1);
        assert_eq!(
            Date::parse("2016-08-18").unwrap().succ().to_string(),
            "2016-08-19"
        );
        assert_eq!(
            Date::parse("2016-12-31").unwrap().succ().to_string(),
            "2017-01-01"
        );
        for bad in [
            "2016-02-30",
            "2015-02-29",
            "2016-13-01",
            "2016-8-18",
            "20160818",
            "2016-08-1x",
            "",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad}");
        }
        let mut d = Date::parse("1999-01-01").unwrap();
        for _ in 0..10_000 {
            let n = d.succ();
            assert_eq!(Date::parse(&n.to_string()).unwrap(), n);
            d = n;
        }
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(Decimal::parse("12.50").unwrap().to_string(), "12.5000");
        assert_eq!(Decimal::parse("12").unwrap().units(), 120_000);
        assert_eq!(Decimal::parse(".5").unwrap().to_string(), "0.5000");
        assert_eq!(Decimal::parse("-0.0001").unwrap().to_string(), "-0.0001");
        assert_eq!(
            Decimal::parse("0.1").unwrap().units() * 3,
            Decimal::parse("0.3").unwrap().units()
        );
        for bad in [
            "",
            ".",
            "1.2.3",
            "abc",
            "1e5",
            "1.23456",
            " 1",
            "1,5",
            "-",
            "9999999999999999",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite://./x.db"),
            Ok(StoreUrl::Sqlite("./x.db".into()))
        );
        assert!(StoreUrl::parse("mysql://root@127.0.0.1:3306/stats").is_ok());
        let e = StoreUrl::parse("postgres://u:hunter2@h/db").unwrap_err();
        assert!(e.contains("postgres") && !e.contains("hunter2"), "{e}");
        assert!(StoreUrl::parse("sqlite://").is_err());
    }
}
