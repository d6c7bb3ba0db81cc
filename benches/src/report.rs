//! The side-by-side table of `benches/run`: raw samples in (one JSON object a line, written by the script as it
//! measures), a Markdown table, a JSON document and an SVG plot out.
//!
//! A sample is `{"metric": M, "subject": S, "value": V}` (plus `"x"` for a point of a curve: connections,
//! percentile); the same metric and subject measured in several interleaved rounds gives several samples, and the
//! table shows their median. `{"skip": M, "reason": R}` says why a metric was not measured; its rows then say so.
//! Which rows the table has, and the target each row is held to, is [`rows`]: the issue's table, kept here so
//! that a row that was not measured still shows up, with its reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub subject: String,
    pub value: f64,
    pub x: Option<f64>,
}

/// What the script measured, and why it left metrics out.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub samples: Vec<Sample>,
    /// metric -> reason it was not measured.
    pub skipped: BTreeMap<String, String>,
}

impl Samples {
    /// Parses the script's JSON lines; blank lines are ignored, anything else malformed is an error with its
    /// line number.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut out = Self::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
            if let Some(metric) = v.get("skip").and_then(Value::as_str) {
                let reason = v.get("reason").and_then(Value::as_str).unwrap_or("no reason given");
                out.skipped.insert(metric.to_owned(), reason.to_owned());
                continue;
            }
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(metric), Some(subject), Some(value)) =
                (field("metric"), field("subject"), v.get("value").and_then(Value::as_f64))
            else {
                anyhow::bail!("line {}: needs metric, subject and a numeric value: {line}", n + 1);
            };
            out.samples.push(Sample { metric, subject, value, x: v.get("x").and_then(Value::as_f64) });
        }
        Ok(out)
    }

    /// The values of one metric for one subject (points of curves excluded).
    pub fn values(&self, metric: &str, subject: &str) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == metric && s.subject == subject && s.x.is_none())
            .map(|s| s.value)
            .collect()
    }

    /// The median over rounds of one metric for one subject.
    pub fn median(&self, metric: &str, subject: &str) -> Option<f64> {
        median(&self.values(metric, subject))
    }

    /// A curve: for each subject, (x, median of the values at x), by x.
    pub fn curve(&self, metric: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
        let mut at: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.metric == metric) {
            if let Some(x) = s.x {
                at.entry(s.subject.clone()).or_default().entry(x.to_bits()).or_default().push(s.value);
            }
        }
        at.into_iter()
            .map(|(subject, points)| {
                let mut pts: Vec<(f64, f64)> =
                    points.into_iter().filter_map(|(x, v)| Some((f64::from_bits(x), median(&v)?))).collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (subject, pts)
            })
            .collect()
    }
}

/// The median (mean of the two middle values for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// Where a row's figure comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The median of `metric` for `subject`.
    Metric(&'static str, &'static str),
    /// The difference of two medians (the proxy's added latency: through it minus direct, same round set).
    Minus(Box<Source>, Box<Source>),
    /// How many of the figure fit in a budget (same unit): `floor(budget / figure)`, for a positive figure. The idle
    /// sandboxes in 24 GiB, extrapolated from the idle memory of a few rather than starting thousands.
    FitIn(f64, Box<Source>),
}

impl Source {
    fn value(&self, s: &Samples) -> Option<f64> {
        match self {
            Source::Metric(m, subject) => s.median(m, subject),
            Source::Minus(a, b) => Some(a.value(s)? - b.value(s)?),
            Source::FitIn(budget, each) => each.value(s).filter(|v| *v > 0.0).map(|v| (budget / v).floor()),
        }
    }

    /// The metrics this figure needs (to find a skip reason).
    fn metrics(&self) -> Vec<&'static str> {
        match self {
            Source::Metric(m, _) => vec![m],
            Source::Minus(a, b) => [a.metrics(), b.metrics()].concat(),
            Source::FitIn(_, each) => each.metrics(),
        }
    }
}

/// What a row is held to. Ratios are sandbar / peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Shown for context; no target.
    None,
    RatioAtMost(f64),
    RatioAtLeast(f64),
    /// Sandbar's own figure below a bound (in the row's unit).
    Below(f64),
    /// Sandbar's own figure at least a bound.
    AtLeast(f64),
}

impl Target {
    fn holds(self, sandbar: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::None => None,
            Target::RatioAtMost(t) => ratio.map(|r| r <= t),
            Target::RatioAtLeast(t) => ratio.map(|r| r >= t),
            Target::Below(t) => sandbar.map(|v| v < t),
            Target::AtLeast(t) => sandbar.map(|v| v >= t),
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Target::None => "-".into(),
            Target::RatioAtMost(t) => format!("ratio <= {t}"),
            Target::RatioAtLeast(t) => format!("ratio >= {t}"),
            Target::Below(t) => format!("< {} {unit}", fmt_num(t)),
            Target::AtLeast(t) => format!(">= {} {unit}", fmt_num(t)),
        }
    }
}

/// A row of the table before measuring.
#[derive(Clone, Debug)]
pub struct RowSpec {
    pub metric: String,
    pub unit: &'static str,
    pub sandbar_name: &'static str,
    pub sandbar: Source,
    pub peer_name: &'static str,
    pub peer: Option<Source>,
    pub target: Target,
}

/// A row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    pub sandbar_name: String,
    pub sandbar: Option<f64>,
    pub peer_name: String,
    pub peer: Option<f64>,
    pub ratio: Option<f64>,
    pub target: String,
    pub holds: Option<bool>,
    /// Why the row (or its peer) has no figure.
    pub not_measured: Option<String>,
}

impl RowSpec {
    pub fn evaluate(&self, s: &Samples) -> Row {
        let sandbar = self.sandbar.value(s);
        let peer = self.peer.as_ref().and_then(|p| p.value(s));
        // A figure at or below zero (an added latency smaller than the noise) has no meaningful ratio.
        let ratio = match (sandbar, peer) {
            (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
            _ => None,
        };
        let mut missing = Vec::new();
        if sandbar.is_none() {
            missing.extend(self.sandbar.metrics());
        }
        if let Some(p) = &self.peer
            && peer.is_none()
        {
            missing.extend(p.metrics());
        }
        let not_measured = if missing.is_empty() {
            None
        } else {
            let reasons: Vec<&str> = missing.iter().filter_map(|m| s.skipped.get(*m)).map(String::as_str).collect();
            Some(reasons.first().map_or_else(|| "no samples".to_owned(), |r| (*r).to_owned()))
        };
        Row {
            metric: self.metric.clone(),
            unit: self.unit.to_owned(),
            sandbar_name: self.sandbar_name.to_owned(),
            sandbar,
            peer_name: self.peer_name.to_owned(),
            peer,
            ratio,
            target: self.target.describe(self.unit),
            holds: self.target.holds(sandbar, ratio),
            not_measured,
        }
    }
}

/// The memory the idle-sandboxes row fills: 24 GiB, in MiB.
pub const IDLE_BUDGET_MIB: f64 = 24.0 * 1024.0;

fn m(metric: &'static str, subject: &'static str) -> Source {
    Source::Metric(metric, subject)
}

fn added(metric: &'static str, subject: &'static str) -> Source {
    Source::Minus(Box::new(m(metric, subject)), Box::new(m(metric, "direct")))
}

/// Every row of the issue's table that `benches/run` knows how to measure, in the order it measures them.
pub fn rows() -> Vec<RowSpec> {
    let mut rows = Vec::new();
    let row = |metric: String, unit, sandbar, peer_name, peer, target| RowSpec {
        metric,
        unit,
        sandbar_name: "sandbar-proxy",
        sandbar,
        peer_name,
        peer,
        target,
    };
    for c in ["64", "8"] {
        let rps: &'static str = if c == "64" { "http_rps_c64" } else { "http_rps_c8" };
        let cpu: &'static str = if c == "64" { "http_cpu_us_c64" } else { "http_cpu_us_c8" };
        rows.push(row(
            format!("proxy CPU per request, {c} conns"),
            "µs",
            m(cpu, "sandbar-proxy"),
            "pingora (bare)",
            Some(m(cpu, "pingora-bare")),
            Target::RatioAtMost(1.15),
        ));
        // The floor under that target: pingora doing only the work sandbar-proxy cannot leave out, against bare
        // pingora; and sandbar-proxy against it (what the rest of its work costs).
        rows.push(RowSpec {
            metric: format!("CPU per request of the mandatory work alone, {c} conns"),
            unit: "µs",
            sandbar_name: "pingora + sandbar's mandatory work",
            sandbar: m(cpu, "pingora-work"),
            peer_name: "pingora (bare)",
            peer: Some(m(cpu, "pingora-bare")),
            target: Target::None,
        });
        rows.push(row(
            format!("proxy CPU per request over the mandatory work, {c} conns"),
            "µs",
            m(cpu, "sandbar-proxy"),
            "pingora + sandbar's mandatory work",
            Some(m(cpu, "pingora-work")),
            Target::None,
        ));
        for (peer, target) in [
            ("pingora-bare", Target::None),
            ("nginx", Target::None),
            ("haproxy", Target::None),
            ("caddy", Target::RatioAtLeast(1.0)),
            ("go-httputil", Target::RatioAtLeast(1.0)),
        ] {
            let name = if peer == "pingora-bare" { "pingora (bare)" } else { peer };
            rows.push(row(
                format!("proxy req/s, {c} conns"),
                "req/s",
                m(rps, "sandbar-proxy"),
                name,
                Some(m(rps, peer)),
                target,
            ));
        }
    }
    rows.push(row(
        "proxy added p99 over direct, 8 conns".into(),
        "µs",
        added("http_p99_us_c8", "sandbar-proxy"),
        "-",
        None,
        Target::Below(1000.0),
    ));
    for peer in ["pingora-bare", "nginx", "haproxy", "caddy", "go-httputil"] {
        let target = if peer == "caddy" { Target::RatioAtMost(1.0) } else { Target::None };
        rows.push(row(
            "proxy added p99 over direct, 8 conns".into(),
            "µs",
            added("http_p99_us_c8", "sandbar-proxy"),
            peer,
            Some(added("http_p99_us_c8", peer)),
            target,
        ));
    }
    for (kind, metric) in [("new", "https_rps_new"), ("resumed", "https_rps_resumed")] {
        for peer in ["nginx", "haproxy", "caddy"] {
            let target = if peer == "caddy" { Target::RatioAtLeast(1.0) } else { Target::None };
            rows.push(row(
                format!("HTTPS req/s, {kind} sessions, 16 conns"),
                "req/s",
                m(metric, "sandbar-proxy"),
                peer,
                Some(m(metric, peer)),
                target,
            ));
        }
    }
    for q in ["p50", "p99"] {
        let metric: &'static str = if q == "p50" { "exec_p50_us" } else { "exec_p99_us" };
        rows.push(RowSpec {
            metric: format!("`echo hi` {q}: daemon process/execute vs `docker exec`"),
            unit: "µs",
            sandbar_name: "daemon",
            sandbar: m(metric, "daemon"),
            peer_name: "docker exec",
            peer: Some(m(metric, "docker-exec")),
            target: Target::RatioAtMost(0.1),
        });
    }
    for q in ["p50", "p99"] {
        let metric: &'static str = if q == "p50" { "exec_proxy_p50_us" } else { "exec_proxy_p99_us" };
        rows.push(RowSpec {
            metric: format!("`echo hi` {q}: process/execute through sandbar-proxy vs `docker exec`"),
            unit: "µs",
            sandbar_name: "daemon via proxy",
            sandbar: m(metric, "daemon-via-proxy"),
            peer_name: "docker exec",
            peer: Some(m(if q == "p50" { "exec_p50_us" } else { "exec_p99_us" }, "docker-exec")),
            target: Target::RatioAtMost(0.1),
        });
    }
    let one = |metric: &str, unit, sandbar_name, sandbar, peer_name, peer, target| RowSpec {
        metric: metric.to_owned(),
        unit,
        sandbar_name,
        sandbar,
        peer_name,
        peer,
        target,
    };
    // benches/stack.py: a running stack (`sandbar up`) beside `docker run` and sshd.
    rows.push(one(
        "create to first exec, warm pool, p50 (SDK)",
        "ms",
        "sandbar up",
        m("create_warm_p50_ms", "sandbar"),
        "docker run",
        Some(m("create_cold_p50_ms", "docker-run")),
        Target::Below(30.0),
    ));
    rows.push(one(
        "create to first exec, cold, p50 (SDK)",
        "ms",
        "sandbar up",
        m("create_cold_p50_ms", "sandbar"),
        "docker run",
        Some(m("create_cold_p50_ms", "docker-run")),
        Target::RatioAtMost(0.9),
    ));
    rows.push(one(
        "scp upload through the gateway",
        "MiB/s",
        "gateway",
        m("scp_gateway_mib_s", "gateway"),
        "sshd",
        Some(m("scp_gateway_mib_s", "sshd")),
        Target::RatioAtLeast(1.0),
    ));
    rows.push(one(
        "SSH connection setup (`ssh host true`), through the gateway",
        "ms",
        "gateway",
        m("ssh_gateway_setup_ms", "gateway"),
        "sshd",
        Some(m("ssh_gateway_setup_ms", "sshd")),
        Target::RatioAtMost(0.5),
    ));
    // benches/src/bin/ssh.rs: the daemon's own SSH server beside sshd.
    rows.push(one(
        "scp upload, direct to the daemon's SSH",
        "MiB/s",
        "daemon",
        m("scp_up_mib_s", "daemon"),
        "sshd",
        Some(m("scp_up_mib_s", "sshd")),
        Target::None,
    ));
    rows.push(one(
        "scp download, direct from the daemon's SSH",
        "MiB/s",
        "daemon",
        m("scp_down_mib_s", "daemon"),
        "sshd",
        Some(m("scp_down_mib_s", "sshd")),
        Target::None,
    ));
    rows.push(one(
        "SSH connection setup (`ssh host true`), daemon",
        "ms",
        "daemon",
        m("ssh_setup_ms", "daemon"),
        "sshd",
        Some(m("ssh_setup_ms", "sshd")),
        Target::RatioAtMost(0.5),
    ));
    rows.push(one(
        "SSH keystroke echo p50 (`ssh -tt`), daemon",
        "µs",
        "daemon",
        m("ssh_echo_p50_us", "daemon"),
        "sshd",
        Some(m("ssh_echo_p50_us", "sshd")),
        Target::None,
    ));
    // benches/src/bin/terminal.rs: the web terminal's WebSocket beside `ssh -tt` to sshd.
    for (q, metric) in [("p50", "pty_echo_p50_us"), ("p99", "pty_echo_p99_us")] {
        rows.push(one(
            &format!("PTY keystroke echo {q}"),
            "µs",
            "WebSocket terminal",
            m(metric, "terminal"),
            "ssh -tt to sshd",
            Some(m(metric, "sshd")),
            Target::RatioAtMost(1.0),
        ));
    }
    rows.push(one(
        "PTY output, `cat` of 100 MiB (10 in --quick)",
        "MiB/s",
        "WebSocket terminal",
        m("pty_cat_mib_s", "terminal"),
        "ssh -tt to sshd",
        Some(m("pty_cat_mib_s", "sshd")),
        Target::RatioAtLeast(1.0),
    ));
    // benches/src/bin/lsp.rs: requests alternate between the two.
    for (q, metric, target) in
        [("p50", "lsp_completion_ms", Target::RatioAtMost(1.1)), ("p99", "lsp_completion_p99_ms", Target::None)]
    {
        rows.push(one(
            &format!("LSP completion latency {q}"),
            "ms",
            "daemon bridge",
            m(metric, "daemon"),
            "pylsp over stdio",
            Some(m(metric, "pylsp")),
            target,
        ));
    }
    // runner/tests/archive.rs `default_image_archive_figures`: each operation beside Docker's own, interleaved.
    for (op, metric, peer_name, peer) in [
        ("archive", "archive_s", "docker export", "docker-export"),
        ("restore", "restore_s", "docker import", "docker-import"),
        ("fork", "fork_s", "docker commit", "docker-commit"),
    ] {
        rows.push(one(
            &format!("{op}, default image + 10 MB of changes"),
            "s",
            "runner",
            m(metric, "runner"),
            peer_name,
            Some(m(metric, peer)),
            Target::Below(2.0),
        ));
    }
    rows.push(one(
        "static daemon idle RSS",
        "MiB",
        "daemon",
        m("daemon_idle_rss_mib", "daemon"),
        "-",
        None,
        Target::Below(10.0),
    ));
    rows.push(one(
        "static daemon binary size",
        "MiB",
        "daemon",
        m("daemon_binary_mib", "daemon"),
        "-",
        None,
        Target::Below(20.0),
    ));
    rows.push(one(
        "idle memory per sandbox (its memory cgroup)",
        "MiB",
        "sandbar",
        m("idle_mib", "sandbar"),
        "docker run sleep",
        Some(m("idle_mib", "docker-sleep")),
        Target::None,
    ));
    rows.push(one(
        "idle sandboxes in 24 GiB (extrapolated from the idle memory)",
        "sandboxes",
        "sandbar",
        Source::FitIn(IDLE_BUDGET_MIB, Box::new(m("idle_mib", "sandbar"))),
        "docker run sleep",
        Some(Source::FitIn(IDLE_BUDGET_MIB, Box::new(m("idle_mib", "docker-sleep")))),
        Target::RatioAtLeast(0.9),
    ));
    for store in ["sqlite", "postgres"] {
        let (create, p50, p99, rps): (&'static str, &'static str, &'static str, &'static str) = if store == "sqlite" {
            ("api_create_rps", "api_get_p50_us", "api_get_p99_us", "api_get_rps")
        } else {
            ("api_create_rps_pg", "api_get_p50_us_pg", "api_get_p99_us_pg", "api_get_rps_pg")
        };
        let api = |metric: String, unit, src, target| RowSpec {
            metric,
            unit,
            sandbar_name: "sandbar-api",
            sandbar: src,
            peer_name: "-",
            peer: None,
            target,
        };
        rows.push(api(
            format!("API creates/s, 32 concurrent, {store}"),
            "req/s",
            m(create, "api"),
            Target::AtLeast(500.0),
        ));
        let get = |q: &str| format!("API GET /api/sandbox/{{id}} {q}, one client, {store}");
        rows.push(api(get("p50"), "µs", m(p50, "api"), Target::Below(1000.0)));
        rows.push(api(get("p99"), "µs", m(p99, "api"), Target::Below(5000.0)));
        rows.push(api(
            format!("API GET /api/sandbox/{{id}}, 16 concurrent, {store}"),
            "req/s",
            m(rps, "api"),
            Target::None,
        ));
    }
    // The change feed between two API instances on PostgreSQL (benches/src/bin/api.rs, `feed`).
    for (q, metric, target) in [
        ("p50", "api_feed_result_to_create_p50_us_pg", 5000.0),
        ("p99", "api_feed_result_to_create_p99_us_pg", 10000.0),
    ] {
        rows.push(RowSpec {
            metric: format!("API result on instance A to the create held on B, {q}, postgres"),
            unit: "µs",
            sandbar_name: "sandbar-api",
            sandbar: m(metric, "api"),
            peer_name: "-",
            peer: None,
            target: Target::Below(target),
        });
    }
    // The lifecycle at scale (benches/src/bin/lifecycle.rs): the longest a GET waited while the work ran.
    let lifecycle: [(&str, &str, &'static str, &'static str); 6] = [
        ("a lifecycle tick", "sqlite", "lifecycle_tick_get_max_ms", "lifecycle_tick_took_ms"),
        ("a runner reconcile", "sqlite", "lifecycle_reconcile_get_max_ms", "lifecycle_reconcile_took_ms"),
        ("a heartbeat with usage", "sqlite", "lifecycle_heartbeat_get_max_ms", "lifecycle_heartbeat_took_ms"),
        ("a lifecycle tick", "postgres", "lifecycle_tick_get_max_ms_pg", "lifecycle_tick_took_ms_pg"),
        ("a runner reconcile", "postgres", "lifecycle_reconcile_get_max_ms_pg", "lifecycle_reconcile_took_ms_pg"),
        ("a heartbeat with usage", "postgres", "lifecycle_heartbeat_get_max_ms_pg", "lifecycle_heartbeat_took_ms_pg"),
    ];
    for (what, store, max, took) in lifecycle {
        let api = |metric: String, src, target| RowSpec {
            metric,
            unit: "ms",
            sandbar_name: "sandbar-api",
            sandbar: src,
            peer_name: "-",
            peer: None,
            target,
        };
        rows.push(api(format!("{what} over 10k sandboxes (2k in --quick), {store}"), m(took, "api"), Target::None));
        rows.push(api(format!("longest GET wait during {what}, {store}"), m(max, "api"), Target::Below(100.0)));
    }
    rows
}

/// Evaluates every row.
pub fn table(specs: &[RowSpec], s: &Samples) -> Vec<Row> {
    specs.iter().map(|r| r.evaluate(s)).collect()
}

/// A figure for the table: integers when large, two significant decimals when small.
pub fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| metric | sandbar | peer | ratio | target | holds |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let fig = |name: &str, v: Option<f64>| match v {
            Some(v) => format!("{name}: {} {}", fmt_num(v), r.unit),
            None if name == "-" => "-".into(),
            None => format!("{name}: -"),
        };
        let holds = match (r.holds, &r.not_measured) {
            (_, Some(why)) => format!("not measured: {why}"),
            (Some(true), None) => "yes".into(),
            (Some(false), None) => "**no**".into(),
            (None, None) => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.metric,
            fig(&r.sandbar_name, r.sandbar),
            fig(&r.peer_name, r.peer),
            r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            r.target,
            holds
        );
    }
    out
}

/// The JSON document: the rows, and whatever the script said about the run (machine, commit, mode).
pub fn to_json(rows: &[Row], meta: &BTreeMap<String, String>) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "metric": r.metric, "unit": r.unit,
                "sandbar": {"name": r.sandbar_name, "value": r.sandbar},
                "peer": {"name": r.peer_name, "value": r.peer},
                "ratio": r.ratio, "target": r.target, "holds": r.holds, "notMeasured": r.not_measured,
            })
        })
        .collect();
    json!({"meta": meta, "rows": rows})
}

/// The SVG: proxy throughput against connections, and the latency distribution (percentiles) at 8 connections.
pub fn plot(s: &Samples, path: &std::path::Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(600);
    let panels = [
        (left, "http_rps_curve", "proxy req/s against connections", "connections", "req/s"),
        (right, "http_latency_c8", "latency at 8 connections", "percentile", "µs"),
    ];
    for (area, metric, caption, xd, yd) in panels {
        let curves = s.curve(metric);
        let pts = curves.values().flatten();
        let (xmax, ymax) = pts.fold((1.0f64, 1.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let xmin = curves.values().flatten().map(|p| p.0).fold(xmax, f64::min);
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(xmin..xmax, 0.0..ymax * 1.1)?;
        chart.configure_mesh().x_desc(xd).y_desc(yd).draw()?;
        for (i, (subject, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(subject.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(lines: &[&str]) -> Samples {
        Samples::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn parse_reports_the_bad_line() {
        let e = Samples::parse("{\"metric\":\"a\",\"subject\":\"b\",\"value\":1}\n\n{\"metric\":\"a\"}").unwrap_err();
        assert!(e.to_string().starts_with("line 3:"), "{e}");
        assert!(Samples::parse("not json").unwrap_err().to_string().starts_with("line 1:"));
    }

    #[test]
    fn rounds_give_a_median_and_curves_stay_apart() {
        let s = samples(&[
            r#"{"metric":"http_rps_c64","subject":"nginx","value":100}"#,
            r#"{"metric":"http_rps_c64","subject":"nginx","value":300}"#,
            r#"{"metric":"http_rps_c64","subject":"nginx","value":200}"#,
            r#"{"metric":"http_rps_c64","subject":"nginx","value":999,"x":64}"#,
        ]);
        assert_eq!(s.median("http_rps_c64", "nginx"), Some(200.0));
        assert_eq!(s.curve("http_rps_c64")["nginx"], vec![(64.0, 999.0)]);
    }

    #[test]
    fn ratio_and_targets() {
        let s = samples(&[
            r#"{"metric":"http_cpu_us_c64","subject":"sandbar-proxy","value":23}"#,
            r#"{"metric":"http_cpu_us_c64","subject":"pingora-bare","value":20}"#,
            r#"{"metric":"http_rps_c64","subject":"sandbar-proxy","value":90}"#,
            r#"{"metric":"http_rps_c64","subject":"caddy","value":100}"#,
        ]);
        let rows = table(&rows(), &s);
        let cpu = rows.iter().find(|r| r.metric == "proxy CPU per request, 64 conns").unwrap();
        assert!((cpu.ratio.unwrap() - 1.15).abs() < 1e-9);
        assert_eq!(cpu.holds, Some(true), "1.15 is within <= 1.15");
        let caddy = rows.iter().find(|r| r.metric == "proxy req/s, 64 conns" && r.peer_name == "caddy").unwrap();
        assert_eq!(caddy.ratio, Some(0.9));
        assert_eq!(caddy.holds, Some(false));
        assert_eq!(caddy.not_measured, None);
        let nginx = rows.iter().find(|r| r.metric == "proxy req/s, 64 conns" && r.peer_name == "nginx").unwrap();
        assert_eq!((nginx.sandbar, nginx.peer, nginx.holds), (Some(90.0), None, None));
        assert_eq!(nginx.not_measured.as_deref(), Some("no samples"));
    }

    #[test]
    fn the_mandatory_work_floor_sits_between_bare_pingora_and_sandbar() {
        let s = samples(&[
            r#"{"metric":"http_cpu_us_c8","subject":"sandbar-proxy","value":30}"#,
            r#"{"metric":"http_cpu_us_c8","subject":"pingora-bare","value":20}"#,
            r#"{"metric":"http_cpu_us_c8","subject":"pingora-work","value":24}"#,
        ]);
        let rows = table(&rows(), &s);
        let work = rows.iter().find(|r| r.metric == "CPU per request of the mandatory work alone, 8 conns").unwrap();
        assert_eq!((work.sandbar, work.peer, work.holds), (Some(24.0), Some(20.0), None));
        assert!((work.ratio.unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(work.sandbar_name, "pingora + sandbar's mandatory work");
        let over = rows.iter().find(|r| r.metric == "proxy CPU per request over the mandatory work, 8 conns").unwrap();
        assert!((over.ratio.unwrap() - 1.25).abs() < 1e-9);
        assert_eq!(over.peer_name, "pingora + sandbar's mandatory work");
    }

    #[test]
    fn added_latency_is_a_difference_of_medians() {
        let s = samples(&[
            r#"{"metric":"http_p99_us_c8","subject":"direct","value":400}"#,
            r#"{"metric":"http_p99_us_c8","subject":"sandbar-proxy","value":900}"#,
            r#"{"metric":"http_p99_us_c8","subject":"caddy","value":1400}"#,
        ]);
        let rows = table(&rows(), &s);
        let alone = rows.iter().find(|r| r.metric.starts_with("proxy added p99") && r.peer_name == "-").unwrap();
        assert_eq!((alone.sandbar, alone.holds), (Some(500.0), Some(true)));
        assert_eq!(alone.target, "< 1000 µs");
        let caddy = rows.iter().find(|r| r.metric.starts_with("proxy added p99") && r.peer_name == "caddy").unwrap();
        assert_eq!((caddy.peer, caddy.ratio, caddy.holds), (Some(1000.0), Some(0.5), Some(true)));
        // nginx faster than direct in this sample: noise, so no ratio and no verdict.
        let s = samples(&[
            r#"{"metric":"http_p99_us_c8","subject":"direct","value":400}"#,
            r#"{"metric":"http_p99_us_c8","subject":"sandbar-proxy","value":900}"#,
            r#"{"metric":"http_p99_us_c8","subject":"nginx","value":300}"#,
        ]);
        let noisy = table(&super::rows(), &s);
        let nginx = noisy.iter().find(|r| r.metric.starts_with("proxy added p99") && r.peer_name == "nginx").unwrap();
        assert_eq!((nginx.peer, nginx.ratio), (Some(-100.0), None));
    }

    #[test]
    fn a_skipped_metric_says_why_in_the_table_and_the_json() {
        let s = samples(&[r#"{"skip":"https_rps_new","reason":"caddy is not installed"}"#]);
        let rows = table(&rows(), &s);
        let md = markdown(&rows);
        let line = md.lines().find(|l| l.contains("new sessions") && l.contains("caddy:")).unwrap();
        assert!(line.ends_with("| not measured: caddy is not installed |"), "{line}");
        let doc = to_json(&rows, &BTreeMap::from([("mode".to_owned(), "quick".to_owned())]));
        assert_eq!(doc["meta"]["mode"], "quick");
        let j = doc["rows"].as_array().unwrap().iter().find(|r| r["metric"] == "HTTPS req/s, new sessions, 16 conns");
        assert_eq!(j.unwrap()["notMeasured"], "caddy is not installed");
        // Every row of the spec is in the table, measured or not.
        assert_eq!(md.lines().count(), rows.len() + 2);
    }

    #[test]
    fn markdown_marks_misses() {
        let s = samples(&[
            r#"{"metric":"exec_p50_us","subject":"daemon","value":2000}"#,
            r#"{"metric":"exec_p50_us","subject":"docker-exec","value":10000}"#,
        ]);
        let md = markdown(&table(&rows(), &s));
        let line = md.lines().find(|l| l.contains("`echo hi` p50: daemon")).unwrap();
        assert_eq!(
            line,
            "| `echo hi` p50: daemon process/execute vs `docker exec` | daemon: 2000 µs | docker exec: 10000 µs | 0.20 | ratio <= 0.1 | **no** |"
        );
    }

    #[test]
    fn idle_sandboxes_are_extrapolated_from_the_memory_of_a_few() {
        let s = samples(&[
            r#"{"metric":"idle_mib","subject":"sandbar","value":3.0}"#,
            r#"{"metric":"idle_mib","subject":"sandbar","value":5.0}"#,
            r#"{"metric":"idle_mib","subject":"sandbar","value":4.0}"#,
            r#"{"metric":"idle_mib","subject":"docker-sleep","value":0.7}"#,
        ]);
        let rows = table(&rows(), &s);
        let fit = rows.iter().find(|r| r.metric.starts_with("idle sandboxes in 24 GiB")).unwrap();
        // 24576 MiB / 4 MiB (the median); 24576 / 0.7 = 35108.57..., whole sandboxes only.
        assert_eq!((fit.sandbar, fit.peer), (Some(6144.0), Some(35108.0)));
        assert_eq!(fit.holds, Some(false), "{fit:?}");
        let per = rows.iter().find(|r| r.metric.starts_with("idle memory per sandbox")).unwrap();
        assert_eq!((per.sandbar, per.peer, per.holds), (Some(4.0), Some(0.7), None));
        // A zero (a cgroup that could not be read right) fits no count rather than infinitely many; the skip reason
        // of the memory metric reaches the extrapolated row.
        let s = samples(&[
            r#"{"metric":"idle_mib","subject":"sandbar","value":0}"#,
            r#"{"skip":"idle_mib","reason":"full run only"}"#,
        ]);
        let rows = table(&super::rows(), &s);
        let fit = rows.iter().find(|r| r.metric.starts_with("idle sandboxes in 24 GiB")).unwrap();
        assert_eq!((fit.sandbar, fit.ratio, fit.holds), (None, None, None));
        assert_eq!(fit.not_measured.as_deref(), Some("full run only"));
    }

    #[test]
    fn stack_terminal_and_lsp_rows_compare_with_peers_of_the_same_run() {
        let s = samples(&[
            r#"{"metric":"create_warm_p50_ms","subject":"sandbar","value":25}"#,
            r#"{"metric":"create_cold_p50_ms","subject":"sandbar","value":900}"#,
            r#"{"metric":"create_cold_p50_ms","subject":"docker-run","value":1000}"#,
            r#"{"metric":"scp_gateway_mib_s","subject":"gateway","value":150}"#,
            r#"{"metric":"scp_gateway_mib_s","subject":"sshd","value":300}"#,
            r#"{"metric":"scp_up_mib_s","subject":"sshd","value":999}"#,
            r#"{"metric":"ssh_gateway_setup_ms","subject":"gateway","value":40}"#,
            r#"{"metric":"ssh_gateway_setup_ms","subject":"sshd","value":100}"#,
            r#"{"metric":"pty_echo_p99_us","subject":"terminal","value":300}"#,
            r#"{"metric":"pty_echo_p99_us","subject":"sshd","value":200}"#,
            r#"{"metric":"pty_cat_mib_s","subject":"terminal","value":200}"#,
            r#"{"metric":"pty_cat_mib_s","subject":"sshd","value":100}"#,
            r#"{"metric":"lsp_completion_ms","subject":"daemon","value":11}"#,
            r#"{"metric":"lsp_completion_ms","subject":"pylsp","value":10}"#,
        ]);
        let rows = table(&rows(), &s);
        let row = |name: &str| rows.iter().find(|r| r.metric == name).unwrap();
        let warm = row("create to first exec, warm pool, p50 (SDK)");
        assert_eq!((warm.peer, warm.holds), (Some(1000.0), Some(true)), "held to < 30 ms, docker run shown");
        let cold = row("create to first exec, cold, p50 (SDK)");
        assert_eq!((cold.ratio, cold.holds), (Some(0.9), Some(true)));
        // The gateway's scp is held to the sshd of its own run (the stack's file), not the SSH bench's.
        let scp = row("scp upload through the gateway");
        assert_eq!((scp.peer, scp.ratio, scp.holds), (Some(300.0), Some(0.5), Some(false)));
        let setup = row("SSH connection setup (`ssh host true`), through the gateway");
        assert_eq!((setup.ratio, setup.holds), (Some(0.4), Some(true)));
        let echo = row("PTY keystroke echo p99");
        assert_eq!((echo.ratio, echo.holds), (Some(1.5), Some(false)));
        let cat = row("PTY output, `cat` of 100 MiB (10 in --quick)");
        assert_eq!((cat.ratio, cat.holds), (Some(2.0), Some(true)));
        let lsp = row("LSP completion latency p50");
        assert_eq!(lsp.holds, Some(true), "1.1 is within <= 1.1: {lsp:?}");
        assert_eq!(row("LSP completion latency p99").not_measured.as_deref(), Some("no samples"));
    }

    #[test]
    fn plot_writes_an_svg() {
        let s = samples(&[
            r#"{"metric":"http_rps_curve","subject":"nginx","value":100,"x":8}"#,
            r#"{"metric":"http_rps_curve","subject":"nginx","value":150,"x":64}"#,
            r#"{"metric":"http_latency_c8","subject":"nginx","value":300,"x":50}"#,
            r#"{"metric":"http_latency_c8","subject":"nginx","value":900,"x":99}"#,
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        plot(&s, &path, "t").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("nginx"), "{}", &svg[..svg.len().min(200)]);
        // No samples at all still gives a (blank) figure rather than an error.
        plot(&Samples::default(), &dir.path().join("empty.svg"), "t").unwrap();
    }
}
