//! The one activity reporter: the HTTP edge (every proxied request, every open WebSocket) and the SSH gateway
//! (traffic on a connection) mark sandboxes here, and [`Activity::report`] sends what was marked to
//! `POST /internal/activity` every interval, so the API's auto-stop timers see the sandbox in use. A sandbox with an
//! upgraded connection open is reported every interval while it stays open.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_proto::api::ActivityReport;
use sandbar_support::sync::lock;

use crate::control::api::ApiClient;

/// Sandboxes with traffic since the last report, and open upgraded connections per sandbox.
#[derive(Debug, Default)]
pub struct Activity {
    touched: Mutex<HashSet<String>>,
    open: Mutex<HashMap<String, usize>>,
}

impl Activity {
    /// `id` carried traffic.
    pub fn touch(&self, id: &str) {
        let mut t = lock(&self.touched);
        if !t.contains(id) {
            t.insert(id.to_owned());
        }
    }

    /// An upgraded connection (WebSocket) to `id` opened: `id` is reported until [`Self::close`].
    pub fn open(&self, id: &str) {
        *lock(&self.open).entry(id.to_owned()).or_default() += 1;
    }

    pub fn close(&self, id: &str) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(id);
            }
        }
    }

    /// Everything to report now: sandboxes touched since the last call plus those with open upgrades.
    pub fn drain(&self) -> Vec<String> {
        let mut ids: BTreeSet<String> = std::mem::take(&mut *lock(&self.touched)).into_iter().collect();
        ids.extend(lock(&self.open).keys().cloned());
        ids.into_iter().collect()
    }

    /// Sends one report of [`Self::drain`] (nothing when it is empty).
    pub async fn flush(&self, api: &ApiClient) {
        let ids = self.drain();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = api.activity(&ActivityReport { sandbox_ids: ids }).await {
            tracing::warn!(error = %e, "activity report failed");
        }
    }

    /// Reports every `every`, forever (the caller aborts it and flushes once more at shutdown).
    pub async fn report(self: Arc<Self>, api: ApiClient, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush(&api).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_reports_touched_and_open() {
        let a = Activity::default();
        a.touch("x");
        a.open("y");
        assert_eq!(a.drain(), vec!["x".to_owned(), "y".to_owned()]);
        assert_eq!(a.drain(), vec!["y".to_owned()]);
        a.close("y");
        assert!(a.drain().is_empty());
    }
}
