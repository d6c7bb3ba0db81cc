//! The network of a build whose organization may reach a network (`BuildSnapshot::network`): a tiny container of
//! the runner's default image that only sleeps, on the sandboxes' bridge, given the same rules as a sandbox with
//! that egress policy (its own IP and MAC only, the floor, the allow list), and Docker's build runs every `RUN` step
//! in its network namespace (`networkmode=container:<id>`). So a build reaches exactly what a sandbox of that policy
//! reaches, and never the host, the metadata address or another sandbox. Builds of organizations without a policy
//! have no network at all (`networkmode=none`).
//!
//! The container is removed with its rules when the build ends. It carries the runner's label but no sandbox ID, so
//! a restarted runner does not take it for a sandbox; one left by a runner that died mid-build exits on its own
//! after [`LIFETIME_SECS`] and Docker removes it (`AutoRemove`).

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::labels;

use super::Runner;
use super::events::endpoint;
use crate::error::SnapshotError;

/// Longer than any build may run (`jobs::build`'s 30 minutes).
pub const LIFETIME_SECS: u64 = 35 * 60;
/// Label marking a build's network container.
pub const BUILD_NET_LABEL: &str = "sandbar.build-net";

/// A build's network container, until [`BuildNet::release`].
#[derive(Debug)]
pub struct BuildNet {
    pub container_id: String,
    /// The key of its rules in the firewall (as a sandbox ID).
    rules_id: String,
}

impl BuildNet {
    /// `networkmode` of Docker's build API for this network.
    pub fn network_mode(&self) -> String {
        format!("container:{}", self.container_id)
    }
}

impl Runner {
    /// Starts build `build_id`'s network container with `policy`'s rules in place.
    pub(super) async fn build_network(
        &self,
        build_id: &str,
        policy: &NetworkPolicy,
    ) -> Result<BuildNet, SnapshotError> {
        let inner = &self.inner;
        let rules_id = format!("build-{build_id}");
        let name = format!("sandbar-build-net-{build_id}");
        let internal = |what: &str, e: String| SnapshotError::Internal(format!("build network ({what}): {e}"));
        inner
            .firewall
            .set_policy(&rules_id, policy.clone(), None)
            .await
            .map_err(|e| internal("rules", e.to_string()))?;
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = inner.docker.remove_container(&name, Some(remove)).await;
        let body = ContainerCreateBody {
            image: Some(inner.config.default_image.clone()),
            entrypoint: Some(vec!["sleep".into(), LIFETIME_SECS.to_string()]),
            user: Some("65534:65534".into()),
            labels: Some(HashMap::from([
                (labels::RUNNER.to_owned(), inner.config.runner_id.clone()),
                (BUILD_NET_LABEL.to_owned(), build_id.to_owned()),
            ])),
            network_disabled: Some(false),
            host_config: Some(HostConfig {
                network_mode: inner.config.network.clone(),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                memory: Some(32 << 20),
                pids_limit: Some(8),
                auto_remove: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = inner
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
            .await
            .map_err(|e| internal("create", e.to_string()))?;
        let net = BuildNet { container_id: created.id, rules_id };
        let attached = async {
            inner
                .docker
                .start_container(&net.container_id, None)
                .await
                .map_err(|e| internal("start", e.to_string()))?;
            let inspect = inner
                .docker
                .inspect_container(&net.container_id, None)
                .await
                .map_err(|e| internal("inspect", e.to_string()))?;
            let ep = endpoint(&inspect).ok_or_else(|| internal("address", "the container has no address".into()))?;
            inner
                .firewall
                .attach(&net.container_id, &net.rules_id, ep)
                .await
                .map_err(|e| internal("rules", e.to_string()))
        }
        .await;
        match attached {
            Ok(()) => Ok(net),
            Err(e) => {
                self.release_build_network(net).await;
                Err(e)
            }
        }
    }

    /// Removes a build's network container and its rules.
    pub(super) async fn release_build_network(&self, net: BuildNet) {
        let inner = &self.inner;
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = inner.docker.remove_container(&net.container_id, Some(remove)).await
            && crate::error::docker_status(&e) != Some(404)
        {
            tracing::warn!(container = %net.container_id, error = %e, "cannot remove a build's network container");
        }
        inner.firewall.detach(&net.container_id).await;
        inner.firewall.forget(&net.rules_id).await;
    }
}
