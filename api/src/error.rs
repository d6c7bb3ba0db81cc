//! `ApiError`: what every layer returns when a request cannot be served: a status and a message a person can act
//! on. 5xx carry a short message; the detail is logged where it happened. How it answers over HTTP is
//! `crate::http::error`'s business (this type names statuses with the `http` crate, not the web framework).

use ::http::StatusCode;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The database gave up on a lock (a lock wait timed out, a deadlock, a serialization failure): the same
    /// request in a transaction of its own may well succeed (`crate::domain::group_commit` retries it so).
    pub transient: bool,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), transient: false }
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
    /// 507: the database has no room left to write. Reads still work; writes work again once space is freed.
    pub fn storage_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "the database has no space left to write (its disk is full); reads still work, and writes work again \
             once the operator frees space",
        )
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
    /// The database being away (unreachable, restarting, locked by another process, out of connections) is a 503
    /// that says so, since retrying later works; anything else is a 500.
    fn from(e: sqlx::Error) -> Self {
        if database_full(&e) {
            tracing::error!(error = %e, "the database's disk is full");
            return Self::storage_full();
        }
        if lock_conflict(&e) {
            tracing::warn!(error = %e, "database lock conflict");
            return Self {
                transient: true,
                ..Self::unavailable("the database was busy with a conflicting change; try again")
            };
        }
        match database_unavailable(&e) {
            Some(why) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::unavailable(format!("the database is unavailable ({why}); try again shortly"))
            }
            None => Self::internal("database", e),
        }
    }
}

/// Whether `e` says the database's storage is full: SQLite's `SQLITE_FULL` (13) or an I/O error from a write that
/// found no space (`ENOSPC` surfaces as `SQLITE_IOERR_WRITE` and friends with "disk is full" or "No space" in the
/// message), PostgreSQL's `disk_full` (53100).
pub fn database_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            let sqlite_full = code.parse::<i64>().is_ok_and(|c| c & 0xff == 13);
            let msg = db.message();
            sqlite_full || code == "53100" || msg.contains("disk is full") || msg.contains("No space left")
        }
        sqlx::Error::Io(io) => io.raw_os_error() == Some(28),
        _ => false,
    }
}

/// Whether `e` is PostgreSQL giving up on a lock: `lock_not_available` (55P03, a `lock_timeout`),
/// `deadlock_detected` (40P01) or `serialization_failure` (40001). Nothing was written; retrying can succeed.
pub fn lock_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("55P03" | "40P01" | "40001")),
        _ => false,
    }
}

/// Why `e` means the database cannot serve now, or `None` when it is some other failure.
pub fn database_unavailable(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        sqlx::Error::PoolTimedOut => Some("no connection became free in time"),
        sqlx::Error::PoolClosed => Some("shutting down"),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Some("cannot reach it"),
        // A connection closed before the server answered TLS negotiation (sslmode=prefer, the default, asks
        // first): sqlx reads the missing answer as a zero byte.
        sqlx::Error::Protocol(m) if m.contains("SSLRequest") => Some("cannot reach it"),
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes (primary code in the low byte).
            let sqlite_busy = code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            if sqlite_busy || db.message().contains("database is locked") {
                Some("locked by another process")
            } else if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300") {
                // PostgreSQL: connection exceptions, shutting down, starting up, too many connections.
                Some("not accepting connections")
            } else {
                None
            }
        }
        _ => None,
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
