//! The web dashboard, served by the API itself at `/dashboard/` (the same listener, host and TLS as the REST API
//! the SDKs use; nothing else to run): server-rendered HTML and one small embedded script, no asset from the
//! internet.
//!
//! Who may reach it: anyone who can reach the API gets the sign-in page; everything else needs a session, made by
//! signing in with an API key (the form posts it once; the key never appears in a URL or a page) and kept in an
//! HttpOnly, SameSite=Strict cookie (Secure when the request came over HTTPS). A session sees only its key's
//! organization, through the same REST endpoints scripts use (`crate::http::auth::Caller` accepts the cookie, and
//! on every state-changing request the session's CSRF token). Rules: `crate::domain::sessions`.
//!
//! Pages ([`pages`]): sandboxes (filtered by state and label, kept live by server-sent events, [`events`]), one
//! sandbox (with its terminal, files, logs, ports and usage, [`workbench`]), API keys, snapshots and builds.
//!
//! The proxy serves the dashboard too (its `/dashboard` and `/api` paths come here as they are), and that is the
//! address `sandbar up` prints: there the pages, their REST calls and the toolbox paths of the terminal and file
//! browser share one origin and the proxy's TLS.

pub mod events;
pub mod org_pages;
pub mod pages;
pub mod workbench;

use axum::Form;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::auth::cookie;
use super::error::Path;
use crate::App;
use crate::domain::sessions::{self, SESSION_COOKIE, Session};
use crate::error::ApiError;

/// Where the dashboard lives.
pub const BASE: &str = "/dashboard";

pub fn routes() -> Router<App> {
    Router::new()
        .route(BASE, get(|| async { redirect(&format!("{BASE}/sandboxes")) }))
        .route("/dashboard/", get(|| async { redirect(&format!("{BASE}/sandboxes")) }))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", axum::routing::post(logout))
        .route("/dashboard/sandboxes", get(pages::sandboxes))
        .route("/dashboard/sandboxes/events", get(events::sandboxes))
        .route("/dashboard/sandboxes/{id}", get(pages::sandbox))
        .route("/dashboard/keys", get(pages::keys))
        .route("/dashboard/snapshots", get(pages::snapshots))
        .route("/dashboard/volumes", get(org_pages::volumes))
        .route("/dashboard/registries", get(org_pages::registries))
        .route("/dashboard/organization", get(org_pages::organization))
        .route("/dashboard/assets/{file}", get(asset))
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The sandbox page's: xterm.js writes its theme into `<style>` elements. Scripts stay as strict.
const CSP_RELAXED_STYLES: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A dashboard page: never cached, never framed, scripts only from here.
pub fn html(status: StatusCode, body: String) -> Response {
    page(status, body, CSP)
}

/// [`html`] for a page with the terminal, whose styles may be inline.
pub fn html_relaxed_styles(status: StatusCode, body: String) -> Response {
    page(status, body, CSP_RELAXED_STYLES)
}

fn page(status: StatusCode, body: String, csp: &'static str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static(csp));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    r
}

pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A signed-in page request; without a live session the answer is the sign-in page (a redirect to it).
pub struct PageSession(pub Session);

impl FromRequestParts<App> for PageSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let to_login = || redirect(&format!("{BASE}/login"));
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(to_login()) };
        match sessions::resolve(app, token).await {
            Ok(Some(s)) => Ok(Self(s)),
            Ok(None) => Err(to_login()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// Whether the browser reached us over HTTPS (directly, or through a TLS proxy that says so).
fn https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

async fn login_page(State(app): State<App>, headers: HeaderMap) -> Response {
    let signed_in = match cookie(&headers, SESSION_COOKIE) {
        Some(t) => sessions::resolve(&app, t).await.ok().flatten().is_some(),
        None => false,
    };
    if signed_in {
        return redirect(&format!("{BASE}/sandboxes"));
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

/// Signs in. A post from another site is refused (a login CSRF would sign the victim into the attacker's
/// organization); a wrong key answers the sign-in page again with 401.
async fn login(State(app): State<App>, headers: HeaderMap, form: Result<Form<LoginForm>, FormRejection>) -> Response {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok())
        && !sessions::same_origin(origin, host)
    {
        return html(StatusCode::FORBIDDEN, pages::login(Some("Cross-site sign-in refused.")));
    }
    let Ok(Form(form)) = form else {
        return html(StatusCode::BAD_REQUEST, pages::login(Some("Paste an API key to sign in.")));
    };
    match sessions::sign_in(&app, &form.key).await {
        Ok((token, s)) => {
            let mut r = redirect(&format!("{BASE}/sandboxes"));
            let max_age = ((s.expires_at - app.now()) / 1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&token, max_age, https(&headers))) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            html(StatusCode::UNAUTHORIZED, pages::login(Some("That API key is unknown, expired or revoked.")))
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

/// Signs out (a form with the session's CSRF token, from this origin) and clears the cookie.
async fn logout(State(app): State<App>, headers: HeaderMap, form: Result<Form<LogoutForm>, FormRejection>) -> Response {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok())
        && !sessions::same_origin(origin, host)
    {
        return ApiError::forbidden("cross-origin sign-out refused: its Origin is not this host").into_response();
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE).map(str::to_owned) {
        match sessions::resolve(&app, &token).await {
            Ok(Some(s)) => {
                let csrf = form.as_ref().ok().map(|Form(f)| f.csrf.as_str());
                let origin = headers.get("origin").and_then(|v| v.to_str().ok());
                if let Err(e) = sessions::check_csrf(&s, csrf, origin, host) {
                    return e.into_response();
                }
                if let Err(e) = sessions::sign_out(&app, &token).await {
                    return e.into_response();
                }
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    let mut r = redirect(&format!("{BASE}/login"));
    if let Ok(v) = HeaderValue::from_str(&session_cookie("", 0, https(&headers))) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");
const SANDBOX_SCRIPT: &str = include_str!("../../assets/dashboard/sandbox.js");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");

/// The embedded scripts and style sheets (public: they hold nothing secret).
async fn asset(Path(file): Path<String>) -> Response {
    use workbench::xterm;
    const JS: &str = "text/javascript; charset=utf-8";
    let missing =
        || ApiError::not_found("xterm.js is not in this build: run scripts/fetch-xterm and rebuild sandbar-api");
    let (body, kind): (&'static [u8], _) = match file.as_str() {
        "dashboard.js" => (SCRIPT.as_bytes(), JS),
        "sandbox.js" => (SANDBOX_SCRIPT.as_bytes(), JS),
        "dashboard.css" => (STYLE.as_bytes(), "text/css; charset=utf-8"),
        "org.js" => (org_pages::SCRIPT.as_bytes(), JS),
        "xterm.js" => match xterm::XTERM_JS {
            Some(b) => (b, JS),
            None => return missing().into_response(),
        },
        "xterm-addon-fit.js" => match xterm::XTERM_FIT_JS {
            Some(b) => (b, JS),
            None => return missing().into_response(),
        },
        "xterm.css" => match xterm::XTERM_CSS {
            Some(b) => (b, "text/css; charset=utf-8"),
            None => return missing().into_response(),
        },
        _ => return ApiError::not_found("no such dashboard asset").into_response(),
    };
    let mut r = body.into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}
