//! Request ids and what of a request may be logged. One id follows a request through every sandbar process it
//! touches: the edge proxy takes a client's `X-Request-Id` when it is [`valid`] (else makes one), sends it on to
//! the API and the daemon and back to the client; the API does the same for requests sent to it directly. Each
//! process writes it in its access line, so `grep <id>` over the logs finds one request everywhere.
//!
//! An id from a client is only ever copied into logs and headers, so it is held to a short, plain charset: no
//! spaces, quotes or control characters that could forge a log line or a header.

/// The header clients send and get back.
pub const HEADER: &str = "x-request-id";

/// Longest id taken from a client (a UUID is 36, a W3C trace id 32).
pub const MAX_LEN: usize = 128;

/// Whether `id` may be taken as a request id: 1 to [`MAX_LEN`] characters from `A-Z a-z 0-9 - _ . :`.
pub fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The first of `candidates` that is a [`valid`] id.
pub fn first_valid<'a>(candidates: impl IntoIterator<Item = Option<&'a str>>) -> Option<&'a str> {
    candidates.into_iter().flatten().find(|id| valid(id))
}

/// A fresh id: 32 lowercase hex digits from the system's randomness (`None` only if it has none to give).
pub fn fresh() -> Option<String> {
    crate::token::hex(16).ok()
}

/// What of a request target may go in a log: the path, without its query (which may carry a token:
/// `?token=`, `?DAYTONA_SANDBOX_AUTH_KEY=`, a signed URL's signature) or fragment; a `?` stays to say there was
/// one. Paths themselves carry ids, never secrets, in sandbar's routes.
pub fn loggable_path(path_and_query: &str) -> &str {
    match path_and_query.find(['?', '#']) {
        Some(i) => path_and_query.get(..=i).unwrap_or(path_and_query),
        None => path_and_query,
    }
}

/// A duration as an access line writes it: milliseconds to the microsecond (`31.986`, not `31.986272000000003`).
pub fn log_millis(d: std::time::Duration) -> f64 {
    // Exact below 2^53 µs (285 years); the division gives the double nearest the decimal, which prints short.
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(valid("0f3c9e2a-1b2c-4d5e-8f90-123456789abc"));
        assert!(valid("req_1.2:3"));
        for bad in ["", "a b", "a\"b", "a\nb", "x=1", "é", &"a".repeat(MAX_LEN + 1)] {
            assert!(!valid(bad), "{bad:?}");
        }
        assert!(valid(&"a".repeat(MAX_LEN)));
        assert_eq!(first_valid([None, Some("bad id"), Some("good-1"), Some("good-2")]), Some("good-1"));
        assert_eq!(first_valid([Some("")]), None);
        let (a, b) = (fresh().unwrap(), fresh().unwrap());
        assert!(valid(&a) && a.len() == 32 && a != b);
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(log_millis(std::time::Duration::from_nanos(31_986_272)).to_string(), "31.986");
        assert_eq!(log_millis(std::time::Duration::from_secs(2)).to_string(), "2000");
    }

    #[test]
    fn logged_paths_lose_their_query() {
        assert_eq!(loggable_path("/files?path=/a&token=s3cret"), "/files?");
        assert_eq!(loggable_path("/x#frag?token=t"), "/x#");
        assert_eq!(loggable_path("/toolbox/abc/process/execute"), "/toolbox/abc/process/execute");
        assert_eq!(loggable_path("?token=t"), "?");
    }
}
