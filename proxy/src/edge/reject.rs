//! The answers the proxy makes itself, shaped like Daytona's errors: JSON `{statusCode, message, code, source,
//! path, method, timestamp}` (or a small HTML page for a browser that asks for one), always with `X-Sandbar-Error`
//! (the machine-readable reason) and the request id, `WWW-Authenticate` on 401 and `Retry-After` on 503.
//! Which status and message a situation gets is decided where the situation is met (400 bad host, id or path;
//! 401 `unauthorized` or `signed-url-invalid`; 403 `cross-origin` ([`super::origin`]); 404 `no-sandbox`, `sandbox-not-found` or `not-found` (a services-only API path); 409 `sandbox-stopped`,
//! `sandbox-starting` or `sandbox-error`; 410 `sandbox-archived` or `sandbox-deleted`; 503 `sandbox-not-ready`;
//! 502 `api-unavailable`, `api-unreachable` (a dashboard or REST request) or `daemon-unreachable` (504 when the
//! daemon did not answer in time)); this module only writes them.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use sandbar_proto::ErrorBody;
use sandbar_proto::api::PROXY_ERROR_HEADER;

use super::credentials::header_str;
use crate::control::api::ApiCallError;
use crate::metrics::Metrics;

/// `source` of the errors the proxy makes itself.
pub const PROXY_ERROR_SOURCE: &str = "SANDBAR_PROXY";

/// An error response the proxy makes itself.
#[derive(Debug)]
pub struct Reject {
    pub status: u16,
    /// Short machine-readable reason, sent as `X-Sandbar-Error` and as the body's `code`.
    pub reason: &'static str,
    pub message: String,
}

impl Reject {
    pub fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into() }
    }

    /// 404 for an unknown sandbox, or one the credential's organization does not own (existence does not leak).
    pub fn not_found(sandbox_id: &str) -> Self {
        Self::new(404, "sandbox-not-found", format!("sandbox {sandbox_id} not found"))
    }

    /// 502 when the API did not answer `doing` (counted and logged).
    pub fn api_unavailable(metrics: &Metrics, e: &ApiCallError, doing: &str) -> Self {
        metrics.api_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, doing, "API call failed");
        Self::new(502, "api-unavailable", format!("{e} while {doing}"))
    }

    /// What to answer when proxying failed with `e` after the request was admitted; `None` when the client is
    /// gone and nothing can be sent.
    pub fn for_proxy_error(e: &Error, daemon_addr: Option<&str>) -> Option<Self> {
        match e.esource() {
            ErrorSource::Upstream => Some(Self::new(
                // A daemon that did not answer in time (a black-holed network) is a timeout, anything else a 502.
                match e.etype() {
                    ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                    _ => 502,
                },
                "daemon-unreachable",
                format!(
                    "the sandbox's daemon{} did not answer: {}",
                    daemon_addr.map(|a| format!(" at {a}")).unwrap_or_default(),
                    e.etype().as_str()
                ),
            )),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
                _ => Some(Self::new(400, "bad-request", format!("malformed request: {}", e.etype().as_str()))),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                tracing::error!(error = %e, "proxy error");
                Some(Self::new(500, "internal", "internal proxy error"))
            }
        }
    }

    /// Writes this answer to the client.
    pub async fn send(&self, session: &mut Session, request_id: &str) -> Result<()> {
        let (body, content_type) = if wants_html(session) {
            (self.html(request_id), "text/html; charset=utf-8")
        } else {
            (self.json(session), "application/json")
        };
        let mut resp = ResponseHeader::build(self.status, Some(6))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header(PROXY_ERROR_HEADER, self.reason)?;
        super::rewrite::set_request_id(&mut resp, request_id)?;
        if self.status == 401 {
            resp.insert_header("www-authenticate", "Bearer realm=\"sandbar\"")?;
        }
        if self.status == 503 {
            resp.insert_header("retry-after", "2")?;
        }
        // A request body we did not read would be taken for the next request: close instead.
        let has_body = session.req_header().headers.contains_key("content-length")
            || session.req_header().headers.contains_key("transfer-encoding");
        if has_body || session.is_upgrade_req() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(Bytes::from(body)), true).await?;
        Ok(())
    }

    fn html(&self, request_id: &str) -> String {
        let reason = http::StatusCode::from_u16(self.status).map(|s| s.canonical_reason().unwrap_or("")).unwrap_or("");
        let title = format!("{} {reason}", self.status);
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{m}</p><p><small>sandbar-proxy, request {id}</small></p></body></html>\n",
            t = html_escape(&title),
            m = html_escape(&self.message),
            id = html_escape(request_id)
        )
    }

    fn json(&self, session: &Session) -> String {
        let req = session.req_header();
        let body = ErrorBody {
            status_code: self.status,
            message: self.message.clone(),
            code: Some(self.reason.to_ascii_uppercase().replace('-', "_")),
            source: Some(PROXY_ERROR_SOURCE.to_owned()),
            path: Some(req.uri.path().to_owned()),
            method: Some(req.method.to_string()),
            timestamp: Some(now_rfc3339()),
        };
        serde_json::to_string(&body).unwrap_or_default()
    }
}

/// A `302` to `location` (the same URL without the query-string token) that sets the preview cookie, with
/// `Referrer-Policy: no-referrer` so the token in the URL being left is not sent on as a `Referer`.
pub async fn send_redirect(
    session: &mut Session,
    location: &str,
    cookie: Option<&str>,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(302, Some(7))?;
    resp.insert_header("location", location)?;
    resp.insert_header("referrer-policy", "no-referrer")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("content-length", "0")?;
    super::rewrite::set_request_id(&mut resp, request_id)?;
    if let Some(cookie) = cookie {
        resp.insert_header("set-cookie", cookie)?;
    }
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

fn wants_html(session: &Session) -> bool {
    let accept = header_str(session, "accept").unwrap_or("");
    accept.contains("text/html") && !accept.contains("application/json")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_answers_escape_what_they_show() {
        let page = Reject::new(404, "sandbox-not-found", "no <b>such</b> sandbox").html("id&1");
        assert!(page.contains("<title>404 Not Found</title>"), "{page}");
        assert!(page.contains("no &lt;b&gt;such&lt;/b&gt; sandbox") && page.contains("request id&amp;1"), "{page}");
    }
}
