//! HTTP GET throughput: 100 concurrent requesters against one local keep-alive HTTP/1.1 server
//! running in a separate process (the same server for every client), for
//!
//! * evergreen: `evergreen_services::fetch::http::Client`, 100 greenlets on one hub;
//! * reqwest on tokio current-thread, 100 tasks;
//! * reqwest on tokio multi-thread (2 workers: this machine's cores), 100 tasks;
//! * ureq on 100 OS threads sharing one agent.
//!
//! Each client keeps up to 100 connections to the server. A run sends `REQUESTS` GETs and
//! reads each JSON body (about 300 bytes); it is timed from the first request to the last
//! response. Runs are interleaved across clients (round-robin), `ROUNDS` rounds, and the
//! median is reported, with the client process's CPU time per request (user + system, from
//! `/proc/self/stat`; the server runs in another process so it is not counted).
//!
//! The server is this same executable re-run with `EVG_FETCH_SERVER=1`: a tokio
//! current-thread server with a hand-written keep-alive loop (httparse), so it costs less
//! per request than any client and stays out of the way on its own core.
//!
//! `cargo bench -p evergreen-bench --bench fetch_http` writes its section of `bench/FETCH.md`;
//! `cargo test --benches` runs one short round and writes nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use evergreen_bench::{bench_mode, cpu_model, process_cpu, Summary};

const CONCURRENCY: usize = 100;

const BODY: &str = r#"{"responses":{"networkStats":[{"date":"2016-08-18","elements":{"Kenya (Safaricom)":"USD 12.5000","Kenya (Airtel)":"USD 3.2500","Uganda (MTN)":"USD 7.0000","Nigeria (Glo)":"USD 1.1250","Rwanda (Tigo)":"USD 0.5000"}}]}}"#;

fn main() {
    if std::env::var_os("EVG_FETCH_SERVER").is_some() {
        serve();
        return;
    }
    let full = bench_mode();
    let (requests, rounds) = if full { (40_000, 7) } else { (2_000, 1) };
    let mut server = Server::start();
    let url = format!("http://127.0.0.1:{}/stats?user=alice", server.port);

    type Runner = fn(&str, usize) -> usize;
    let clients: &[(&str, Runner)] = &[
        ("evergreen", run_evergreen),
        ("reqwest tokio-ct", run_reqwest_ct),
        ("reqwest tokio-mt2", run_reqwest_mt),
        ("ureq 100 threads", run_ureq),
    ];
    // EVG_FETCH_ONLY=substring runs only the matching clients (for profiling one of them).
    let only = std::env::var("EVG_FETCH_ONLY").unwrap_or_default();
    let clients: Vec<_> = clients
        .iter()
        .filter(|(n, _)| n.contains(only.as_str()))
        .collect();
    // One warm-up run each (connections, page faults), not recorded.
    for (_, f) in &clients {
        assert_eq!(f(&url, requests / 10), requests / 10);
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    for round in 0..rounds {
        for (i, (name, f)) in clients.iter().enumerate() {
            let cpu0 = process_cpu();
            let t = Instant::now();
            let ok = f(&url, requests);
            let secs = t.elapsed().as_secs_f64();
            let cpu_us = (process_cpu() - cpu0).as_secs_f64() * 1e6 / requests as f64;
            assert_eq!(ok, requests, "{name}: every request must succeed");
            rps[i].push(requests as f64 / secs);
            cpu[i].push(cpu_us);
            eprintln!(
                "round {round}: {name:<20} {:>9.0} req/s  {cpu_us:>6.1} µs CPU/req",
                requests as f64 / secs
            );
        }
    }
    server.stop();
    for (i, (name, _)) in clients.iter().enumerate() {
        evergreen_bench::record("http_fetch", name, "requests/s", true, &rps[i]);
        evergreen_bench::record(
            "http_fetch_cpu",
            name,
            "client CPU µs/request",
            false,
            &cpu[i],
        );
    }
    let rows: Vec<(&str, Summary, Summary, Vec<f64>)> = clients
        .iter()
        .enumerate()
        .map(|(i, (n, _))| {
            (
                *n,
                Summary::of(&rps[i]),
                Summary::of(&cpu[i]),
                rps[i].clone(),
            )
        })
        .collect();
    let table = report(&rows, requests, rounds);
    println!("{table}");
    if full && only.is_empty() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/FETCH.md");
        evergreen_bench::write_section(path, "fetch_http", &table).expect("write FETCH.md");
        eprintln!("wrote the fetch_http section of {path}");
    }
}

fn report(rows: &[(&str, Summary, Summary, Vec<f64>)], requests: usize, rounds: usize) -> String {
    let ev = rows[0].1.median;
    let find = |n: &str| {
        rows.iter()
            .find(|r| r.0 == n)
            .map(|r| r.1.median)
            .unwrap_or(f64::NAN)
    };
    let (ct, mt) = (find("reqwest tokio-ct"), find("reqwest tokio-mt2"));
    let mut s = String::new();
    s.push_str(&format!(
        "HTTP GET throughput: {CONCURRENCY} concurrent requesters, {requests} requests per run, \
         median of {rounds} interleaved runs; keep-alive server (tokio current-thread) in a \
         separate process; CPU: {}, {} cores.\n\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    s.push_str("| client | requests/s (median) | ÷ reqwest tokio-ct | ÷ reqwest tokio-mt2 | client CPU µs/request | runs (req/s) |\n|---|---:|---:|---:|---:|---|\n");
    for (n, r, c, runs) in rows {
        s.push_str(&format!(
            "| {n} | {:.0} | {:.2} | {:.2} | {:.1} | {} |\n",
            r.median,
            r.median / ct,
            r.median / mt,
            c.median,
            runs.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push_str(&format!(
        "\nTargets: evergreen ≥ 1.0× reqwest on tokio current-thread ({:.2}×: {}) and ≥ 1.0× on \
         multi-thread ({:.2}×: {}).\n",
        ev / ct,
        if ev >= ct { "PASS" } else { "FAIL" },
        ev / mt,
        if ev >= mt { "PASS" } else { "FAIL" }
    ));
    // Paired: evergreen ÷ the peer in the same round, so drift between rounds cancels.
    let runs_of = |n: &str| {
        rows.iter()
            .find(|r| r.0 == n)
            .map(|r| r.3.clone())
            .unwrap_or_default()
    };
    for peer in ["reqwest tokio-ct", "reqwest tokio-mt2"] {
        let p = runs_of(peer);
        let ratios: Vec<f64> = rows[0].3.iter().zip(&p).map(|(e, p)| e / p).collect();
        if !ratios.is_empty() {
            let r = Summary::of(&ratios);
            s.push_str(&format!(
                "Paired with {peer} round by round: median ratio {:.2} (range {:.2}–{:.2}).\n",
                r.median, r.min, r.max
            ));
        }
    }
    s
}

// ---- the clients ----

fn run_evergreen(url: &str, n: usize) -> usize {
    let url = url.to_string();
    // Its own thread: a fresh hub per run, as every other client gets a fresh runtime.
    std::thread::spawn(move || {
        let client = evergreen_services::fetch::http::Client::builder()
            .max_connections_per_host(CONCURRENCY)
            .build()
            .unwrap();
        let next = Rc::new(std::cell::Cell::new(0usize));
        let gs: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (client, next, url) = (client.clone(), next.clone(), url.clone());
                evergreen::spawn(move || {
                    let mut ok = 0;
                    while next.get() < n {
                        next.set(next.get() + 1);
                        let r = client.get(&url).send().unwrap();
                        if r.status() == 200 && r.bytes().len() == BODY.len() {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let total = evergreen::joinall(&gs)
            .iter()
            .map(|g| g.get().unwrap())
            .sum();
        evergreen::hub::destroy();
        total
    })
    .join()
    .unwrap()
}

async fn reqwest_load(url: Arc<str>, n: usize) -> usize {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next, url) = (client.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = client.get(&*url).send().await.unwrap();
                let status = r.status().as_u16();
                let b = r.bytes().await.unwrap();
                if status == 200 && b.len() == BODY.len() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

fn run_reqwest_ct(url: &str, n: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(reqwest_load(url.into(), n))
}

fn run_reqwest_mt(url: &str, n: usize) -> usize {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(reqwest_load(url.into(), n))
}

fn run_ureq(url: &str, n: usize) -> usize {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_idle_connections(CONCURRENCY)
        .max_idle_connections_per_host(CONCURRENCY)
        .build()
        .into();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (agent, next, url) = (agent.clone(), next.clone(), url.to_string());
            std::thread::spawn(move || {
                let mut ok = 0;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let mut r = agent.get(&url).call().unwrap();
                    let status = r.status().as_u16();
                    let b = r.body_mut().read_to_vec().unwrap();
                    if status == 200 && b.len() == BODY.len() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

// ---- the server (a child process) ----

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("EVG_FETCH_SERVER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Server { child, port }
    }

    fn stop(&mut self) {
        // Closing its stdin tells the server to exit.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        // Exit when the parent closes our stdin (or dies).
        std::thread::spawn(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            std::process::exit(0);
        });
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
        .into_bytes();
        let response: Arc<[u8]> = response.into();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut filled = 0;
                let mut out = Vec::with_capacity(4096);
                loop {
                    match s.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    let mut start = 0;
                    loop {
                        let mut headers = [httparse::EMPTY_HEADER; 32];
                        let mut req = httparse::Request::new(&mut headers);
                        match req.parse(&buf[start..filled]) {
                            Ok(httparse::Status::Complete(len)) => {
                                start += len;
                                out.extend_from_slice(&response);
                            }
                            Ok(httparse::Status::Partial) => break,
                            Err(_) => return,
                        }
                    }
                    buf.copy_within(start..filled, 0);
                    filled -= start;
                    if filled == buf.len() {
                        return;
                    }
                    if !out.is_empty() {
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    });
}
