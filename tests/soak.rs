//! Soak test (ignored by default; run it with
//! `cargo test --release --test soak -- --ignored --nocapture`, and set the duration with
//! `EVERGREEN_SOAK_SECS`, 600 by default).
//!
//! One hub serves an echo `StreamServer` while client greenlets connect, talk, time out and
//! are killed at random. Every 10 s it samples the live greenlets, timers, open fds and RSS;
//! at the end it checks that nothing leaked (everything back to its baseline, RSS flat after
//! the warm-up) and that the blocked-hub monitor never saw the hub held for over 100 ms.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use evergreen::net::{StreamServer, TcpStream};
use evergreen::{sleep, spawn, with_timeout, Greenlet, Pool};

/// A small xorshift generator (deterministic from its seed; no dependency).
struct Rng(Cell<u64>);

impl Rng {
    fn below(&self, n: u64) -> u64 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        x % n
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One client: connects, then echoes a few messages of random size, with a random pause
/// between them; some clients run under a short `Timeout` that expires mid-talk.
fn client(addr: std::net::SocketAddr, rng: &Rng, stats: &Stats) {
    let talk = |rounds: u64, pause: u64| -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = vec![0u8; 16 * 1024];
        for r in 0..rounds {
            let n = 1 + (r * 7919 + pause * 31) as usize % buf.len();
            let msg = vec![(r % 251) as u8; n];
            s.write_all(&msg)?;
            s.read_exact(&mut buf[..n])?;
            assert_eq!(&buf[..n], &msg[..], "echo mismatch");
            if pause > 0 {
                sleep(Duration::from_millis(pause));
            }
        }
        Ok(())
    };
    let rounds = 1 + rng.below(20);
    let pause = rng.below(5);
    if rng.below(4) == 0 {
        match with_timeout(Duration::from_millis(1 + rng.below(20)), || {
            talk(rounds, pause)
        }) {
            Ok(r) => stats.count(r.is_ok()),
            Err(_) => stats.timeouts.set(stats.timeouts.get() + 1),
        }
    } else {
        stats.count(talk(rounds, pause).is_ok());
    }
}

#[derive(Default)]
struct Stats {
    ok: Cell<u64>,
    errors: Cell<u64>,
    timeouts: Cell<u64>,
    kills: Cell<u64>,
}

impl Stats {
    fn count(&self, ok: bool) {
        let c = if ok { &self.ok } else { &self.errors };
        c.set(c.get() + 1);
    }
}

#[test]
#[ignore = "a 10-minute soak test: run it with --ignored"]
fn soak_echo_server_with_random_timeouts_and_kills() {
    let secs: u64 = std::env::var("EVERGREEN_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        evergreen::monitor::start(Duration::from_millis(100));
        let base_fds = open_fds();
        let base_live = evergreen::hub::live_count();
        let server = StreamServer::bind(
            "127.0.0.1:0",
            Box::new(|mut s: TcpStream, _| {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }),
        )
        .unwrap();
        server.start();
        let addr = server.local_addr().unwrap();
        let rng = Rc::new(Rng(Cell::new(0x9E37_79B9_7F4A_7C15)));
        let stats = Rc::new(Stats::default());
        let clients = Rc::new(Pool::new(200));
        let live: Rc<RefCell<Vec<Greenlet<()>>>> = Rc::default();
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        // The killer: every 2 ms, kills a random live client.
        let killer = {
            let (rng, stats, live) = (rng.clone(), stats.clone(), live.clone());
            spawn(move || loop {
                sleep(Duration::from_millis(2));
                let mut l = live.borrow_mut();
                l.retain(|g| !g.dead());
                if !l.is_empty() && rng.below(3) == 0 {
                    let i = rng.below(l.len() as u64) as usize;
                    l.swap_remove(i).kill_nowait();
                    stats.kills.set(stats.kills.get() + 1);
                }
            })
        };
        let sample = || {
            (
                start.elapsed().as_secs(),
                evergreen::hub::live_count(),
                evergreen::hub::timer_count(),
                open_fds(),
                rss_kib(),
                stats.ok.get(),
                stats.timeouts.get(),
                stats.kills.get(),
                stats.errors.get(),
            )
        };
        let mut samples = Vec::new();
        let mut next_sample = start;
        while Instant::now() < end {
            if Instant::now() >= next_sample {
                samples.push(sample());
                next_sample += Duration::from_secs(10);
            }
            let (rng2, stats2) = (rng.clone(), stats.clone());
            let g = clients.spawn(move || client(addr, &rng2, &stats2));
            live.borrow_mut().push(g);
        }
        samples.push(sample());
        killer.kill();
        clients.join();
        live.borrow_mut().clear();
        let stopped = server.stop(Some(Duration::from_secs(5)));
        drop(server);
        sleep(Duration::from_millis(50));
        let reports = evergreen::monitor::reports();
        let after = (
            evergreen::hub::live_count(),
            evergreen::hub::timer_count(),
            open_fds(),
        );
        let _ = tx.send(());
        let totals = (
            stats.ok.get(),
            stats.timeouts.get(),
            stats.kills.get(),
            stats.errors.get(),
        );
        (
            samples,
            totals,
            reports,
            after,
            (base_live, base_fds),
            stopped,
        )
    });
    rx.recv_timeout(Duration::from_secs(secs + 120))
        .expect("the soak test hung");
    let (samples, (ok, timeouts, kills, errors), reports, after, (base_live, base_fds), stopped) =
        t.join().unwrap();
    eprintln!(" time  live timers  fds   RSS KiB   talks ok  timeouts    kills  errors");
    for s in &samples {
        eprintln!(
            "{:>4}s {:>5} {:>6} {:>4} {:>9} {:>10} {:>9} {:>8} {:>7}",
            s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7, s.8
        );
    }
    eprintln!(
        "end: ok {ok} timeouts {timeouts} kills {kills} errors {errors}; monitor reports \
         {reports}; server stop killed {stopped} handler(s); after: {after:?} (baseline live \
         {base_live}, fds {base_fds})"
    );
    assert!(ok > 0 && timeouts > 0 && kills > 0);
    assert_eq!(after.0, base_live, "greenlets leaked");
    assert_eq!(after.1, 0, "timers leaked");
    assert_eq!(after.2, base_fds, "fds leaked");
    // RSS flat: after the first fifth (warm-up), it grows by less than 8 MiB.
    assert!(samples.len() >= 3, "run it for at least 20 s");
    let warm = samples[(samples.len() / 5).max(1)].4;
    let last = samples.last().unwrap().4;
    assert!(
        last < warm + 8 * 1024,
        "RSS grew from {warm} KiB to {last} KiB after the warm-up"
    );
    assert_eq!(reports, 0, "the monitor saw the hub held for over 100 ms");
}
