//! Small helpers the engine and the servers share: RFC 3339 timestamps, POSIX shell quoting, deadlines.

pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Quotes `s` for a POSIX shell: `'...'` with embedded quotes closed and escaped.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The instant `after` from now, or `None` when that is past what the clock can hold (a client's timeout of
/// `u64::MAX` seconds): no deadline, which is what such a timeout means. `Instant + Duration` would panic.
pub fn deadline_after(after: std::time::Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(after)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_deadline_past_the_clock_is_none_not_a_panic() {
        assert!(super::deadline_after(Duration::from_secs(5)).is_some());
        assert!(super::deadline_after(Duration::from_secs(u64::MAX)).is_none());
        assert!(super::deadline_after(Duration::MAX).is_none());
    }
}
