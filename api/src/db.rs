//! Storage: one sqlx `Any` pool over SQLite (embedded default) or PostgreSQL, the migrations, and the few helpers
//! every module shares. SQL is written once for both: `$N` placeholders, TEXT/BIGINT columns.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub kind: DbKind,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("cannot open the database: {0}")]
    Connect(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Db {
    /// Opens (creating the SQLite file when needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("postgres") { DbKind::Postgres } else { DbKind::Sqlite };
        if kind == DbKind::Sqlite
            && let Some(path) = url.strip_prefix("sqlite://").map(|p| p.split('?').next().unwrap_or(p))
            && let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| DbError::DataDir(dir.display().to_string(), e))?;
        }
        let opts: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
        let pool = match kind {
            // SQLite has one writer: one connection avoids "database is locked" on lock upgrades, and long-polls
            // never hold a connection while they wait.
            DbKind::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(DbError::Connect)?,
            DbKind::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(DbError::Connect)?,
        };
        MIGRATOR.run(&pool).await.map_err(DbError::Migrate)?;
        Ok(Self { pool, kind })
    }
}

/// Next value of the global sequence (route versions, job order). Row-locked on PostgreSQL, so every instance
/// sees one order.
pub async fn next_seq(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value").fetch_one(conn).await
}

pub fn b(v: bool) -> i64 {
    i64::from(v)
}

pub fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    let mut buf = vec![0u8; bytes];
    // getrandom fails only when the OS has no entropy source at all; a uuid-derived fallback keeps us running.
    if getrandom::fill(&mut buf).is_err() {
        for chunk in buf.chunks_mut(16) {
            let u = uuid::Uuid::new_v4();
            let src = u.as_bytes();
            let n = chunk.len().min(src.len());
            chunk[..n].copy_from_slice(&src[..n]);
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}
