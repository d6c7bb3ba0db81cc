//! `ApiError`: the one error every toolbox handler and extractor rejection turns into, answered as
//! `{statusCode, message, code, source, timestamp}`.

use std::io;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandbar_proto::{DAEMON_ERROR_SOURCE, ErrorBody};

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

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// A 500 whose detail is logged, not sent.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{context}: internal error"))
    }

    /// Maps a filesystem error on `path` to the status and code the SDK understands.
    pub fn io(path: &str, err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => {
                Self::not_found(format!("{path}: no such file or directory")).with_code("FILE_NOT_FOUND")
            }
            io::ErrorKind::PermissionDenied => {
                Self::new(StatusCode::FORBIDDEN, format!("{path}: permission denied")).with_code("FILE_ACCESS_DENIED")
            }
            io::ErrorKind::AlreadyExists => Self::conflict(format!("{path}: already exists")),
            io::ErrorKind::NotADirectory => {
                Self::bad_request(format!("{path}: not a directory")).with_code("INVALID_FILE_PATH")
            }
            io::ErrorKind::IsADirectory => {
                Self::bad_request(format!("{path}: is a directory")).with_code("INVALID_FILE_PATH")
            }
            io::ErrorKind::DirectoryNotEmpty => {
                Self::bad_request(format!("{path}: directory not empty (set recursive=true to delete it)"))
            }
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => {
                Self::bad_request(format!("{path}: {err}")).with_code("INVALID_FILE_PATH")
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, format!("{path}: no space left on device"))
            }
            _ => Self::internal(path, err),
        }
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
