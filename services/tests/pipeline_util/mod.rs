//! Helpers for the pipeline's tests: temp dirs, a MariaDB database per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!("{tag}_{}_{n}_{t}", std::process::id())
}

/// A directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("evg_pipeline_{}", unique(tag)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A MariaDB database of the test's own, dropped at the end (plain blocking `mysql` calls from
/// outside any greenlet, on a connection of its own).
pub struct MySqlDb {
    pub name: String,
}

fn admin() -> mysql::Conn {
    let o = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(3306)
        .user(Some("root"))
        .prefer_socket(false);
    mysql::Conn::new(o).expect("MariaDB on 127.0.0.1:3306 (root, no password)")
}

impl MySqlDb {
    pub fn new(tag: &str) -> MySqlDb {
        use mysql::prelude::Queryable;
        let name = format!("evg_pl_{}", unique(tag));
        admin()
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .unwrap();
        MySqlDb { name }
    }
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{}", self.name)
    }
    /// Runs a statement on an admin connection (blocking; call outside greenlets or accept it).
    pub fn admin_query<T: mysql::prelude::FromRow>(sql: &str) -> Vec<T> {
        use mysql::prelude::Queryable;
        admin().query(sql).unwrap()
    }
}

impl Drop for MySqlDb {
    fn drop(&mut self) {
        use mysql::prelude::Queryable;
        let _ = admin().query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
    }
}
