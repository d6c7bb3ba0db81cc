//! `wss://` from the client commands: a TLS WebSocket server on loopback with a self-signed certificate for
//! `localhost` (as `sandbar up` makes one), reached through `Client::ws` when the certificate is trusted and refused
//! when it is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use sandbar_cli::client::Client;
use sandbar_cli::tls::{Trust, generated_cert};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Writes a self-signed certificate into `<dir>/tls/` and serves one TLS WebSocket connection per accept that
/// echoes text frames back, prefixed with the `Authorization` header it was opened with.
async fn tls_echo_server(dir: &Path) -> std::net::SocketAddr {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(generated_cert(dir), generated.cert.pem()).unwrap();
    let cert = generated.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut auth = String::new();
                // The callback's signature is tungstenite's (its error type is a whole HTTP response).
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, resp: Response| {
                    auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, cb).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let _ = ws.send(Message::Text(format!("{auth}|{t}").into())).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_with_the_data_directory_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let addr = tls_echo_server(dir.path()).await;
    let trust = Trust { data_dir: Some(dir.path().to_owned()), ..Trust::default() };
    let c = Client::new("http://127.0.0.1:1/api".into(), "k3y".into(), trust.client_config().unwrap()).unwrap();
    // An https toolbox URL becomes wss; the certificate names localhost, so that is the host to use.
    let mut ws =
        c.ws(&format!("https://localhost:{}/toolbox/x/process/pty/p/connect", addr.port()), &[]).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "Bearer k3y|hello"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn wss_with_an_explicit_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let addr = tls_echo_server(dir.path()).await;
    let trust = Trust { ca_cert: Some(generated_cert(dir.path())), ..Trust::default() };
    let c = Client::new("http://127.0.0.1:1/api".into(), "k".into(), trust.client_config().unwrap()).unwrap();
    let mut ws = c.ws(&format!("https://localhost:{}/x", addr.port()), &[]).await.unwrap();
    ws.send(Message::Text("a".into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
}

#[tokio::test]
async fn wss_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let addr = tls_echo_server(dir.path()).await;
    // The system roots do not know a certificate made a moment ago.
    let trust = Trust { system_roots: true, ..Trust::default() };
    let c = Client::new("http://127.0.0.1:1/api".into(), "k".into(), trust.client_config().unwrap()).unwrap();
    let err = c.ws(&format!("https://localhost:{}/x", addr.port()), &[]).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("TLS with localhost") && text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test]
async fn wss_checks_the_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let addr = tls_echo_server(dir.path()).await;
    let trust = Trust { data_dir: Some(dir.path().to_owned()), ..Trust::default() };
    let c = Client::new("http://127.0.0.1:1/api".into(), "k".into(), trust.client_config().unwrap()).unwrap();
    // The certificate names only `localhost`, not the address.
    let err = c.ws(&format!("https://127.0.0.1:{}/x", addr.port()), &[]).await.unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");
}
