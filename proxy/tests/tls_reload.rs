//! Certificate reload: the proxy serves the configured pair A; once A's files are replaced by B (by rename, as
//! certbot does) new handshakes get B while a connection opened under A keeps working; garbage written over the
//! files is refused (counted in `sandbar_proxy_tls_reload_failures_total`) and B keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use sandbar_testkit::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

/// A self-signed pair for `localhost`: (certificate PEM, key PEM, certificate DER).
fn pair() -> (String, String, CertificateDer<'static>) {
    let g = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (g.cert.pem(), g.signing_key.serialize_pem(), g.cert.der().clone())
}

/// Replaces `path` by writing a sibling file and renaming it over (readers see the old or the new file, never a
/// part).
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS connection to `addr` for `localhost`, trusting `roots`; returns it with the certificate it was served.
async fn handshake(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
) -> (TlsStream<tokio::net::TcpStream>, Vec<u8>) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, leaf)
}

/// Waits (at most 60 s) until the counter `name` reaches `at_least`.
async fn counter_reaches(proxy: &Proxy, name: &str, at_least: f64) {
    for _ in 0..600 {
        if proxy.metric(name).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never reached {at_least}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_handshakes_and_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("fullchain.pem"), dir.path().join("privkey.pem"));
    let (a_pem, a_key, a_der) = pair();
    let (b_pem, b_key, b_der) = pair();
    std::fs::write(&cert, &a_pem).unwrap();
    std::fs::write(&key, &a_key).unwrap();
    let files = (cert.clone(), key.clone());
    // No API behind it: a TLS handshake does not ask one.
    let proxy = Proxy::start_with("http://127.0.0.1:9", move |c| {
        c.tls = vec![files];
        c.tls_reload_interval = Duration::from_millis(100);
    })
    .await;

    let (mut held, served) = handshake(proxy.https, &[&a_der, &b_der]).await;
    assert_eq!(served, a_der.to_vec(), "A is served first");

    // Renewal: certificate first, then key; in between the pair does not match and is refused (A stays), after
    // the key the new pair is taken.
    replace(&cert, &b_pem);
    replace(&key, &b_key);
    counter_reaches(&proxy, "sandbar_proxy_tls_reloads_total", 1.0).await;
    let (_, served) = handshake(proxy.https, &[&a_der, &b_der]).await;
    assert_eq!(served, b_der.to_vec(), "a new handshake gets B");

    // The connection opened under A still carries requests.
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = held.read(&mut answer).await.unwrap();
    let answer = &answer[..n];
    assert!(answer.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(answer));

    // Garbage over the certificate: refused, B keeps serving.
    let failures = proxy.metric("sandbar_proxy_tls_reload_failures_total").await;
    replace(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    counter_reaches(&proxy, "sandbar_proxy_tls_reload_failures_total", failures + 1.0).await;
    let (_, served) = handshake(proxy.https, &[&a_der, &b_der]).await;
    assert_eq!(served, b_der.to_vec(), "B still served after garbage");
    assert_eq!(proxy.metric("sandbar_proxy_tls_reloads_total").await, 1.0);

    let _ = proxy.shutdown.send(true);
    proxy.task.await.unwrap().unwrap();
}
