//! sandbar-api: the control plane. It serves the Daytona-compatible REST API under `/api` (sandboxes, SSH access,
//! preview URLs), owns organizations, API keys and quotas, the sandbox state machine, the job queue runners
//! long-poll, lifecycle timers and route lookups for the proxy, stored with sqlx in SQLite (embedded default) or
//! PostgreSQL (several API instances).
//!
//! Three layers, each calling only the next: [`http`] (parse, authenticate, shape the answer) calls [`domain`]
//! (the decisions) and [`jobs`] (one file per runner job kind), which read and write rows through [`store`] (the
//! only place with SQL).
//!
//! Embedding: [`Config::new`], [`App::open`], [`bootstrap`] once for the first key, then [`App::serve`] with a
//! bound listener and a cancellation token; or [`serve`] for all of it. (`sandbar up` does not embed it: it runs
//! the `sandbar-api` binary as a child process.)

pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod feed;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod store;
pub mod trace;

/// The lifecycle timers, under the path embedders and tests use.
pub use domain::lifecycle;
/// Organizations and API keys, under the path embedders and benchmarks use.
pub use store::orgs as auth;

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Limits};
pub use store::orgs::{Bootstrap, create_api_key, create_organization, revoke_api_key};
pub use store::{Db, DbKind};

/// Shared state of one API instance.
#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    pub db: Db,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    job_notify: Mutex<HashMap<String, Arc<Notify>>>,
    route_notify: Notify,
    /// Whether [`feed`] is listening now (PostgreSQL): waits then poll only as a safety net.
    feed_connected: AtomicBool,
    /// Counters and histograms of this instance (`GET /metrics`).
    pub metrics: metrics::Metrics,
    /// Where creates and forks queue to commit together on PostgreSQL ([`domain::group_commit`]).
    pub(crate) creates: domain::group_commit::CommitGroup,
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
        // The per-organization and per-runner totals are kept with every change; a start makes them exact again
        // should anything have moved them wrongly (a bug, a hand edit of the database).
        let drifted = store::totals::reconcile(&db.pool).await?;
        if !drifted.is_empty() {
            tracing::warn!(drifted = drifted.len(), first = ?drifted.first(), "usage totals were recomputed");
        }
        let creates = domain::group_commit::CommitGroup::start(db.kind, &db.pool);
        Ok(Self(Arc::new(Inner {
            creates,
            db,
            config,
            clock,
            job_notify: Mutex::default(),
            route_notify: Notify::new(),
            feed_connected: AtomicBool::new(false),
            metrics: metrics::Metrics::default(),
        })))
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The wake-up of `runner_id`'s long-polls.
    pub(crate) fn job_notify(&self, runner_id: &str) -> Arc<Notify> {
        let mut map = sandbar_support::sync::lock(&self.job_notify);
        map.entry(runner_id.to_owned()).or_default().clone()
    }

    /// Wakes `runner_id`'s long-polls: a job for it was queued (or may now be claimable).
    pub(crate) fn wake_runner(&self, runner_id: &str) {
        self.job_notify(runner_id).notify_waiters();
    }

    /// Wakes every runner's long-polls (they reread, and pick up the poll interval that now applies).
    pub(crate) fn wake_all_runners(&self) {
        let notifies: Vec<Arc<Notify>> = sandbar_support::sync::lock(&self.job_notify).values().cloned().collect();
        for n in notifies {
            n.notify_waiters();
        }
    }

    /// Wakes route-change long-polls and everything that waits for a sandbox to change.
    pub(crate) fn wake_routes(&self) {
        self.route_notify.notify_waiters();
    }

    /// How often a wait rereads the database besides being woken: `poll_interval` while another instance's
    /// change could go unnoticed (PostgreSQL with the change feed down), `feed_poll_interval` (a safety net) while
    /// the feed is connected; on SQLite, where every writer is this process, at least a second.
    pub(crate) fn poll_interval(&self) -> Duration {
        match self.db.kind {
            DbKind::Postgres if self.change_feed_connected() => self.config.feed_poll_interval,
            DbKind::Postgres => self.config.poll_interval,
            DbKind::Sqlite => self.config.poll_interval.max(Duration::from_secs(1)),
        }
    }

    /// Whether this instance hears other instances' changes through PostgreSQL `LISTEN` now ([`feed`]).
    pub fn change_feed_connected(&self) -> bool {
        self.feed_connected.load(Ordering::Relaxed)
    }

    pub fn router(&self) -> Router {
        http::router(self)
    }

    /// Serves on `listener` until `shutdown`, running the lifecycle timers every second meanwhile (`run_timers`)
    /// and, on PostgreSQL, the change feed.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let timers = self.config.run_timers.then(|| tokio::spawn(lifecycle::run(self.clone(), shutdown.clone())));
        let feed = tokio::spawn(feed::run(self.clone(), shutdown.clone()));
        let server = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        // Requests in flight get the grace to finish; a follow or long-poll that outlives it is cut.
        let grace = self.config.shutdown_grace;
        let result = tokio::select! {
            r = server => r,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace over with requests still open; closing them");
                Ok(())
            }
        };
        shutdown.cancel();
        if let Some(timers) = timers {
            let _ = timers.await;
        }
        let _ = feed.await;
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
    let b = store::orgs::bootstrap(&db, org_name, &config.limits, SystemClock.now_ms()).await?;
    db.pool.close().await;
    Ok(b)
}
