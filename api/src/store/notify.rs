//! The change feed between API instances on PostgreSQL: `NOTIFY sandbar_changes` sent in the transaction of
//! each change (PostgreSQL delivers it at commit, and not at all on rollback), and the `LISTEN` side that
//! `crate::feed` runs once per instance. On SQLite the writers are this process's own, which wake their waiters in
//! memory: every function here does nothing there.
//!
//! A notification names what to reread, never the data: waiters always read the rows themselves, so one lost or
//! repeated notification costs a reread, never a wrong answer. Payloads (PostgreSQL folds identical ones of one
//! transaction into one):
//! - `routes`: a sandbox's route or state changed (`sandboxes::bump`): route-feed long-polls, create waits,
//!   dashboard feeds;
//! - `jobs:RUNNER`: a job for `RUNNER` was queued or is due again (`jobs::enqueue`, `jobs::redeliver_now`): its
//!   job long-polls (a wake through the proxy queues a start this way);
//! - `done:RUNNER`: a job of `RUNNER` finished (`jobs::complete`): everything `routes` and `jobs:RUNNER` wake,
//!   and build-log followers;
//! - `logs`: a build log grew (`builds::append_log`);
//! - `keys`: an API key was revoked (`orgs::revoke_api_key`, `orgs::revoke_keys_named`): every instance forgets
//!   the keys it remembered (`super::key_cache`).

use sqlx::AnyConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

/// The one channel every instance listens on.
pub const CHANNEL: &str = "sandbar_changes";

/// The `application_name` of the listening connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "sandbar-api change feed";

/// What a notification asks this instance to reread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Routes,
    Jobs(String),
    Done(String),
    Logs,
    Keys,
}

impl Change {
    /// Parses a payload; `None` for one this version does not know (a newer instance's), which is ignored.
    pub fn parse(payload: &str) -> Option<Self> {
        match payload.split_once(':') {
            None if payload == "routes" => Some(Self::Routes),
            None if payload == "logs" => Some(Self::Logs),
            None if payload == "keys" => Some(Self::Keys),
            Some(("jobs", runner)) if !runner.is_empty() => Some(Self::Jobs(runner.to_owned())),
            Some(("done", runner)) if !runner.is_empty() => Some(Self::Done(runner.to_owned())),
            _ => None,
        }
    }
}

fn is_postgres(conn: &AnyConnection) -> bool {
    conn.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME
}

/// `pg_notify` returns `void`, which the `Any` driver cannot decode: each statement counts the rows it notified
/// for instead. The planner keeps volatile calls of a subquery even when the outer query reads no column of it.
async fn send(conn: &mut AnyConnection, payload: &str) -> Result<(), sqlx::Error> {
    if is_postgres(conn) {
        sqlx::query("SELECT COUNT(*) FROM (SELECT pg_notify($1, $2)) AS n")
            .bind(CHANNEL)
            .bind(payload)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A sandbox's route or state changed.
pub async fn routes(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    send(conn, "routes").await
}

/// A job for `runner_id` was queued or is due again.
pub async fn jobs(conn: &mut AnyConnection, runner_id: &str) -> Result<(), sqlx::Error> {
    send(conn, &format!("jobs:{runner_id}")).await
}

/// An API key was revoked.
pub async fn keys(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    send(conn, "keys").await
}

/// A build log grew.
pub async fn logs(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    send(conn, "logs").await
}

/// Job `job_id` finished (its runner read from the row).
pub async fn job_done(conn: &mut AnyConnection, job_id: &str) -> Result<(), sqlx::Error> {
    if is_postgres(conn) {
        sqlx::query("SELECT COUNT(*) FROM (SELECT pg_notify($1, 'done:' || runner_id) FROM jobs WHERE id = $2) AS n")
            .bind(CHANNEL)
            .bind(job_id)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The listening side: one connection of its own (not the pool's: it is held for as long as it lives), named
/// [`LISTENER_APPLICATION_NAME`].
#[derive(Debug)]
pub struct Listener(PgListener);

impl Listener {
    /// Connects to `url` (the API's PostgreSQL URL, TLS settings included) and listens on [`CHANNEL`]. Once this
    /// returns, every change committed afterwards is delivered.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options.application_name(LISTENER_APPLICATION_NAME))
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        // Reconnecting is `crate::feed`'s business (it must reread what the gap hid): a lost connection ends this
        // listener.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        Ok(Self(listener))
    }

    /// The next change; `Ok(None)` when the connection was lost (this listener is then done with).
    pub async fn recv(&mut self) -> Result<Option<Option<Change>>, sqlx::Error> {
        Ok(self.0.try_recv().await?.map(|n| Change::parse(n.payload())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(Change::parse("routes"), Some(Change::Routes));
        assert_eq!(Change::parse("logs"), Some(Change::Logs));
        assert_eq!(Change::parse("keys"), Some(Change::Keys));
        assert_eq!(Change::parse("jobs:r1"), Some(Change::Jobs("r1".into())));
        assert_eq!(Change::parse("done:r-2:x"), Some(Change::Done("r-2:x".into())));
        for unknown in ["", "jobs:", "done:", "route", "sandbox:x", "ROUTES"] {
            assert_eq!(Change::parse(unknown), None, "{unknown:?}");
        }
    }
}
