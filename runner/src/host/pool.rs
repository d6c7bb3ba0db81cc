//! The warm pool: started sandboxes of one image and size, waiting to be claimed. A claim hands the daemon its new
//! identity and environment through `POST /init`, so create-to-ready is a lookup and one local HTTP call instead of
//! a container start. Docker labels cannot change on a running container, so a claimed container keeps its pool
//! labels; the claim (container ID -> sandbox) is kept in `claims.json` under the state dir, written atomically.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sandbar_proto::runner::{CreateSandbox, SandboxInfo, SandboxState};
use sandbar_proto::toolbox::InitRequest;

use sandbar_support::sync::lock;

use super::daemon::new_token;
use super::{ENV_SANDBOX_ID, Entry, Inner, Runner};
use crate::error::SandboxError;

/// A started, unclaimed pool container whose daemon answers.
pub(super) struct PoolMember {
    container_id: String,
    token: String,
    /// The public half of the host key the member's daemon was given.
    host_key: Option<String>,
    addr: SocketAddr,
    /// Its SSH address when it is published ([`super::events::daemon_addrs`]).
    ssh: Option<String>,
    user: Option<String>,
}

#[derive(Default)]
pub(super) struct PoolState {
    ready: Vec<PoolMember>,
    /// Members being created right now.
    filling: usize,
}

impl Runner {
    /// Pool members started and waiting to be claimed.
    pub fn pool_ready(&self) -> usize {
        lock(&self.inner.pool).ready.len()
    }
}

impl Inner {
    fn claims_path(&self) -> Option<PathBuf> {
        self.config.state_dir.as_ref().map(|d| d.join("claims.json"))
    }

    /// Claimed pool containers by container ID. A missing or unreadable file means no claims (logged).
    pub(super) fn load_claims(&self) -> BTreeMap<String, SandboxInfo> {
        let Some(path) = self.claims_path() else { return BTreeMap::new() };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable claims file; claimed pool sandboxes are lost");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read claims file");
                BTreeMap::new()
            }
        }
    }

    /// Writes every current claim atomically, mode 0600 (it holds daemon tokens).
    pub(super) fn save_claims(&self) -> Result<(), SandboxError> {
        let Some(path) = self.claims_path() else { return Ok(()) };
        let claims: BTreeMap<String, SandboxInfo> = {
            let entries: Vec<Arc<Entry>> = lock(&self.sandboxes).values().cloned().collect();
            entries
                .iter()
                .filter(|e| e.is_claimed())
                .map(|e| {
                    let i = lock(&e.info).clone();
                    (i.container_id.clone(), i)
                })
                .collect()
        };
        let json = serde_json::to_vec_pretty(&claims).map_err(|e| SandboxError::Internal(e.to_string()))?;
        sandbar_support::fs::write_private(&path, &json)
            .map_err(|e| SandboxError::Internal(format!("writing {}: {e}", path.display())))
    }

    fn pool_matches(&self, req: &CreateSandbox) -> bool {
        self.config.warm_pool.as_ref().is_some_and(|p| {
            p.size > 0
                && p.image == req.image
                && p.resources == req.resources
                && req.user.is_none()
                && req.entrypoint.is_none()
                && req.volumes.is_empty()
                && req.runtime.as_deref().is_none_or(|r| r == self.config.default_runtime())
        })
    }

    pub(super) fn take_pool_member(&self, req: &CreateSandbox) -> Option<PoolMember> {
        if !self.pool_matches(req) {
            return None;
        }
        let member = lock(&self.pool).ready.pop();
        // Refill whether or not there was one: a miss means the pool is behind.
        self.refill.notify_one();
        member
    }

    /// Containers and daemon addresses of the unclaimed pool members (they get isolation rules too).
    pub(super) fn pool_addrs(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.pool).ready.iter().map(|m| (m.container_id.clone(), m.addr)).collect()
    }

    pub(super) fn is_pool_member(&self, container: &str) -> bool {
        lock(&self.pool).ready.iter().any(|m| m.container_id == container)
    }

    /// A pool member died or was removed: forget it, remove what is left, refill.
    pub(super) async fn drop_pool_member(&self, container: &str) {
        let had = {
            let mut pool = lock(&self.pool);
            let before = pool.ready.len();
            pool.ready.retain(|m| m.container_id != container);
            pool.ready.len() != before
        };
        if had {
            tracing::warn!(container, "a warm pool container stopped; replacing it");
            self.remove_container_quietly(container).await;
            self.refill.notify_one();
        }
    }

    /// Turns a pool member into the sandbox `req` describes. On failure the member is removed.
    pub(super) async fn claim(
        &self,
        entry: &Entry,
        req: &CreateSandbox,
        member: PoolMember,
    ) -> Result<(), SandboxError> {
        {
            let mut info = lock(&entry.info);
            info.container_id = member.container_id.clone();
            info.daemon_token = member.token.clone();
            info.daemon_host_key = member.host_key.clone();
            info.user = member.user.clone();
        }
        entry.claimed.store(true, Ordering::Release);
        let result = async {
            // The new sandbox's rules replace the pool member's before its daemon takes the new identity.
            self.firewall.reassign(&member.container_id, &req.id).await?;
            self.init_claimed(entry, member.addr).await?;
            {
                let mut info = lock(&entry.info);
                (info.daemon_addr, info.ssh_addr) = (Some(member.addr.to_string()), member.ssh.clone());
            }
            self.collect_daemon_spans(&req.id, member.addr, &member.token).await;
            self.save_claims()
        }
        .await;
        if let Err(e) = result {
            entry.claimed.store(false, Ordering::Release);
            lock(&entry.info).container_id.clear();
            self.remove_container_quietly(&member.container_id).await;
            return Err(e);
        }
        tracing::info!(sandbox_id = %req.id, container = %member.container_id, "claimed a warm pool sandbox");
        Ok(())
    }

    /// `POST /init` with the sandbox's ID and environment (again after every restart of the container).
    pub(super) async fn init_claimed(&self, entry: &Entry, addr: SocketAddr) -> Result<(), SandboxError> {
        let (id, token, mut env) = {
            let i = lock(&entry.info);
            (i.id.clone(), i.daemon_token.clone(), i.env.clone())
        };
        env.insert(ENV_SANDBOX_ID.into(), id.clone());
        let req = InitRequest { sandbox_id: id.clone(), env: env.into_iter().collect() };
        self.daemon.init(addr, &token, &req).await.map_err(|reason| SandboxError::Daemon { id, reason })
    }

    /// Creates one pool member and waits for its daemon.
    async fn make_pool_member(&self) -> Result<PoolMember, SandboxError> {
        let Some(pool) = self.config.warm_pool.clone() else {
            return Err(SandboxError::Internal("no warm pool configured".into()));
        };
        let token = new_token()?;
        let pool_id = format!("pool-{}", &token[..12]);
        let req = CreateSandbox {
            id: pool_id.clone(),
            name: None,
            organization_id: String::new(),
            image: pool.image.clone(),
            pull: false,
            pull_from: None,
            user: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            resources: pool.resources,
            entrypoint: None,
            auto: Default::default(),
            network: Default::default(),
            linked_sandbox: None,
            runtime: None,
            volumes: Vec::new(),
        };
        let info = self.new_info(&req, SandboxState::Creating, token);
        let scratch = Entry::new(info, false);
        if let Err(e) = self.create_container(&scratch, &req, true).await {
            self.remove_container_quietly(&super::container_name(&pool_id)).await;
            return Err(e);
        }
        let info = lock(&scratch.info).clone();
        let addr = info
            .daemon_addr
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| SandboxError::Internal("pool member without a daemon address".into()))?;
        Ok(PoolMember {
            container_id: info.container_id,
            token: info.daemon_token,
            host_key: info.daemon_host_key,
            addr,
            ssh: info.ssh_addr,
            user: info.user,
        })
    }

    /// Unclaimed pool containers found by a restarted runner: kept if their daemon answers, removed otherwise.
    pub(super) async fn adopt_pool_members(&self, candidates: Vec<SandboxInfo>) {
        let size = self.config.warm_pool.as_ref().map_or(0, |p| p.size);
        for info in candidates {
            let addr: Option<SocketAddr> = info.daemon_addr.as_deref().and_then(|a| a.parse().ok());
            let matches =
                self.config.warm_pool.as_ref().is_some_and(|p| p.image == info.image && p.resources == info.resources);
            let alive = match addr {
                Some(addr) => self.daemon.version(addr, Duration::from_secs(2)).await.is_ok(),
                None => false,
            };
            let room = lock(&self.pool).ready.len() < size;
            match (alive && matches && room, addr) {
                (true, Some(addr)) => lock(&self.pool).ready.push(PoolMember {
                    container_id: info.container_id,
                    token: info.daemon_token,
                    host_key: info.daemon_host_key,
                    addr,
                    ssh: info.ssh_addr,
                    user: info.user,
                }),
                _ => self.remove_container_quietly(&info.container_id).await,
            }
        }
    }
}

/// Keeps the pool at its size, one container at a time (container starts are CPU-bound: refills must not starve
/// the creates they serve).
pub(super) async fn refill_loop(weak: Weak<Inner>, refill: Arc<tokio::sync::Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let size = inner.config.warm_pool.as_ref().map_or(0, |p| p.size);
        let need = {
            let mut pool = lock(&inner.pool);
            let need = size > pool.ready.len() + pool.filling;
            if need {
                pool.filling += 1;
            }
            need
        };
        if !need {
            drop(inner);
            refill.notified().await;
            continue;
        }
        let made = inner.make_pool_member().await;
        let failed = {
            let mut pool = lock(&inner.pool);
            pool.filling -= 1;
            match made {
                Ok(member) => {
                    pool.ready.push(member);
                    None
                }
                Err(e) => Some(e),
            }
        };
        drop(inner);
        if let Some(e) = failed {
            tracing::warn!(error = %e, "cannot add to the warm pool; retrying in 5 s");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}
