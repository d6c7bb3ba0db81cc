//! The toolbox HTTP API, and only HTTP: routes, the token check, the request span, the JSON answers for unknown
//! routes, extractors and `ApiError`. One thin handler file per area parses the request, calls the engine
//! (`crate::engine`) and maps the answer; the port proxy (`/proxy/{port}/...`) is HTTP forwarding, so it lives
//! here whole.
//!
//! Trust: every request but `GET /version` needs `X-Sandbar-Daemon-Token`, compared in constant time (401 JSON
//! otherwise); request heads over 64 KiB get 431; errors are `{statusCode, message, code, ...}` with the status the
//! Daytona SDK maps to its exception classes. Tokens and bodies are never logged.

pub mod error;
pub mod extract;
pub mod fs;
pub mod git;
pub mod info;
pub mod lsp;
pub mod port_proxy;
pub mod process;
pub mod pty;
pub mod session;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::AppState;
use error::{ApiError, REQUEST, RequestInfo};

/// The whole toolbox API with its state applied.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(info::routes())
        .merge(process::routes())
        .merge(session::routes())
        .merge(pty::routes())
        .merge(fs::routes())
        .merge(git::routes())
        .merge(lsp::routes())
        .merge(port_proxy::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri, body: axum::body::Body) -> ApiError {
    drain(body).await;
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// Reads and drops up to 1 MiB of a request body that will not be used, within a second. A client still sending
/// when the server answers and closes would otherwise see a connection reset instead of the answer.
async fn drain(body: axum::body::Body) {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, 1 << 20);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), limited.collect()).await;
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

/// Every request but `GET /version` needs the daemon token, compared in constant time. Also opens the request's
/// tracing span (never with the token or the body in it).
async fn authenticate(State(daemon): State<AppState>, req: Request, next: Next) -> Response {
    let request_id =
        req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        sandbox_id = daemon.sandbox_id().as_deref().unwrap_or(""),
    );
    let info = RequestInfo { method: req.method().to_string(), path: req.uri().path().to_owned() };
    let handled = async move {
        let open = req.method() == Method::GET && req.uri().path() == "/version";
        if !open && !token_ok(req.headers(), &daemon.config.token) {
            tracing::info!("rejected: missing or wrong daemon token");
            // Read (a bounded part of) what the client is sending, so it sees this answer rather than a reset.
            drain(req.into_body()).await;
            return axum::response::IntoResponse::into_response(
                ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid daemon token").with_code("UNAUTHORIZED"),
            );
        }
        let resp = next.run(req).await;
        tracing::debug!(status = resp.status().as_u16(), "answered");
        resp
    }
    .instrument(span);
    REQUEST.scope(info, handled).await
}

fn token_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(sandbar_proto::DAEMON_TOKEN_HEADER)
        .is_some_and(|v| sandbar_support::ct_eq(v.as_bytes(), token.as_bytes()))
}
