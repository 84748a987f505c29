//! Monkey patching: unmodified blocking code (std::net, std::thread::sleep) made cooperative.
//!
//! Patching is process-wide, so every test here patches (idempotently) before it starts.

mod common;
#[path = "support/fdpass.rs"]
mod fdpass;

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{run, run_virtual};
use evergreen::{joinall, monkey, sleep, spawn, Greenlet};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn nonblocking(fd: i32) -> bool {
    // SAFETY: F_GETFL on a valid fd.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl & libc::O_NONBLOCK != 0
}

#[test]
fn the_hooks_are_linked_into_the_executable() {
    // Fails if evergreen's libc hooks stop being linked (or something else interposes them).
    assert!(monkey::hooks_linked());
    monkey::patch_all();
    assert!(monkey::is_patched() && monkey::is_socket_patched() && monkey::is_time_patched());
}

#[test]
fn std_thread_sleep_overlaps_after_patch_time() {
    monkey::patch_all();
    // Virtual clock: each of the 10 greenlets "sleeps" 100 ms with std::thread::sleep; if the
    // sleeps overlap, exactly 100 ms of hub time pass, not 1 s.
    run_virtual(|| {
        let t0 = evergreen::hub::now();
        let gs: Vec<Greenlet<()>> = (0..10)
            .map(|_| spawn(|| std::thread::sleep(ms(100))))
            .collect();
        joinall(&gs);
        assert_eq!(evergreen::hub::now() - t0, ms(100));
    });
    // And on the real clock, with a generous bound (serial would be 1 s).
    run(|| {
        let start = Instant::now();
        let gs: Vec<Greenlet<()>> = (0..10)
            .map(|_| spawn(|| std::thread::sleep(ms(100))))
            .collect();
        joinall(&gs);
        assert!(start.elapsed() < ms(600), "took {:?}", start.elapsed());
    });
}

#[test]
fn std_sleep_outside_greenlets_still_blocks_the_thread() {
    monkey::patch_all();
    run_virtual(|| {
        // In the root context the hook is a pass-through: real time passes, hub time does not
        // jump.
        let wall = Instant::now();
        let t0 = evergreen::hub::now();
        std::thread::sleep(ms(20));
        assert!(wall.elapsed() >= ms(20));
        assert_eq!(evergreen::hub::now(), t0);
    });
}

/// A server and its clients, all plain `std::net` blocking code, on ONE thread. Without the
/// hooks the first blocking call would block the thread and the test would hang.
#[test]
fn unmodified_std_net_code_runs_concurrently_on_one_thread() {
    monkey::patch_all();
    run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let in_flight = Rc::new(Cell::new(0u32));
        let peak = Rc::new(Cell::new(0u32));
        let n = 20;
        let server = spawn(move || {
            let mut handlers = vec![];
            for _ in 0..n {
                let (mut s, _) = listener.accept().unwrap();
                handlers.push(spawn(move || {
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf).unwrap();
                    std::thread::sleep(ms(50)); // patched: yields
                    s.write_all(&buf).unwrap();
                    assert!(
                        !nonblocking(s.as_raw_fd()),
                        "fds are never left non-blocking"
                    );
                }));
            }
            joinall(&handlers);
            assert!(
                !nonblocking(listener.as_raw_fd()),
                "the listener was restored too"
            );
        });
        let clients: Vec<Greenlet<()>> = (0..n)
            .map(|i| {
                let (inf, pk) = (in_flight.clone(), peak.clone());
                spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    assert!(!nonblocking(s.as_raw_fd()));
                    s.write_all(format!("m{i:04}").as_bytes()).unwrap();
                    inf.set(inf.get() + 1);
                    pk.set(pk.get().max(inf.get()));
                    let mut buf = [0u8; 5];
                    s.read_exact(&mut buf).unwrap();
                    inf.set(inf.get() - 1);
                    assert_eq!(&buf, format!("m{i:04}").as_bytes());
                })
            })
            .collect();
        let start = Instant::now();
        joinall(&clients);
        server.join();
        assert!(peak.get() > 1, "requests overlapped (peak {})", peak.get());
        assert!(
            start.elapsed() < ms(20 * 50 / 2),
            "took {:?}",
            start.elapsed()
        );
    });
}

#[test]
fn so_rcvtimeo_keeps_working_and_other_greenlets_run_meanwhile() {
    monkey::patch_all();
    run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = spawn(move || listener.accept().unwrap().0);
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let _server_side = acceptor.into_result().unwrap();
        c.set_read_timeout(Some(ms(50))).unwrap();
        let ticks = Rc::new(Cell::new(0u32));
        let t2 = ticks.clone();
        let ticker = spawn(move || loop {
            t2.set(t2.get() + 1);
            sleep(ms(2));
        });
        let reader = spawn(move || {
            let mut buf = [0u8; 4];
            let start = Instant::now();
            let e = c.read(&mut buf).unwrap_err();
            (e.kind(), start.elapsed())
        });
        let (kind, took) = reader.into_result().unwrap();
        assert!(
            matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{kind:?}"
        );
        assert!(took >= ms(45), "{took:?}");
        assert!(
            ticks.get() >= 5,
            "the hub was not blocked ({} ticks)",
            ticks.get()
        );
        ticker.kill();
    });
}

#[test]
fn closing_an_fd_wakes_the_greenlet_blocked_in_a_hooked_read() {
    monkey::patch_all();
    run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = spawn(move || listener.accept().unwrap().0);
        let c = std::net::TcpStream::connect(addr).unwrap();
        let _server_side = acceptor.into_result().unwrap();
        let fd = c.as_raw_fd();
        let reader = spawn(move || {
            let mut c = c;
            let mut buf = [0u8; 4];
            let r = c.read(&mut buf);
            std::mem::forget(c); // the fd was closed under it
            r.map_err(|e| e.raw_os_error())
        });
        sleep(Duration::ZERO);
        assert!(!reader.dead());
        // SAFETY: closing the reader's fd from another greenlet (through the hook), as gevent's
        // close() does; the reader forgets its handle afterwards.
        unsafe { libc::close(fd) };
        assert_eq!(reader.into_result().unwrap(), Err(Some(libc::EBADF)));
    });
}

#[test]
fn a_kill_fails_the_hooked_call_and_is_delivered_at_the_next_blocking_point() {
    monkey::patch_all();
    run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dropped = Rc::new(Cell::new(false));
        let seen = Rc::new(Cell::new(None));
        let (d2, s2) = (dropped.clone(), seen.clone());
        let g = spawn(move || {
            struct Flag(Rc<Cell<bool>>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.set(true);
                }
            }
            let _f = Flag(d2);
            // Parks in the accept4 hook; the kill makes it fail (the hooks never unwind
            // through `extern "C"` frames)...
            let e = listener.accept().unwrap_err();
            s2.set(e.raw_os_error());
            // ...and the kill itself lands at the next evergreen blocking point.
            sleep(Duration::from_secs(3600));
            unreachable!("the pending kill unwinds here");
        });
        sleep(Duration::ZERO);
        assert!(!g.dead());
        g.kill();
        assert_eq!(seen.get(), Some(libc::ECANCELED));
        assert!(dropped.get() && g.successful());
        assert_eq!(g.get(), Err(evergreen::Error::Killed));
    });
}

#[test]
fn a_timeout_fails_a_hooked_call_with_etimedout() {
    monkey::patch_all();
    run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // In a greenlet (in the root context the hooks are pass-throughs).
        let g = spawn(move || {
            evergreen::with_timeout(ms(20), || {
                listener.accept().map(|_| ()).map_err(|e| e.raw_os_error())
            })
        });
        // The hooked call failed with ETIMEDOUT; the scope then withdrew its own expiry.
        assert_eq!(g.into_result().unwrap(), Ok(Err(Some(libc::ETIMEDOUT))));
    });
}

#[test]
fn msg_dontwait_is_honoured_by_the_hooks() {
    monkey::patch_all();
    run(|| {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let g = spawn(move || {
            let mut buf = [0u8; 1];
            // SAFETY: recv into a valid one-byte buffer on a valid socket.
            let r = unsafe {
                libc::recv(
                    fd,
                    buf.as_mut_ptr() as _,
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_PEEK,
                )
            };
            (r, std::io::Error::last_os_error().raw_os_error())
        });
        let r = evergreen::with_timeout(Duration::from_secs(5), || g.get());
        assert_eq!(r, Ok(Ok((-1, Some(libc::EAGAIN)))));
        drop(a);
    });
}

#[test]
fn poll_for_either_direction_sees_writability() {
    monkey::patch_all();
    run(|| {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let buf = [0u8; 65536];
        // Fill the socket so it is not writable.
        // SAFETY: sending from a valid buffer on a valid, non-blocking socket.
        while unsafe { libc::send(a.as_raw_fd(), buf.as_ptr() as _, buf.len(), 0) } > 0 {}
        a.set_nonblocking(false).unwrap();
        let fd = a.as_raw_fd();
        let poller = spawn(move || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, 5000) };
            (r, p.revents & libc::POLLOUT != 0)
        });
        let drainer = spawn(move || {
            sleep(ms(20));
            b.set_nonblocking(true).unwrap();
            let mut sink = vec![0u8; 1 << 20];
            while let Ok(k) = b.read(&mut sink) {
                if k == 0 {
                    break;
                }
            }
            b
        });
        let _b = drainer.into_result().unwrap();
        assert_eq!(poller.get(), Ok((1, true)));
        drop(a);
    });
}

// ---- Runtime hardening (issue 7, item 2): a pending interrupt must not make std code spin ----

/// An address where nothing listens (connects are refused at once).
fn refused_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

#[test]
fn kill_timeout_returns_while_the_victim_retries_with_back_off() {
    monkey::patch_all();
    run_virtual(|| {
        let addr = refused_addr();
        let stop = Rc::new(Cell::new(false));
        let tries = Rc::new(Cell::new(0u32));
        let (s2, t2) = (stop.clone(), tries.clone());
        // A reconnect loop in plain std code: it never reaches an evergreen blocking point.
        let victim = spawn(move || {
            while !s2.get() {
                let _ = std::net::TcpStream::connect(addr);
                t2.set(t2.get() + 1);
                std::thread::sleep(ms(20));
            }
        });
        sleep(ms(30));
        let before = tries.get();
        let t0 = evergreen::hub::now();
        assert!(
            !victim.kill_timeout(Duration::from_secs(1)),
            "it ignores the kill"
        );
        assert_eq!(evergreen::hub::now() - t0, Duration::from_secs(1));
        // It kept going at its own pace (a 20 ms back-off, plus the slowed-down failing
        // connects: up to 100 ms each) instead of spinning, and never stopped.
        let during = tries.get() - before;
        assert!((8..=60).contains(&during), "{during} tries in 1 s");
        stop.set(true);
        victim.join();
    });
}

#[test]
fn a_killed_accept_loop_yields_instead_of_spinning() {
    monkey::patch_all();
    run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Rc::new(Cell::new(false));
        let errors = Rc::new(Cell::new(0u32));
        let (s2, e2) = (stop.clone(), errors.clone());
        let victim = spawn(move || {
            for c in listener.incoming() {
                match c {
                    Ok(_) if s2.get() => break,
                    Ok(_) => {}
                    Err(_) => e2.set(e2.get() + 1),
                }
            }
        });
        sleep(ms(10));
        let ticks = Rc::new(Cell::new(0u32));
        let t2 = ticks.clone();
        let other = spawn(move || {
            for _ in 0..20 {
                sleep(ms(5));
                t2.set(t2.get() + 1);
            }
        });
        let t0 = Instant::now();
        assert!(!victim.kill_timeout(ms(300)));
        assert!(t0.elapsed() < Duration::from_secs(5));
        other.join();
        assert_eq!(ticks.get(), 20, "other greenlets keep running");
        // Slowed down to at most one failure per 100 ms after the first few.
        assert!(
            errors.get() < 30,
            "{} failed accepts in 300 ms",
            errors.get()
        );
        stop.set(true);
        let _c = evergreen::net::TcpStream::connect(addr).unwrap();
        assert!(victim.join_timeout(Duration::from_secs(5)));
    });
}

#[test]
fn a_thread_exits_although_a_greenlet_sleeps_in_a_loop_with_std_sleep() {
    monkey::patch_all();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        struct Done(std::sync::mpsc::Sender<()>);
        impl Drop for Done {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        thread_local!(static DONE: std::cell::RefCell<Option<Done>> = const { std::cell::RefCell::new(None) });
        // Registered before the hub exists, so destroyed after the hub's thread-exit teardown
        // (thread locals are destroyed in reverse order of registration).
        DONE.with(|d| *d.borrow_mut() = Some(Done(tx)));
        let g = spawn(|| loop {
            std::thread::sleep(ms(100));
        });
        sleep(ms(1));
        drop(g);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the thread's hub teardown never finished");
}

#[test]
fn a_timeout_around_std_code_that_ignores_it_leaves_the_hub_running() {
    monkey::patch_all();
    run_virtual(|| {
        let stop = Rc::new(Cell::new(false));
        let loops = Rc::new(Cell::new(0u32));
        let (s2, l2) = (stop.clone(), loops.clone());
        let victim = spawn(move || {
            evergreen::with_timeout(ms(100), || {
                while !s2.get() {
                    let _ = std::path::Path::new("/").exists();
                    l2.set(l2.get() + 1);
                    std::thread::sleep(ms(10));
                }
            })
        });
        sleep(ms(500));
        // 10 ms per turn, before and after the timeout fired (one sleep was cut short).
        assert!(
            (49..=52).contains(&loops.get()),
            "{} turns in 500 ms",
            loops.get()
        );
        stop.set(true);
        victim.join();
    });
}

// ---- Runtime hardening (issue 7): hook semantics ---------------------------------------------

/// Item 12: a plain thread blocked in `accept` on a clone of a listener that a greenlet also
/// accepts on never sees `WouldBlock` (the hook's temporary `O_NONBLOCK` is shared by clones).
#[test]
fn a_plain_thread_accepting_on_a_clone_never_sees_would_block() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    monkey::patch_all();
    run(|| {
        const N: usize = 2000;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clone = listener.try_clone().unwrap();
        let total = Arc::new(AtomicUsize::new(0));
        let would_block = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t2, w2, s2) = (total.clone(), would_block.clone(), stop.clone());
        let thread_acceptor = std::thread::spawn(move || loop {
            match clone.accept() {
                Ok(_) if s2.load(SeqCst) => break,
                Ok(_) => {
                    t2.fetch_add(1, SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    w2.fetch_add(1, SeqCst);
                }
                Err(e) => panic!("accept in the plain thread: {e}"),
            }
        });
        let t3 = total.clone();
        let green_acceptor = spawn(move || {
            while let Ok(_c) = listener.accept() {
                t3.fetch_add(1, SeqCst);
            }
        });
        let clients = std::thread::spawn(move || {
            for _ in 0..N {
                drop(std::net::TcpStream::connect(addr).unwrap());
            }
        });
        // Wait (cooperatively: the acceptor greenlet runs meanwhile) until all are accepted.
        let t0 = Instant::now();
        while total.load(SeqCst) < N {
            assert!(t0.elapsed() < Duration::from_secs(20), "accepts stalled");
            sleep(ms(2));
        }
        clients.join().unwrap();
        green_acceptor.kill();
        stop.store(true, SeqCst);
        drop(std::net::TcpStream::connect(addr).unwrap());
        thread_acceptor.join().unwrap();
        assert_eq!(
            would_block.load(SeqCst),
            0,
            "WouldBlock in a blocking accept"
        );
    });
}

/// Item 13: a hooked `connect` to a Unix listener whose queue is full waits for room, as the
/// blocking call does, instead of failing with `EAGAIN`.
#[test]
fn a_unix_connect_waits_while_the_listen_queue_is_full() {
    use std::os::unix::net::{UnixListener, UnixStream};
    monkey::patch_all();
    run_virtual(|| {
        let dir = std::env::temp_dir().join(format!("evergreen-unix-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("full-queue.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen(2) again on our own listening socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        // Fill the queue: a backlog of 0 queues one connection.
        let p0 = path.clone();
        let early = spawn(move || UnixStream::connect(p0))
            .into_result()
            .unwrap()
            .expect("the first connection is queued");
        let p = path.clone();
        let late = spawn(move || UnixStream::connect(p));
        sleep(ms(20));
        assert!(!late.ready(), "the late connect waits for room");
        let _a = listener.accept().unwrap(); // root: makes room
        let c = late.into_result().unwrap();
        assert!(c.is_ok(), "late connect: {c:?}");
        drop(early);
        let _ = std::fs::remove_file(&path);
    });
}

/// Item 14: under the hooks, `recv(MSG_WAITALL)` waits for the whole buffer, and a blocking
/// write of 4 MiB to a stream socket writes all of it, as the kernel's calls do.
#[test]
fn msg_waitall_and_big_blocking_writes_transfer_everything() {
    use std::os::unix::net::UnixStream;
    monkey::patch_all();
    run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let writer = spawn(move || {
            let mut a = a;
            for i in 0..10u8 {
                a.write_all(&[i; 100]).unwrap();
                sleep(ms(1));
            }
            a
        });
        let mut buf = vec![0u8; 1000];
        let fd = b.as_raw_fd();
        let reader = spawn(move || {
            // SAFETY: `buf` is valid for its length; `fd` stays open (b lives in this scope).
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_WAITALL) };
            (n, buf)
        });
        let (n, got) = reader.get().unwrap();
        assert_eq!(n, 1000, "MSG_WAITALL returned a partial count");
        assert_eq!(got[999], 9);
        let mut a = writer.into_result().unwrap();

        let big = vec![7u8; 4 << 20];
        let drain = spawn(move || {
            let mut b = b;
            let mut total = 0;
            let mut chunk = vec![0u8; 64 << 10];
            while total < (4 << 20) {
                total += b.read(&mut chunk).unwrap();
            }
            total
        });
        let n = spawn(move || a.write(&big).unwrap()); // one write(2) call
        assert_eq!(
            n.get(),
            Ok(4 << 20),
            "a blocking write returned a partial count"
        );
        assert_eq!(drain.get(), Ok(4 << 20));
    });
}

/// Item 15: a second greenlet reading the same fd through the hooks gets `EALREADY` (another
/// operation is in progress), not `EBADF` (which says the fd is invalid).
#[test]
fn a_second_reader_of_one_fd_gets_ealready() {
    use std::os::unix::net::UnixStream;
    monkey::patch_all();
    run(|| {
        let (a, b) = UnixStream::pair().unwrap();
        let b = Rc::new(b);
        let b1 = b.clone();
        let first = spawn(move || {
            let mut buf = [0u8; 4];
            (&*b1).read(&mut buf).map(|n| buf[..n].to_vec())
        });
        sleep(Duration::ZERO);
        let mut buf = [0u8; 4];
        let second = spawn(move || (&*b).read(&mut buf).map_err(|e| e.raw_os_error()));
        assert_eq!(second.get().unwrap(), Err(Some(libc::EALREADY)));
        (&a).write_all(b"ok").unwrap();
        assert_eq!(first.into_result().unwrap().unwrap(), b"ok".to_vec());
    });
}

/// Item 17: the hooked `poll` on several fds waits on the reactor for all of them (it used to
/// sleep and re-check in a loop), and wakes for whichever becomes ready.
#[test]
fn poll_on_two_fds_waits_on_both_and_wakes_for_either() {
    use std::os::unix::net::UnixStream;
    monkey::patch_all();
    run(|| {
        let (a1, b1) = UnixStream::pair().unwrap();
        let (a2, b2) = UnixStream::pair().unwrap();
        let (f1, f2) = (b1.as_raw_fd(), b2.as_raw_fd());
        let poller = evergreen::Builder::new().name("poller").spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: f1,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: f2,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 5000) };
            (n, fds[0].revents, fds[1].revents)
        });
        sleep(ms(5));
        let info = evergreen::debug::run_info();
        let p = info
            .iter()
            .find(|i| i.name.as_deref() == Some("poller"))
            .unwrap();
        assert_eq!(p.state, "parked");
        assert_eq!(
            p.waiting_on, "poll (patched)",
            "it waits on the fds, not in a sleep loop"
        );
        (&a2).write_all(b"!").unwrap();
        let (n, r1, r2) = poller.get().unwrap();
        assert_eq!((n, r1, r2 & libc::POLLIN), (1, 0, libc::POLLIN));
        drop((a1, b1, b2));
    });
}

/// Set in the child process whose stdout is a socket (item 8).
const STDOUT_CHILD: &str = "EVERGREEN_TEST_STDOUT_SOCKET_CHILD";

/// The child side of [`printing_from_greenlets_with_stdout_on_a_socket_is_safe`].
#[test]
fn stdout_socket_child() {
    use std::os::unix::net::UnixStream;
    if std::env::var_os(STDOUT_CHILD).is_none() {
        return;
    }
    monkey::patch_all();
    let (a, b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = b;
        let mut n = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k,
            }
        }
    });
    // SAFETY: replaces this child's fd 1 with our socket (dup2 is hooked: the reactor forgets
    // the old fd 1 first).
    assert_eq!(unsafe { libc::dup2(a.as_raw_fd(), 1) }, 1);
    drop(a);
    run(|| {
        let g1 = spawn(|| std::io::stdout().write_all(&vec![b'x'; 1 << 20]).unwrap());
        let g2 = spawn(|| writeln!(std::io::stdout(), "from the second greenlet").unwrap());
        g1.join();
        g2.join();
        assert!(
            g1.successful() && g2.successful(),
            "{:?} {:?}",
            g1.exception(),
            g2.exception()
        );
    });
    let devnull = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: closes our socket at fd 1 by replacing it, so the reader sees the end.
    assert_eq!(unsafe { libc::dup2(devnull.as_raw_fd(), 1) }, 1);
    let n = reader.join().unwrap();
    eprintln!("child ok: {n} bytes");
}

/// Item 8: with stdout on a socket, a greenlet parked in a write to it must not make another
/// greenlet's print panic inside std's re-entrant stdout lock.
#[test]
fn printing_from_greenlets_with_stdout_on_a_socket_is_safe() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "stdout_socket_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STDOUT_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stderr}",
        out.status
    );
    let expected = (1 << 20) + "from the second greenlet\n".len();
    assert!(
        stderr.contains(&format!("child ok: {expected} bytes")),
        "{stderr}"
    );
}

/// Issue 8: `monkey::original` (gevent's `get_original`) makes hooked calls block for real.
#[test]
fn original_calls_block_the_thread_even_in_a_greenlet() {
    monkey::patch_all();
    run(|| {
        let ticks = Rc::new(Cell::new(0u32));
        let t2 = ticks.clone();
        let ticker = spawn(move || loop {
            t2.set(t2.get() + 1);
            sleep(Duration::ZERO);
        });
        let g = spawn(|| {
            assert!(!monkey::in_original());
            monkey::original(|| {
                assert!(monkey::in_original());
                std::thread::sleep(ms(30)); // the real nanosleep: nobody else runs
            });
            assert!(!monkey::in_original());
        });
        let before = ticks.get();
        let t0 = Instant::now();
        g.join();
        assert!(t0.elapsed() >= ms(30));
        // Cooperative, the ticker would have run thousands of times in 30 ms.
        assert!(
            ticks.get() - before <= 5,
            "the ticker ran {} times while the thread was blocked",
            ticks.get() - before
        );
        ticker.kill();
    });
}

/// Reads one byte from `s` in a new greenlet, giving it 2 s: `Some(result)`, or `None` if the
/// read was still waiting then (it is killed).
fn read_in_greenlet(s: &Rc<std::os::unix::net::UnixStream>) -> Option<Result<usize, ErrorKind>> {
    let s = s.clone();
    let g = spawn(move || {
        let mut buf = [0u8; 1];
        (&*s).read(&mut buf).map_err(|e| e.kind())
    });
    match evergreen::with_timeout(Duration::from_secs(2), || g.get()) {
        Ok(Ok(r)) => Some(r),
        _ => {
            g.kill();
            None
        }
    }
}

/// Writes one byte to `s` from a greenlet after 10 ms.
fn write_later(s: &Rc<std::os::unix::net::UnixStream>) -> Greenlet<()> {
    let s = s.clone();
    spawn(move || {
        sleep(ms(10));
        (&*s).write_all(b"x").unwrap();
    })
}

#[test]
fn the_hooks_see_flags_and_timeouts_changed_after_they_cached_them() {
    // A wait caches the fd's O_NONBLOCK and timeouts; every way to change them through libc
    // (std's ioctl(FIONBIO), fcntl(F_SETFL) on the fd or on a clone sharing its description,
    // setsockopt, dup2 over the fd number) must be seen by the next hooked call.
    monkey::patch_all();
    run(|| {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Rc::new(a), Rc::new(b));
        let fd = a.as_raw_fd();
        // A blocking socket: the read waits (cooperatively) for the byte.
        let w = write_later(&b);
        assert_eq!(read_in_greenlet(&a), Some(Ok(1)));
        w.join();
        // std's set_nonblocking (ioctl FIONBIO): the next read fails at once.
        a.set_nonblocking(true).unwrap();
        assert_eq!(read_in_greenlet(&a), Some(Err(ErrorKind::WouldBlock)));
        // Blocking again through fcntl(F_SETFL): the read waits again.
        // SAFETY: F_GETFL/F_SETFL on a valid fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK), 0);
        }
        let w = write_later(&b);
        assert_eq!(read_in_greenlet(&a), Some(Ok(1)));
        w.join();
        // A clone (another fd, the same open file description) made non-blocking: the
        // original's flags changed too.
        let clone = a.try_clone().unwrap();
        clone.set_nonblocking(true).unwrap();
        assert!(nonblocking(fd));
        assert_eq!(read_in_greenlet(&a), Some(Err(ErrorKind::WouldBlock)));
        clone.set_nonblocking(false).unwrap();
        let w = write_later(&b);
        assert_eq!(read_in_greenlet(&a), Some(Ok(1)));
        w.join();
        // A read timeout set after the cache learned "none": honoured.
        a.set_read_timeout(Some(ms(30))).unwrap();
        let start = Instant::now();
        let r = read_in_greenlet(&a);
        assert!(
            matches!(r, Some(Err(ErrorKind::WouldBlock | ErrorKind::TimedOut))),
            "{r:?}"
        );
        assert!(start.elapsed() >= ms(25), "{:?}", start.elapsed());
        a.set_read_timeout(None).unwrap();
        let w = write_later(&b);
        assert_eq!(read_in_greenlet(&a), Some(Ok(1)));
        w.join();
        // dup2 puts a non-blocking socket at the same fd number: that one's flags count.
        let (c, _d) = UnixStream::pair().unwrap();
        c.set_nonblocking(true).unwrap();
        // SAFETY: both fds are valid; `fd` now names `c`'s description (`a` still owns the
        // number and closes it at the end).
        assert_eq!(unsafe { libc::dup2(c.as_raw_fd(), fd) }, fd);
        assert_eq!(read_in_greenlet(&a), Some(Err(ErrorKind::WouldBlock)));
    });
}

/// A connected loopback pair of std TCP streams (client, server), made through the hooks (the
/// drained-queue rule is for TCP only).
fn std_tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let server = listener.accept().unwrap().0;
    (client, server)
}

/// Spawns a greenlet that reads from `s` with a 64-byte buffer until the end of stream and
/// returns the size of each read, the final 0 included.
fn read_to_end_in_greenlet(s: &Rc<std::net::TcpStream>) -> Greenlet<Vec<usize>> {
    let s = s.clone();
    spawn(move || {
        let mut sizes = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = (&*s).read(&mut buf).unwrap();
            sizes.push(n);
            if n == 0 {
                return sizes;
            }
        }
    })
}

#[test]
fn a_short_read_followed_by_the_end_of_stream_returns_zero_without_waiting() {
    // A short read tells the hooks the receive queue is empty, so the next read waits for an
    // event before trying. When the last bytes and the end of stream arrive together, their
    // one edge is seen before the short read: the read that follows must find the end of
    // stream, not wait for an edge that never comes.
    monkey::patch_all();
    run(|| {
        let (b, a) = std_tcp_pair();
        let (a, b) = (Rc::new(a), Rc::new(b));
        // The reader starts first: its read finds nothing and waits (registering the fd).
        let reader = read_to_end_in_greenlet(&a);
        evergreen::sleep(Duration::ZERO);
        // Bytes and end of stream in one go, before the hub polls again.
        (&*b).write_all(b"hello").unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let r = evergreen::with_timeout(Duration::from_secs(2), || reader.get());
        assert_eq!(r.ok().map(|r| r.unwrap()), Some(vec![5, 0]));
    });
}

#[test]
fn a_peek_does_not_hide_the_bytes_it_saw_from_the_next_read() {
    // A short MSG_PEEK leaves the bytes queued: it must not mark the queue empty.
    monkey::patch_all();
    run(|| {
        let (b, a) = std_tcp_pair();
        let (a, b) = (Rc::new(a), Rc::new(b));
        let a2 = a.clone();
        let reader = spawn(move || {
            let mut buf = [0u8; 64];
            let fd = a2.as_raw_fd();
            // SAFETY: recv(2) into a live buffer of its length (through the hook).
            let peeked =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) }
                    as usize;
            let read = (&*a2).read(&mut buf).unwrap();
            (peeked, read)
        });
        evergreen::sleep(Duration::ZERO);
        (&*b).write_all(b"abc").unwrap();
        let r = evergreen::with_timeout(Duration::from_secs(2), || reader.get());
        assert_eq!(r.ok().map(|r| r.unwrap()), Some((3, 3)));
    });
}

#[test]
fn request_response_rounds_over_hooked_blocking_sockets_lose_nothing() {
    // The pattern the drained-queue shortcut serves (a client sends, then reads a response that
    // arrives in pieces of every size, some filling the reader's buffer exactly): every byte
    // arrives, in order, and no read waits for an edge already consumed.
    monkey::patch_all();
    run(|| {
        let (client, server) = std_tcp_pair();
        // The server answers in two small writes: without this, Nagle holds the second one
        // until the delayed ACK of the first.
        server.set_nodelay(true).unwrap();
        let (client, server) = (Rc::new(client), Rc::new(server));
        let rounds = 300usize;
        let srv = server.clone();
        let server_g = spawn(move || {
            let mut req = [0u8; 2];
            for _ in 0..rounds {
                (&*srv).read_exact(&mut req).unwrap();
                let len = u16::from_le_bytes(req) as usize;
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                // Two pieces with a switch between them: the reader sees the first alone.
                let cut = len / 3;
                (&*srv).write_all(&body[..cut]).unwrap();
                evergreen::sleep(Duration::ZERO);
                (&*srv).write_all(&body[cut..]).unwrap();
            }
        });
        let cl = client.clone();
        let client_g = spawn(move || {
            let mut buf = [0u8; 64];
            let mut total = 0usize;
            for round in 0..rounds {
                let len = 1 + (round * 37) % 300;
                (&*cl).write_all(&(len as u16).to_le_bytes()).unwrap();
                let mut got = Vec::with_capacity(len);
                while got.len() < len {
                    let want = (len - got.len()).min(buf.len());
                    let n = (&*cl).read(&mut buf[..want]).unwrap();
                    assert!(n > 0, "end of stream in round {round}");
                    got.extend_from_slice(&buf[..n]);
                }
                let expect: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                assert_eq!(got, expect, "round {round}");
                total += len;
            }
            total
        });
        let t = evergreen::with_timeout(Duration::from_secs(20), || client_g.get());
        let total = t.expect("no read waited forever").unwrap();
        assert_eq!(
            total,
            (0..rounds).map(|r| 1 + (r * 37) % 300).sum::<usize>()
        );
        server_g.join();
    });
}

#[test]
fn a_hooked_read_stopped_by_tcp_urgent_data_is_not_taken_for_an_empty_queue() {
    // recv stops at the urgent mark: "xy" comes back short with "tail" queued behind it, all
    // under one edge. The urgent data's EPOLLPRI turns the drained-queue rule off for the fd.
    monkey::patch_all();
    run(|| {
        let (client, server) = std_tcp_pair();
        (&client).write_all(b"xy").unwrap();
        // SAFETY: send(2) of one byte from a valid buffer on our own open socket.
        let r = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(r, 1);
        (&client).write_all(b"tail").unwrap();
        // The hooks make a read cooperative only in a greenlet (not in the root context).
        let reader = spawn(move || {
            // The hub sees the socket readable: the edge of everything written is processed.
            evergreen::wait_read(server.as_raw_fd(), Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            let first = (&server).read(&mut buf).unwrap();
            let r = evergreen::with_timeout(Duration::from_secs(2), || (&server).read(&mut buf));
            (first, r.ok().map(|r| r.unwrap()), buf[..4].to_vec())
        });
        let (first, next, tail) = reader.get().unwrap();
        assert_eq!(first, 2);
        assert_eq!(next, Some(4), "the next read hung");
        assert_eq!(tail, b"tail");
    });
}

#[test]
fn a_hooked_unix_read_stopped_by_passed_fds_is_not_taken_for_an_empty_queue() {
    // A Unix stream read stops after a message that carries fds: "a" comes back short with
    // "b" queued. Hooked Unix stream sockets always try the read first.
    monkey::patch_all();
    run(|| {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        fdpass::send_byte_with_fd(b.as_raw_fd(), b'a');
        (&b).write_all(b"b").unwrap();
        // The hooks make a read cooperative only in a greenlet (not in the root context).
        let reader = spawn(move || {
            evergreen::wait_read(a.as_raw_fd(), Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            let first = (&a).read(&mut buf).unwrap();
            let r = evergreen::with_timeout(Duration::from_secs(2), || (&a).read(&mut buf));
            (first, r.ok().map(|r| r.unwrap()), buf[0])
        });
        let (first, next, byte) = reader.get().unwrap();
        assert_eq!(first, 1);
        assert_eq!(next, Some(1), "the next read hung");
        assert_eq!(byte, b'b');
        drop(b);
    });
}
