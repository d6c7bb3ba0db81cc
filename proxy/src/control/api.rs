//! The proxy's side of the API's internal surface (proto/src/api.rs): route lookups, the route-changes long-poll,
//! authorize, signed preview URL tokens, waking auto-stopped sandboxes, and activity reports, all with the proxy's
//! service token.

use std::time::Duration;

use reqwest::StatusCode;
use sandbar_proto::api::{
    ActivityReport, AuthorizeRequest, AuthorizeResponse, Route, RouteChanges, SignedPreviewResolveRequest,
    SignedPreviewResolveResponse,
};
use thiserror::Error;

/// How the API answered a question the proxy asked.
#[derive(Debug, Clone, Error)]
pub enum ApiCallError {
    /// the API could not be reached or did not answer in time
    #[error("the control plane (API) did not answer: {0}")]
    Unreachable(String),
    /// the API answered with a status the contract does not allow here
    #[error("the control plane (API) answered {0}")]
    Status(u16),
    /// the API's answer was not the JSON the contract says
    #[error("the control plane (API) sent an unreadable answer: {0}")]
    Body(String),
}

/// The outcome of `POST /internal/authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Allowed(AuthorizeResponse),
    /// 401: the credential is unknown or expired.
    Unauthorized,
    /// 404: unknown sandbox or another organization's.
    NotFound,
}

/// The outcome of `POST /internal/preview/resolve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedPreview {
    Allowed(SignedPreviewResolveResponse),
    /// 401: unknown, expired, revoked or for another port; the API's message.
    Refused(String),
}

/// The outcome of `POST /internal/sandboxes/{id}/wake`.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// The start was asked for (or the sandbox is already on its way): the route as it is now.
    Started(Box<Route>),
    /// 409: the sandbox may not be woken, or the start was refused; the API's message.
    Refused(String),
    NotFound,
}

/// A success body as the contract's JSON.
async fn body<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiCallError> {
    resp.json::<T>().await.map_err(|e| ApiCallError::Body(e.to_string()))
}

/// The `message` of an error body, or `fallback`.
async fn message_of(resp: reqwest::Response, fallback: &str) -> String {
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    body["message"].as_str().map(str::to_owned).unwrap_or_else(|| fallback.to_owned())
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
    poll: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl ApiClient {
    /// `api_url` is the API's base URL with or without the `/api` prefix.
    pub fn new(api_url: &str, token: String) -> Result<Self, ApiCallError> {
        let trimmed = api_url.trim_end_matches('/');
        let base = if trimmed.ends_with("/api") { trimmed.to_owned() } else { format!("{trimmed}/api") };
        let build = |timeout: Duration| {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(3))
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .build()
                .map_err(|e| ApiCallError::Unreachable(e.to_string()))
        };
        Ok(Self { base, token, http: build(Duration::from_secs(10))?, poll: build(Duration::from_secs(60))? })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `req` with the proxy's service token.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiCallError> {
        req.bearer_auth(&self.token).send().await.map_err(|e| ApiCallError::Unreachable(e.to_string()))
    }

    /// `GET /internal/routes/{id}`: `Ok(None)` for 404.
    pub async fn route(&self, sandbox_id: &str) -> Result<Option<Route>, ApiCallError> {
        let resp = self.send(self.http.get(self.url(&format!("/internal/routes/{sandbox_id}")))).await?;
        match resp.status() {
            StatusCode::OK => body::<Route>(resp).await.map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(ApiCallError::Status(s.as_u16())),
        }
    }

    /// `GET /internal/routes/changes?since=SEQ&wait=SECS`.
    pub async fn route_changes(&self, since: i64, wait_secs: u64) -> Result<RouteChanges, ApiCallError> {
        let resp = self
            .send(
                self.poll
                    .get(self.url("/internal/routes/changes"))
                    .query(&[("since", since.to_string()), ("wait", wait_secs.to_string())]),
            )
            .await?;
        match resp.status() {
            StatusCode::OK => body::<RouteChanges>(resp).await,
            s => Err(ApiCallError::Status(s.as_u16())),
        }
    }

    /// `POST /internal/authorize`.
    pub async fn authorize(&self, req: &AuthorizeRequest) -> Result<Authorization, ApiCallError> {
        let resp = self.send(self.http.post(self.url("/internal/authorize")).json(req)).await?;
        match resp.status() {
            StatusCode::OK => body::<AuthorizeResponse>(resp).await.map(Authorization::Allowed),
            StatusCode::UNAUTHORIZED => Ok(Authorization::Unauthorized),
            StatusCode::NOT_FOUND => Ok(Authorization::NotFound),
            s => Err(ApiCallError::Status(s.as_u16())),
        }
    }

    /// `POST /internal/preview/resolve`: which sandbox the token of a signed preview URL opens.
    pub async fn resolve_signed_preview(&self, token: &str, port: u16) -> Result<SignedPreview, ApiCallError> {
        let req = SignedPreviewResolveRequest { token: token.to_owned(), port };
        let resp = self.send(self.http.post(self.url("/internal/preview/resolve")).json(&req)).await?;
        match resp.status() {
            StatusCode::OK => body::<SignedPreviewResolveResponse>(resp).await.map(SignedPreview::Allowed),
            StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => Ok(SignedPreview::Refused(
                message_of(resp, "this signed preview URL is invalid, expired or revoked").await,
            )),
            s => Err(ApiCallError::Status(s.as_u16())),
        }
    }

    /// `POST /internal/sandboxes/{id}/wake`: start an auto-stopped sandbox for a waiting request.
    pub async fn wake(&self, sandbox_id: &str) -> Result<Wake, ApiCallError> {
        let resp = self.send(self.http.post(self.url(&format!("/internal/sandboxes/{sandbox_id}/wake")))).await?;
        match resp.status() {
            StatusCode::OK => body::<Route>(resp).await.map(|r| Wake::Started(Box::new(r))),
            StatusCode::NOT_FOUND => Ok(Wake::NotFound),
            StatusCode::CONFLICT => Ok(Wake::Refused(message_of(resp, "the sandbox could not be started").await)),
            s => Err(ApiCallError::Status(s.as_u16())),
        }
    }

    /// `POST /internal/activity` -> 204.
    pub async fn activity(&self, report: &ActivityReport) -> Result<(), ApiCallError> {
        let resp = self.send(self.http.post(self.url("/internal/activity")).json(report)).await?;
        if resp.status().is_success() { Ok(()) } else { Err(ApiCallError::Status(resp.status().as_u16())) }
    }
}

/// The outcome of `POST /internal/ssh/resolve`.
#[derive(Debug, Clone, PartialEq)]
pub enum SshResolution {
    Target(sandbar_proto::api::SshResolveResponse),
    /// 401 or 409: the message the API gave, for the SSH user.
    Refused(String),
}

impl ApiClient {
    /// `POST /internal/ssh/resolve`: where an SSH-access token leads, or why not.
    /// `recheck`: the gateway asking again about an open session (not counted as activity).
    pub async fn ssh_resolve(&self, token: &str, recheck: bool) -> Result<SshResolution, ApiCallError> {
        let req = sandbar_proto::api::SshResolveRequest { token: token.to_owned() };
        let path = if recheck { "/internal/ssh/resolve?recheck=true" } else { "/internal/ssh/resolve" };
        let resp = self.send(self.http.post(self.url(path)).json(&req)).await?;
        match resp.status() {
            StatusCode::OK => body(resp).await.map(SshResolution::Target),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::CONFLICT | StatusCode::NOT_FOUND) => {
                Ok(SshResolution::Refused(message_of(resp, &format!("refused ({s})")).await))
            }
            s => Err(ApiCallError::Status(s.as_u16())),
        }
    }
}
