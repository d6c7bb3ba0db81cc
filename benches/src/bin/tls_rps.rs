//! HTTPS requests per second where every request opens its own TLS connection: full handshakes (`--new`) or
//! resumed sessions (the default: one client configuration whose session cache every connection shares, as a
//! browser's does). wrk cannot do either: it keeps connections alive.
//! Usage: tls_rps --addr HOST:PORT --ca CERT.pem --path /p [--header 'Name: value'] [--conns 16] [--secs 5] [--new]
//! Prints `tls_rps rps=R resumed=FRACTION errors=N`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let (mut addr, mut ca, mut path, mut header) = (None, None, "/".to_owned(), String::new());
    let (mut conns, mut secs, mut new) = (16usize, 5f64, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--new" {
            new = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = Some(v),
            "--ca" => ca = Some(v),
            "--path" => path = v,
            "--header" => header = format!("{v}\r\n"),
            "--conns" => conns = v.parse()?,
            "--secs" => secs = v.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let addr = addr.context("--addr is required")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca.context("--ca is required")?)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if new {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{header}Connection: close\r\n\r\n");
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (connector, request, counts, addr) = (connector.clone(), request.clone(), counts.clone(), addr.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                match one(&connector, &addr, &request).await {
                    Ok(resumed) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        counts.resumed.fetch_add(u64::from(resumed), Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let ok = counts.ok.load(Ordering::Relaxed);
    let resumed = counts.resumed.load(Ordering::Relaxed) as f64 / ok.max(1) as f64;
    let rps = ok as f64 / started.elapsed().as_secs_f64();
    println!("tls_rps rps={rps:.0} resumed={resumed:.2} errors={}", counts.errors.load(Ordering::Relaxed));
    Ok(())
}

/// One connection, one request, the whole response; whether the session was resumed.
async fn one(connector: &tokio_rustls::TlsConnector, addr: &str, request: &str) -> anyhow::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(request.as_bytes()).await?;
    let mut body = Vec::new();
    // Servers may close without close_notify; what came before is the response.
    let _ = tls.read_to_end(&mut body).await;
    anyhow::ensure!(
        body.starts_with(b"HTTP/1.1 200"),
        "not a 200: {:?}",
        String::from_utf8_lossy(&body[..body.len().min(40)])
    );
    Ok(resumed)
}
