//! The API's `GET /metrics`: only the operator's metrics token reads it (an organization's key, the service tokens
//! and no credential are refused; no token configured, it is off), and it counts what happened: requests by route
//! template (never a raw id), jobs claimed and completed by kind, jobs queued and sandboxes by state from the
//! database, lifecycle passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_testkit::api::{Harness, PROXY_TOKEN, RUNNER_TOKEN, config, databases, empty, started_sandbox};

const METRICS_TOKEN: &str = "metrics-secret-token";

async fn scrape(h: &Harness, token: Option<&str>) -> (StatusCode, String) {
    let root = h.base.trim_end_matches("/api");
    let mut r = h.http.get(format!("{root}/metrics"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The value of the sample line that starts with `series` (name and labels as written), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_need_the_metrics_token_and_count_routes_jobs_and_states() {
    for db in databases().await {
        let mut c = config(&db.url);
        c.metrics_token = Some(METRICS_TOKEN.into());
        let h = Harness::start_with(&db, c, Arc::new(ManualClock::default())).await;
        let label = db.label;

        // Who may read: the metrics token only.
        let (s, body) = scrape(&h, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{label}: {body}");
        assert!(body.contains("\"message\""), "{body}");
        for other in [h.key.as_str(), RUNNER_TOKEN, PROXY_TOKEN, "metrics-secret-tokeN"] {
            assert_eq!(scrape(&h, Some(other)).await.0, StatusCode::UNAUTHORIZED, "{label}: {other}");
        }
        // Not under /api either (the proxy forwards /api/...).
        let (s, _) = h.req(Method::GET, "/metrics", Some(METRICS_TOKEN), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{label}");

        let runner = h.runner("r1");
        runner.heartbeat(8, 16, 100).await;
        let started = started_sandbox(&h, &runner, empty()).await;
        // A second create stays queued: no runner polls for it.
        let queued = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        h.tick().await;

        let (s, text) = scrape(&h, Some(METRICS_TOKEN)).await;
        assert_eq!(s, StatusCode::OK, "{label}: {text}");
        let get = |series: &str| value(&text, series);
        // Routes by template: the sandbox GET of started_sandbox counted, its id never a label.
        let by_id = "sandbar_api_http_requests_total{method=\"GET\",route=\"/api/sandbox/{id}\",status=\"200\"}";
        assert!(get(by_id) >= 1.0, "{label}: {text}");
        assert!(
            get("sandbar_api_http_requests_total{method=\"POST\",route=\"/api/sandbox\",status=\"200\"}") >= 2.0,
            "{text}"
        );
        assert!(!text.contains(&started) && !text.contains(&queued), "raw ids in labels: {text}");
        assert!(
            get("sandbar_api_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}") >= 1.0,
            "{text}"
        );
        assert!(
            text.contains(
                "sandbar_api_http_request_duration_seconds_bucket{le=\"+Inf\",method=\"POST\",route=\"/api/sandbox\"}"
            ),
            "{text}"
        );
        // A made-up method on a made-up path counts under bounded labels.
        let odd = reqwest::Method::from_bytes(b"PROBE123").unwrap();
        h.http.request(odd, format!("{}/x/{}", h.base, started)).send().await.unwrap();
        let (_, text) = scrape(&h, Some(METRICS_TOKEN)).await;
        assert!(!text.contains("PROBE123") && !text.contains(&format!("/x/{started}")), "{text}");
        assert!(
            value(&text, "sandbar_api_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"}") >= 1.0
                || value(&text, "sandbar_api_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"405\"}")
                    >= 1.0,
            "{text}"
        );
        let get = |series: &str| value(&text, series);
        // Jobs: one create claimed and succeeded, one queued.
        assert_eq!(get("sandbar_api_jobs_claimed_total{kind=\"CREATE_SANDBOX\"}"), 1.0, "{label}: {text}");
        assert_eq!(
            get("sandbar_api_jobs_completed_total{kind=\"CREATE_SANDBOX\",outcome=\"succeeded\"}"),
            1.0,
            "{text}"
        );
        assert_eq!(get("sandbar_api_jobs_queued{kind=\"CREATE_SANDBOX\"}"), 1.0, "{label}: {text}");
        // Sandboxes by stored state, from the database.
        assert_eq!(get("sandbar_api_sandboxes{state=\"started\"}"), 1.0, "{label}: {text}");
        assert_eq!(get("sandbar_api_sandboxes{state=\"creating\"}"), 1.0, "{label}: {text}");
        // The lifecycle pass this test ran.
        assert!(get("sandbar_api_lifecycle_runs_total{outcome=\"ok\"}") >= 1.0, "{text}");
        assert!(get("sandbar_api_lifecycle_run_duration_seconds_count") >= 1.0, "{text}");

        // A failed job counts as failed.
        let jobs = runner.poll(0).await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let s = runner.fail(&jobs[0], sandbar_proto::runner::JobErrorCode::InvalidRequest, "no").await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, text) = scrape(&h, Some(METRICS_TOKEN)).await;
        assert_eq!(
            value(&text, "sandbar_api_jobs_completed_total{kind=\"CREATE_SANDBOX\",outcome=\"failed\"}"),
            1.0,
            "{text}"
        );
        assert_eq!(value(&text, "sandbar_api_jobs_queued{kind=\"CREATE_SANDBOX\"}"), 0.0, "{text}");
        h.stop().await;
    }
}

/// Without `--metrics-token` nobody reads metrics, whatever they present.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_off_without_a_metrics_token() {
    let db = databases().await.remove(0);
    let h = Harness::start(&db).await;
    for token in [None, Some(""), Some(h.key.as_str()), Some(RUNNER_TOKEN)] {
        let (s, body) = scrape(&h, token).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{token:?}: {body}");
        assert!(body.contains("--metrics-token"), "{body}");
    }
    h.stop().await;
}
