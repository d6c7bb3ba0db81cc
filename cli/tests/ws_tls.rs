//! `wss://` from the client commands: a TLS WebSocket server on loopback with a self-signed certificate for
//! `localhost` (as `sandbar up` makes one), reached through `Client::ws` when the certificate is trusted and refused
//! when it is not.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use sandbar_cli::client::Client;
use sandbar_cli::tls::{Trust, generated_cert};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Writes a self-signed certificate into `<dir>/tls/` and serves one TLS WebSocket connection per accept that
/// echoes text frames back, prefixed with the `Authorization` header it was opened with.
async fn tls_echo_server(dir: &Path) -> anyhow::Result<std::net::SocketAddr> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    std::fs::create_dir_all(dir.join("tls"))?;
    std::fs::write(generated_cert(dir), generated.cert.pem())?;
    let cert = generated.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
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
    Ok(addr)
}

/// A TLS echo server with a fresh certificate in a temporary data directory, and a client with API key `key` that
/// trusts what `trust` makes of that directory. Returns the directory (removed when dropped), the server's port
/// and the client.
async fn server_and_client(
    key: &str,
    trust: impl FnOnce(&Path) -> Trust,
) -> anyhow::Result<(tempfile::TempDir, u16, Client)> {
    let dir = tempfile::tempdir()?;
    let addr = tls_echo_server(dir.path()).await?;
    let config = trust(dir.path()).client_config()?;
    let c = Client::new("http://127.0.0.1:1/api".into(), key.into(), config)?;
    Ok((dir, addr.port(), c))
}

#[tokio::test]
async fn wss_with_the_data_directory_certificate() {
    let (_dir, port, c) =
        server_and_client("k3y", |dir| Trust { data_dir: Some(dir.to_owned()), ..Trust::default() }).await.unwrap();
    // An https toolbox URL becomes wss; the certificate names localhost, so that is the host to use.
    let mut ws = c.ws(&format!("https://localhost:{port}/toolbox/x/process/pty/p/connect"), &[]).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "Bearer k3y|hello"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn wss_with_an_explicit_ca_cert() {
    let (_dir, port, c) =
        server_and_client("k", |dir| Trust { ca_cert: Some(generated_cert(dir)), ..Trust::default() }).await.unwrap();
    let mut ws = c.ws(&format!("https://localhost:{port}/x"), &[]).await.unwrap();
    ws.send(Message::Text("a".into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
}

#[tokio::test]
async fn wss_refuses_an_untrusted_certificate() {
    // The system roots do not know a certificate made a moment ago.
    let (_dir, port, c) = server_and_client("k", |_| Trust { system_roots: true, ..Trust::default() }).await.unwrap();
    let err = c.ws(&format!("https://localhost:{port}/x"), &[]).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("TLS with localhost") && text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test]
async fn wss_checks_the_host_name() {
    let (_dir, port, c) =
        server_and_client("k", |dir| Trust { data_dir: Some(dir.to_owned()), ..Trust::default() }).await.unwrap();
    // The certificate names only `localhost`, not the address.
    let err = c.ws(&format!("https://127.0.0.1:{port}/x"), &[]).await.unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");
}
