//! `ApiError`: what every layer returns when a request cannot be served: a status and a message a person can act
//! on. 5xx carry a short message; the detail is logged where it happened. How it answers over HTTP is
//! `crate::http::error`'s business (this type names statuses with the `http` crate, not the web framework).

use ::http::StatusCode;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    /// A 500 whose detail is logged, not sent.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{context}: internal error"))
    }
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::not_found(format!("Sandbox with ID or name {id} not found"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal("database", e)
    }
}

impl From<getrandom::Error> for ApiError {
    fn from(e: getrandom::Error) -> Self {
        Self::internal("random token", e)
    }
}

/// `bytes` random bytes as an unpadded URL-safe base64 token (daemon, preview and SSH access tokens).
pub fn new_token(bytes: usize) -> ApiResult<String> {
    Ok(sandbar_support::token::url_safe(bytes)?)
}
