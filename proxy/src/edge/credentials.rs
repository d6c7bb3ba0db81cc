//! Which credential a request carries and what the API says it opens. In order of precedence: the token of a
//! signed preview URL (`{port}-{token}.{domain}`, where the sandbox id would be), the `X-Daytona-Preview-Token`
//! header, the `DAYTONA_SANDBOX_AUTH_KEY` query parameter, `Authorization: Bearer <API key>`, and on preview hosts
//! the proxy's own cookie (set after a preview token came in the header or query, so a browser keeps access).
//!
//! The proxy decides nothing about access: every question goes to the API's `POST /internal/authorize` through
//! the cache, and a request with no credential asks it with none (the API opens a public sandbox's preview ports,
//! never the daemon's own). A running public sandbox is asked about first without the credential, so a credential
//! it does not need is neither checked nor used, as with anonymous traffic; a sandbox that is not running checks
//! the credential, because only a credentialed request may start it ([`super::wake`]).

use pingora::proxy::Session;
use sandbar_proto::api::{
    PREVIEW_TOKEN_HEADER, PREVIEW_TOKEN_QUERY, Route, SignedPreviewResolveResponse, is_signed_preview_token,
};
use sandbar_proto::runner::SandboxState;

use super::EdgeProxy;
use super::reject::Reject;
use super::target::Destination;
use crate::control::api::{Authorization, SignedPreview};
use crate::control::cache::CredentialKind;

/// Cookie the proxy sets on a preview host after a valid preview token, so a browser keeps access.
pub const PREVIEW_COOKIE: &str = "sandbar_preview_token";

/// What a request proved.
#[derive(Debug, Default)]
pub struct Access {
    /// The caller proved a right to this sandbox (only such requests may wake it).
    pub credentialed: bool,
    /// The credential was an API key: `Authorization` is not passed on to the sandbox.
    pub used_bearer: bool,
    /// `Set-Cookie` for the answer: a preview token from the header or query, kept for the browser.
    pub set_cookie: Option<String>,
}

/// A credential taken from the request (not a signed preview URL's token).
struct Presented {
    kind: CredentialKind,
    value: String,
    /// From a header or the query (not the proxy's own cookie): worth a cookie.
    from_request: bool,
}

impl Presented {
    /// The credential the request carries, by precedence; the cookie counts on preview hosts only.
    fn of(session: &Session, preview_host: bool) -> Option<Self> {
        let found = |kind, value: String, from_request| Some(Self { kind, value, from_request });
        if let Some(t) = header_str(session, PREVIEW_TOKEN_HEADER).filter(|t| !t.is_empty()) {
            return found(CredentialKind::PreviewToken, t.to_owned(), true);
        }
        let query = session.req_header().uri.query().unwrap_or("");
        if let Some(t) = query_param(query, PREVIEW_TOKEN_QUERY).map(percent_decode).filter(|t| !t.is_empty()) {
            return found(CredentialKind::PreviewToken, t, true);
        }
        let bearer = header_str(session, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let Some(t) = bearer {
            return found(CredentialKind::ApiKey, t.to_owned(), false);
        }
        let cookie = header_str(session, "cookie").and_then(|c| cookie_value(c, PREVIEW_COOKIE));
        cookie.filter(|_| preview_host).and_then(|t| found(CredentialKind::PreviewToken, t.to_owned(), false))
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

    /// Asks the API whether this request may reach `dest.port` of `sandbox_id` (whose route is `route`).
    pub(super) async fn access(
        &self,
        session: &Session,
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
            return Ok(Access { credentialed: true, ..Access::default() });
        }
        let presented = Presented::of(session, dest.preview_host());
        let ask_anonymously = match &presented {
            None => true,
            Some(_) => route.public && route.state == SandboxState::Started,
        };
        if ask_anonymously && self.authorized(CredentialKind::Anonymous, "", sandbox_id, dest.port, route).await? {
            return Ok(Access::default());
        }
        let Some(p) = presented else {
            return Err(Reject::new(
                401,
                "unauthorized",
                "authentication required: send Authorization: Bearer <API key> or a preview token",
            ));
        };
        if !self.authorized(p.kind, &p.value, sandbox_id, dest.port, route).await? {
            return Err(Reject::new(401, "unauthorized", "invalid or expired API key or preview token"));
        }
        let mut access = Access { credentialed: true, used_bearer: p.kind == CredentialKind::ApiKey, set_cookie: None };
        let cookie_safe = p.value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b));
        if p.from_request && dest.preview_host() && p.kind == CredentialKind::PreviewToken && cookie_safe {
            let secure = if self.https { "; Secure" } else { "" };
            access.set_cookie =
                Some(format!("{PREVIEW_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400{secure}", p.value));
        }
        Ok(access)
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
        match self.shared.auth.authorize(kind, credential, sandbox_id, port, route.version).await {
            Ok(Authorization::Allowed(ok)) if ok.organization_id == route.organization_id => Ok(true),
            Ok(Authorization::Allowed(_) | Authorization::NotFound) => Err(Reject::not_found(sandbox_id)),
            Ok(Authorization::Unauthorized) => Ok(false),
            Err(e) => Err(Reject::api_unavailable(&self.shared.metrics, &e, "authorizing")),
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

fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
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
    }
}
