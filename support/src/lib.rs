//! Small helpers shared by every sandbar process, so each exists once: random tokens ([`token`]), constant-time
//! compares ([`ct_eq`]), the signed per-request credential every caller sends a daemon ([`daemon_auth`]), atomic
//! private file writes ([`fs`]), the SSH host key and server settings ([`ssh`], feature `ssh`), backoff with jitter
//! ([`backoff`]), locks that survive a panicked holder ([`sync`]), checks of Prometheus names ([`prom`]), request
//! ids with what of a request may be logged ([`request_id`]), W3C `traceparent` ([`trace`]), spans exported over
//! OTLP/HTTP with a hand-written protobuf encoder ([`otlp`]) and the layered
//! configuration of every service ([`config`], feature `config`: defaults < TOML file < `SANDBAR_*` environment <
//! flags).
//!
//! No web framework and no runtime: the static daemon links this crate too.

pub mod backoff;
#[cfg(feature = "config")]
pub mod config;
pub mod daemon_auth;
pub mod fs;
pub mod otlp;
pub mod prom;
pub mod request_id;
#[cfg(feature = "ssh")]
pub mod ssh;
pub mod sync;
pub mod token;
pub mod trace;

/// Whether two secrets are equal, in time that depends on their lengths only (no timing oracle for a token).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_compares_whole_values() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
    }
}
