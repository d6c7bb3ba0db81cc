//! Extractors whose rejections are `ApiError`s: `ApiJson` and `ApiQuery`, the only body and query extractors
//! handlers use, so a malformed request gets the same JSON error body as any other failure.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `axum::Json` whose rejection is our JSON error body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

/// `axum::extract::Query` whose rejection is our JSON error body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // serde_urlencoded decodes invalid UTF-8 lossily; a path that is not UTF-8 must be refused, not mangled.
        let raw = parts.uri.query().unwrap_or_default();
        let valid = raw.split('&').all(|kv| {
            let decoded = kv.replace('+', " ");
            percent_encoding::percent_decode_str(&decoded).decode_utf8().is_ok()
        });
        if !valid {
            return Err(ApiError::bad_request("query parameters must be valid UTF-8").with_code("INVALID_FILE_PATH"));
        }
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// A WebSocket upgrade that may be missing: the endpoint answers a plain request with a JSON error instead.
pub type WsUpgrade = Result<axum::extract::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;
