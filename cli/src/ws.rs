//! WebSocket connections to toolbox endpoints through the proxy, authenticated like every other call.

use anyhow::{Context, bail};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `http_url` (its `http` scheme turned into `ws`), with the API key and optional
/// subprotocols.
pub async fn connect(http_url: &str, key: &str, protocols: &[&str]) -> anyhow::Result<Ws> {
    let url = if let Some(rest) = http_url.strip_prefix("http") { format!("ws{rest}") } else { http_url.to_owned() };
    if url.starts_with("wss:") {
        bail!(
            "{url}: TLS WebSockets are not supported by this command; point DAYTONA_API_URL at an API whose proxy URL is http"
        );
    }
    let mut req = url.as_str().into_client_request().with_context(|| format!("bad WebSocket URL {url}"))?;
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {key}"))?);
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&protocols.join(", "))?);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            anyhow::anyhow!("WebSocket upgrade refused ({}): {}", resp.status(), body.trim())
        }
        e => anyhow::anyhow!("WebSocket to {url}: {e}"),
    })?;
    Ok(ws)
}
