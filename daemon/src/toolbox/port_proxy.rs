//! `/proxy/{port}/{*path}`: preview ports. The edge proxy sends `{port}-{sandboxId}.{domain}` here (behind the
//! token middleware); the daemon forwards to `127.0.0.1:{port}` inside the sandbox over HTTP/1.1, bodies streamed
//! both ways, and WebSocket (any `Upgrade`) requests are spliced into a bidirectional byte copy once the sandbox's
//! server answers 101.
//!
//! The request credential is the daemon's alone: it is removed before an app sees the request (and so is the old
//! token header, should a client send one). The web terminal (22222) is the daemon's own server and checks a
//! credential of its own, so a request for it gets a fresh one signed for the path the terminal sees.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::AppState;
use crate::toolbox::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/proxy/{port}", any(root))
        .route("/proxy/{port}/", any(root))
        .route("/proxy/{port}/{*path}", any(path))
}

async fn root(State(d): State<AppState>, Path(port): Path<String>, req: Request) -> Response {
    forward(&d, &port, "", req).await
}

async fn path(State(d): State<AppState>, Path((port, path)): Path<(String, String)>, req: Request) -> Response {
    forward(&d, &port, &path, req).await
}

/// Hop-by-hop headers (RFC 9110 7.6.1) that a forwarder must not pass on; `connection`/`upgrade` are put back for
/// upgrades.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "proxy-authorization"];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().copied().map(str::to_owned).chain(named) {
        headers.remove(name.as_str());
    }
}

async fn forward(d: &AppState, port: &str, path: &str, mut req: Request) -> Response {
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return ApiError::bad_request(format!("invalid port {port:?}")).into_response(),
    };
    let target = match req.uri().query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    let uri: Uri = match target.parse() {
        Ok(u) => u,
        Err(_) => return ApiError::bad_request("invalid request path").into_response(),
    };
    let upgrade = is_upgrade(req.headers());
    let upgrade_value = req.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    // The credential is for the daemon alone: the sandbox's own servers never see it (see the module doc).
    parts.headers.remove(sandbar_proto::DAEMON_AUTH_HEADER);
    parts.headers.remove(sandbar_proto::DAEMON_TOKEN_HEADER);
    if port == sandbar_proto::ports::TERMINAL {
        let sent = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let signed = sandbar_support::daemon_auth::sign(&d.config.token, parts.method.as_str(), sent);
        if let Ok(v) = HeaderValue::from_str(&signed) {
            parts.headers.insert(sandbar_proto::DAEMON_AUTH_HEADER, v);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(u)) = (upgrade, upgrade_value) {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u);
    }
    let out = Request::from_parts(parts, body);

    let stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(port, error = %e, "preview port connect failed");
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("nothing answers on port {port} in the sandbox: {e}"),
            )
            .with_code("PORT_UNREACHABLE")
            .into_response();
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return bad_gateway(port, &e),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "preview port connection ended");
        }
    });
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(port, &e),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the server on port {port} switched protocols unasked"),
            )
            .into_response();
        };
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (client, server) = match tokio::join!(client_upgrade, server_upgrade) {
                (Ok(c), Ok(s)) => (c, s),
                (c, s) => {
                    tracing::debug!(client = c.is_ok(), server = s.is_ok(), "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tracing::debug!(error = %e, "upgraded preview connection ended");
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

fn bad_gateway(port: u16, e: &hyper::Error) -> Response {
    tracing::info!(port, error = %e, "preview port request failed");
    ApiError::new(StatusCode::BAD_GATEWAY, format!("the server on port {port} in the sandbox failed: {e}"))
        .with_code("PORT_UNREACHABLE")
        .into_response()
}
