//! The change feed: how one API instance learns, within milliseconds, of changes another instance committed to the
//! same PostgreSQL database (a job result stored, a route or state changed, a job queued by a wake), so that a
//! create held open on instance B ends as soon as its result reaches instance A, and a proxy long-polling B's
//! route feed hears of a change made through A.
//!
//! Every change sends `NOTIFY sandbar_changes` inside its own transaction (`crate::store::notify`, from the store
//! functions every change goes through). [`run`], one task per instance, holds a `LISTEN` connection and turns each
//! notification into the same in-memory wake-up a local change gives (`App::wake_routes`, `App::wake_runner`, the
//! build-log followers); the waiters then reread the rows themselves.
//!
//! Polling stays, as the fallback: while the feed is connected a wait rereads every `feed_poll_interval` (30 s, a
//! safety net); while it is not (it lost its connection and reconnects with backoff from `feed_reconnect`), every
//! `poll_interval` (200 ms). Losing the connection and regaining it each wake every waiter once, so a change
//! committed in the gap (which no notification will ever name) is reread, and the waits switch interval. SQLite has
//! no feed: one process owns the file, and its writes wake its waiters directly.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sandbar_support::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::store::DbKind;
use crate::store::notify::{Change, Listener};

/// The longest wait between reconnects (unless `feed_reconnect` is longer).
const MAX_RECONNECT: Duration = Duration::from_secs(30);

/// Listens until `shutdown` (returns at once on SQLite).
pub async fn run(app: App, shutdown: CancellationToken) {
    if app.db.kind != DbKind::Postgres {
        return;
    }
    let url = app.config.database_url();
    let first = app.config.feed_reconnect;
    let backoff = Backoff::new(first, MAX_RECONNECT.max(first));
    let mut attempt = 0u32;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            c = Listener::connect(&url) => c,
        };
        match connected {
            Ok(mut listener) => {
                attempt = 0;
                set_connected(&app, true);
                app.metrics.change_feed_connects.inc();
                tracing::info!("change feed connected");
                // Changes committed while we were not listening were never notified to us.
                wake_all(&app);
                let lost = tokio::select! {
                    () = shutdown.cancelled() => None,
                    e = deliver(&app, &mut listener) => Some(e),
                };
                set_connected(&app, false);
                wake_all(&app);
                match lost {
                    None => return,
                    Some(e) => tracing::warn!(error = %e, "change feed lost its connection; polling until it is back"),
                }
            }
            Err(e) => tracing::warn!(error = %e, attempt, "change feed cannot connect; polling meanwhile"),
        }
        let delay = backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Hands every notification to the local waiters until the connection fails; why it did.
async fn deliver(app: &App, listener: &mut Listener) -> String {
    loop {
        match listener.recv().await {
            Ok(Some(change)) => {
                match change {
                    Some(change) => wake(app, &change),
                    None => tracing::debug!("change notification of an unknown kind ignored"),
                }
                // Counted once acted on (a test waits for the count, then expects the effect).
                app.metrics.change_feed_notifications.inc();
            }
            Ok(None) => return "connection closed".to_owned(),
            Err(e) => return e.to_string(),
        }
    }
}

/// The in-memory wake-up `change` stands for.
fn wake(app: &App, change: &Change) {
    match change {
        Change::Routes => app.wake_routes(),
        Change::Jobs(runner) => app.wake_runner(runner),
        Change::Done(runner) => {
            app.wake_runner(runner);
            app.wake_routes();
            crate::domain::builds::wake_followers();
        }
        Change::Logs => crate::domain::builds::wake_followers(),
        Change::Keys => app.db.keys.clear(),
    }
}

/// Every local waiter rereads (and picks up the poll interval that now applies).
fn wake_all(app: &App) {
    app.wake_routes();
    app.wake_all_runners();
    crate::domain::builds::wake_followers();
}

fn set_connected(app: &App, connected: bool) {
    app.feed_connected.store(connected, Ordering::Relaxed);
    // A revoke made through another instance while we were not listening was never notified to us.
    app.db.keys.trust(connected);
    app.metrics.change_feed_connected.set(i64::from(connected));
}
