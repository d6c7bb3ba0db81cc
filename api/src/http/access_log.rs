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
//! ([`OrgSlot`]), the request id and the W3C trace id. Never a header, query or body.
//!
//! The request's server span is a child of the caller's `traceparent` (else the root of a new trace); the handler
//! runs with it as the current context ([`crate::trace`]), and it ends, recorded with the route and status when an
//! exporter is installed, with the line.

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
use sandbar_support::otlp::{Kind, Span};
use sandbar_support::request_id;
use sandbar_support::trace::{self, TraceParent};
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
    // The caller's span (the proxy's) is this request's parent; its trace id goes in the span and the line.
    let parent = headers.get(trace::HEADER).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let route: Arc<str> = req.extensions().get::<MatchedPath>().map_or("-", |m| loggable_route(m.as_str())).into();
    let method = req.method().to_string();
    let span = Span::start(format!("{method} {route}"), Kind::Server, parent.as_ref());
    let trace_id: Arc<str> = span
        .as_ref()
        .map(|s| s.context().trace_id.as_str())
        .or(parent.as_ref().map(|p| p.trace_id.as_str()))
        .unwrap_or("")
        .into();
    let org = OrgSlot::default();
    let bytes_in = Arc::new(AtomicU64::new(0));
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(org.clone());
    let req = req.map(|body| Body::new(Counted { inner: body, bytes: bytes_in.clone(), line: None }));
    let log_span =
        tracing::info_span!("request", method = %method, route = %route, request_id = %id, trace_id = %trace_id);
    let handled = next.run(req).instrument(log_span);
    let mut resp = match span.as_ref().map(|s| s.context().clone()) {
        Some(context) => crate::trace::scope(context, handled).await,
        None => handled.await,
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(request_id::HEADER, v);
    }
    let status = resp.status().as_u16();
    let line = Line { start, method, route, status, id, trace_id, org, bytes_in, bytes_out: 0, span };
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
    trace_id: Arc<str>,
    org: OrgSlot,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    /// The request's server span, ended with the line.
    span: Option<Span>,
}

impl Drop for Line {
    fn drop(&mut self) {
        if let Some(span) = self.span.as_mut().filter(|s| s.recording()) {
            span.attr("http.request.method", &self.method);
            span.attr("http.route", &self.route);
            span.attr("http.response.status_code", self.status);
            span.attr("sandbar.request_id", &self.id);
            if let Some(org) = self.org.0.get() {
                span.attr("sandbar.organization_id", org);
            }
            if self.status >= 500 {
                span.fail(format!("answered {}", self.status));
            }
        }
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
            trace_id = %self.trace_id,
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
    use std::sync::Mutex;

    /// Everything the subscriber writes, as text.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn org_handler(req: Request) -> &'static str {
        OrgSlot::note(req.extensions(), "org-1");
        axum::body::to_bytes(req.into_body(), 1024).await.unwrap();
        "hello"
    }

    #[tokio::test]
    async fn one_line_per_request_with_its_id_and_no_query() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = axum::Router::new()
            .route("/api/thing/{id}", axum::routing::post(org_handler))
            .layer(axum::middleware::from_fn(layer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let send = |id: Option<&str>, proxy: Option<&str>| {
            let mut req = http.post(format!("http://{addr}/api/thing/secret-looking-id?token=s3cret")).body("12345");
            if let Some(id) = id {
                req = req.header(request_id::HEADER, id);
            }
            if let Some(id) = proxy {
                req = req.header(REQUEST_ID_HEADER, id);
            }
            req.send()
        };
        let r = send(Some("client-id-1"), None).await.unwrap();
        assert_eq!(r.headers()[request_id::HEADER], "client-id-1");
        assert_eq!(r.text().await.unwrap(), "hello");
        let r = send(Some("client-id-2"), Some("proxy-id-2")).await.unwrap();
        assert_eq!(r.headers()[request_id::HEADER], "proxy-id-2", "the proxy's id wins");
        let r = send(Some("not plain"), None).await.unwrap();
        let made = r.headers()[request_id::HEADER].to_str().unwrap().to_owned();
        assert!(made.len() == 32 && made != "not plain");
        let r = http.get(format!("http://{addr}/nowhere/secret-path")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        // The lines are written as the server sees the bodies end, which may be just after the client read them.
        let text = || String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let access = |t: &str| t.lines().filter(|l| l.contains("sandbar_api::access")).count();
        for _ in 0..500 {
            if access(&text()) >= 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let text = text();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("sandbar_api::access")).collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (line, id) in lines.iter().zip(["client-id-1", "proxy-id-2", made.as_str()]) {
            assert!(line.contains(&format!("request_id={id}")), "{line}");
            assert!(line.contains("route=/api/thing/{id}") && line.contains("status=200"), "{line}");
            assert!(line.contains("bytes_in=5") && line.contains("bytes_out=5"), "{line}");
            assert!(line.contains("organization_id=\"org-1\""), "{line}");
        }
        assert!(lines[3].contains("route=-") && lines[3].contains("status=404"), "{}", lines[3]);
        assert!(!text.contains("s3cret") && !text.contains("secret-"), "{text}");
    }

    #[test]
    fn axum_catch_alls_are_not_routes() {
        assert_eq!(loggable_route("/api/sandbox/{sandboxIdOrName}"), "/api/sandbox/{sandboxIdOrName}");
        assert_eq!(loggable_route("/api/{*__private__axum_fallback}"), "-");
    }
}
