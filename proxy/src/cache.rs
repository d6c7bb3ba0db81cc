//! Route and authorization caches. Routes live for a short TTL and are dropped early when the API's route-changes
//! long-poll names them; a burst of requests for one sandbox makes one lookup (single-flight: the first caller
//! fetches, the others wait on the same per-id lock and then read the cache). Authorization answers are cached for
//! the `ttlSecs` the API grants, keyed by a SHA-256 of (credential kind, credential, sandbox, port), so no
//! credential is kept in memory in clear.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sandbar_proto::api::{AuthorizeRequest, Route};
use sha2::{Digest, Sha256};

use crate::api::{ApiCallError, ApiClient, Authorization};
use crate::metrics::Metrics;

/// Entries kept at most; past this, expired entries are swept and, if still full, the map is cleared.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone)]
struct CachedRoute {
    route: Option<Arc<Route>>,
    at: Instant,
}

pub struct RouteCache {
    api: ApiClient,
    ttl: Duration,
    entries: RwLock<HashMap<String, CachedRoute>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped by every invalidation, so a lookup that started before one does not store what it read.
    generation: AtomicU64,
    metrics: Arc<Metrics>,
}

impl RouteCache {
    pub fn new(api: ApiClient, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            api,
            ttl,
            entries: RwLock::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    fn cached(&self, id: &str) -> Option<Option<Arc<Route>>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(id).filter(|e| e.at.elapsed() < self.ttl).map(|e| e.route.clone())
    }

    /// The route of `id`; `Ok(None)` when the API does not know it.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Route>>, ApiCallError> {
        if let Some(hit) = self.cached(id) {
            self.metrics.route_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let lock = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(id.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Whoever held the lock before us may have filled the cache.
        if let Some(hit) = self.cached(id) {
            self.metrics.route_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.metrics.route_cache_misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let result = self.api.route(id).await;
        if let Ok(route) = &result
            && self.generation.load(Ordering::Acquire) == generation
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            if entries.len() >= MAX_ENTRIES {
                let ttl = self.ttl;
                entries.retain(|_, e| e.at.elapsed() < ttl);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(id.to_owned(), CachedRoute { route: route.clone().map(Arc::new), at: Instant::now() });
        }
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            // Only the last waiter's clone and the map's remain when nobody else waits.
            if inflight.get(id).is_some_and(|l| Arc::strong_count(l) <= 2) {
                inflight.remove(id);
            }
        }
        result.map(|r| r.map(Arc::new))
    }

    pub fn invalidate(&self, ids: &[String]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            entries.remove(id);
        }
    }

    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Follows `GET /internal/routes/changes` forever, dropping the routes it names. When the sequence goes
    /// backwards (the API restarted with a new sequence) or a poll fails, the whole cache is dropped: it may have
    /// missed changes.
    pub async fn follow_changes(self: Arc<Self>, wait_secs: u64) {
        let mut since: i64 = 0;
        let mut first = true;
        loop {
            match self.api.route_changes(since, wait_secs).await {
                Ok(changes) => {
                    if changes.seq < since || first {
                        self.clear();
                    } else if !changes.sandbox_ids.is_empty() {
                        tracing::debug!(count = changes.sandbox_ids.len(), "routes changed");
                        self.invalidate(&changes.sandbox_ids);
                    }
                    first = false;
                    since = changes.seq;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "route changes long-poll failed; retrying");
                    self.clear();
                    first = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    ApiKey,
    PreviewToken,
}

struct CachedAuth {
    organization_id: String,
    until: Instant,
}

pub struct AuthCache {
    api: ApiClient,
    entries: RwLock<HashMap<[u8; 32], CachedAuth>>,
    metrics: Arc<Metrics>,
}

impl AuthCache {
    pub fn new(api: ApiClient, metrics: Arc<Metrics>) -> Self {
        Self { api, entries: RwLock::new(HashMap::new()), metrics }
    }

    fn key(kind: CredentialKind, credential: &str, sandbox_id: &str, port: u16) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([kind as u8]);
        h.update((credential.len() as u64).to_le_bytes());
        h.update(credential.as_bytes());
        h.update((sandbox_id.len() as u64).to_le_bytes());
        h.update(sandbox_id.as_bytes());
        h.update(port.to_le_bytes());
        h.finalize().into()
    }

    /// Asks the API (or the cache) whether `credential` may reach `port` of `sandbox_id`.
    pub async fn authorize(
        &self,
        kind: CredentialKind,
        credential: &str,
        sandbox_id: &str,
        port: u16,
    ) -> Result<Authorization, ApiCallError> {
        let key = Self::key(kind, credential, sandbox_id, port);
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = entries.get(&key).filter(|e| e.until > Instant::now()) {
                self.metrics.auth_cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Authorization::Allowed(sandbar_proto::api::AuthorizeResponse {
                    organization_id: e.organization_id.clone(),
                    ttl_secs: e.until.saturating_duration_since(Instant::now()).as_secs(),
                }));
            }
        }
        self.metrics.auth_cache_misses.fetch_add(1, Ordering::Relaxed);
        let req = AuthorizeRequest {
            sandbox_id: sandbox_id.to_owned(),
            port,
            api_key: (kind == CredentialKind::ApiKey).then(|| credential.to_owned()),
            preview_token: (kind == CredentialKind::PreviewToken).then(|| credential.to_owned()),
        };
        let answer = self.api.authorize(&req).await?;
        if let Authorization::Allowed(ok) = &answer
            && ok.ttl_secs > 0
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            if entries.len() >= MAX_ENTRIES {
                let now = Instant::now();
                entries.retain(|_, e| e.until > now);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(
                key,
                CachedAuth {
                    organization_id: ok.organization_id.clone(),
                    until: Instant::now() + Duration::from_secs(ok.ttl_secs.min(3600)),
                },
            );
        }
        Ok(answer)
    }
}
