//! The store: the ONLY place with SQL. One sqlx `Any` pool over SQLite (embedded default) or PostgreSQL, the
//! migrations (`api/migrations`), and one module per group of tables. SQL is written once for both databases:
//! `$N` placeholders, TEXT/BIGINT columns. Functions here read and write rows and decide nothing: what a row may
//! become is `crate::domain`'s business, and no function here imports the HTTP layer.
//!
//! Nothing lives only in memory: sandboxes, jobs, keys (SHA-256 hashes), SSH and preview tokens, route changes
//! and build logs are rows, so an API restart (or a second instance on PostgreSQL) loses nothing.

/// The states whose sandboxes hold no CPU and memory, as an SQL list (a macro, so `used!` can include it).
macro_rules! idle_states {
    () => {
        "('stopped','archiving','archived','destroyed','error','build_failed')"
    };
}

/// The resources sandboxes `s` use: running ones count CPU and memory, every live one counts disk. The one usage
/// expression behind quotas (per organization) and placement (per runner): [`totals`] keeps it per organization
/// and per runner, and recomputes it with this (a macro, so the SQL stays one literal).
macro_rules! used {
    () => {
        concat!(
            "CAST(COALESCE(SUM(CASE WHEN s.state NOT IN ",
            idle_states!(),
            " THEN s.cpu ELSE 0 END), 0) AS BIGINT) AS used_cpu, CAST(COALESCE(SUM(CASE WHEN s.state NOT IN ",
            idle_states!(),
            " THEN s.memory ELSE 0 END), 0) AS BIGINT) AS used_memory, \
             CAST(COALESCE(SUM(s.disk), 0) AS BIGINT) AS used_disk"
        )
    };
}

pub mod builds;
pub mod creates;
pub mod drain;
pub mod image_bytes;
pub mod jobs;
pub mod key_cache;
pub mod notify;
pub mod orgs;
pub mod registries;
pub mod routes;
pub mod runners;
pub mod sandboxes;
pub mod sessions;
pub mod snapshots;
pub mod tokens;
pub mod totals;
pub mod usage;
pub mod volumes;

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection as _, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    /// Every write, and every read inside a transaction.
    pub pool: AnyPool,
    /// Reads outside a transaction on the hot paths (API keys, `GET /sandbox/{id}`, the proxy's route and
    /// authorize lookups, lists): today the same pool as writes on both databases (see [`Db::open`]); kept apart so
    /// a read pool can come back without touching the callers.
    pub read: AnyPool,
    pub kind: DbKind,
    /// Valid API keys looked up lately ([`key_cache`]).
    pub keys: std::sync::Arc<key_cache::KeyCache>,
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

/// How long a request waits for a database connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections a PostgreSQL pool holds (see [`Db::open`]): all opened at start and kept. 12 of PostgreSQL's
/// default 100 `max_connections` leaves room for several instances on one server (tests, a scale-out).
const PG_CONNECTIONS: u32 = 12;

/// A PostgreSQL connection idle longer than this is pinged before it is handed out.
const PING_IDLE: Duration = Duration::from_secs(1);

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
            // never hold a connection while they wait. Another process holding the file locked makes a statement
            // wait its busy timeout (5 s), then fail (a 503, `crate::error::database_unavailable`); requests queued behind it
            // give up after ACQUIRE_TIMEOUT: an answer, never a hang.
            DbKind::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(DbError::Connect)?,
            // All PG_CONNECTIONS are opened at start, in the background, and kept: a pool below its maximum opens a
            // connection for a request that finds none idle, and a new connection (a backend forked, SCRAM, the first
            // statements prepared) took ~100 ms here, the longest waits GETs had (`benches/src/bin/lifecycle.rs`;
            // with 8 of 16 opened at start a runner's reconcile still made GETs wait 115 ms).
            // sqlx's defaults opened connections on demand, closed them after 10 idle minutes and every 30 minutes,
            // so requests kept paying that. A connection broken meanwhile (the server restarted) is found by a ping before it is
            // used, once idle past PING_IDLE: one in constant use is not pinged, which saves a round trip a query.
            // The first connection is checked here; a server that is down fails each attempt at once, and sqlx
            // retries until ACQUIRE_TIMEOUT.
            DbKind::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(PG_CONNECTIONS)
                    .min_connections(PG_CONNECTIONS)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PING_IDLE {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(opts);
                drop(pool.acquire().await.map_err(DbError::Connect)?);
                pool
            }
        };
        MIGRATOR.run(&pool).await.map_err(DbError::Migrate)?;
        // Reads share the writer's pool. A pool of SQLite read-only connections beside the one writer was tried
        // (2026-12): after the data directory filled up and was freed, its connections kept answering from before
        // (a sandbox created afterwards read as 404; `tests/python/stack/test_disk_full.py`), so it is not used
        // until that is understood.
        let read = pool.clone();
        // On PostgreSQL other instances revoke keys too: the memory is trusted while the change feed is connected.
        let keys = std::sync::Arc::new(key_cache::KeyCache::new(kind == DbKind::Sqlite));
        Ok(Self { pool, read, kind, keys })
    }
}

/// Next value of the global sequence (route versions, job order). Row-locked on PostgreSQL, so every instance
/// sees one order.
pub async fn next_seq(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value").fetch_one(conn).await
}

/// A boolean column's value.
pub fn b(v: bool) -> i64 {
    i64::from(v)
}

/// How secrets are stored: the SHA-256 of the token, in lowercase hex.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sandbar_support::token::to_hex(&sha2::Sha256::digest(s.as_bytes()))
}

/// SQL list of the states whose sandboxes hold no CPU and memory: the complement of
/// `crate::domain::state::holds_compute`, which a test keeps in step.
pub const IDLE_STATES_SQL: &str = idle_states!();

/// The states of [`IDLE_STATES_SQL`], for code that decides per row (`totals::Delta::of`).
pub const IDLE_STATES: [&str; 6] = ["stopped", "archiving", "archived", "destroyed", "error", "build_failed"];

/// CPU, memory and disk in use (see `used!`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_list_and_sql_agree() {
        let sql: Vec<String> = super::IDLE_STATES.iter().map(|s| format!("'{s}'")).collect();
        assert_eq!(super::IDLE_STATES_SQL, format!("({})", sql.join(",")));
    }
}
