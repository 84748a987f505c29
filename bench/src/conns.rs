//! Scaling with connections: `conns` tasks, each holding an open TCP connection to an echo
//! server in another process and doing `trips` request/response round trips of 64 bytes, on
//! every Rust runtime under comparison (gevent's twin is in `bench/gevent/workloads.py`).
//!
//! The echo server ([`serve`]) is one process for the whole sweep, the same for every client
//! runtime: evergreen `StreamServer`s on [`SERVER_PORTS`] loopback ports (so that many
//! connections do not all share one destination port's ephemeral-port range), a greenlet per
//! connection. The client connects every connection first (so they are all open at once),
//! then starts the clock and spawns a task per connection; the clock stops when the last task
//! has done its round trips. Memory: `VmHWM` at the end minus `VmRSS` before connecting, per
//! task (the task, its stack or future, its socket's user-space state; the kernel's socket
//! buffers are not in RSS).
//!
//! Each connection takes a file descriptor in the client and one in the server:
//! [`nofile_limit`] says how many a process may open, and the harness skips sizes that do not
//! fit.

use std::io::{Read, Write};
use std::time::Instant;

use evergreen_bench::{rss_kib, LoadRun};

use crate::common::echo::{client_loop, serve_loop, MESSAGE};

/// Listening ports of the echo server.
pub const SERVER_PORTS: usize = 4;

/// Environment variable through which the harness tells a client child the server's ports
/// (comma-separated).
pub const PORTS_ENV: &str = "EVG_ECHO_PORTS";

/// The server's ports, from [`PORTS_ENV`].
pub fn ports_from_env() -> Result<Vec<u16>, String> {
    let v = std::env::var(PORTS_ENV).map_err(|_| format!("{PORTS_ENV} is not set"))?;
    let ports: Vec<u16> = v
        .split(',')
        .map(|p| p.trim().parse().map_err(|_| format!("{PORTS_ENV}={v:?}")))
        .collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err(format!("{PORTS_ENV} is empty"));
    }
    Ok(ports)
}

/// `(soft, hard)` limit on open files of this process (`/proc/self/limits`).
pub fn nofile_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| -> Option<u64> {
        match s? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    Some((parse(it.next())?, parse(it.next())?))
}

/// Raises this process's soft limit on open files to its hard limit (children inherit it),
/// with util-linux `prlimit` (no `unsafe` here). Returns the limits after.
pub fn raise_nofile() -> Option<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    nofile_limit()
}

/// The echo server process (`evergreen-bench --echo-server`): prints `PORTS p1,p2,...` and
/// serves until its stdin closes.
pub fn serve() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    evergreen::spawn(|| {
        let servers: Vec<_> = (0..SERVER_PORTS)
            .map(|_| {
                let s = evergreen::net::StreamServer::bind(
                    "127.0.0.1:0",
                    |conn: evergreen::net::TcpStream, _| {
                        let _ = conn.set_nodelay(true);
                        serve_loop(conn);
                    },
                )
                .expect("bind the echo server");
                s.start();
                s
            })
            .collect();
        let ports: Vec<String> = servers
            .iter()
            .map(|s| s.local_addr().expect("bound").port().to_string())
            .collect();
        println!("PORTS {}", ports.join(","));
        let _ = std::io::stdout().flush();
        servers[0].serve_forever();
    })
    .join();
}

/// evergreen: a greenlet per connection.
pub fn evergreen(ports: Vec<u16>, conns: usize, trips: u64) -> LoadRun {
    evergreen::spawn(move || {
        let before = rss_kib().unwrap_or(0);
        let streams: Vec<_> = (0..conns)
            .map(|i| {
                let s = evergreen::net::TcpStream::connect(("127.0.0.1", ports[i % ports.len()]))
                    .expect("connect to the echo server");
                s.set_nodelay(true).expect("set_nodelay");
                s
            })
            .collect();
        let start = Instant::now();
        let gs: Vec<_> = streams
            .into_iter()
            .map(|s| evergreen::spawn(move || client_loop(s, trips)))
            .collect();
        evergreen::joinall(&gs);
        let elapsed = start.elapsed();
        for g in gs {
            g.into_result().expect("client greenlet failed");
        }
        LoadRun::new(elapsed, before)
    })
    .into_result()
    .expect("evergreen connections driver failed")
}

/// tokio (`current_thread` for `None`, `multi_thread` with that many workers otherwise): a
/// task per connection.
pub fn tokio(workers: Option<usize>, ports: Vec<u16>, conns: usize, trips: u64) -> LoadRun {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = crate::common::tokio_rt::build_runtime(workers);
    rt.block_on(async move {
        tokio::spawn(async move {
            let before = rss_kib().unwrap_or(0);
            let mut streams = Vec::with_capacity(conns);
            for i in 0..conns {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", ports[i % ports.len()]))
                    .await
                    .expect("connect to the echo server");
                s.set_nodelay(true).expect("set_nodelay");
                streams.push(s);
            }
            let start = Instant::now();
            let hs: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    tokio::spawn(async move {
                        let mut buf = [0u8; MESSAGE];
                        for i in 0..trips {
                            buf[0] = i as u8;
                            s.write_all(&buf).await.expect("client write");
                            s.read_exact(&mut buf).await.expect("client read");
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await.expect("client task panicked");
            }
            let elapsed = start.elapsed();
            LoadRun::new(elapsed, before)
        })
        .await
        .expect("tokio connections driver panicked")
    })
}

/// may (configure it first): a coroutine per connection.
pub fn may(ports: Vec<u16>, conns: usize, trips: u64) -> LoadRun {
    may::go!(move || {
        let before = rss_kib().unwrap_or(0);
        let streams: Vec<_> = (0..conns)
            .map(|i| {
                let s = may::net::TcpStream::connect(("127.0.0.1", ports[i % ports.len()]))
                    .expect("connect to the echo server");
                s.set_nodelay(true).expect("set_nodelay");
                s
            })
            .collect();
        let start = Instant::now();
        let hs: Vec<_> = streams
            .into_iter()
            .map(|s| may::go!(move || client_loop(s, trips)))
            .collect();
        for h in hs {
            h.join().expect("client coroutine panicked");
        }
        let elapsed = start.elapsed();
        LoadRun::new(elapsed, before)
    })
    .join()
    .expect("may connections driver panicked")
}

/// Round trips per connection at concurrency `conns`: `total / conns`, at least `min`.
pub fn trips_for(conns: u64, total: u64, min: u64) -> u64 {
    (total / conns.max(1)).max(min)
}
