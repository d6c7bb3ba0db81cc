//! The change feed between API instances (PostgreSQL `LISTEN/NOTIFY`, `sandbar_api::feed`): two instances on one
//! database, each with its poll interval set to an hour, so that only a notification can explain a wait ending
//! before its generous bound: a job result posted to A ends a create held on B, a route change made through A
//! reaches a route-feed long-poll on B, a wake asked of A reaches the runner long-polling B, a key revoked through A
//! stops working on B. Then the listener's connection is killed (`pg_terminate_backend`): it reconnects and
//! delivers again, and while it stays down the waits poll. PostgreSQL only: SQLite has no feed (its one process wakes its own waiters; every other test covers
//! that path).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_api::store::notify::LISTENER_APPLICATION_NAME;
use sandbar_proto::api::RouteChanges;
use sandbar_proto::runner::JobKind;
use sandbar_testkit::api::{FakeRunner, Harness, PROXY_TOKEN, TestDb, config, databases, empty, started_sandbox};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);
/// The bound on every wait that only a notification (or, where said, the short poll) can end in time. Generous:
/// this is no timing test, just far below the hour any poll of these instances takes.
const BOUND: Duration = Duration::from_secs(60);
/// How long the long-polls here wait (the most the API allows). A long-poll rereads once more at its end, so the
/// bound on what it answers must come before: [`POLL_BOUND`].
const LONG_POLL_SECS: u64 = 30;
const POLL_BOUND: Duration = Duration::from_secs(20);

/// An instance that rereads the database every `poll` while its feed is down, hourly while it is up, and
/// reconnects its feed after `reconnect`.
async fn instance(db: &TestDb, clock: &Arc<ManualClock>, poll: Duration, reconnect: Duration) -> Harness {
    instance_with(db, clock, poll, reconnect, Duration::ZERO).await
}

/// The same, holding a create open up to `create_wait` for its result.
async fn instance_with(
    db: &TestDb,
    clock: &Arc<ManualClock>,
    poll: Duration,
    reconnect: Duration,
    create_wait: Duration,
) -> Harness {
    let mut c = config(&db.url);
    c.poll_interval = poll;
    c.feed_poll_interval = HOUR;
    c.feed_reconnect = reconnect;
    c.create_wait = create_wait;
    Harness::start_with(db, c, clock.clone()).await
}

/// Lets a spawned long-poll reach its instance before the change it waits for (ordering only: were the change
/// first, the poll would find it by reading, and the test would still pass without proving the notification).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Waits (bounded) until `h`'s feed has connected `n` times and is connected.
/// Two instances on `db` with hour-long polls (so only the feed can deliver), both listening.
async fn listening_pair(db: &TestDb) -> (Harness, Harness) {
    let clock = Arc::new(ManualClock::default());
    let a = instance(db, &clock, HOUR, Duration::from_millis(50)).await;
    let b = instance(db, &clock, HOUR, Duration::from_millis(50)).await;
    connected(&a, 1).await;
    connected(&b, 1).await;
    (a, b)
}

async fn connected(h: &Harness, n: u64) {
    tokio::time::timeout(BOUND, async {
        while !(h.app.change_feed_connected() && h.app.metrics.change_feed_connects.get() >= n) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the change feed did not connect");
}

/// A long-poll of `h`'s route feed from its current head, spawned; the sandboxes it answers.
async fn route_feed_waiter(h: &Harness) -> tokio::task::JoinHandle<Vec<String>> {
    let (_, head) = h.proxy_get::<RouteChanges>("/internal/routes/changes?since=0").await;
    let since = head.unwrap().seq;
    let (http, base) = (h.http.clone(), h.base.clone());
    tokio::spawn(async move {
        let resp = http
            .get(format!("{base}/internal/routes/changes?since={since}&wait={LONG_POLL_SECS}"))
            .bearer_auth(PROXY_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<RouteChanges>().await.unwrap().sandbox_ids
    })
}

/// Terminates every change-feed connection to this test's database; how many.
async fn kill_listeners(h: &Harness) -> usize {
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&h.app.db.pool)
    .await
    .unwrap();
    killed.into_iter().filter(|k| *k).count()
}

/// The same runner (same credential), long-polling another instance.
fn via(r: &FakeRunner, h: &Harness) -> FakeRunner {
    FakeRunner { base: h.base.clone(), ..r.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_route_changes_and_wakes_reach_the_other_instance_by_notification() {
    for db in databases().await.into_iter().filter(|d| d.label == "postgres") {
        let clock = Arc::new(ManualClock::default());
        let a = instance(&db, &clock, HOUR, Duration::from_millis(50)).await;
        let b = instance_with(&db, &clock, HOUR, Duration::from_millis(50), Duration::from_secs(600)).await;
        connected(&a, 1).await;
        connected(&b, 1).await;
        let r = a.runner("r1");
        r.heartbeat(8, 16, 100).await;

        // A create held open on B (up to ten minutes); its runner long-polls A and posts the result to A.
        let poll = tokio::spawn({
            let r = r.clone();
            async move { r.poll(LONG_POLL_SECS).await }
        });
        settle().await;
        let create = tokio::spawn({
            let (http, base, key) = (b.http.clone(), b.base.clone(), b.key.clone());
            async move {
                let resp = http.post(format!("{base}/sandbox")).bearer_auth(key).json(&empty()).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                resp.json::<serde_json::Value>().await.unwrap()
            }
        });
        let jobs = tokio::time::timeout(POLL_BOUND, poll).await.expect("the job reached the runner").unwrap();
        let [job] = &jobs[..] else { panic!("one create job expected, got {jobs:?}") };
        assert!(matches!(job.kind, JobKind::CreateSandbox(_)), "{job:?}");
        assert_eq!(r.succeed(job, &a.org).await, StatusCode::NO_CONTENT);
        let created = tokio::time::timeout(BOUND, create).await.expect("the held create ended").unwrap();
        assert_eq!(created["state"], "started", "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(job.kind.sandbox_id(), id);

        // A route change made through A reaches a proxy long-polling B's route feed.
        let waiter = route_feed_waiter(&b).await;
        settle().await;
        let (s, v) = a.call(Method::POST, &format!("/sandbox/{id}/public/true"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let changed = tokio::time::timeout(POLL_BOUND, waiter).await.expect("the route change arrived").unwrap();
        assert_eq!(changed, vec![id.clone()]);

        // A wake asked of A (the proxy holding a request for an auto-stopped sandbox) reaches the runner
        // long-polling B.
        let sleeper = started_sandbox(&a, &r, json!({"autoStopInterval": 1})).await;
        clock.advance_secs(120);
        r.heartbeat(8, 16, 100).await;
        let report = a.tick().await;
        assert_eq!(report.stopped, vec![sleeper.clone()]);
        r.work(&a.org).await;
        assert_eq!(a.state(&sleeper).await, "stopped");
        let on_b = via(&r, &b);
        let poll = tokio::spawn(async move { on_b.poll(LONG_POLL_SECS).await });
        settle().await;
        let (s, v) = a.proxy_post(&format!("/internal/sandboxes/{sleeper}/wake"), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let jobs = tokio::time::timeout(POLL_BOUND, poll).await.expect("the wake reached the runner").unwrap();
        assert!(
            matches!(&jobs[..], [j] if j.kind == JobKind::StartSandbox { sandbox_id: sleeper.clone() }),
            "{jobs:?}"
        );
        assert!(b.app.metrics.change_feed_notifications.get() > 0);
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_listener_reconnects_and_delivers_again() {
    for db in databases().await.into_iter().filter(|d| d.label == "postgres") {
        let (a, b) = listening_pair(&db).await;
        let r = a.runner("r1");
        r.heartbeat(8, 16, 100).await;
        let id = started_sandbox(&a, &r, empty()).await;

        // A route-feed long-poll on B, waiting across the cut: the reconnect makes every waiter reread, so a
        // change committed while no listener was there is not lost.
        let waiter = route_feed_waiter(&b).await;
        settle().await;
        assert_eq!(kill_listeners(&a).await, 2, "both instances' listeners");
        let (s, v) = a.call(Method::POST, &format!("/sandbox/{id}/public/true"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let changed =
            tokio::time::timeout(POLL_BOUND, waiter).await.expect("the change arrived across the cut").unwrap();
        assert_eq!(changed, vec![id.clone()]);

        // Reconnected (a new connection), notifications flow again.
        connected(&b, 2).await;
        connected(&a, 2).await;
        let waiter = route_feed_waiter(&b).await;
        settle().await;
        let (s, v) = a.call(Method::POST, &format!("/sandbox/{id}/public/false"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let changed =
            tokio::time::timeout(POLL_BOUND, waiter).await.expect("the change arrived after the reconnect").unwrap();
        assert_eq!(changed, vec![id]);
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waits_poll_while_the_listener_is_down() {
    for db in databases().await.into_iter().filter(|d| d.label == "postgres") {
        let clock = Arc::new(ManualClock::default());
        let a = instance(&db, &clock, HOUR, Duration::from_millis(50)).await;
        // B polls every 50 ms while its feed is down, and waits an hour before reconnecting it.
        let b = instance(&db, &clock, Duration::from_millis(50), HOUR).await;
        connected(&a, 1).await;
        connected(&b, 1).await;
        let r = a.runner("r1");
        r.heartbeat(8, 16, 100).await;
        let id = started_sandbox(&a, &r, empty()).await;

        assert!(kill_listeners(&a).await >= 1);
        tokio::time::timeout(BOUND, async {
            while b.app.change_feed_connected() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("B noticed its feed is down");
        assert_eq!(b.app.metrics.change_feed_connected.get(), 0);

        // Nothing notifies B now: the long-poll hears of A's change by rereading.
        let waiter = route_feed_waiter(&b).await;
        settle().await;
        let (s, v) = a.call(Method::POST, &format!("/sandbox/{id}/public/true"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let changed = tokio::time::timeout(POLL_BOUND, waiter).await.expect("the poll found the change").unwrap();
        assert_eq!(changed, vec![id]);
        assert!(!b.app.change_feed_connected(), "B's listener stays down for the hour");
        a.stop().await;
        b.stop().await;
    }
}

/// A key revoked through one instance stops working on the other at once: the revoke's notification empties the
/// other instance's memory of keys (`sandbar_api::store::key_cache`), which would otherwise answer for the key a
/// little longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_through_one_instance_stops_working_on_the_other() {
    for db in databases().await.into_iter().filter(|d| d.label == "postgres") {
        let (a, b) = listening_pair(&db).await;

        // A key made through A and used on B, which now remembers it.
        let (s, v) = a.call(Method::POST, "/api-keys", Some(json!({"name": "short-lived"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let key = v["value"].as_str().unwrap().to_owned();
        assert_eq!(b.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::OK);
        assert_eq!(b.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::OK);

        let heard = b.app.metrics.change_feed_notifications.get();
        assert_eq!(a.call(Method::DELETE, "/api-keys/short-lived", None).await.0, StatusCode::NO_CONTENT);
        tokio::time::timeout(BOUND, async {
            while b.app.metrics.change_feed_notifications.get() == heard {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("B heard of the revoke");
        assert_eq!(b.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(a.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
        a.stop().await;
        b.stop().await;
    }
}
