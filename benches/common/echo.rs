//! TCP echo over loopback, one module per runtime (shared by `benches/echo.rs` and the
//! `evergreen-bench` report binary).
//!
//! One run: a server on `127.0.0.1:0` echoes whatever it reads; `conns` connections, and on
//! each a client does `trips` round trips of [`MESSAGE`] bytes (`write_all`, then
//! `read_exact`; the server does `read_exact` then `write_all`). Every socket has
//! `TCP_NODELAY`. The clock starts once all connections are established and accepted, just
//! before the client tasks are spawned, and stops when the last client has finished.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes per message, each way.
pub const MESSAGE: usize = 64;

/// The client side of one connection, for the blocking-style runtimes: `trips` × (write 64
/// bytes, read the 64-byte echo back).
pub fn client_loop(mut stream: impl Read + Write, trips: u64) {
    let mut buf = [0u8; MESSAGE];
    for i in 0..trips {
        buf[0] = i as u8;
        stream.write_all(&buf).expect("client write");
        stream.read_exact(&mut buf).expect("client read");
        debug_assert_eq!(buf[0], i as u8);
    }
}

/// The server side of one connection, for the blocking-style runtimes: echoes 64-byte
/// messages until the client closes the connection.
pub fn serve_loop(mut stream: impl Read + Write) {
    let mut buf = [0u8; MESSAGE];
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => stream.write_all(&buf).expect("server write"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
            Err(e) => panic!("server read: {e}"),
        }
    }
}

/// The loopback address every server binds (port chosen by the kernel).
pub const BIND: &str = "127.0.0.1:0";

/// evergreen: everything in greenlets on this thread's hub.
pub mod evergreen_echo {
    use super::*;
    use evergreen::net::{StreamServer, TcpStream};

    /// One run, timed inside a driver greenlet.
    pub fn run(conns: usize, trips: u64) -> Duration {
        evergreen::spawn(move || {
            let server = StreamServer::bind(BIND, |conn: TcpStream, _peer: SocketAddr| {
                conn.set_nodelay(true).expect("server set_nodelay");
                serve_loop(conn);
            })
            .expect("bind evergreen server");
            server.start();
            let addr = server.local_addr().expect("server address");
            let streams: Vec<TcpStream> = (0..conns)
                .map(|_| {
                    let s = TcpStream::connect(addr).expect("connect to evergreen server");
                    s.set_nodelay(true).expect("client set_nodelay");
                    s
                })
                .collect();
            // Let the acceptor take every pending connection before the clock starts.
            while server.accepted() < conns as u64 {
                evergreen::sleep(Duration::from_millis(1));
            }
            let start = Instant::now();
            let clients: Vec<_> = streams
                .into_iter()
                .map(|s| evergreen::spawn(move || client_loop(s, trips)))
                .collect();
            evergreen::joinall(&clients);
            let elapsed = start.elapsed();
            for client in clients {
                client
                    .into_result()
                    .expect("evergreen client greenlet failed");
            }
            let killed = server.stop(Some(Duration::from_secs(10)));
            assert_eq!(killed, 0, "evergreen server handlers did not finish");
            elapsed
        })
        .into_result()
        .expect("evergreen driver greenlet failed")
    }
}

/// evergreen with two hubs: server greenlets on one OS thread, client greenlets on another.
pub mod evergreen_2hubs_echo {
    use super::*;
    use evergreen::net::{TcpListener, TcpStream};

    /// One run, timed by the client hub.
    pub fn run(conns: usize, trips: u64) -> Duration {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let listener = TcpListener::bind(BIND).expect("bind evergreen server");
            addr_tx
                .send(listener.local_addr().expect("server address"))
                .expect("send the address");
            let handlers: Vec<_> = (0..conns)
                .map(|_| {
                    let (conn, _) = listener.accept().expect("accept");
                    conn.set_nodelay(true).expect("server set_nodelay");
                    evergreen::spawn(move || serve_loop(conn))
                })
                .collect();
            // Each handler ends when its client closes the connection.
            evergreen::joinall(&handlers);
            evergreen::hub::destroy();
        });
        let addr: SocketAddr = addr_rx.recv().expect("server address");
        let clients = std::thread::spawn(move || {
            let streams: Vec<TcpStream> = (0..conns)
                .map(|_| {
                    let s = TcpStream::connect(addr).expect("connect");
                    s.set_nodelay(true).expect("client set_nodelay");
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
                g.into_result().expect("evergreen client greenlet failed");
            }
            evergreen::hub::destroy();
            elapsed
        });
        let elapsed = clients.join().expect("client thread");
        server.join().expect("server thread");
        elapsed
    }
}

/// tokio: an acceptor task, a task per server connection and a task per client.
pub mod tokio_echo {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::runtime::Runtime;

    /// A tokio runtime, built once and used for every run.
    pub struct TokioEcho {
        rt: Runtime,
    }

    impl TokioEcho {
        /// `current_thread` (I/O and time drivers enabled).
        pub fn current_thread() -> Self {
            TokioEcho {
                rt: crate::common::tokio_rt::build_runtime(None),
            }
        }

        /// Work-stealing `multi_thread` with `workers` workers.
        pub fn multi_thread(workers: usize) -> Self {
            TokioEcho {
                rt: crate::common::tokio_rt::build_runtime(Some(workers)),
            }
        }

        /// One run, timed inside a driver task.
        pub fn run(&self, conns: usize, trips: u64) -> Duration {
            self.rt.block_on(async move {
                tokio::spawn(drive(conns, trips))
                    .await
                    .expect("tokio driver task panicked")
            })
        }
    }

    async fn drive(conns: usize, trips: u64) -> Duration {
        let listener = TcpListener::bind(BIND).await.expect("bind tokio server");
        let addr = listener.local_addr().expect("server address");
        let server = tokio::spawn(async move {
            let mut handlers = Vec::with_capacity(conns);
            for _ in 0..conns {
                let (conn, _peer) = listener.accept().await.expect("tokio accept");
                conn.set_nodelay(true).expect("server set_nodelay");
                handlers.push(tokio::spawn(serve(conn)));
            }
            handlers
        });
        let mut streams = Vec::with_capacity(conns);
        for _ in 0..conns {
            let s = TcpStream::connect(addr)
                .await
                .expect("connect to tokio server");
            s.set_nodelay(true).expect("client set_nodelay");
            streams.push(s);
        }
        let handlers = server.await.expect("tokio acceptor panicked");
        let start = Instant::now();
        let clients: Vec<_> = streams
            .into_iter()
            .map(|s| tokio::spawn(client(s, trips)))
            .collect();
        for c in clients {
            c.await.expect("tokio client task panicked");
        }
        let elapsed = start.elapsed();
        for h in handlers {
            h.await.expect("tokio server task panicked");
        }
        elapsed
    }

    async fn client(mut stream: TcpStream, trips: u64) {
        let mut buf = [0u8; MESSAGE];
        for i in 0..trips {
            buf[0] = i as u8;
            stream.write_all(&buf).await.expect("client write");
            stream.read_exact(&mut buf).await.expect("client read");
            debug_assert_eq!(buf[0], i as u8);
        }
    }

    async fn serve(mut stream: TcpStream) {
        let mut buf = [0u8; MESSAGE];
        loop {
            match stream.read_exact(&mut buf).await {
                Ok(_) => stream.write_all(&buf).await.expect("server write"),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
                Err(e) => panic!("server read: {e}"),
            }
        }
    }
}

/// may: an acceptor coroutine, a coroutine per server connection and per client. Only in a
/// process of its own (see [`super::may_rt::configure`]).
pub mod may_echo {
    use super::*;
    use may::go;
    use may::net::{TcpListener, TcpStream};

    /// One run, timed inside a driver coroutine.
    pub fn run(conns: usize, trips: u64) -> Duration {
        go!(move || {
            let listener = TcpListener::bind(BIND).expect("bind may server");
            let addr = listener.local_addr().expect("server address");
            let server = go!(move || {
                let mut handlers = Vec::with_capacity(conns);
                for _ in 0..conns {
                    let (conn, _peer) = listener.accept().expect("may accept");
                    conn.set_nodelay(true).expect("server set_nodelay");
                    handlers.push(go!(move || serve_loop(conn)));
                }
                handlers
            });
            let streams: Vec<TcpStream> = (0..conns)
                .map(|_| {
                    let s = TcpStream::connect(addr).expect("connect to may server");
                    s.set_nodelay(true).expect("client set_nodelay");
                    s
                })
                .collect();
            let handlers = server.join().expect("may acceptor panicked");
            let start = Instant::now();
            let clients: Vec<_> = streams
                .into_iter()
                .map(|s| go!(move || client_loop(s, trips)))
                .collect();
            for c in clients {
                c.join().expect("may client coroutine panicked");
            }
            let elapsed = start.elapsed();
            for h in handlers {
                h.join().expect("may server coroutine panicked");
            }
            elapsed
        })
        .join()
        .expect("may driver coroutine panicked")
    }
}

/// Blocking std sockets, an OS thread per connection on each side (plus an acceptor thread).
pub mod std_echo {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    /// One run, timed on the calling thread.
    pub fn run(conns: usize, trips: u64) -> Duration {
        let listener = TcpListener::bind(BIND).expect("bind std server");
        let addr = listener.local_addr().expect("server address");
        let server = thread::spawn(move || {
            (0..conns)
                .map(|_| {
                    let (conn, _peer) = listener.accept().expect("std accept");
                    conn.set_nodelay(true).expect("server set_nodelay");
                    thread::spawn(move || serve_loop(conn))
                })
                .collect::<Vec<_>>()
        });
        let streams: Vec<TcpStream> = (0..conns)
            .map(|_| {
                let s = TcpStream::connect(addr).expect("connect to std server");
                s.set_nodelay(true).expect("client set_nodelay");
                s
            })
            .collect();
        let handlers = server.join().expect("std acceptor panicked");
        let start = Instant::now();
        let clients: Vec<_> = streams
            .into_iter()
            .map(|s| thread::spawn(move || client_loop(s, trips)))
            .collect();
        for c in clients {
            c.join().expect("std client thread panicked");
        }
        let elapsed = start.elapsed();
        for h in handlers {
            h.join().expect("std server thread panicked");
        }
        elapsed
    }
}
