//! TLS servers (`net::tls`, `StreamServer::bind_tls`) against rustls clients running as
//! greenlets on the same hub. The certificates are test fixtures (tests/fixtures/tls).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::run;
use evergreen::net::tls::{self, ServerConfig};
use evergreen::net::{StreamServer, TcpListener, TcpStream};
use evergreen::spawn;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config() -> Arc<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

fn client_config(ca: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in CertificateDer::pem_file_iter(fixture(ca)).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_client(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap())
}

#[test]
fn a_tls_stream_server_echoes_to_many_clients_on_one_hub() {
    run(|| {
        let server = StreamServer::bind_tls("127.0.0.1:0", server_config(), |mut s, _| {
            let mut buf = [0u8; 64];
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
        })
        .unwrap();
        server.start();
        let addr = server.local_addr().unwrap();
        let clients: Vec<_> = (0..20u8)
            .map(|i| {
                let cfg = client_config(Some("ca.pem"));
                spawn(move || {
                    let mut c = tls_client(addr, cfg);
                    let msg = [i; 32];
                    c.write_all(&msg).unwrap();
                    let mut back = [0u8; 32];
                    c.read_exact(&mut back).unwrap();
                    back == msg
                })
            })
            .collect();
        for c in &clients {
            assert_eq!(c.get(), Ok(true));
        }
        assert_eq!(server.accepted(), 20);
        server.stop(Some(Duration::from_secs(1)));
    });
}

#[test]
fn a_client_that_does_not_trust_the_ca_is_refused_and_the_handler_never_runs() {
    run(|| {
        let handled = std::rc::Rc::new(std::cell::Cell::new(false));
        let h2 = handled.clone();
        let server =
            StreamServer::bind_tls("127.0.0.1:0", server_config(), move |_, _| h2.set(true))
                .unwrap();
        server.start();
        let addr = server.local_addr().unwrap();
        let cfg = client_config(None); // trusts nothing
        let client = spawn(move || {
            let mut c = tls_client(addr, cfg);
            c.write_all(b"x").map_err(|e| e.to_string())
        });
        let err = client.get().unwrap().unwrap_err();
        assert!(
            err.contains("certificate") || err.contains("UnknownIssuer"),
            "{err}"
        );
        evergreen::sleep(Duration::from_millis(20));
        assert!(!handled.get());
        server.stop(Some(Duration::from_secs(1)));
    });
}

#[test]
fn a_silent_client_times_out_the_handshake_while_the_hub_runs() {
    run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let silent = spawn(move || TcpStream::connect(addr).unwrap());
        let (tcp, _) = l.accept().unwrap();
        let ticks = std::rc::Rc::new(std::cell::Cell::new(0));
        let t2 = ticks.clone();
        let ticker = spawn(move || loop {
            t2.set(t2.get() + 1);
            evergreen::sleep(Duration::from_millis(5));
        });
        let e = tls::accept(tcp, server_config(), Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(
            ticks.get() >= 10,
            "the hub ran meanwhile ({} ticks)",
            ticks.get()
        );
        ticker.kill();
        drop(silent.into_result());
    });
}
