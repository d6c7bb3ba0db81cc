//! The SSH gateway's resolver backed by the API: SSH-access tokens go to `POST /internal/ssh/resolve`; activity on
//! gateway connections goes into the proxy's one activity reporter ([`crate::control::activity`]), which the
//! HTTP edge feeds too.

use std::sync::Arc;

use crate::control::activity::Activity;
use crate::control::api::{ApiClient, SshResolution};
use crate::ssh_gateway::{SshTarget, SshTargetResolver};

#[derive(Debug)]
pub struct ApiSshResolver {
    api: ApiClient,
    activity: Arc<Activity>,
}

impl ApiSshResolver {
    /// Resolves through `api` and marks activity in `activity` (reported by whoever runs its reporter).
    pub fn new(api: ApiClient, activity: Arc<Activity>) -> Arc<Self> {
        Arc::new(Self { api, activity })
    }
}

#[async_trait::async_trait]
impl SshTargetResolver for ApiSshResolver {
    async fn resolve(&self, token: &str) -> Result<SshTarget, String> {
        match self.api.ssh_resolve(token, false).await {
            Ok(SshResolution::Target(t)) => Ok(SshTarget {
                sandbox_id: t.sandbox_id,
                daemon_addr: t.ssh_addr,
                daemon_token: t.daemon_token,
                daemon_host_key: t.daemon_host_key,
            }),
            Ok(SshResolution::Refused(message)) => Err(message),
            Err(e) => {
                tracing::warn!(error = %e, "SSH token lookup failed");
                Err(format!("sandbar cannot check SSH access right now: {e}"))
            }
        }
    }

    async fn revoked(&self, token: &str, sandbox_id: &str) -> Option<String> {
        match self.api.ssh_resolve(token, true).await {
            Ok(SshResolution::Target(t)) if t.sandbox_id == sandbox_id => None,
            Ok(SshResolution::Target(_)) => Some("this SSH access token now opens another sandbox".to_owned()),
            Ok(SshResolution::Refused(message)) => Some(message),
            // An API we cannot reach closes nothing.
            Err(_) => None,
        }
    }

    fn activity(&self, sandbox_id: &str) {
        self.activity.touch(sandbox_id);
    }
}
