//! What the proxy remembers of the API's answers, and how it asks: route lookups, access checks (with a credential
//! or without one), signed preview tokens and wake-ups. Every question is single-flight ([`super::flight`]): a burst
//! of requests for one sandbox (or one credential and sandbox) makes one API call, and the callers share its answer,
//! error included.
//!
//! - Routes live for a short TTL and are dropped early when the API's route-changes long-poll names them; every
//!   drop wakes the requests waiting for a sandbox to start ([`RouteCache::wait_for`]).
//! - Authorizations are cached for the `ttlSecs` the API grants, refusals for [`REFUSAL_TTL`], keyed by a SHA-256 of
//!   (credential kind, credential, sandbox, port, route version), so no credential is kept in clear and any change
//!   of the sandbox's route (a restart rotating its preview token, an expired signed URL) makes the next request
//!   ask again. A request without a credential asks the same question with none ([`CredentialKind::Anonymous`]):
//!   whether a port is open to anyone (a public sandbox's preview ports) is the API's rule, cached like the rest.
//! - Signed preview tokens resolve to a sandbox the same way; the answer carries the route version it was given
//!   at, and a newer route sends the proxy back to the API.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sandbar_proto::api::{AuthorizeRequest, AuthorizeResponse, Route, SignedPreviewResolveResponse};
use sandbar_support::daemon_auth::Signer;
use sandbar_support::sync::{lock, read, write};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::api::{ApiCallError, ApiClient, Authorization, SignedPreview, Wake};
use super::flight::Flights;
use crate::metrics::Metrics;

/// Entries kept at most; past this, expired entries are swept and, if still full, the map is cleared.
const MAX_ENTRIES: usize = 100_000;
/// How long a refused credential stays refused without asking again: long enough that a burst of bad requests
/// makes one API call, short enough that a key created a moment ago works at once.
pub const REFUSAL_TTL: Duration = Duration::from_secs(2);
/// Longest an authorization is cached, whatever the API says.
const MAX_AUTH_TTL: Duration = Duration::from_secs(3600);

fn lost(e: super::flight::FlightLost) -> ApiCallError {
    ApiCallError::Unreachable(e.to_string())
}

/// Asks single-flight: `work` runs unless a flight for `key` is under way. A caller answered by another's flight
/// counts in `hits` (it made no API call).
async fn ask<K, V, F, Fut>(
    flights: &Flights<K, Result<V, ApiCallError>>,
    key: K,
    hits: &AtomicU64,
    work: F,
) -> Result<V, ApiCallError>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, ApiCallError>> + Send + 'static,
{
    let mut leader = false;
    let answer = flights
        .run(key, || {
            leader = true;
            work()
        })
        .await
        .map_err(lost)?;
    if !leader {
        hits.fetch_add(1, Ordering::Relaxed);
    }
    answer
}

/// Inserts into a bounded map: past [`MAX_ENTRIES`], entries `keep` rejects go, then everything.
fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V, keep: impl Fn(&V) -> bool) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, e| keep(e));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(k, v);
}

#[derive(Clone)]
struct CachedRoute {
    route: Option<Arc<Route>>,
    at: Instant,
}

type RouteAnswer = Result<Option<Arc<Route>>, ApiCallError>;

struct RouteStore {
    api: ApiClient,
    ttl: Duration,
    entries: RwLock<HashMap<String, CachedRoute>>,
    /// Bumped by every invalidation, so a lookup that started before one does not store what it read.
    generation: AtomicU64,
    /// Woken by every invalidation: requests waiting for a sandbox to start look again.
    changed: Notify,
    metrics: Arc<Metrics>,
}

impl RouteStore {
    fn cached(&self, id: &str) -> Option<Option<Arc<Route>>> {
        let entries = read(&self.entries);
        entries.get(id).filter(|e| e.at.elapsed() < self.ttl).map(|e| e.route.clone())
    }

    async fn fetch(&self, id: &str) -> RouteAnswer {
        self.metrics.route_cache_misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let route = self.api.route(id).await?.map(Arc::new);
        if self.generation.load(Ordering::Acquire) == generation {
            let mut entries = write(&self.entries);
            let ttl = self.ttl;
            bounded_insert(
                &mut *entries,
                id.to_owned(),
                CachedRoute { route: route.clone(), at: Instant::now() },
                |e| e.at.elapsed() < ttl,
            );
        }
        Ok(route)
    }
}

pub struct RouteCache {
    store: Arc<RouteStore>,
    flights: Flights<String, RouteAnswer>,
}

impl RouteCache {
    pub fn new(api: ApiClient, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Arc::new(RouteStore {
                api,
                ttl,
                entries: RwLock::new(HashMap::new()),
                generation: AtomicU64::new(0),
                changed: Notify::new(),
                metrics,
            }),
            flights: Flights::default(),
        }
    }

    /// The route of `id`; `Ok(None)` when the API does not know it.
    pub async fn get(&self, id: &str) -> RouteAnswer {
        if let Some(hit) = self.store.cached(id) {
            self.store.metrics.route_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let (store, owned) = (self.store.clone(), id.to_owned());
        ask(
            &self.flights,
            owned.clone(),
            &self.store.metrics.route_cache_hits,
            || async move { store.fetch(&owned).await },
        )
        .await
    }

    /// Waits until the route of `id` satisfies `done` (or is gone), looking again whenever the route-changes feed
    /// drops a route, up to `deadline`. Returns the last route seen.
    pub async fn wait_for(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
        done: impl Fn(&Route) -> bool,
    ) -> RouteAnswer {
        loop {
            let notified = self.store.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let route = self.get(id).await?;
            match &route {
                Some(r) if !done(r) => {}
                _ => return Ok(route),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(route);
            }
        }
    }

    /// Resolves at the next drop of any route (a route-changes notice, or an upstream failure).
    pub async fn changed(&self) {
        self.store.changed.notified().await;
    }

    pub fn invalidate(&self, ids: &[String]) {
        self.store.generation.fetch_add(1, Ordering::AcqRel);
        {
            let mut entries = write(&self.store.entries);
            for id in ids {
                entries.remove(id);
            }
        }
        self.store.changed.notify_waiters();
    }

    pub fn clear(&self) {
        self.store.generation.fetch_add(1, Ordering::AcqRel);
        write(&self.store.entries).clear();
        self.store.changed.notify_waiters();
    }

    /// Follows `GET /internal/routes/changes` forever, dropping the routes it names. When the sequence goes
    /// backwards (the API restarted with a new sequence) or a poll fails, the whole cache is dropped: it may have
    /// missed changes.
    pub async fn follow_changes(self: Arc<Self>, wait_secs: u64) {
        let mut since: i64 = 0;
        let mut first = true;
        loop {
            match self.store.api.route_changes(since, wait_secs).await {
                Ok(changes) => {
                    if changes.seq < since || first {
                        self.clear();
                    } else if !changes.sandbox_ids.is_empty() {
                        tracing::debug!(count = changes.sandbox_ids.len(), "routes changed");
                        self.invalidate(&changes.sandbox_ids);
                    }
                    first = false;
                    since = changes.seq;
                    self.store.metrics.route_feed(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "route changes long-poll failed; retrying");
                    self.store.metrics.route_feed(Some(e.to_string()));
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
    /// The token of a signed preview URL (`{port}-{token}.{domain}`).
    SignedPreview,
    /// No credential: the API says whether the port is open to anyone (the credential string is empty).
    Anonymous,
    /// The dashboard's session cookie, on a toolbox path, from the dashboard's own page.
    DashboardSession,
}

type Key = [u8; 32];

fn key(kind: CredentialKind, credential: &str, sandbox_id: &str, port: u16, version: i64) -> Key {
    let mut h = Sha256::new();
    h.update([kind as u8]);
    h.update((credential.len() as u64).to_le_bytes());
    h.update(credential.as_bytes());
    h.update((sandbox_id.len() as u64).to_le_bytes());
    h.update(sandbox_id.as_bytes());
    h.update(port.to_le_bytes());
    h.update(version.to_le_bytes());
    h.finalize().into()
}

#[derive(Clone)]
struct Cached<T> {
    answer: T,
    until: Instant,
}

/// Shared, so a cache hit is a reference count rather than a copy of the answer's strings.
type AuthAnswer = Result<Arc<Authorization>, ApiCallError>;
type SignedAnswer = Result<SignedPreview, ApiCallError>;

struct AuthStore {
    api: ApiClient,
    auth: RwLock<HashMap<Key, Cached<Arc<Authorization>>>>,
    signed: RwLock<HashMap<Key, Cached<SignedPreview>>>,
    metrics: Arc<Metrics>,
}

fn lookup<T: Clone>(map: &RwLock<HashMap<Key, Cached<T>>>, k: &Key) -> Option<T> {
    let map = read(map);
    map.get(k).filter(|e| e.until > Instant::now()).map(|e| e.answer.clone())
}

fn remember<T>(map: &RwLock<HashMap<Key, Cached<T>>>, k: Key, answer: T, ttl: Duration) {
    if ttl.is_zero() {
        return;
    }
    let mut map = write(map);
    let now = Instant::now();
    bounded_insert(&mut *map, k, Cached { answer, until: now + ttl.min(MAX_AUTH_TTL) }, |e| e.until > now);
}

pub struct AuthCache {
    store: Arc<AuthStore>,
    auth_flights: Flights<Key, AuthAnswer>,
    signed_flights: Flights<Key, SignedAnswer>,
}

impl AuthCache {
    pub fn new(api: ApiClient, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Arc::new(AuthStore {
                api,
                auth: RwLock::new(HashMap::new()),
                signed: RwLock::new(HashMap::new()),
                metrics,
            }),
            auth_flights: Flights::default(),
            signed_flights: Flights::default(),
        }
    }

    /// Asks the API (or the cache) whether `credential` may reach `port` of `sandbox_id`, whose route is at
    /// `version`. [`CredentialKind::Anonymous`] asks with no credential (`credential` is ignored).
    pub async fn authorize(
        &self,
        kind: CredentialKind,
        credential: &str,
        sandbox_id: &str,
        port: u16,
        version: i64,
    ) -> AuthAnswer {
        let credential = if kind == CredentialKind::Anonymous { "" } else { credential };
        let k = key(kind, credential, sandbox_id, port, version);
        if let Some(hit) = lookup(&self.store.auth, &k) {
            self.store.metrics.auth_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let store = self.store.clone();
        let req = AuthorizeRequest {
            sandbox_id: sandbox_id.to_owned(),
            port,
            api_key: (kind == CredentialKind::ApiKey).then(|| credential.to_owned()),
            preview_token: matches!(kind, CredentialKind::PreviewToken | CredentialKind::SignedPreview)
                .then(|| credential.to_owned()),
            session: (kind == CredentialKind::DashboardSession).then(|| credential.to_owned()),
        };
        let again = k;
        ask(&self.auth_flights, k, &self.store.metrics.auth_cache_hits, || async move {
            // A caller that missed the cache just before another flight for this key stored its answer and ended
            // starts a flight of its own: the answer is there now, so it need not ask the API again.
            if let Some(hit) = lookup(&store.auth, &again) {
                store.metrics.auth_cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit);
            }
            store.metrics.auth_cache_misses.fetch_add(1, Ordering::Relaxed);
            let answer = Arc::new(store.api.authorize(&req).await?);
            let ttl = match &*answer {
                Authorization::Allowed(AuthorizeResponse { ttl_secs, .. }) => Duration::from_secs(*ttl_secs),
                Authorization::Unauthorized | Authorization::NotFound => REFUSAL_TTL,
            };
            remember(&store.auth, again, answer.clone(), ttl);
            Ok(answer)
        })
        .await
    }

    /// Which sandbox the signed preview token opens on `port`. `newer_than`: a route version the cached answer
    /// must not be older than (the route moved on since: ask again).
    pub async fn resolve_signed(&self, token: &str, port: u16, newer_than: Option<i64>) -> SignedAnswer {
        let k = key(CredentialKind::SignedPreview, token, "", port, 0);
        match lookup(&self.store.signed, &k) {
            Some(SignedPreview::Allowed(ok)) if newer_than.is_none_or(|v| ok.version >= v) => {
                self.store.metrics.auth_cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(SignedPreview::Allowed(ok));
            }
            Some(refused @ SignedPreview::Refused(_)) => {
                self.store.metrics.auth_cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(refused);
            }
            _ => {}
        }
        let (store, token) = (self.store.clone(), token.to_owned());
        ask(&self.signed_flights, k, &self.store.metrics.auth_cache_hits, || async move {
            store.metrics.auth_cache_misses.fetch_add(1, Ordering::Relaxed);
            let answer = store.api.resolve_signed_preview(&token, port).await?;
            let ttl = match &answer {
                SignedPreview::Allowed(SignedPreviewResolveResponse { ttl_secs, .. }) => Duration::from_secs(*ttl_secs),
                SignedPreview::Refused(_) => REFUSAL_TTL,
            };
            remember(&store.signed, k, answer.clone(), ttl);
            Ok(answer)
        })
        .await
    }
}

type WakeAnswer = Result<Wake, ApiCallError>;

/// Asks the API to start auto-stopped sandboxes: once per sandbox for a burst of requests (single-flight), and
/// not again for `quiet` after a start was accepted (requests arriving meanwhile just wait for the route).
pub struct Waker {
    api: ApiClient,
    routes: Arc<RouteCache>,
    flights: Flights<String, WakeAnswer>,
    woken: Arc<Mutex<HashMap<String, Instant>>>,
    quiet: Duration,
    metrics: Arc<Metrics>,
}

impl Waker {
    pub fn new(api: ApiClient, routes: Arc<RouteCache>, quiet: Duration, metrics: Arc<Metrics>) -> Self {
        Self { api, routes, flights: Flights::default(), woken: Arc::default(), quiet, metrics }
    }

    /// Asks for `id` to be started, unless that was asked less than `quiet` ago. `Ok(None)`: already asked.
    pub async fn wake(&self, id: &str) -> Result<Option<Wake>, ApiCallError> {
        {
            let woken = lock(&self.woken);
            if woken.get(id).is_some_and(|at| at.elapsed() < self.quiet) {
                return Ok(None);
            }
        }
        let answer = self
            .flights
            .run(id.to_owned(), || {
                let (api, id, woken, quiet) = (self.api.clone(), id.to_owned(), self.woken.clone(), self.quiet);
                let (routes, metrics) = (self.routes.clone(), self.metrics.clone());
                async move {
                    metrics.wake_requests.fetch_add(1, Ordering::Relaxed);
                    let answer = api.wake(&id).await?;
                    if matches!(answer, Wake::Started(_)) {
                        let mut woken = lock(&woken);
                        bounded_insert(&mut *woken, id.clone(), Instant::now(), |at| at.elapsed() < quiet);
                    }
                    // The state moved: whoever looks next reads the new route.
                    routes.invalidate(std::slice::from_ref(&id));
                    Ok(answer)
                }
            })
            .await
            .map_err(lost)?;
        answer.map(Some)
    }
}

/// Each daemon token's request signer ([`Signer`]: the HMAC keyed once), so that signing a forwarded request costs
/// the MAC over that request alone rather than the key schedule too. Keyed by the token, so a sandbox that
/// restarted with a new one gets a new signer; bounded like the other caches.
#[derive(Default)]
pub struct Signers(RwLock<HashMap<String, Arc<Signer>>>);

impl Signers {
    /// The signer of `daemon_token` (shared: a request holds a reference, not a copy of the HMAC state).
    pub fn get(&self, daemon_token: &str) -> Arc<Signer> {
        if let Some(s) = read(&self.0).get(daemon_token) {
            return s.clone();
        }
        let signer = Arc::new(Signer::new(daemon_token));
        bounded_insert(&mut *write(&self.0), daemon_token.to_owned(), signer.clone(), |_| false);
        signer
    }
}
