//! The request id and one access line per request, as a middleware over every route (`Router::layer`, so it runs
//! after routing and knows the route's template).
//!
//! The request id is the proxy's (`X-Sandbar-Request-Id`, which the edge sets in place of any client copy), else a
//! valid `X-Request-Id` from a client calling the API directly, else a fresh one
//! ([`sandbar_support::request_id`]); it is answered in `X-Request-Id`, kept in the request's extensions
//! ([`RequestId`]) and is a field of the request's span.
//!
//! The line is written when the answer's body ends (or is dropped: a client gone, an event stream closed): method,
//! route template (`/api/sandbox/{sandboxIdOrName}`, never the path itself, whose segments may be tokens; `-` for
//! a path no route matched), status, duration, body bytes each way, the organization once an extractor resolved it
//! ([`OrgSlot`]) and the request id. Never a header, query or body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use sandbar_proto::api::REQUEST_ID_HEADER;
use sandbar_support::request_id;
use tracing::Instrument;

/// The request's id, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Where an authenticating extractor leaves the caller's organization for the access line.
#[derive(Debug, Clone, Default)]
pub struct OrgSlot(Arc<OnceLock<String>>);

impl OrgSlot {
    /// Notes the organization of the request whose extensions hold this slot (the first one set stays).
    pub fn note(extensions: &axum::http::Extensions, organization_id: &str) {
        if let Some(slot) = extensions.get::<Self>() {
            let _ = slot.0.set(organization_id.to_owned());
        }
    }
}

/// The middleware: `Router::layer(axum::middleware::from_fn(access_log::layer))`.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let headers = req.headers();
    let id: Arc<str> = match request_id::first_valid([
        headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()),
        headers.get(request_id::HEADER).and_then(|v| v.to_str().ok()),
    ]) {
        Some(id) => id.into(),
        None => request_id::fresh().unwrap_or_default().into(),
    };
    let route: Arc<str> = req.extensions().get::<MatchedPath>().map_or("-", |m| loggable_route(m.as_str())).into();
    let method = req.method().to_string();
    let org = OrgSlot::default();
    let bytes_in = Arc::new(AtomicU64::new(0));
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(org.clone());
    let req = req.map(|body| Body::new(Counted { inner: body, bytes: bytes_in.clone(), line: None }));
    let span = tracing::info_span!("request", method = %method, route = %route, request_id = %id);
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(request_id::HEADER, v);
    }
    let line = Line { start, method, route, status: resp.status().as_u16(), id, org, bytes_in, bytes_out: 0 };
    resp.map(|body| Body::new(Counted { inner: body, bytes: Arc::new(AtomicU64::new(0)), line: Some(line) }))
}

/// A matched route as logged: axum's names for the catch-alls it adds for nested fallbacks are not routes.
fn loggable_route(template: &str) -> &str {
    if template.contains("__private__") { "-" } else { template }
}

/// What the access line says, written when the response body it rides in is dropped.
struct Line {
    start: Instant,
    method: String,
    route: Arc<str>,
    status: u16,
    id: Arc<str>,
    org: OrgSlot,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Drop for Line {
    fn drop(&mut self) {
        tracing::info!(
            target: "sandbar_api::access",
            method = %self.method,
            route = %self.route,
            status = self.status,
            duration_ms = request_id::log_millis(self.start.elapsed()),
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            organization_id = self.org.0.get().map_or("", String::as_str),
            request_id = %self.id,
            "access"
        );
    }
}

/// A body that counts its data bytes (into `bytes`, and into the line's `bytes_out` for a response).
struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
    line: Option<Line>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                self.bytes.fetch_add(n, Ordering::Relaxed);
                if let Some(line) = &mut self.line {
                    line.bytes_out += n;
                }
            }
            // The end: write the line now rather than when hyper drops the body.
            Poll::Ready(None) => drop(self.line.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axum_catch_alls_are_not_routes() {
        assert_eq!(loggable_route("/api/sandbox/{sandboxIdOrName}"), "/api/sandbox/{sandboxIdOrName}");
        assert_eq!(loggable_route("/api/{*__private__axum_fallback}"), "-");
    }
}
