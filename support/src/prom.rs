//! Checks of Prometheus names, for the tests that keep the sample Grafana dashboard (`deploy/grafana/sandbar.json`)
//! true: [`queried`] lists the metrics a dashboard names, [`exposes`] says whether a scrape has one.

/// The distinct metric names starting with `prefix` (`sandbar_api_`) anywhere in `text` (a dashboard's JSON: its
/// queries are the only place such names occur), in order of first use.
pub fn queried(text: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = text.len() - rest.len() + at;
        let boundary = text[..before].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        if boundary && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Whether the text exposition `scrape` declares `name`: a `# TYPE` line for it, or for the family it is a sample
/// of (`x_total` of counter `x`, `x_bucket`/`x_sum`/`x_count` of histogram `x`), or a sample line of it.
pub fn exposes(scrape: &str, name: &str) -> bool {
    scrape.lines().any(|line| {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else { return false };
            let suffixes: &[&str] = match kind {
                "counter" => &["", "_total"],
                "histogram" => &["", "_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            return suffixes.iter().any(|s| name.strip_suffix(s) == Some(family));
        }
        !line.starts_with('#') && line.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' ']))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_families() {
        let dash =
            r#"{"expr": "rate(sandbar_api_http_requests_total[5m]) / x_sandbar_api_no", "t": "sandbar_api_sandboxes"}"#;
        assert_eq!(queried(dash, "sandbar_api_"), ["sandbar_api_http_requests_total", "sandbar_api_sandboxes"]);
        let scrape = "# TYPE a counter\na_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE g gauge\ng 3\n";
        assert!(exposes(scrape, "a_total"));
        assert!(exposes(scrape, "h_bucket") && exposes(scrape, "h_count"));
        assert!(exposes(scrape, "g"));
        assert!(!exposes(scrape, "g_total"), "a gauge has no _total");
        assert!(!exposes(scrape, "a_bucket"));
        assert!(!exposes(scrape, "nothing"));
    }
}
