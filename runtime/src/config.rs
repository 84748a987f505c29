//! Typed runtime settings with `EVERGREEN_*` environment overrides (gevent's `_config.py`).
//!
//! Every setting has a documented default, and is read from the environment exactly once per
//! thread, when that thread's hub is created. A setting that cannot be parsed is reported
//! through `log::warn!` naming the variable and the bad value, and the default is used; it
//! never panics.
//!
//! | setting | variable | default |
//! |---|---|---|
//! | [`Config::stack_size`] | `EVERGREEN_STACK_SIZE` (bytes, `k`/`m` suffix allowed) | 256 KiB |
//! | [`Config::stack_pool_max`] | `EVERGREEN_STACK_POOL_MAX` | 1024 |
//! | [`Config::event_interval`] | `EVERGREEN_EVENT_INTERVAL` | 61 |
//! | [`Config::guard_mode`] | `EVERGREEN_GUARD` (`auto`, `madvise`, `mprotect`, `none`) | `auto` |
//! | [`Config::monitor_threshold`] | `EVERGREEN_MONITOR_THRESHOLD_MS` | 100 ms |
//! | [`Config::monitor`] | `EVERGREEN_MONITOR` (`1`/`true`) | off |
//! | [`Config::virtual_clock`] | `EVERGREEN_CLOCK` (`real`, `virtual`) | real |
//! | [`Config::block_cache`] | `EVERGREEN_BLOCK_CACHE` (`1`/`0`) | on |
//! | [`Config::listen_backlog`] | `EVERGREEN_LISTEN_BACKLOG` | 1024 |
//!
//! A program can also set a configuration before the hub of a thread is created with
//! [`set_config`]; the hub of that thread then uses it instead of the environment.

use std::cell::RefCell;
use std::time::Duration;

/// How the guard page below every greenlet stack is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    /// `madvise(MADV_GUARD_INSTALL)` where the kernel has it (Linux ≥ 6.13), else `mprotect`.
    Auto,
    /// Only `madvise(MADV_GUARD_INSTALL)`: guard pages inside one mapping per slab, so the
    /// number of live greenlets is not limited by `vm.max_map_count`.
    Madvise,
    /// `mprotect(PROT_NONE)` per stack: two memory mappings per live stack, so Linux's default
    /// `vm.max_map_count` (65530) caps this mode at about 32,000 live greenlets.
    Mprotect,
    /// No guard pages (dense slab). An overflow is detected after the fact by a canary word at
    /// the bottom of the stack, checked every time the greenlet switches out, and aborts the
    /// process with a message; an overflow that skips the canary can corrupt memory. Only for
    /// systems where neither guard mode can be used.
    None,
}

/// The runtime's settings. See the [module docs](self) for the environment variables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Usable size of a greenlet stack in bytes, excluding its guard page. Rounded up to the
    /// page size. Memory is committed lazily, so a large value costs address space, not RAM.
    pub stack_size: usize,
    /// How many finished stacks (of the default size) the hub keeps for reuse.
    pub stack_pool_max: usize,
    /// Fairness: the hub polls I/O and fires due timers after at most this many greenlet
    /// switches or callbacks, even when the run queue never empties (the value of tokio's
    /// `event_interval`, 61, is used by default).
    pub event_interval: u32,
    /// How stack guard pages are installed.
    pub guard_mode: GuardMode,
    /// Whether the blocked-hub monitor thread is started with the hub.
    pub monitor: bool,
    /// How long one greenlet may hold the hub before the monitor reports it.
    pub monitor_threshold: Duration,
    /// Start the hub with a virtual clock (tests): time jumps to the next timer whenever the
    /// hub would otherwise block.
    pub virtual_clock: bool,
    /// Keep freed greenlet blocks for reuse (see the `greenlet` module docs). Turn it off to
    /// give every freed block back to the allocator at once, so that a memory checker
    /// (valgrind, a sanitizer) sees a use after free of a greenlet as one.
    pub block_cache: bool,
    /// The listen backlog of [`TcpListener::bind`](crate::net::TcpListener::bind),
    /// [`UnixListener::bind`](crate::net::UnixListener::bind) and so of
    /// [`StreamServer`](crate::net::StreamServer): how many connections the kernel queues
    /// before the server accepts them (capped by `net.core.somaxconn`). std and mio use 128,
    /// which a burst of a few hundred local clients overflows (each then pays a 1 s SYN
    /// retransmit); 1024 is tokio's default.
    pub listen_backlog: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stack_size: 256 * 1024,
            stack_pool_max: 1024,
            event_interval: 61,
            guard_mode: GuardMode::Auto,
            monitor: false,
            monitor_threshold: Duration::from_millis(100),
            virtual_clock: false,
            block_cache: true,
            listen_backlog: 1024,
        }
    }
}

thread_local! {
    static OVERRIDE: RefCell<Option<Config>> = const { RefCell::new(None) };
}

/// Sets the configuration the current thread's hub will be created with.
///
/// Returns `false` (and changes nothing) if this thread's hub already exists.
pub fn set_config(config: Config) -> bool {
    if crate::hub::exists() {
        return false;
    }
    OVERRIDE.with(|o| *o.borrow_mut() = Some(config));
    true
}

/// The configuration a hub created now on this thread would use.
pub(crate) fn current() -> Config {
    OVERRIDE
        .with(|o| o.borrow().clone())
        .unwrap_or_else(Config::from_env)
}

impl Config {
    /// Builds a configuration from the defaults and the `EVERGREEN_*` environment variables.
    pub fn from_env() -> Config {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds a configuration from the defaults and a variable lookup (testable form of
    /// [`Config::from_env`]).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Config {
        let mut c = Config::default();
        if let Some(v) = get("EVERGREEN_STACK_SIZE") {
            match parse_size(&v) {
                Some(n) if n >= 16 * 1024 => c.stack_size = n,
                _ => bad(
                    "EVERGREEN_STACK_SIZE",
                    &v,
                    "a size of at least 16k, e.g. 262144 or 256k",
                ),
            }
        }
        if let Some(v) = get("EVERGREEN_STACK_POOL_MAX") {
            match v.trim().parse() {
                Ok(n) => c.stack_pool_max = n,
                Err(_) => bad("EVERGREEN_STACK_POOL_MAX", &v, "a non-negative integer"),
            }
        }
        if let Some(v) = get("EVERGREEN_EVENT_INTERVAL") {
            match v.trim().parse() {
                Ok(n) if n >= 1 => c.event_interval = n,
                _ => bad("EVERGREEN_EVENT_INTERVAL", &v, "an integer >= 1"),
            }
        }
        if let Some(v) = get("EVERGREEN_GUARD") {
            match v.trim().to_ascii_lowercase().as_str() {
                "auto" => c.guard_mode = GuardMode::Auto,
                "madvise" => c.guard_mode = GuardMode::Madvise,
                "mprotect" => c.guard_mode = GuardMode::Mprotect,
                "none" => c.guard_mode = GuardMode::None,
                _ => bad(
                    "EVERGREEN_GUARD",
                    &v,
                    "one of auto, madvise, mprotect, none",
                ),
            }
        }
        if let Some(v) = get("EVERGREEN_MONITOR") {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => c.monitor = true,
                "0" | "false" | "no" | "off" | "" => c.monitor = false,
                _ => bad("EVERGREEN_MONITOR", &v, "1 or 0"),
            }
        }
        if let Some(v) = get("EVERGREEN_MONITOR_THRESHOLD_MS") {
            match v.trim().parse::<u64>() {
                Ok(n) if n >= 1 => c.monitor_threshold = Duration::from_millis(n),
                _ => bad("EVERGREEN_MONITOR_THRESHOLD_MS", &v, "milliseconds >= 1"),
            }
        }
        if let Some(v) = get("EVERGREEN_BLOCK_CACHE") {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => c.block_cache = true,
                "0" | "false" | "no" | "off" => c.block_cache = false,
                _ => bad("EVERGREEN_BLOCK_CACHE", &v, "1 or 0"),
            }
        }
        if let Some(v) = get("EVERGREEN_LISTEN_BACKLOG") {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=i32::MAX as u32).contains(&n) => c.listen_backlog = n,
                _ => bad("EVERGREEN_LISTEN_BACKLOG", &v, "an integer >= 1"),
            }
        }
        if let Some(v) = get("EVERGREEN_CLOCK") {
            match v.trim().to_ascii_lowercase().as_str() {
                "real" => c.virtual_clock = false,
                "virtual" => c.virtual_clock = true,
                _ => bad("EVERGREEN_CLOCK", &v, "real or virtual"),
            }
        }
        c
    }
}

fn bad(var: &str, value: &str, expected: &str) {
    log::warn!("evergreen: ignoring {var}={value:?}: expected {expected}; using the default");
}

/// Parses `4096`, `64k`, `1m` (binary multiples).
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = if let Some(n) = s.strip_suffix('k') {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 1024 * 1024)
    } else {
        (s.as_str(), 1)
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_are_parsed_and_bad_values_fall_back() {
        let c = Config::from_lookup(|k| match k {
            "EVERGREEN_STACK_SIZE" => Some("64k".into()),
            "EVERGREEN_EVENT_INTERVAL" => Some("0".into()),
            "EVERGREEN_GUARD" => Some("MPROTECT".into()),
            "EVERGREEN_CLOCK" => Some("virtual".into()),
            "EVERGREEN_MONITOR_THRESHOLD_MS" => Some("oops".into()),
            "EVERGREEN_BLOCK_CACHE" => Some("off".into()),
            "EVERGREEN_LISTEN_BACKLOG" => Some("4096".into()),
            _ => None,
        });
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(Config::default().listen_backlog, 1024);
        assert!(!c.block_cache);
        assert_eq!(c.stack_size, 64 * 1024);
        assert_eq!(c.event_interval, 61, "0 is rejected, default kept");
        assert_eq!(c.guard_mode, GuardMode::Mprotect);
        assert!(c.virtual_clock);
        assert_eq!(c.monitor_threshold, Duration::from_millis(100));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size(" 4096 "), Some(4096));
        assert_eq!(parse_size("x"), None);
    }
}
