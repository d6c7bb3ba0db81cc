//! Single-flight: concurrent callers asking the same question share one answer. The first caller for a key starts
//! the work as its own task (so a caller that gives up, e.g. a client that disconnects, does not cancel it for the
//! others, and nothing is left behind when everyone gives up); later callers for that key wait for the same result.
//! The task removes its key when done, after the work itself has stored whatever it caches, so a caller arriving
//! later finds the cache instead of starting the work again.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use sandbar_support::sync::lock;
use tokio::sync::watch;

type Pending<V> = watch::Receiver<Option<V>>;

pub struct Flights<K, V> {
    inflight: Arc<Mutex<HashMap<K, Pending<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self { inflight: Arc::new(Mutex::new(HashMap::new())) }
    }
}

/// The work of a flight ended without an answer (it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared lookup ended without an answer")]
pub struct FlightLost;

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The answer of `work` for `key`: started now if no flight for `key` is under way, else the one under way.
    /// `work` is only called (and spawned) when this caller starts the flight.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Result<V, FlightLost>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut rx = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let map = self.inflight.clone();
                    let fut = work();
                    tokio::spawn(async move {
                        // Removes the key even if `fut` panics, so the next caller starts afresh.
                        let _cleanup = Cleanup { map, key };
                        let v = fut.await;
                        let _ = tx.send(Some(v));
                    });
                    rx
                }
            }
        };
        let answer = rx.wait_for(Option::is_some).await.map_err(|_| FlightLost)?;
        answer.clone().ok_or(FlightLost)
    }

    /// Flights under way (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.inflight).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Cleanup<K: Eq + Hash, V> {
    map: Arc<Mutex<HashMap<K, Pending<V>>>>,
    key: K,
}

impl<K: Eq + Hash, V> Drop for Cleanup<K, V> {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_burst_shares_one_call_and_the_key_is_freed() {
        let flights: Arc<Flights<String, usize>> = Arc::new(Flights::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (f, c) = (flights.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                f.run("k".to_owned(), || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    c.fetch_add(1, Ordering::SeqCst) + 41
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(41));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());
        // The next call starts a new flight.
        let c = calls.clone();
        assert_eq!(flights.run("k".to_owned(), || async move { c.fetch_add(1, Ordering::SeqCst) }).await, Ok(1));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_others() {
        let flights: Arc<Flights<u8, u8>> = Arc::new(Flights::default());
        let f = flights.clone();
        let first = tokio::spawn(async move {
            f.run(1, || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                7
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = flights.run(1, || async { 0 });
        first.abort();
        assert_eq!(second.await, Ok(7));
    }

    #[tokio::test]
    async fn a_panicking_flight_is_reported_and_forgotten() {
        let flights: Flights<u8, u8> = Flights::default();
        let r = flights
            .run(1, || async {
                if std::hint::black_box(true) {
                    panic!("boom");
                }
                0
            })
            .await;
        assert_eq!(r, Err(FlightLost));
        assert_eq!(flights.run(1, || async { 3 }).await, Ok(3));
    }
}
