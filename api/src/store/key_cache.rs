//! A short memory of valid API keys: SHA-256 of the key -> `(key id, organization, expiry)`, so that a request's
//! key costs a lookup in memory instead of a query (every `/api` call and every proxy authorize names one).
//!
//! An entry is used for at most [`TTL`], its expiry is checked against the clock at every use, and only keys that
//! were valid are kept (an unknown key is asked about every time: nothing an attacker sends fills the memory).
//! Revoking forgets at once: every revoke through [`super::orgs`] clears this instance's memory and, on
//! PostgreSQL, sends `keys` on the change feed in its transaction, which clears every other instance's
//! (`crate::feed`). On PostgreSQL the memory is only trusted while that feed is connected ([`KeyCache::trust`]);
//! a lost feed clears it, and until it is back every request asks the database. A key revoked by another process on
//! the same SQLite file (`sandbar-api revoke-key` beside a running API) stops working within [`TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a key's lookup is reused.
pub const TTL: Duration = Duration::from_secs(2);

/// At most this many keys are remembered; a full memory is emptied (it refills from the keys in use).
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone)]
struct Entry {
    key_id: String,
    organization_id: String,
    expires_at: Option<i64>,
    fetched: Instant,
}

#[derive(Debug, Default)]
struct Memory {
    entries: HashMap<String, Entry>,
    /// When it was last emptied by [`KeyCache::clear`].
    cleared: Option<Instant>,
}

#[derive(Debug)]
pub struct KeyCache {
    memory: Mutex<Memory>,
    trusted: AtomicBool,
}

impl KeyCache {
    /// A memory that is used from the start (`trusted`) or only once [`Self::trust`] says so.
    pub fn new(trusted: bool) -> Self {
        Self { memory: Mutex::default(), trusted: AtomicBool::new(trusted) }
    }

    /// `(key id, organization)` of the key whose hash is `hash`, remembered less than [`TTL`] ago and not expired
    /// at `now_ms`.
    pub fn get(&self, hash: &str, now_ms: i64) -> Option<(String, String)> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        let memory = sandbar_support::sync::lock(&self.memory);
        let e = memory.entries.get(hash)?;
        (e.fetched.elapsed() < TTL && e.expires_at.is_none_or(|t| t > now_ms))
            .then(|| (e.key_id.clone(), e.organization_id.clone()))
    }

    /// Remembers a key the database just called valid. `since` is when that read began: a revoke that cleared the
    /// memory after it began may have committed before the read saw the row, so such an answer is not kept.
    pub fn put(&self, hash: &str, key_id: &str, organization_id: &str, expires_at: Option<i64>, since: Instant) {
        if !self.trusted.load(Ordering::Acquire) {
            return;
        }
        let mut memory = sandbar_support::sync::lock(&self.memory);
        if memory.cleared.is_some_and(|c| c >= since) {
            return;
        }
        if memory.entries.len() >= MAX_ENTRIES {
            memory.entries.clear();
        }
        memory.entries.insert(
            hash.to_owned(),
            Entry {
                key_id: key_id.to_owned(),
                organization_id: organization_id.to_owned(),
                expires_at,
                fetched: since,
            },
        );
    }

    /// Forgets every key (a key was revoked, here or on another instance).
    pub fn clear(&self) {
        let mut memory = sandbar_support::sync::lock(&self.memory);
        memory.entries.clear();
        memory.cleared = Some(Instant::now());
    }

    /// Whether the memory may be used: on PostgreSQL, while the change feed (which carries revokes made through
    /// other instances) is connected. Either change empties it.
    pub fn trust(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::Release);
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_valid_keys_until_cleared_or_expired() {
        let c = KeyCache::new(true);
        let t = Instant::now();
        c.put("h", "k1", "o1", Some(1000), t);
        assert_eq!(c.get("h", 999), Some(("k1".into(), "o1".into())));
        assert_eq!(c.get("h", 1000), None, "expired at its expiry");
        assert_eq!(c.get("other", 0), None);
        c.clear();
        assert_eq!(c.get("h", 0), None);
        // A read that began before the clear is not kept.
        c.put("h", "k1", "o1", None, t);
        assert_eq!(c.get("h", 0), None);
        c.put("h", "k1", "o1", None, Instant::now());
        assert_eq!(c.get("h", 0), Some(("k1".into(), "o1".into())));
    }

    #[test]
    fn untrusted_memory_is_not_used() {
        let c = KeyCache::new(false);
        c.put("h", "k1", "o1", None, Instant::now());
        assert_eq!(c.get("h", 0), None);
        c.trust(true);
        c.put("h", "k1", "o1", None, Instant::now());
        assert_eq!(c.get("h", 0), Some(("k1".into(), "o1".into())));
        c.trust(false);
        assert_eq!(c.get("h", 0), None);
    }
}
