//! One access line per request, written in pingora's `logging` phase (for an upgraded connection, when it ends):
//! method, host, path, sandbox, status, duration, body bytes each way, where it went and the request id, as
//! `tracing` fields (target `sandbar_proxy::access`), so the services' format (text or `--log-json`) holds it on
//! one line.
//!
//! Never in it: a query string ([`sandbar_support::request_id::loggable_path`]: preview tokens travel as
//! `?DAYTONA_SANDBOX_AUTH_KEY=`), a signed preview URL's token (it stands where the sandbox id would be in a preview
//! host, [`loggable_host`]), or any header but `Host`.

use pingora::Error;
use pingora::proxy::Session;
use sandbar_proto::api::is_signed_preview_token;
use sandbar_support::request_id::{self, loggable_path};

use super::Ctx;
use super::credentials::header_str;

/// Longest `Host` written (a longer one is cut; the proxy refuses such hosts anyway).
const MAX_HOST: usize = 256;

/// What of the request an access line needs that the later phases change (the path is rewritten for the daemon).
/// Taken at the start of `request_filter` (after the span starts), and only when an access line or a recorded span
/// will show it.
pub fn remember(session: &Session, ctx: &mut Ctx) {
    let span_records = ctx.span.as_ref().is_some_and(sandbar_support::otlp::Span::recording);
    if !span_records && !tracing::enabled!(target: "sandbar_proxy::access", tracing::Level::INFO) {
        return;
    }
    ctx.log_path =
        Some(loggable_path(session.req_header().uri.path_and_query().map_or("/", |p| p.as_str())).to_owned());
}

/// The client's request id when it sent a [`request_id::valid`] one (`X-Request-Id`).
pub fn client_request_id(scan: &super::headers::Scan<'_>) -> Option<String> {
    request_id::first_valid([scan.request_id]).map(str::to_owned)
}

/// `host` as it may be logged: a signed preview host (`{port}-{token}.{domain}`) keeps its port and domain only.
pub fn loggable_host(host: &str) -> String {
    let host = host.get(..MAX_HOST).unwrap_or(host);
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    match first.split_once('-') {
        Some((port, token)) if is_signed_preview_token(token) => {
            format!("{port}-[signed]{}{rest}", if rest.is_empty() { "" } else { "." })
        }
        _ => host.to_owned(),
    }
}

/// The path as logged: what admission kept of it, else the request's without a token.
fn log_path<'a>(session: &'a Session, ctx: &'a Ctx) -> &'a str {
    match &ctx.log_path {
        Some(p) => p.as_str(),
        None => loggable_path(session.req_header().uri.path_and_query().map_or("/", |p| p.as_str())),
    }
}

/// Where the request went.
fn upstream(ctx: &Ctx) -> &'static str {
    if ctx.to_api {
        "api"
    } else if ctx.daemon_addr.is_some() && ctx.redirect.is_none() {
        "daemon"
    } else {
        "proxy"
    }
}

/// The request's span gets what its access line says (never a host, query or header).
pub fn describe(span: &mut sandbar_support::otlp::Span, session: &Session, e: Option<&Error>, ctx: &Ctx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    span.attr("http.request.method", &session.req_header().method);
    span.attr("url.path", log_path(session, ctx));
    span.attr("http.response.status_code", status);
    span.attr("sandbar.upstream", upstream(ctx));
    span.attr("sandbar.request_id", &ctx.request_id);
    if let Some(id) = &ctx.sandbox_id {
        span.attr("sandbar.sandbox_id", id);
    }
    if let Some(e) = e {
        span.fail(e.etype().as_str());
    } else if status >= 500 {
        span.fail(format!("answered {status}"));
    }
}

/// Writes the access line of the request `session` served.
pub fn write(session: &Session, e: Option<&Error>, ctx: &Ctx) {
    // What the line needs (the client's address as text, the host) is only worked out when it is written.
    if !tracing::enabled!(target: "sandbar_proxy::access", tracing::Level::INFO) {
        return;
    }
    let req = session.req_header();
    let host = req.uri.authority().map(|a| a.as_str()).or_else(|| header_str(session, "host")).unwrap_or("");
    let path = log_path(session, ctx);
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let upstream = upstream(ctx);
    let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default();
    tracing::info!(
        target: "sandbar_proxy::access",
        method = %req.method,
        host = ?loggable_host(host),
        path = %path,
        sandbox_id = ctx.sandbox_id.as_deref().unwrap_or(""),
        status,
        duration_ms = request_id::log_millis(ctx.start.elapsed()),
        bytes_in = session.body_bytes_read(),
        bytes_out = session.body_bytes_sent(),
        upstream,
        upgraded = ctx.upgraded,
        error = e.map_or("", |e| e.etype().as_str()),
        client = %client,
        request_id = %ctx.request_id,
        trace_id = ctx.trace().map_or("", |t| t.trace_id.as_str()),
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_preview_hosts_lose_their_token() {
        let token = "0123456789abcdef".repeat(sandbar_proto::api::SIGNED_PREVIEW_TOKEN_LEN / 16);
        assert!(is_signed_preview_token(&token), "the test builds a token of the real length");
        assert_eq!(loggable_host(&format!("3000-{token}.localhost:4000")), "3000-[signed].localhost:4000");
        assert_eq!(loggable_host(&format!("3000-{token}")), "3000-[signed]");
        assert_eq!(loggable_host("3000-sb1.localhost:4000"), "3000-sb1.localhost:4000");
        assert_eq!(loggable_host("127.0.0.1:4000"), "127.0.0.1:4000");
        assert_eq!(loggable_host(&"a".repeat(1000)).len(), MAX_HOST);
    }
}
