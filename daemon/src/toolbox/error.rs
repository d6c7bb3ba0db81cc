//! `ApiError`: the one error every toolbox handler and extractor rejection turns into, answered as
//! `{statusCode, message, code, source, timestamp}`; and the status each `engine::ErrorKind` becomes.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandbar_proto::{DAEMON_ERROR_SOURCE, ErrorBody};

use crate::engine::lsp::LspError;
use crate::engine::pty::PtyError;
use crate::engine::{self, ErrorKind};

/// Method and path of the request being answered, so every error body names them (the SDK's `ErrorResponse`
/// requires `path`). Set by the toolbox middleware for the duration of the request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
}

tokio::task_local! {
    pub static REQUEST: RequestInfo;
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Option<&'static str>,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, code: None, message: message.into() }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn body(&self) -> ErrorBody {
        let req = REQUEST.try_with(Clone::clone).ok();
        ErrorBody {
            status_code: self.status.as_u16(),
            message: self.message.clone(),
            code: self.code.map(str::to_owned),
            source: Some(DAEMON_ERROR_SOURCE.to_owned()),
            path: Some(req.as_ref().map(|r| r.path.clone()).unwrap_or_default()),
            method: req.map(|r| r.method),
            timestamp: Some(crate::util::now_rfc3339()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> Self {
        let status = match e.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, code: e.code, message: e.message }
    }
}

impl From<PtyError> for ApiError {
    fn from(e: PtyError) -> Self {
        engine::Error::from(e).into()
    }
}

impl From<LspError> for ApiError {
    fn from(e: LspError) -> Self {
        engine::Error::from(e).into()
    }
}
