//! The API's Prometheus metrics (`prometheus_client`, as the runner uses), served by `crate::http::metrics` at
//! `GET /metrics` beside `/api`. Counters and histograms live here for the life of the process; the gauges that
//! describe the database (sandboxes by state, jobs queued by kind) are recomputed on each scrape with one
//! `GROUP BY` each, so nothing on a request's path keeps them.
//!
//! Names follow Prometheus' conventions: the `sandbar_api_` prefix, units in the name (`_seconds`), counters end
//! in `_total`, label values carry no units. The route label is the matched route template (`/api/sandbox/{id}`),
//! never the raw path, so ids do not make new series; a request no route matched counts under `unmatched`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the request latency histogram, in seconds.
const REQUEST_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the lifecycle pass histogram, in seconds.
const TIMER_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcome {
    pub kind: String,
    /// `succeeded` or `failed` (a job failed by its deadline counts as failed).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `error` (lifecycle passes); `committed`, `refused` or `alone` (members of a group commit).
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// Every metric of one API instance, and the registry that writes them.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<ResponseLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub jobs_claimed: Family<KindLabel, Counter>,
    pub jobs_completed: Family<KindOutcome, Counter>,
    pub jobs_queued: Family<KindLabel, Gauge>,
    pub sandboxes: Family<StateLabel, Gauge>,
    pub lifecycle_runs: Family<OutcomeLabel, Counter>,
    pub lifecycle_duration: Histogram,
    /// 1 while this instance's change feed (PostgreSQL `LISTEN`, `crate::feed`) is connected.
    pub change_feed_connected: Gauge,
    pub change_feed_connects: Counter,
    pub change_feed_notifications: Counter,
    /// Group commits of new sandboxes on PostgreSQL (`crate::domain::group_commit`), and what became of each member.
    pub create_groups: Counter,
    pub create_group_members: Family<OutcomeLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sandbar_api");
        let requests = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route template and status code",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(request_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by method and matched route template (long-polls included)",
            request_duration.clone(),
        );
        let jobs_claimed = Family::<KindLabel, Counter>::default();
        registry.register(
            "jobs_claimed",
            "Runner jobs handed out, by kind (a redelivery counts again)",
            jobs_claimed.clone(),
        );
        let jobs_completed = Family::<KindOutcome, Counter>::default();
        registry.register(
            "jobs_completed",
            "Runner jobs finished, by kind and outcome (succeeded, failed; a deadline miss is failed)",
            jobs_completed.clone(),
        );
        let jobs_queued = Family::<KindLabel, Gauge>::default();
        registry.register(
            "jobs_queued",
            "Runner jobs waiting for a runner to claim them, by kind",
            jobs_queued.clone(),
        );
        let sandboxes = Family::<StateLabel, Gauge>::default();
        registry.register("sandboxes", "Sandboxes that are not destroyed, by stored state", sandboxes.clone());
        let lifecycle_runs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "lifecycle_runs",
            "Passes of the lifecycle timers (auto-stop, -archive, -delete, host restarts, job deadlines), by outcome",
            lifecycle_runs.clone(),
        );
        let lifecycle_duration = Histogram::new(TIMER_BUCKETS);
        registry.register(
            "lifecycle_run_duration_seconds",
            "Time one pass of the lifecycle timers took",
            lifecycle_duration.clone(),
        );
        let change_feed_connected = Gauge::default();
        registry.register(
            "change_feed_connected",
            "1 while the PostgreSQL change feed (LISTEN) is connected; 0 while waits poll instead (always 0 on SQLite)",
            change_feed_connected.clone(),
        );
        let change_feed_connects = Counter::default();
        registry.register(
            "change_feed_connects",
            "Connections of the change feed made (the first and every reconnect)",
            change_feed_connects.clone(),
        );
        let change_feed_notifications = Counter::default();
        registry.register(
            "change_feed_notifications",
            "Change notifications received from PostgreSQL (this instance's own included)",
            change_feed_notifications.clone(),
        );
        let create_groups = Counter::default();
        registry.register(
            "create_groups",
            "Transactions that committed several creates and forks at once (PostgreSQL; none on SQLite)",
            create_groups.clone(),
        );
        let create_group_members = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "create_group_members",
            "Creates and forks that went through a group commit, by outcome: committed in the group, refused with \
             their own error, or run again alone (a limit or a lock conflict, or the group's transaction failed)",
            create_group_members.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            jobs_claimed,
            jobs_completed,
            jobs_queued,
            sandboxes,
            lifecycle_runs,
            lifecycle_duration,
            change_feed_connected,
            change_feed_connects,
            change_feed_notifications,
            create_groups,
            create_group_members,
        }
    }
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let (method, route) = (method.to_owned(), route.to_owned());
        self.request_duration
            .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
            .observe(seconds);
        self.requests.get_or_create(&ResponseLabels { method, route, status }).inc();
    }

    pub fn job_claimed(&self, kind: &str) {
        self.jobs_claimed.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    pub fn job_completed(&self, kind: &str, succeeded: bool) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.jobs_completed.get_or_create(&KindOutcome { kind: kind.to_owned(), outcome }).inc();
    }

    pub fn lifecycle_run(&self, ok: bool, seconds: f64) {
        self.lifecycle_runs.get_or_create(&OutcomeLabel { outcome: if ok { "ok" } else { "error" } }).inc();
        self.lifecycle_duration.observe(seconds);
    }

    /// Replaces the scrape-time gauges with counts read from the database.
    pub fn set_counts(&self, sandboxes: &[(String, i64)], queued: &[(String, i64)]) {
        self.sandboxes.clear();
        for (state, n) in sandboxes {
            self.sandboxes.get_or_create(&StateLabel { state: state.clone() }).set(*n);
        }
        self.jobs_queued.clear();
        for (kind, n) in queued {
            self.jobs_queued.get_or_create(&KindLabel { kind: kind.clone() }).set(*n);
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::default();
        m.request("GET", "/api/sandbox/{id}", 200, 0.003);
        m.job_claimed("CREATE_SANDBOX");
        m.job_completed("CREATE_SANDBOX", false);
        m.lifecycle_run(true, 0.002);
        m.set_counts(&[("started".into(), 2)], &[("STOP_SANDBOX".into(), 1)]);
        let text = m.encode().unwrap();
        for line in [
            "sandbar_api_http_requests_total{method=\"GET\",route=\"/api/sandbox/{id}\",status=\"200\"} 1",
            "sandbar_api_http_request_duration_seconds_bucket{le=\"0.005\",method=\"GET\",route=\"/api/sandbox/{id}\"} 1",
            "sandbar_api_jobs_claimed_total{kind=\"CREATE_SANDBOX\"} 1",
            "sandbar_api_jobs_completed_total{kind=\"CREATE_SANDBOX\",outcome=\"failed\"} 1",
            "sandbar_api_jobs_queued{kind=\"STOP_SANDBOX\"} 1",
            "sandbar_api_sandboxes{state=\"started\"} 2",
            "sandbar_api_lifecycle_runs_total{outcome=\"ok\"} 1",
            "sandbar_api_lifecycle_run_duration_seconds_count 1",
            "sandbar_api_change_feed_connected 0",
            "sandbar_api_change_feed_connects_total 0",
            "sandbar_api_change_feed_notifications_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A scrape replaces the gauges: a state with no sandbox left disappears.
        m.set_counts(&[], &[]);
        assert!(!m.encode().unwrap().contains("sandbar_api_sandboxes{"));
    }

    /// Every `sandbar_api_*` metric the sample Grafana dashboard queries is one this API exposes.
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../deploy/grafana/sandbar.json");
        // A family shows in a scrape once it has a series: one of each, as a running API soon has.
        let m = Metrics::default();
        m.request("GET", "/api/sandbox", 200, 0.01);
        m.job_claimed("CREATE_SANDBOX");
        m.job_completed("CREATE_SANDBOX", true);
        m.lifecycle_run(true, 0.001);
        m.set_counts(&[("started".into(), 1)], &[("CREATE_SANDBOX".into(), 1)]);
        let text = m.encode().unwrap();
        let used = sandbar_support::prom::queried(dashboard, "sandbar_api_");
        assert!(used.len() >= 5, "{used:?}");
        for name in used {
            assert!(sandbar_support::prom::exposes(&text, &name), "the dashboard queries {name}, not in\n{text}");
        }
    }
}
