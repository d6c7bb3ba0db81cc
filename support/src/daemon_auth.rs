//! The per-request credential every caller of a daemon sends (the proxy, the runner, the test harnesses), and the
//! daemon's check of it. The daemon token itself never crosses the network on HTTP: a request carries
//!
//! ```text
//! x-sandbar-daemon-auth: v1.<unix ms>.<nonce: 32 hex>.<HMAC-SHA256: 64 hex>
//! ```
//!
//! where the MAC is keyed by the per-sandbox daemon token over [`canonical`]: the version, the method, the path and
//! query exactly as sent, the timestamp and the nonce. A WebSocket upgrade is a `GET` like any other.
//!
//! The daemon ([`Verifier`]) accepts a credential once: the MAC checked in constant time, the timestamp within
//! [`WINDOW_MS`] of its clock (containers share the host's clock), and the (timestamp, nonce) pair not seen before.
//! Seen pairs are kept while they are inside the window, at most [`MAX_SEEN`] of them; when the set is full the
//! oldest pair is dropped and everything signed at or before its time is refused from then on, so memory stays
//! bounded and a replay is never accepted (a request delayed behind that many newer ones is refused instead).
//!
//! What this does not do: the body and the answer are not covered, so a machine that can already sit in the path
//! between proxy and daemon (which the runner's anti-spoofing rules prevent) could alter them in flight; it can no
//! longer learn a credential that works for any other request.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};

use crate::sync::lock;

type HmacSha256 = hmac::Hmac<sha2_next::Sha256>;

/// How far a credential's timestamp may be from the daemon's clock, either way.
pub const WINDOW_MS: u64 = 60_000;
/// Most (timestamp, nonce) pairs a [`Verifier`] remembers (about 3 MB at most).
pub const MAX_SEEN: usize = 65_536;
const VERSION: &str = "v1";

/// Why a credential was refused. The message is safe to send back: it names no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// no daemon credential (x-sandbar-daemon-auth)
    #[error("missing daemon credential (x-sandbar-daemon-auth)")]
    Missing,
    /// not `v1.<ts>.<nonce>.<sig>`
    #[error("malformed daemon credential")]
    Malformed,
    /// wrong key, or signed for another method or path
    #[error("invalid daemon credential")]
    BadSignature,
    /// outside the time window
    #[error("expired daemon credential (timestamp outside the accepted window)")]
    Expired,
    /// used before
    #[error("replayed daemon credential")]
    Replayed,
}

/// The string the MAC covers. Lines cannot be confused with each other: a method has no newline and the path and
/// query of an HTTP request cannot hold one.
pub fn canonical(method: &str, path_and_query: &str, ts_ms: u64, nonce: &str) -> String {
    format!("{CANONICAL_PREFIX}{VERSION}\n{method}\n{path_and_query}\n{ts_ms}\n{nonce}")
}

const CANONICAL_PREFIX: &str = "sandbar-daemon-auth-";

fn mac(token: &str, method: &str, path_and_query: &str, ts_ms: u64, nonce: &str) -> HmacSha256 {
    Signer::new(token).mac(method, path_and_query, &ts_ms.to_string(), nonce)
}

/// The header value for one request signed at `ts_ms` with `nonce` (32 hex digits).
pub fn sign_at(token: &str, method: &str, path_and_query: &str, ts_ms: u64, nonce: &str) -> String {
    Signer::new(token).sign_at(method, path_and_query, ts_ms, nonce)
}

/// One token's key, ready to sign many requests: the HMAC's key schedule (two SHA-256 blocks) is done once here
/// instead of per request (the edge proxy keeps one per daemon token and signs every request it forwards).
#[derive(Clone)]
pub struct Signer(HmacSha256);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { key: <redacted> }")
    }
}

impl Signer {
    pub fn new(token: &str) -> Self {
        // HMAC takes a key of any length: new_from_slice cannot fail for it.
        Self(
            <HmacSha256 as KeyInit>::new_from_slice(token.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length")),
        )
    }

    /// The MAC over [`canonical`] (`ts` is `ts_ms` in decimal), fed in pieces rather than built as a string first.
    fn mac(&self, method: &str, path_and_query: &str, ts: &str, nonce: &str) -> HmacSha256 {
        let mut m = self.0.clone();
        for part in [CANONICAL_PREFIX, VERSION, "\n", method, "\n", path_and_query, "\n", ts, "\n", nonce] {
            m.update(part.as_bytes());
        }
        m
    }

    /// The header value for one request signed at `ts_ms` with `nonce` (32 hex digits).
    pub fn sign_at(&self, method: &str, path_and_query: &str, ts_ms: u64, nonce: &str) -> String {
        let ts = ts_ms.to_string();
        let sig = self.mac(method, path_and_query, &ts, nonce).finalize().into_bytes();
        let mut out = String::with_capacity(VERSION.len() + ts.len() + nonce.len() + 3 + 2 * sig.len());
        for part in [VERSION, ".", &ts, ".", nonce, "."] {
            out.push_str(part);
        }
        crate::token::push_hex(&mut out, &sig);
        out
    }

    /// [`sign`] with this key.
    pub fn sign(&self, method: &str, path_and_query: &str) -> String {
        self.sign_at(method, path_and_query, now_ms(), &next_nonce())
    }
}

/// The header value for one request (`method`, and its path and query exactly as sent), signed now with a fresh
/// nonce. Sign each request (each retry too) just before sending it: a credential is good once, for a minute.
pub fn sign(token: &str, method: &str, path_and_query: &str) -> String {
    Signer::new(token).sign(method, path_and_query)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Nonces need to be unique per token, not secret (the MAC is what cannot be forged): a random 64-bit prefix drawn
/// once per process and a counter, so signing costs no system call.
fn next_nonce() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        match getrandom::fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            // Without an entropy source, the time and pid still make a prefix no other process uses at once.
            Err(_) => now_ms().rotate_left(20) ^ u64::from(std::process::id()),
        }
    });
    let mut nonce = String::with_capacity(32);
    crate::token::push_hex(&mut nonce, &prefix.to_be_bytes());
    crate::token::push_hex(&mut nonce, &COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    nonce
}

/// A parsed credential.
struct Credential<'a> {
    ts_ms: u64,
    nonce: &'a str,
    sig: [u8; 32],
}

fn parse(value: &[u8]) -> Result<Credential<'_>, AuthError> {
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
    let mut parts = value.split('.');
    let (Some(VERSION), Some(ts), Some(nonce), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let hex = |s: &str| s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if ts.is_empty() || ts.len() > 16 || !ts.bytes().all(|c| c.is_ascii_digit()) {
        return Err(AuthError::Malformed);
    }
    if nonce.len() != 32 || !hex(nonce) || sig.len() != 64 || !hex(sig) {
        return Err(AuthError::Malformed);
    }
    let ts_ms = ts.parse().map_err(|_| AuthError::Malformed)?;
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(sig.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
        let (Some(&hi), Some(&lo)) = (pair.first(), pair.get(1)) else { return Err(AuthError::Malformed) };
        *o = (digit(hi) << 4) | digit(lo);
    }
    Ok(Credential { ts_ms, nonce, sig: out })
}

/// The daemon's side: checks credentials against its token and remembers the ones it accepted (see the module doc).
pub struct Verifier {
    token: String,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { token: <redacted> }")
    }
}

#[derive(Default)]
struct Seen {
    pairs: BTreeSet<(u64, u128)>,
    /// Every pair signed at or before this time is refused: it may have been forgotten.
    floor: u64,
}

impl Verifier {
    pub fn new(token: &str) -> Self {
        Self { token: token.to_owned(), seen: Mutex::new(Seen::default()) }
    }

    /// Checks the credential `value` (the header's value, if any) for a request of `method` to `path_and_query`
    /// (as received) now.
    pub fn verify(&self, value: Option<&[u8]>, method: &str, path_and_query: &str) -> Result<(), AuthError> {
        self.verify_at(value, method, path_and_query, now_ms())
    }

    /// [`Self::verify`] with the clock reading given.
    pub fn verify_at(
        &self,
        value: Option<&[u8]>,
        method: &str,
        path_and_query: &str,
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let c = parse(value.ok_or(AuthError::Missing)?)?;
        // The MAC first, so that nothing unauthenticated reaches the replay set.
        mac(&self.token, method, path_and_query, c.ts_ms, c.nonce)
            .verify_slice(&c.sig)
            .map_err(|_| AuthError::BadSignature)?;
        if c.ts_ms.abs_diff(now_ms) > WINDOW_MS {
            return Err(AuthError::Expired);
        }
        let nonce = u128::from_str_radix(c.nonce, 16).map_err(|_| AuthError::Malformed)?;
        let mut seen = lock(&self.seen);
        seen.forget_before(now_ms.saturating_sub(WINDOW_MS));
        if c.ts_ms <= seen.floor {
            return Err(AuthError::Replayed);
        }
        if seen.pairs.len() >= MAX_SEEN {
            seen.forget_oldest();
        }
        if !seen.pairs.insert((c.ts_ms, nonce)) {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }

    /// How many pairs are remembered now.
    pub fn remembered(&self) -> usize {
        lock(&self.seen).pairs.len()
    }
}

impl Seen {
    /// Drops the pairs signed before `horizon` (the window check refuses those anyway; the floor keeps refusing them
    /// should the clock step back).
    fn forget_before(&mut self, horizon: u64) {
        while let Some(&(ts, _)) = self.pairs.first() {
            if ts >= horizon {
                break;
            }
            self.pairs.pop_first();
            self.floor = self.floor.max(ts);
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((ts, _)) = self.pairs.pop_first() {
            self.floor = self.floor.max(ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "token-0123";
    const NOW: u64 = 1_800_000_000_000;
    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn check(v: &Verifier, value: &str, method: &str, path: &str, now: u64) -> Result<(), AuthError> {
        v.verify_at(Some(value.as_bytes()), method, path, now)
    }

    #[test]
    fn a_signed_request_passes_once() {
        let v = Verifier::new(T);
        let h = sign_at(T, "GET", "/files?path=/a", NOW, NONCE);
        assert!(h.starts_with("v1.1800000000000.0123456789abcdef0123456789abcdef."), "{h}");
        assert_eq!(check(&v, &h, "GET", "/files?path=/a", NOW + 5), Ok(()));
        assert_eq!(check(&v, &h, "GET", "/files?path=/a", NOW + 6), Err(AuthError::Replayed));
    }

    #[test]
    fn a_kept_signer_signs_the_canonical_string() {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(T.as_bytes()).unwrap();
        m.update(canonical("PUT", "/x?y=1", NOW, NONCE).as_bytes());
        let expected = format!("v1.{NOW}.{NONCE}.{}", crate::token::to_hex(&m.finalize().into_bytes()));
        let signer = Signer::new(T);
        assert_eq!(signer.sign_at("PUT", "/x?y=1", NOW, NONCE), expected);
        assert_eq!(signer.sign_at("PUT", "/x?y=1", NOW, NONCE), expected, "the kept key is not consumed");
        assert_eq!(sign_at(T, "PUT", "/x?y=1", NOW, NONCE), expected);
        assert_eq!(format!("{signer:?}"), "Signer { key: <redacted> }");
    }

    #[test]
    fn anything_changed_is_refused() {
        let v = Verifier::new(T);
        let h = sign_at(T, "GET", "/files?path=/a", NOW, NONCE);
        assert_eq!(check(&v, &h, "POST", "/files?path=/a", NOW), Err(AuthError::BadSignature));
        assert_eq!(check(&v, &h, "GET", "/files?path=/b", NOW), Err(AuthError::BadSignature));
        assert_eq!(check(&v, &h, "GET", "/files", NOW), Err(AuthError::BadSignature));
        let other = sign_at("other-token", "GET", "/files?path=/a", NOW, NONCE);
        assert_eq!(check(&v, &other, "GET", "/files?path=/a", NOW), Err(AuthError::BadSignature));
        let later = h.replacen("1800000000000", "1800000000001", 1);
        assert_eq!(check(&v, &later, "GET", "/files?path=/a", NOW), Err(AuthError::BadSignature));
        let nonce = h.replacen(NONCE, "f123456789abcdef0123456789abcdef", 1);
        assert_eq!(check(&v, &nonce, "GET", "/files?path=/a", NOW), Err(AuthError::BadSignature));
        // None of those used up the real one.
        assert_eq!(check(&v, &h, "GET", "/files?path=/a", NOW), Ok(()));
    }

    #[test]
    fn malformed_and_missing_credentials() {
        let v = Verifier::new(T);
        assert_eq!(v.verify_at(None, "GET", "/", NOW), Err(AuthError::Missing));
        let good = sign_at(T, "GET", "/", NOW, NONCE);
        for bad in [
            "",
            T,
            "v1",
            "v2.1.0123456789abcdef0123456789abcdef.00",
            &good.replacen("v1.", "v2.", 1),
            &format!("{good}.x"),
            &good.to_uppercase(),
            &good.replacen(NONCE, "0123", 1),
            &good[..good.len() - 1],
            "v1.-5.0123456789abcdef0123456789abcdef.0000000000000000000000000000000000000000000000000000000000000000",
            "v1.99999999999999999.0123456789abcdef0123456789abcdef.\
             0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(check(&v, bad, "GET", "/", NOW), Err(AuthError::Malformed), "{bad:?}");
        }
        assert_eq!(v.verify_at(Some(&[0xff, 0xfe]), "GET", "/", NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn the_window_holds_both_ways() {
        let v = Verifier::new(T);
        let old = sign_at(T, "GET", "/", NOW - WINDOW_MS - 1, NONCE);
        assert_eq!(check(&v, &old, "GET", "/", NOW), Err(AuthError::Expired));
        let future = sign_at(T, "GET", "/", NOW + WINDOW_MS + 1, NONCE);
        assert_eq!(check(&v, &future, "GET", "/", NOW), Err(AuthError::Expired));
        let edge = sign_at(T, "GET", "/", NOW - WINDOW_MS, NONCE);
        assert_eq!(check(&v, &edge, "GET", "/", NOW), Ok(()));
    }

    #[test]
    fn pairs_outside_the_window_are_forgotten_and_stay_refused_if_the_clock_steps_back() {
        let v = Verifier::new(T);
        let h = sign_at(T, "GET", "/", NOW, NONCE);
        assert_eq!(check(&v, &h, "GET", "/", NOW), Ok(()));
        // A minute later a fresh request makes the verifier forget the first pair.
        let fresh = sign_at(T, "GET", "/", NOW + WINDOW_MS + 10, &next_nonce());
        assert_eq!(check(&v, &fresh, "GET", "/", NOW + WINDOW_MS + 10), Ok(()));
        assert_eq!(v.remembered(), 1);
        // The clock steps back: the forgotten pair is inside the window again, and still refused.
        assert_eq!(check(&v, &h, "GET", "/", NOW + 1), Err(AuthError::Replayed));
    }

    #[test]
    fn memory_is_bounded_and_a_full_set_refuses_rather_than_forgets() {
        let v = Verifier::new(T);
        let first = sign_at(T, "GET", "/", NOW, NONCE);
        assert_eq!(check(&v, &first, "GET", "/", NOW), Ok(()));
        for i in 0..MAX_SEEN as u64 {
            let h = sign_at(T, "GET", "/", NOW + 1 + i / 1000, &format!("{i:032x}"));
            assert_eq!(check(&v, &h, "GET", "/", NOW + 100), Ok(()), "{i}");
        }
        assert_eq!(v.remembered(), MAX_SEEN);
        // The first pair was dropped to make room: replaying it is still refused.
        assert_eq!(check(&v, &first, "GET", "/", NOW + 100), Err(AuthError::Replayed));
    }

    #[test]
    fn signing_draws_distinct_nonces() {
        let (a, b) = (sign(T, "GET", "/"), sign(T, "GET", "/"));
        assert_ne!(a, b);
        let v = Verifier::new(T);
        assert_eq!(v.verify(Some(a.as_bytes()), "GET", "/"), Ok(()));
        assert_eq!(v.verify(Some(b.as_bytes()), "GET", "/"), Ok(()));
    }
}
