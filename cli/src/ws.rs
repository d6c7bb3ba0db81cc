//! WebSocket connections to toolbox endpoints through the proxy, authenticated like every other call. `ws://` for
//! an `http` proxy URL, `wss://` (rustls on ring, trusting what [`crate::tls::Trust`] says) for an `https` one.

use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::either::Either;

/// The transport under a WebSocket: plain TCP or TLS over TCP.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;
pub type Ws = tokio_tungstenite::WebSocketStream<Stream>;

/// Opens a WebSocket to `http_url` (its `http`/`https` scheme turned into `ws`/`wss`), with the API key and
/// optional subprotocols. `tls` is used for `wss`.
pub async fn connect(
    http_url: &str,
    key: &str,
    protocols: &[&str],
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Ws> {
    let url = if let Some(rest) = http_url.strip_prefix("http") { format!("ws{rest}") } else { http_url.to_owned() };
    let mut req = url.as_str().into_client_request().with_context(|| format!("bad WebSocket URL {url}"))?;
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {key}"))?);
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&protocols.join(", "))?);
    }
    let secure = match req.uri().scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => bail!("{url}: not a WebSocket URL (scheme {other:?})"),
    };
    let host = req.uri().host().with_context(|| format!("{url}: no host"))?;
    // `[::1]` in a URL, `::1` for connecting and for the certificate check.
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_owned();
    let port = req.uri().port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {url}"))?;
    // Keystrokes and small frames must not wait for Nagle.
    tcp.set_nodelay(true)?;
    let stream = if secure {
        let name = ServerName::try_from(host.clone()).with_context(|| format!("{host:?} is not a TLS server name"))?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.with_context(|| {
            format!(
                "TLS with {host}:{port} (trusted: the system roots, the data directory's certificate and --ca-cert)"
            )
        })?;
        Either::Right(tls)
    } else {
        Either::Left(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(req, stream).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            anyhow::anyhow!("WebSocket upgrade refused ({}): {}", resp.status(), body.trim())
        }
        e => anyhow::anyhow!("WebSocket to {url}: {e}"),
    })?;
    Ok(ws)
}
