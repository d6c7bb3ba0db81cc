//! Prometheus metrics, kept in atomics and written in the text exposition format on the admin listener's
//! `GET /metrics` ([`MetricsApp`], which also answers `GET /healthz` and `GET /readyz`).
//!
//! The admin listener is the operator's (`--metrics-addr`, loopback by default): it is never the edge, so nothing
//! a client sends to the edge reaches it. `/healthz` says the process serves; `/readyz` that the route-change feed
//! from the API answers (without it cached routes could be stale and new ones unknown), else 503 with the reason.
//! Both answer as the API's do (`{"status": ...}`, or `{"statusCode", "message"}`). Names follow Prometheus'
//! conventions: the `sandbar_proxy_` prefix, units in the name, counters end in `_total`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sandbar_support::sync::lock;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: index 0 = no response (connection died), 1..=5 = 1xx..5xx.
    pub responses: [AtomicU64; 6],
    /// Requests per latency interval: `[i]` counts those above `BUCKETS[i - 1]` and at most `BUCKETS[i]`.
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    pub open_websockets: AtomicI64,
    pub in_flight: AtomicI64,
    pub upstream_errors: AtomicU64,
    pub api_errors: AtomicU64,
    pub route_cache_hits: AtomicU64,
    pub route_cache_misses: AtomicU64,
    pub auth_cache_hits: AtomicU64,
    pub auth_cache_misses: AtomicU64,
    /// Wake-up calls sent to the API for auto-stopped sandboxes.
    pub wake_requests: AtomicU64,
    /// Requests that waited for a woken sandbox longer than the wake timeout.
    pub wake_timeouts: AtomicU64,
    /// HTTP/1 connections cut because the request head did not arrive in time (slowloris).
    pub header_timeouts: AtomicU64,
    /// Certificate/key pairs replaced from their changed files.
    pub tls_reloads: AtomicU64,
    /// Changed certificate/key files refused (the previous pair kept serving).
    pub tls_reload_failures: AtomicU64,
    /// 1 while the last poll of the API's route-change feed got an answer.
    route_feed_up: AtomicI64,
    /// Why the last poll of the route-change feed failed (`None` before any poll, or once one succeeded).
    route_feed_failure: Mutex<Option<String>>,
}

impl Metrics {
    /// The outcome of one poll of the API's route-change feed: `None` when it answered, else why not.
    pub fn route_feed(&self, failure: Option<String>) {
        self.route_feed_up.store(i64::from(failure.is_none()), Ordering::Relaxed);
        *lock(&self.route_feed_failure) = failure;
    }

    /// Why the proxy is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if self.route_feed_up.load(Ordering::Relaxed) == 1 {
            return None;
        }
        Some(match lock(&self.route_feed_failure).clone() {
            Some(e) => format!("not ready: the route feed from the API is down: {e}"),
            None => "not ready: the route feed from the API has not answered yet".to_owned(),
        })
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100);
        if let Some(c) = self.responses.get(if (1..=5).contains(&class) { class } else { 0 }) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // One increment per request: the buckets hold counts per interval and `render` sums them into
        // Prometheus' cumulative form (a slower request falls past the last bound and counts only in +Inf).
        let secs = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| secs <= *bound).and_then(|i| self.latency_buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP sandbar_proxy_requests_total Requests answered, by status class.\n");
        out.push_str("# TYPE sandbar_proxy_requests_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let class = if i == 0 { "none".to_owned() } else { format!("{i}xx") };
            let _ = writeln!(out, "sandbar_proxy_requests_total{{class=\"{class}\"}} {}", get(c));
        }
        out.push_str(
            "# HELP sandbar_proxy_request_duration_seconds Time from request head to the end of the response.\n",
        );
        out.push_str("# TYPE sandbar_proxy_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += get(bucket);
            let _ = writeln!(out, "sandbar_proxy_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = get(&self.latency_count);
        let _ = writeln!(out, "sandbar_proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ =
            writeln!(out, "sandbar_proxy_request_duration_seconds_sum {}", get(&self.latency_sum_micros) as f64 / 1e6);
        let _ = writeln!(out, "sandbar_proxy_request_duration_seconds_count {count}");
        let gauges = [
            (
                "sandbar_proxy_open_websockets",
                "Upgraded connections open now.",
                self.open_websockets.load(Ordering::Relaxed),
            ),
            ("sandbar_proxy_requests_in_flight", "Requests being proxied now.", self.in_flight.load(Ordering::Relaxed)),
            (
                "sandbar_proxy_route_feed_up",
                "1 while the route-change feed from the API answers.",
                self.route_feed_up.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "sandbar_proxy_upstream_errors_total",
                "Requests that failed on the daemon's side.",
                &self.upstream_errors,
            ),
            ("sandbar_proxy_api_errors_total", "Route or authorize lookups the API did not answer.", &self.api_errors),
            ("sandbar_proxy_route_cache_hits_total", "Route lookups answered from the cache.", &self.route_cache_hits),
            ("sandbar_proxy_route_cache_misses_total", "Route lookups sent to the API.", &self.route_cache_misses),
            ("sandbar_proxy_auth_cache_hits_total", "Authorizations answered from the cache.", &self.auth_cache_hits),
            ("sandbar_proxy_auth_cache_misses_total", "Authorizations sent to the API.", &self.auth_cache_misses),
            (
                "sandbar_proxy_wake_requests_total",
                "Starts of auto-stopped sandboxes asked of the API.",
                &self.wake_requests,
            ),
            (
                "sandbar_proxy_wake_timeouts_total",
                "Requests that gave up waiting for a woken sandbox.",
                &self.wake_timeouts,
            ),
            (
                "sandbar_proxy_header_timeouts_total",
                "Connections cut because the request head was too slow.",
                &self.header_timeouts,
            ),
            ("sandbar_proxy_tls_reloads_total", "Certificates replaced from their changed files.", &self.tls_reloads),
            (
                "sandbar_proxy_tls_reload_failures_total",
                "Changed certificate files refused; the previous certificate kept serving.",
                &self.tls_reload_failures,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", get(c));
        }
        out
    }
}

/// The admin listener: `GET /metrics` (Prometheus text), `GET /healthz` and `GET /readyz`.
pub struct MetricsApp {
    pub metrics: Arc<Metrics>,
}

impl MetricsApp {
    /// `(status, content type, body)` of a request for `path`.
    pub fn answer(&self, path: &str) -> (u16, &'static str, Vec<u8>) {
        const JSON: &str = "application/json";
        let error = |status: u16, message: &str| {
            (status, JSON, serde_json::json!({"statusCode": status, "message": message}).to_string().into_bytes())
        };
        match path {
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics.render().into_bytes()),
            "/healthz" => (200, JSON, br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => match self.metrics.not_ready() {
                None => (200, JSON, br#"{"status":"ready"}"#.to_vec()),
                Some(why) => error(503, &why),
            },
            _ => error(404, "no such endpoint: /metrics, /healthz and /readyz are served here"),
        }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, ctype, body) = self.answer(session.req_header().uri.path());
        let mut resp = http::Response::new(body);
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
        if status == 503 {
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_classes() {
        let m = Metrics::default();
        m.record(200, Duration::from_micros(700));
        m.record(502, Duration::from_millis(30));
        m.record(0, Duration::from_secs(20));
        let text = m.render();
        assert!(text.contains("sandbar_proxy_requests_total{class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("sandbar_proxy_requests_total{class=\"5xx\"} 1"));
        assert!(text.contains("sandbar_proxy_requests_total{class=\"none\"} 1"));
        assert!(text.contains("sandbar_proxy_request_duration_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("sandbar_proxy_request_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("sandbar_proxy_request_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("sandbar_proxy_request_duration_seconds_bucket{le=\"10\"} 2"), "{text}");
        assert!(text.contains("sandbar_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
    }

    #[test]
    fn readiness_follows_the_route_feed() {
        let app = MetricsApp { metrics: Arc::new(Metrics::default()) };
        let (status, _, body) = app.answer("/readyz");
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("has not answered yet"));
        app.metrics.route_feed(None);
        assert_eq!(app.answer("/readyz"), (200, "application/json", br#"{"status":"ready"}"#.to_vec()));
        assert!(app.metrics.render().contains("sandbar_proxy_route_feed_up 1"));
        app.metrics.route_feed(Some("connection refused".into()));
        let (status, _, body) = app.answer("/readyz");
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("connection refused"));
        assert!(app.metrics.render().contains("sandbar_proxy_route_feed_up 0"));
        assert_eq!(app.answer("/healthz").0, 200);
    }

    /// Every `sandbar_proxy_*` metric the sample Grafana dashboard queries is one this proxy exposes.
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../deploy/grafana/sandbar.json");
        let text = Metrics::default().render();
        let used = sandbar_support::prom::queried(dashboard, "sandbar_proxy_");
        assert!(used.len() >= 3, "{used:?}");
        for name in used {
            assert!(sandbar_support::prom::exposes(&text, &name), "the dashboard queries {name}, not in\n{text}");
        }
    }
}
