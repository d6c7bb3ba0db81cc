//! `engine::Error`: what an engine operation failed with. A kind (which the toolbox maps to an HTTP status), an
//! optional machine code the Daytona SDK turns into a typed exception, and a message the client may see. No HTTP
//! types here: the mapping lives in `toolbox::error`.

use std::io;

/// The class of failure; `toolbox::error` owns the status each one becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    /// The request cannot be answered in time (a command past its timeout, a stalled input).
    Timeout,
    Conflict,
    /// The thing existed but has ended (a session, a PTY).
    Gone,
    /// A program in the sandbox (a language server, a forwarded port's server) failed.
    BadGateway,
    /// A program in the sandbox did not answer in time.
    GatewayTimeout,
    /// The sandbox is shutting down.
    Unavailable,
    InsufficientStorage,
    Internal,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub code: Option<&'static str>,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, code: None, message: message.into() }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn shutting_down() -> Self {
        Self::new(ErrorKind::Unavailable, "the sandbox is shutting down")
    }

    /// An internal failure whose detail is logged, not sent.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(ErrorKind::Internal, format!("{context}: internal error"))
    }

    /// Maps a filesystem error on `path` to the kind and code the SDK understands.
    pub fn io(path: &str, err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => {
                Self::not_found(format!("{path}: no such file or directory")).with_code("FILE_NOT_FOUND")
            }
            io::ErrorKind::PermissionDenied => {
                Self::new(ErrorKind::Forbidden, format!("{path}: permission denied")).with_code("FILE_ACCESS_DENIED")
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
                Self::new(ErrorKind::InsufficientStorage, format!("{path}: no space left on device"))
            }
            _ => Self::internal(path, err),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
