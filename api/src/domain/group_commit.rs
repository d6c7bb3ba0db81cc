//! Group commit of new sandboxes (plain creates and forks) on PostgreSQL: the writes of concurrent creates share
//! one transaction and one COMMIT, and the hot rows are held only for one statement per create.
//!
//! Why: every create ends by taking the global sequence row (`crate::store::next_seq`, in one statement with the
//! organization's and the runner's totals: `crate::store::creates`) and holds those rows until its COMMIT has
//! returned: the WAL flush, and every wake-up of the API and of the server between the statement and the COMMIT.
//! So creates committed one after another at that pace, whatever the number of connections: about 300 creates/s
//! with 32 concurrent clients on the 2-core machine of issue #19 (debug build; sampled `pg_stat_activity` showed 14
//! of 16 connections waiting on that row's lock), where SQLite made 650 to 850.
//!
//! How: [`WORKERS`] tasks per API instance take turns at the queue; each takes every create waiting (no timer:
//! whatever queued meanwhile, up to [`MAX_MEMBERS`]) into one transaction, in two phases:
//! 1. each member's rows (its sandbox, labels, volume mounts: everything up to its end), each in a SAVEPOINT; a
//!    member whose rows fail (a name taken, the checks before its end) is rolled back to its savepoint and
//!    answered with its own error. This phase takes no hot row, so another worker's phase 2 runs meanwhile.
//! 2. each member's end, the one statement of `crate::store::creates`, then one COMMIT for all. Only this phase
//!    holds the sequence row. A member that statement refuses (its quota or its runner's room: the checks are exact
//!    inside the group as across transactions) is taken back (`New::take_back`) and run again alone after the
//!    COMMIT, which answers it with the refusal it names, as a create alone would.
//!
//! Measured with `benches` `api` (debug build, no release build at hand; 1000 to 4000 creates, 32 concurrent,
//! the 2 cores shared with other builds, so figures in pairs run back to back), PostgreSQL creates/s before -> after:
//! 388 -> 609, 460 -> 654, 245 -> 394, 208 -> 415, 330 -> 613 (about 1.4 to 2 times); SQLite unchanged within the
//! noise (506 to 980 either way). Afterwards no connection waits on the sequence row; the first version of this
//! module, every member's whole body in its savepoint in one worker, held that row for five round trips per create
//! and gained nothing measurable (295 against 321; 260 and 297 against 307 and 235).
//!
//! What each caller still gets is what a transaction of its own gave it:
//! - Nothing is observable before the COMMIT: the wakes of the runner and the route watchers follow it, and the
//!   change feed's notifications are sent by PostgreSQL at COMMIT.
//! - A COMMIT the server refused, or a transaction that broke before it, committed nothing: each member is run
//!   again alone, in the caller's task. A COMMIT whose answer was lost (the connection dropped) is answered with
//!   the error to every member, as a lost single COMMIT was.
//! - Lock order: elsewhere a transaction takes the sequence row last, after its other row locks; a group takes it
//!   only in phase 2, after every row lock of phase 1, and phase 2 waits for no row another transaction holds
//!   before it takes the sequence row. A lock conflict that PostgreSQL breaks anyway (a deadlock between two
//!   groups' phase 1: `ApiError::transient`) rolls the member back to its savepoint and runs it alone afterwards.
//! - A caller that went away while queued (its client disconnected) is dropped before anything is written for it;
//!   one that goes away later finds its sandbox whole, as after a disconnect during a single COMMIT.
//! - Creates that write more than their sandbox's rows (builds, volumes, links), and any whose end is not the one
//!   statement (an image to pull first), run alone, as on SQLite.
//!
//! SQLite keeps one transaction per create ([`write`] runs it alone): its one writer commits without an fsync
//! per transaction (WAL with `synchronous = NORMAL`), so there is nothing to share.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument as _;

use super::sandboxes::{New, finish_new};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::DbKind;
use crate::store::creates::{self, Finished};
use crate::store::sandboxes::Row;

/// The most members one group commits. Each member's savepoint that writes is a PostgreSQL subtransaction, and a
/// backend keeps 64 of them in shared memory (`PGPROC_MAX_CACHED_SUBXIDS`); past that every other session's
/// snapshot must consult `pg_subtrans`, which slows the whole server.
const MAX_MEMBERS: usize = 48;

/// Groups in flight at once per instance: one writes its members' rows while another holds the sequence row.
const WORKERS: usize = 2;

/// How many callers may queue before a caller waits to queue (each is a request in flight).
const QUEUE: usize = 1024;

/// What a [`Rows`] returns.
pub(crate) type RowsFuture<'c> = Pin<Box<dyn Future<Output = ApiResult<New>> + Send + 'c>>;

/// The rows of one create or fork (everything before its end, `super::sandboxes::finish_new`), in the transaction
/// or savepoint it is given. It may run twice (in a group, then alone), so it owns what it needs and changes
/// nothing outside the database.
pub(crate) type Rows = Box<dyn for<'c> Fn(&'c App, &'c mut AnyConnection) -> RowsFuture<'c> + Send + Sync>;

/// Boxes `f` as [`Rows`] (a closure given here gets its higher-ranked signature).
pub(crate) fn rows<F>(f: F) -> Rows
where
    F: for<'c> Fn(&'c App, &'c mut AnyConnection) -> RowsFuture<'c> + Send + Sync + 'static,
{
    Box::new(f)
}

/// One instance's queue to its group workers (PostgreSQL), or nothing (SQLite).
#[derive(Debug)]
pub struct CommitGroup {
    queue: Option<mpsc::Sender<Member>>,
}

impl CommitGroup {
    /// Starts the workers on PostgreSQL. They hold the pool and the queue's receiving end only, so they end when
    /// the instance (the sending end) is dropped.
    pub(crate) fn start(kind: DbKind, pool: &AnyPool) -> Self {
        if kind != DbKind::Postgres {
            return Self { queue: None };
        }
        let (queue, members) = mpsc::channel(QUEUE);
        let members = Arc::new(Mutex::new(members));
        for _ in 0..WORKERS {
            tokio::spawn(run(pool.clone(), members.clone()));
        }
        Self { queue: Some(queue) }
    }
}

/// Writes a new sandbox's `rows` and its end, and commits (in a group on PostgreSQL when `grouped`: only creates
/// whose rows [`New::take_back`] can take back; otherwise in a transaction of its own), then wakes the runner and
/// the route watchers; returns the new row.
pub(crate) async fn write(app: &App, grouped: bool, rows: Rows) -> ApiResult<Row> {
    let Some(queue) = app.creates.queue.as_ref().filter(|_| grouped) else {
        return alone(app, &rows).await;
    };
    let (reply, answer) = oneshot::channel();
    let member =
        Member { app: app.clone(), rows, span: tracing::Span::current(), trace: crate::trace::current(), reply };
    // Dropping this future while it waits here or below is safe: a member whose answer nobody awaits is not
    // written (see `run`), and one already written is whole.
    let rows = match queue.send(member).await {
        Ok(()) => match answer.await {
            Ok(Outcome::Done(result)) => return *result,
            Ok(Outcome::Alone(rows)) => rows,
            Err(_) => return Err(ApiError::internal("create", "the commit group dropped a create unanswered")),
        },
        // The workers are gone (the runtime shuts down): alone, as on SQLite.
        Err(mpsc::error::SendError(member)) => member.rows,
    };
    alone(app, &rows).await
}

/// `rows` and the end in a transaction of their own.
async fn alone(app: &App, rows: &Rows) -> ApiResult<Row> {
    let mut tx = app.db.pool.begin().await?;
    let new = rows(app, &mut tx).await?;
    let runner = new.runner.clone();
    let row = finish_new(app, &mut tx, new).await?;
    tx.commit().await?;
    wake(app, &runner);
    Ok(row)
}

fn wake(app: &App, runner: &str) {
    app.wake_runner(runner);
    app.wake_routes();
}

/// A caller waiting in the queue.
struct Member {
    app: App,
    rows: Rows,
    /// The request's span and trace, for the logs and the job's `traceparent`.
    span: tracing::Span,
    trace: Option<sandbar_support::trace::TraceParent>,
    reply: oneshot::Sender<Outcome>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").finish_non_exhaustive()
    }
}

/// What the group answers a member.
enum Outcome {
    /// Committed (the new row) or refused (its own error).
    Done(Box<ApiResult<Row>>),
    /// Nothing of it was committed: run it again alone.
    Alone(Rows),
}

impl Member {
    fn answer(self, result: ApiResult<Row>) {
        self.count(if result.is_ok() { "committed" } else { "refused" });
        // A caller that went away gets nothing; what was committed for it stays whole.
        let _ = self.reply.send(Outcome::Done(Box::new(result)));
    }

    fn alone(self) {
        self.count("alone");
        let _ = self.reply.send(Outcome::Alone(self.rows));
    }

    fn count(&self, outcome: &'static str) {
        let metrics = &self.app.metrics;
        metrics.create_group_members.get_or_create(&crate::metrics::OutcomeLabel { outcome }).inc();
    }

    /// Runs `f` in the member's request span and trace.
    async fn scoped<F: Future>(&self, f: F) -> F::Output {
        let f = f.instrument(self.span.clone());
        match self.trace.clone() {
            Some(parent) => crate::trace::scope(parent, f).await,
            None => f.await,
        }
    }
}

/// A worker: takes whatever is queued (at least one member, at most [`MAX_MEMBERS`]) and commits it; meanwhile
/// the next worker takes what queues next.
async fn run(pool: AnyPool, queue: Arc<Mutex<mpsc::Receiver<Member>>>) {
    let mut members = Vec::with_capacity(MAX_MEMBERS);
    loop {
        if queue.lock().await.recv_many(&mut members, MAX_MEMBERS).await == 0 {
            return;
        }
        // A caller whose client disconnected while it queued: nothing is written for it.
        members.retain(|m| !m.reply.is_closed());
        if !members.is_empty() {
            commit(&pool, std::mem::take(&mut members)).await;
        }
        members.clear();
    }
}

/// Phase 1 for one member (see the module doc).
enum Step {
    /// Its rows, written in its savepoint.
    Written(Box<New>),
    /// Rolled back to its savepoint, with this answer.
    Refused(ApiError),
    /// Rolled back to its savepoint: run it alone after the group (a lock conflict, or an end that is not one
    /// statement).
    Alone,
    /// The transaction is unusable (nothing of it will commit).
    Broken,
}

/// Runs `members` in one transaction and commits it, answering each member.
async fn commit(pool: &AnyPool, members: Vec<Member>) {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        // Alone, each gets its own answer (a 503 when the database is away).
        Err(_) => return members.into_iter().for_each(Member::alone),
    };
    // Phase 1: the rows.
    let mut written: Vec<(Member, Box<New>)> = Vec::with_capacity(members.len());
    let mut later = Vec::new();
    let mut members = members.into_iter();
    while let Some(m) = members.next() {
        match rows_of(&mut tx, &m).await {
            Step::Written(new) => written.push((m, new)),
            Step::Refused(e) => m.answer(Err(e)),
            Step::Alone => later.push(m),
            Step::Broken => {
                m.alone();
                return broken(written.into_iter().map(|(m, _)| m).chain(later).chain(members));
            }
        }
    }
    // Phase 2: the ends, from the first one on under the sequence row.
    let mut done: Vec<(Member, Row, String)> = Vec::with_capacity(written.len());
    let mut written = written.into_iter();
    while let Some((m, new)) = written.next() {
        match end_of(&mut tx, &m, new).await {
            Ok(Some((row, runner))) => done.push((m, row, runner)),
            Ok(None) => later.push(m),
            Err(()) => {
                m.alone();
                return broken(done.into_iter().map(|(m, ..)| m).chain(written.map(|(m, _)| m)).chain(later));
            }
        }
    }
    if done.is_empty() {
        // Nothing to commit; dropping `tx` rolls it back.
        later.into_iter().for_each(Member::alone);
        return;
    }
    match tx.commit().await {
        Ok(()) => {
            if let Some((m, ..)) = done.first() {
                m.app.metrics.create_groups.inc();
            }
            for (m, row, runner) in done {
                wake(&m.app, &runner);
                m.answer(Ok(row));
            }
        }
        // The server answered the COMMIT with an error: nothing was committed, so each member may run alone.
        Err(sqlx::Error::Database(e)) => {
            tracing::warn!(error = %e, members = done.len(), "a group's commit failed; its creates run alone");
            done.into_iter().for_each(|(m, ..)| m.alone());
        }
        // No answer: whether it committed is unknown, as for a single COMMIT whose connection dropped.
        Err(e) => {
            let error = ApiError::from(e);
            done.into_iter().for_each(|(m, ..)| m.answer(Err(error.clone())));
        }
    }
    later.into_iter().for_each(Member::alone);
}

/// The transaction broke before its COMMIT, so nothing of it commits: every member runs alone.
fn broken(members: impl Iterator<Item = Member>) {
    tracing::warn!("a group's transaction broke; its creates run alone");
    members.for_each(Member::alone);
}

/// Member `m`'s rows, in a savepoint of `tx`. Savepoints are not released (a release is one more round trip):
/// each member's nests in the one before, and rolling back to the newest undoes that member only.
async fn rows_of(tx: &mut AnyConnection, m: &Member) -> Step {
    if sqlx::query("SAVEPOINT member").execute(&mut *tx).await.is_err() {
        return Step::Broken;
    }
    let result = m.scoped((m.rows)(&m.app, &mut *tx)).await;
    let step = match result {
        Ok(new) if new.one_statement(&m.app).is_some() => return Step::Written(Box::new(new)),
        Ok(_) => Step::Alone,
        Err(e) if e.transient => Step::Alone,
        Err(e) => Step::Refused(e),
    };
    match sqlx::query("ROLLBACK TO SAVEPOINT member").execute(&mut *tx).await {
        Ok(_) => step,
        Err(_) => Step::Broken,
    }
}

/// Member `m`'s end: the new row and its runner; `None` when a limit refused it (taken back: it runs alone after
/// the group, which names the refusal); `Err` when the transaction broke.
async fn end_of(tx: &mut AnyConnection, m: &Member, mut new: Box<New>) -> Result<Option<(Row, String)>, ()> {
    let Some(one) = new.one_statement(&m.app) else {
        return Ok(None);
    };
    match m.scoped(creates::finish(&mut *tx, &one)).await {
        Ok(Finished::Done { seq }) => {
            (new.row.version, new.row.updated_at) = (seq, new.now);
            Ok(Some((new.row, new.runner)))
        }
        Ok(Finished::Refused { org_added, .. }) => match new.take_back(tx, org_added).await {
            Ok(()) => Ok(None),
            Err(_) => Err(()),
        },
        Err(_) => Err(()),
    }
}
