//! Which credential a request carries and what the API says it opens. In order of precedence: the token of a
//! signed preview URL (`{port}-{token}.{domain}`, where the sandbox id would be), the `X-Daytona-Preview-Token`
//! header, the `DAYTONA_SANDBOX_AUTH_KEY` query parameter, `Authorization: Bearer <API key>`, and on preview hosts
//! the proxy's own cookie (set after a preview token came in the header or query, so a browser keeps access).
//! On toolbox paths (never preview hosts), last, the dashboard's session cookie, and only from a request the
//! browser says the dashboard's own page made (`Sec-Fetch-Site: same-origin`, or a WebSocket handshake whose
//! `Origin` is the request's own): the dashboard is served on the
//! proxy's host ([`super::target::Target::Api`]) and its terminal and file browser call the toolbox there, while a
//! page of a sandbox (`{port}-{id}.{domain}`, same-site but not same-origin) gets nothing from the cookie.
//! Browsers send fetch metadata to secure origins only (HTTPS, and `localhost`/loopback over HTTP), so the
//! dashboard's terminal and files need the proxy's HTTPS listener anywhere but on the machine itself.
//!
//! The proxy decides nothing about access: every question goes to the API's `POST /internal/authorize` through
//! the cache, and a request with no credential asks it with none (the API opens a public sandbox's preview ports,
//! never the daemon's own). A running public sandbox is asked about first without the credential, so a credential
//! it does not need is neither checked nor used, as with anonymous traffic; a sandbox that is not running checks
//! the credential, because only a credentialed request may start it ([`super::wake`]).
//!
//! Preview tokens (plain or signed, header, query or cookie) never open the daemon's own ports: that is the API's
//! rule, and the proxy asks. What the proxy itself guarantees is that no credential it recognises reaches a
//! sandbox ([`strip`]), on every path: an API key (`Authorization: Bearer sbk_...`, whether or not it was the
//! credential used, and any `Authorization` on a toolbox path or one that was used), the preview-token header, the
//! proxy's cookie and the dashboard's session cookie (the app's own cookies are kept) and the query-string token. A browser that brought the token in
//! the query of a page load (`GET`/`HEAD`, not a WebSocket upgrade) gets a `302` to the same URL without it, with
//! the cookie set and `Referrer-Policy: no-referrer`, so the token leaves the address bar, the history and the
//! `Referer` of whatever the page loads.
//!
//! The credential that admitted a request is kept in its context ([`Grant`]) so an upgraded connection can be
//! asked about again while it lives ([`super::revoke`]).

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use sandbar_proto::api::{
    DASHBOARD_SESSION_COOKIE, PREVIEW_TOKEN_HEADER, PREVIEW_TOKEN_QUERY, Route, SignedPreviewResolveResponse,
    is_signed_preview_token,
};

use super::EdgeProxy;
use super::headers::{Scan, Strip};
use super::origin::daemon_port;
use super::reject::Reject;
use super::target::Destination;
use crate::control::api::{Authorization, SignedPreview};
use crate::control::cache::CredentialKind;

/// Cookie the proxy sets on a preview host after a valid preview token, so a browser keeps access.
pub const PREVIEW_COOKIE: &str = "sandbar_preview_token";

/// How the API's keys start (`sbk_`): such a bearer token is ours, never an app's, and never reaches a sandbox.
pub const API_KEY_PREFIX: &str = "sbk_";

/// What a request proved.
#[derive(Debug, Default)]
pub struct Access {
    /// The caller proved a right to this sandbox (only such requests may wake it).
    pub credentialed: bool,
    /// The credential was an API key: `Authorization` is not passed on to the sandbox.
    pub used_bearer: bool,
    /// `Set-Cookie` for the answer: a preview token from the header or query, kept for the browser.
    pub set_cookie: Option<String>,
    /// The preview token came in the query of a page load: answer with a redirect to the URL without it.
    pub redirect: bool,
    /// What admitted the request, to ask again while an upgraded connection lives.
    pub grant: Grant,
}

/// The credential that admitted a request, as the API was asked about it.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// A public sandbox's port opened without a credential.
    pub anonymous: bool,
    /// The credential the request presented (kept in memory only, never logged).
    pub presented: Option<(CredentialKind, String)>,
    /// The token of a signed preview URL.
    pub signed: Option<String>,
}

/// Where a presented credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Bearer,
    Cookie,
}

/// A credential taken from the request (not a signed preview URL's token).
struct Presented {
    kind: CredentialKind,
    value: String,
    source: Source,
}

impl Presented {
    /// The credential the request carries, by precedence; the proxy's cookie counts on preview hosts only, the
    /// dashboard's on toolbox paths from the dashboard's own page only (`own_page`, [`EdgeProxy::asked_by_own_page`]).
    fn of(session: &Session, scan: &Scan<'_>, preview_host: bool, own_page: impl FnOnce() -> bool) -> Option<Self> {
        let found = |kind, value: String, source| Some(Self { kind, value, source });
        if let Some(t) = scan.preview_token.filter(|t| !t.is_empty()) {
            return found(CredentialKind::PreviewToken, t.to_owned(), Source::Header);
        }
        let query = session.req_header().uri.query().unwrap_or("");
        if let Some(t) = query_param(query, PREVIEW_TOKEN_QUERY).map(percent_decode).filter(|t| !t.is_empty()) {
            return found(CredentialKind::PreviewToken, t, Source::Query);
        }
        if let Some(t) = scan.authorization.and_then(bearer) {
            return found(CredentialKind::ApiKey, t.to_owned(), Source::Bearer);
        }
        let cookies = scan.cookie;
        if preview_host {
            let t = cookies.and_then(|c| cookie_value(c, PREVIEW_COOKIE))?;
            return found(CredentialKind::PreviewToken, t.to_owned(), Source::Cookie);
        }
        let t = cookies.and_then(|c| cookie_value(c, DASHBOARD_SESSION_COOKIE)).filter(|t| !t.is_empty())?;
        if !own_page() {
            return None;
        }
        found(CredentialKind::DashboardSession, t.to_owned(), Source::Cookie)
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Removes every credential the proxy recognises from `req`, the request about to reach a sandbox: `Authorization`
/// values that carry an API key (all of them when `drop_authorization`: a toolbox path, or a request the API key
/// admitted), the preview-token header, and the proxy's and the dashboard's cookies from every `Cookie` header (the
/// others are kept, joined into one header as HTTP/2 clients split them). The query token is removed from the path
/// by the caller. `present` says which of those headers the request has ([`Scan`]): only those are looked at.
pub fn strip(req: &mut RequestHeader, drop_authorization: bool, present: Strip) {
    if present.authorization {
        strip_authorization(req, drop_authorization);
    }
    if present.preview_token {
        req.remove_header(PREVIEW_TOKEN_HEADER);
    }
    if present.cookie {
        strip_cookies(req);
    }
}

fn strip_authorization(req: &mut RequestHeader, drop_authorization: bool) {
    if drop_authorization {
        req.remove_header("authorization");
        return;
    }
    let auth: Vec<String> = req
        .headers
        .get_all("authorization")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if !auth.is_empty() {
        let ours = |v: &str| drop_authorization || bearer(v).is_some_and(|t| t.starts_with(API_KEY_PREFIX));
        let kept: Vec<&String> = auth.iter().filter(|v| !ours(v)).collect();
        if kept.len() != auth.len() {
            req.remove_header("authorization");
            for v in kept {
                let _ = req.append_header("authorization", v.as_str());
            }
        }
    }
}

fn strip_cookies(req: &mut RequestHeader) {
    let cookies: Vec<String> =
        req.headers.get_all("cookie").iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    if !cookies.is_empty() {
        req.remove_header("cookie");
        let kept =
            strip_cookie(&cookies.join("; "), PREVIEW_COOKIE).and_then(|c| strip_cookie(&c, DASHBOARD_SESSION_COOKIE));
        if let Some(kept) = kept {
            let _ = req.insert_header("cookie", kept);
        }
    }
}

/// The token of a signed preview URL, when the destination's sandbox id is one.
pub fn signed_token(dest: &Destination) -> Option<String> {
    (dest.preview_host() && is_signed_preview_token(&dest.sandbox_id)).then(|| dest.sandbox_id.clone())
}

impl EdgeProxy {
    /// What the signed preview token opens (`newer_than`: the route version the answer must not predate).
    pub(super) async fn resolve_signed(
        &self,
        token: &str,
        port: u16,
        newer_than: Option<i64>,
    ) -> Result<SignedPreviewResolveResponse, Reject> {
        match self.shared.auth.resolve_signed(token, port, newer_than).await {
            Ok(SignedPreview::Allowed(ok)) => Ok(ok),
            Ok(SignedPreview::Refused(message)) => Err(Reject::new(401, "signed-url-invalid", message)),
            Err(e) => Err(Reject::api_unavailable(&self.shared.metrics, &e, "checking the signed preview URL")),
        }
    }

    /// Whether the browser says a page of this very origin made the request: `Sec-Fetch-Site: same-origin`, or, on
    /// a WebSocket handshake (which Chromium sends without fetch metadata), an `Origin` that is the request's own.
    fn asked_by_own_page(&self, session: &Session, scan: &Scan<'_>) -> bool {
        if scan.sec_fetch_site.is_some_and(|v| v.eq_ignore_ascii_case("same-origin")) {
            return true;
        }
        let req = session.req_header();
        let host = req.uri.authority().map(|a| a.as_str()).or(scan.host);
        match (scan.origin, host) {
            (Some(origin), Some(host)) if session.is_upgrade_req() => {
                super::origin::check(&req.method, true, Some(origin), self.https, host)
            }
            _ => false,
        }
    }

    /// Asks the API whether this request may reach `dest.port` of `sandbox_id` (whose route is `route`).
    pub(super) async fn access(
        &self,
        session: &Session,
        scan: &Scan<'_>,
        dest: &Destination,
        sandbox_id: &str,
        route: &Route,
        signed: Option<&str>,
    ) -> Result<Access, Reject> {
        if let Some(token) = signed {
            // The answer may predate a change of the route (expiring the URL bumps it): then ask again.
            let grant = self.resolve_signed(token, dest.port, Some(route.version)).await?;
            if grant.sandbox_id != sandbox_id || grant.organization_id != route.organization_id {
                return Err(Reject::not_found(sandbox_id));
            }
            let grant = Grant { signed: Some(token.to_owned()), ..Grant::default() };
            return Ok(Access { credentialed: true, grant, ..Access::default() });
        }
        let presented = Presented::of(session, scan, dest.preview_host(), || self.asked_by_own_page(session, scan));
        let ask_anonymously = match &presented {
            None => true,
            Some(_) => route.public && route.serves().is_some(),
        };
        let grant = Grant {
            anonymous: ask_anonymously,
            presented: presented.as_ref().map(|p| (p.kind, p.value.clone())),
            signed: None,
        };
        if ask_anonymously && self.authorized(CredentialKind::Anonymous, "", sandbox_id, dest.port, route).await? {
            return Ok(Access { grant, ..Access::default() });
        }
        let Some(p) = presented else {
            return Err(Reject::new(
                401,
                "unauthorized",
                "authentication required: send Authorization: Bearer <API key> or a preview token",
            ));
        };
        if !self.authorized(p.kind, &p.value, sandbox_id, dest.port, route).await? {
            let message = match p.kind {
                CredentialKind::PreviewToken if daemon_port(dest.port) => {
                    "preview tokens do not open the sandbox's toolbox, SSH or terminal ports: send an API key"
                }
                CredentialKind::DashboardSession => "the dashboard session has ended: sign in again",
                _ => "invalid or expired API key or preview token",
            };
            return Err(Reject::new(401, "unauthorized", message));
        }
        let grant = Grant { anonymous: false, ..grant };
        let mut access = Access {
            credentialed: true,
            used_bearer: p.kind == CredentialKind::ApiKey,
            set_cookie: None,
            redirect: false,
            grant,
        };
        let cookie_safe = p.value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b));
        let from_request = matches!(p.source, Source::Header | Source::Query);
        if from_request && dest.preview_host() && p.kind == CredentialKind::PreviewToken && cookie_safe {
            let secure = if self.https { "; Secure" } else { "" };
            access.set_cookie =
                Some(format!("{PREVIEW_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400{secure}", p.value));
            let method = &session.req_header().method;
            let page_load = (method == http::Method::GET || method == http::Method::HEAD) && !session.is_upgrade_req();
            access.redirect = p.source == Source::Query && page_load;
        }
        Ok(access)
    }

    /// Whether the credential that admitted a long-lived connection still opens its port (`Ok(false)`: revoked,
    /// or the sandbox is gone); the same questions as [`Self::access`], through the same cache.
    pub(super) async fn still_granted(
        shared: &super::Shared,
        grant: &Grant,
        sandbox_id: &str,
        port: u16,
        route: &Route,
    ) -> Result<bool, crate::control::api::ApiCallError> {
        if let Some(token) = &grant.signed {
            return match shared.auth.resolve_signed(token, port, Some(route.version)).await? {
                SignedPreview::Allowed(ok) => {
                    Ok(ok.sandbox_id == sandbox_id && ok.organization_id == route.organization_id)
                }
                SignedPreview::Refused(_) => Ok(false),
            };
        }
        let ask = |kind, credential: String| async move {
            match &*shared.auth.authorize(kind, &credential, sandbox_id, port, route.version).await? {
                Authorization::Allowed(ok) => Ok(ok.organization_id == route.organization_id),
                Authorization::NotFound | Authorization::Unauthorized => Ok(false),
            }
        };
        if grant.anonymous && ask(CredentialKind::Anonymous, String::new()).await? {
            return Ok(true);
        }
        match &grant.presented {
            Some((kind, value)) => ask(*kind, value.clone()).await,
            None => Ok(false),
        }
    }

    /// The API's answer (cached): `Ok(false)` for a refused credential, 404 for another organization's sandbox.
    async fn authorized(
        &self,
        kind: CredentialKind,
        credential: &str,
        sandbox_id: &str,
        port: u16,
        route: &Route,
    ) -> Result<bool, Reject> {
        match self.shared.auth.authorize(kind, credential, sandbox_id, port, route.version).await.as_deref() {
            Ok(Authorization::Allowed(ok)) if ok.organization_id == route.organization_id => Ok(true),
            Ok(Authorization::Allowed(_) | Authorization::NotFound) => Err(Reject::not_found(sandbox_id)),
            Ok(Authorization::Unauthorized) => Ok(false),
            Err(e) => Err(Reject::api_unavailable(&self.shared.metrics, e, "authorizing")),
        }
    }
}

pub fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session.req_header().headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of the query parameter `name`, if present.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// `Cookie` without the cookie `name`, or `None` when nothing is left.
fn strip_cookie(cookies: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = cookies
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k).trim() != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Runs the private helpers on untrusted input for the fuzz target ([`super::fuzz`]): they must not panic.
#[cfg(test)]
pub(super) fn fuzz_helpers(query: &str, other: &str) {
    let _ = query_param(query, PREVIEW_TOKEN_QUERY).map(percent_decode);
    let _ = cookie_value(other, PREVIEW_COOKIE);
    let _ = bearer(other);
    if let Some(kept) = strip_cookie(other, PREVIEW_COOKIE) {
        assert!(cookie_value(&kept, PREVIEW_COOKIE).is_none(), "{other:?} -> {kept:?}");
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = ((*h as char).to_digit(16), (*l as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_cookie_helpers() {
        assert_eq!(query_param("a=1&DAYTONA_SANDBOX_AUTH_KEY=tok&b", PREVIEW_TOKEN_QUERY), Some("tok"));
        assert_eq!(cookie_value("a=1; sandbar_preview_token=abc; b=2", PREVIEW_COOKIE), Some("abc"));
        assert_eq!(percent_decode("a%2Bb+c%zz"), "a+b c%zz");
        assert_eq!(strip_cookie("a=1; sandbar_preview_token=abc; b=2", PREVIEW_COOKIE).as_deref(), Some("a=1; b=2"));
        assert_eq!(strip_cookie("sandbar_preview_token=abc", PREVIEW_COOKIE), None);
        assert_eq!(strip_cookie("a=1;;sandbar_preview_token =x", PREVIEW_COOKIE).as_deref(), Some("a=1"));
        assert_eq!(bearer("Bearer sbk_1"), Some("sbk_1"));
        assert_eq!(bearer("bEaReR   tok "), Some("tok"));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn strip_removes_only_our_credentials() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("authorization", "Bearer sbk_secret").unwrap();
        req.append_header("authorization", "Bearer app-token").unwrap();
        req.append_header(PREVIEW_TOKEN_HEADER, "tok").unwrap();
        req.append_header("cookie", "a=1; sandbar_preview_token=tok").unwrap();
        req.append_header("cookie", "sandbar_preview_token=tok2; b=2; sandbar_session=s").unwrap();
        let all_present = Strip { internal: true, authorization: true, preview_token: true, cookie: true };
        strip(&mut req, false, all_present);
        let all = |req: &RequestHeader, n: &str| {
            req.headers.get_all(n).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(all(&req, "authorization"), ["Bearer app-token"]);
        assert!(all(&req, PREVIEW_TOKEN_HEADER).is_empty());
        assert_eq!(all(&req, "cookie"), ["a=1; b=2"]);
        strip(&mut req, true, all_present);
        assert!(all(&req, "authorization").is_empty());
    }
}
