//! sandbar-api: the control plane. It serves the Daytona-compatible REST API under `/api` (sandboxes, SSH access,
//! preview URLs), owns organizations, API keys and quotas, the sandbox state machine ([`state`]), the job queue
//! runners long-poll ([`runners`]), lifecycle timers ([`lifecycle`]) and route lookups for the proxy
//! ([`internal`]), stored with sqlx in SQLite (embedded default) or PostgreSQL (several API instances).
//!
//! Embedding (what `sandbar up` does): [`Config::new`], [`App::open`], [`bootstrap`] once for the first key,
//! then [`App::serve`] with a bound listener and a cancellation token; or [`serve`] for all of it.

pub mod auth;
pub mod builds;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod fork;
pub mod internal;
pub mod lifecycle;
pub mod network;
pub mod openapi;
pub mod runners;
pub mod sandbox;
pub mod snapshots;
pub mod state;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use auth::{Bootstrap, create_api_key, create_organization, revoke_api_key};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Limits};
pub use db::{Db, DbKind};
use error::ApiError;

/// Shared state of one API instance.
#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    job_notify: Mutex<HashMap<String, Arc<Notify>>>,
    route_notify: Notify,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("db", &self.db.kind).finish_non_exhaustive()
    }
}

impl Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl App {
    /// Validates the config, opens and migrates the database.
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        config.validate()?;
        let db = Db::open(&config.database_url()).await?;
        Ok(Self(Arc::new(Inner { db, config, clock, job_notify: Mutex::default(), route_notify: Notify::new() })))
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The wake-up of `runner_id`'s long-polls.
    pub(crate) fn job_notify(&self, runner_id: &str) -> Arc<Notify> {
        let mut map = self.job_notify.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(runner_id.to_owned()).or_default().clone()
    }

    pub(crate) fn wake_runner(&self, runner_id: &str) {
        self.job_notify(runner_id).notify_waiters();
    }

    pub(crate) fn wake_routes(&self) {
        self.route_notify.notify_waiters();
    }

    /// How often a long-poll rereads the database besides being woken: other API instances (PostgreSQL) write
    /// without waking us.
    pub(crate) fn poll_interval(&self) -> Duration {
        match self.db.kind {
            DbKind::Postgres => Duration::from_millis(200),
            DbKind::Sqlite => Duration::from_secs(1),
        }
    }

    pub fn router(&self) -> Router {
        let api = Router::new()
            .merge(sandbox::routes())
            .merge(fork::routes())
            .merge(snapshots::routes())
            .merge(builds::routes())
            .merge(runners::routes())
            .merge(internal::routes())
            .merge(openapi::routes())
            .fallback(|| async { ApiError::not_found("no such endpoint") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
            });
        Router::new()
            .nest("/api", api)
            .fallback(|| async { ApiError::not_found("no such endpoint (the API lives under /api)") })
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown`, running the lifecycle timers every second meanwhile.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let timers = tokio::spawn(lifecycle::run(self.clone(), shutdown.clone()));
        let result =
            axum::serve(listener, self.router()).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await;
        shutdown.cancel();
        let _ = timers.await;
        Ok(result?)
    }
}

/// Opens the database from `config`, prints `sandbar-api ready addr=ADDR` and serves on `listener` until
/// `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = App::open(config, Arc::new(SystemClock)).await?;
    let addr = listener.local_addr()?;
    println!("sandbar-api ready addr={addr}");
    app.serve(listener, shutdown).await
}

/// Creates (or reuses) the organization `org_name` and a new API key for it, with the quotas of `config`.
/// The key is returned once and stored only as a hash.
pub async fn bootstrap(config: &Config, org_name: &str) -> anyhow::Result<Bootstrap> {
    config.validate()?;
    let db = Db::open(&config.database_url()).await?;
    let b = auth::bootstrap(&db, org_name, &config.limits, SystemClock.now_ms()).await?;
    db.pool.close().await;
    Ok(b)
}
