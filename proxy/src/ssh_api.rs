//! The SSH gateway's resolver backed by the API: SSH-access tokens go to `POST /internal/ssh/resolve`; activity on
//! gateway connections is batched (once a second) into `POST /internal/activity`, like the HTTP edge's.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_proto::api::ActivityReport;

use crate::api::{ApiClient, SshResolution};
use crate::ssh_gateway::{SshTarget, SshTargetResolver};

#[derive(Debug)]
pub struct ApiSshResolver {
    api: ApiClient,
    active: Mutex<HashSet<String>>,
}

impl ApiSshResolver {
    /// The resolver and the task that flushes its activity every `interval` until `shutdown`.
    pub fn new(
        api: ApiClient,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (Arc<Self>, impl std::future::Future<Output = ()> + Send) {
        let me = Arc::new(Self { api, active: Mutex::new(HashSet::new()) });
        let flusher = me.clone();
        let task = async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => {}
                }
                let ids: Vec<String> = flusher.lock().drain().collect();
                if !ids.is_empty()
                    && let Err(e) = flusher.api.activity(&ActivityReport { sandbox_ids: ids }).await
                {
                    tracing::warn!(error = %e, "reporting SSH activity failed");
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        };
        (me, task)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl SshTargetResolver for ApiSshResolver {
    async fn resolve(&self, token: &str) -> Result<SshTarget, String> {
        match self.api.ssh_resolve(token).await {
            Ok(SshResolution::Target(t)) => Ok(SshTarget {
                sandbox_id: t.sandbox_id,
                daemon_addr: t.ssh_addr,
                daemon_token: t.daemon_token,
                daemon_host_key: None,
            }),
            Ok(SshResolution::Refused(message)) => Err(message),
            Err(e) => {
                tracing::warn!(error = %e, "SSH token lookup failed");
                Err(format!("sandbar cannot check SSH access right now: {e}"))
            }
        }
    }

    fn activity(&self, sandbox_id: &str) {
        self.lock().insert(sandbox_id.to_owned());
    }
}
