//! The toolbox HTTP API, and only HTTP: routes, the token check, the request span, the JSON answers for unknown
//! routes, extractors and `ApiError`. One thin handler file per area parses the request, calls the engine
//! (`crate::engine`) and maps the answer; the port proxy (`/proxy/{port}/...`) is HTTP forwarding, so it lives
//! here whole.
//!
//! Trust: every request but `GET /version` needs a fresh signed credential in `X-Sandbar-Daemon-Auth`
//! ([`sandbar_support::daemon_auth`]: HMAC of the method, path and query, time and nonce under the daemon token,
//! checked in constant time, within a minute, once); 401 JSON otherwise. The token itself is never accepted over
//! HTTP. Request heads over 64 KiB get 431; errors are `{statusCode, message, code, ...}` with the status the
//! Daytona SDK maps to its exception classes. Tokens and bodies are never logged.

pub mod error;
pub mod extract;
pub mod fs;
pub mod git;
pub mod info;
pub mod interpreter;
pub mod lsp;
pub mod port_proxy;
pub mod ports;
pub mod process;
pub mod pty;
pub mod session;
pub mod spans;
mod stream;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use sandbar_proto::api::REQUEST_ID_HEADER;
use sandbar_support::daemon_auth::AuthError;
use sandbar_support::otlp;
use sandbar_support::request_id;
use sandbar_support::trace::{self, TraceParent};
use tracing::Instrument;

use crate::AppState;
use error::{ApiError, REQUEST, RequestInfo};

/// The whole toolbox API with its state applied.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(info::routes())
        .merge(process::routes())
        .merge(interpreter::routes())
        .merge(session::routes())
        .merge(pty::routes())
        .merge(fs::routes())
        .merge(git::routes())
        .merge(lsp::routes())
        .merge(port_proxy::routes())
        .merge(ports::routes())
        .merge(spans::routes())
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

/// Every request but `GET /version` needs a valid, unused request credential ([`credential_ok`]). Also opens the
/// request's tracing span (never with the credential, the query or the body in it) and writes one line when the
/// request is answered (for a WebSocket, at its upgrade), with the request id the edge proxy sent
/// (`X-Sandbar-Request-Id`, else `X-Request-Id`; only a [`request_id::valid`] one).
async fn authenticate(State(daemon): State<AppState>, req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let request_id = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        request_id::first_valid([header(REQUEST_ID_HEADER), header(request_id::HEADER)]).unwrap_or("").to_owned()
    };
    // The caller's span (the proxy's or the runner's) is this request's parent: its trace id is logged, and with
    // `--trace-spans` the request's own span is kept for the runner to collect (`spans`).
    let parent = req.headers().get(trace::HEADER).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let trace_id = parent.as_ref().map(|t| t.trace_id.clone()).unwrap_or_default();
    // (Not the collection itself: its span would only wait for the next one.)
    let traced = otlp::enabled() && req.uri().path() != "/trace/spans";
    let mut otlp_span = parent.as_ref().filter(|_| traced).and_then(|p| {
        let mut s = otlp::Span::start(format!("{} {}", req.method(), req.uri().path()), otlp::Kind::Server, Some(p))?;
        s.attr("http.request.method", req.method());
        s.attr("url.path", req.uri().path());
        Some(s)
    });
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        trace_id = %trace_id,
        sandbox_id = daemon.sandbox_id().as_deref().unwrap_or(""),
    );
    let info = RequestInfo { method: req.method().to_string(), path: req.uri().path().to_owned() };
    let handled = async move {
        let open = req.method() == Method::GET && req.uri().path() == "/version";
        if !open && let Err(e) = credential_ok(&daemon, &req) {
            // Read (a bounded part of) what the client is sending, so it sees this answer rather than a reset.
            drain(req.into_body()).await;
            let resp = axum::response::IntoResponse::into_response(
                ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).with_code("UNAUTHORIZED"),
            );
            tracing::info!(status = 401, duration_ms = ms(start), reason = %e, "rejected: daemon credential");
            if let Some(s) = &mut otlp_span {
                s.attr("http.response.status_code", 401);
                s.fail("daemon credential refused");
            }
            return resp;
        }
        let resp = next.run(req).await;
        tracing::info!(status = resp.status().as_u16(), duration_ms = ms(start), "answered");
        if let Some(s) = &mut otlp_span {
            s.attr("http.response.status_code", resp.status().as_u16());
            if resp.status().is_server_error() {
                s.fail(format!("answered {}", resp.status()));
            }
        }
        resp
    }
    .instrument(span);
    REQUEST.scope(info, handled).await
}

fn ms(start: std::time::Instant) -> f64 {
    request_id::log_millis(start.elapsed())
}

/// Checks the request's credential (`X-Sandbar-Daemon-Auth`) for its method, path and query as received; the
/// toolbox and the terminal share one replay set.
pub(crate) fn credential_ok<B>(daemon: &crate::Daemon, req: &axum::http::Request<B>) -> Result<(), AuthError> {
    let value = req.headers().get(sandbar_proto::DAEMON_AUTH_HEADER).map(HeaderValue::as_bytes);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    daemon.auth.verify(value, req.method().as_str(), path)
}
