//! Small helpers the engine and the servers share: RFC 3339 timestamps, POSIX shell quoting, deadlines, giving
//! freed memory back.

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

/// Gives the free pages inside the heap back to the kernel. glibc only gives back the top of its heap, so what a
/// burst of work (start-up: parsing the command line and the configuration, building the servers; a process's
/// output buffers) freed below live data stays resident and is charged to the sandbox's memory cgroup: about
/// 80 KiB of an idle sandbox's. Called where such a burst ends, never on a hot path (it walks the heap).
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes glibc's arena locks itself and only returns pages of free chunks; no Rust object
    // is touched.
    unsafe {
        nix::libc::malloc_trim(0);
    }
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
