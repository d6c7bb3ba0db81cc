//! The Daytona sandbox JSON (strict types, camelCase, every field the Daytona Python SDK 0.226.1 requires of a
//! `Sandbox`) and the request bodies of the sandbox endpoints; the OpenAPI schemas are derived from them.

use std::collections::BTreeMap;

use sandbar_proto::runner::SandboxState;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::clock::iso;
use crate::store::sandboxes::Row;

impl Row {
    pub fn to_dto(&self, app: &App) -> SandboxDto {
        let now = app.now();
        let state = self.effective_state(app, now);
        let error_reason = if state == SandboxState::Unknown {
            Some(format!("runner {} is unreachable", self.runner_id.as_deref().unwrap_or_default()))
        } else {
            self.error_reason.clone()
        };
        SandboxDto {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            name: self.name.clone(),
            user: self.os_user.clone(),
            env: self.env_map(),
            labels: self.labels_map(),
            public: self.public != 0,
            network_block_all: self.network_block_all != 0,
            network_allow_list: self.network_allow_list.clone(),
            kvm: false,
            target: self.target.clone(),
            cpu: self.cpu,
            gpu: 0,
            memory: self.memory,
            disk: self.disk,
            toolbox_proxy_url: app.config.toolbox_proxy_url(),
            state: state.as_str().to_owned(),
            desired_state: self.desired_state.clone(),
            snapshot: Some(self.snapshot.clone()),
            recoverable: matches!(state, SandboxState::Error | SandboxState::BuildFailed),
            error_reason,
            backup_state: "None".into(),
            created_at: iso(self.created_at),
            updated_at: iso(self.updated_at),
            last_activity_at: iso(self.last_activity_at),
            auto_stop_interval: self.auto_stop,
            auto_archive_interval: self.auto_archive,
            auto_delete_interval: self.auto_delete,
            runner_id: self.runner_id.clone(),
            volumes: self.volume_mounts().iter().filter_map(|m| serde_json::to_value(m).ok()).collect(),
            linked_sandbox_id: self.linked_sandbox_id.clone(),
        }
    }
}

/// Daytona's `Sandbox` (every required field, strict types).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDto {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub kvm: bool,
    pub target: String,
    pub cpu: i64,
    pub gpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub toolbox_proxy_url: String,
    pub state: String,
    pub desired_state: String,
    pub snapshot: Option<String>,
    pub recoverable: bool,
    pub error_reason: Option<String>,
    pub backup_state: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
    pub auto_stop_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub runner_id: Option<String>,
    pub volumes: Vec<serde_json::Value>,
    pub linked_sandbox_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListSandboxesResponse {
    pub items: Vec<SandboxDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub dockerfile_content: Option<String>,
    pub context_hashes: Option<Vec<String>>,
}

/// Daytona's `CreateSandbox`. Unknown fields are accepted (the SDK sends many optional ones); fields sandbar
/// cannot honour are refused with a 400 instead of being ignored silently.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxBody {
    pub name: Option<String>,
    pub snapshot: Option<String>,
    pub image: Option<String>,
    pub user: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub public: Option<bool>,
    pub target: Option<String>,
    pub cpu: Option<i64>,
    pub gpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub auto_stop_interval: Option<i64>,
    pub auto_archive_interval: Option<i64>,
    pub auto_delete_interval: Option<i64>,
    pub ephemeral: Option<bool>,
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub linked_sandbox: Option<String>,
    pub kvm: Option<bool>,
    pub build_info: Option<BuildInfo>,
    pub volumes: Option<Vec<VolumeMountBody>>,
    /// Refused unless empty: sandbar has no secret store.
    pub secrets: Option<Vec<BTreeMap<String, String>>>,
    /// Refused unless 0.
    pub auto_pause_interval: Option<i64>,
    /// Refused unless 0.
    pub ttl_minutes: Option<i64>,
    /// Minutes a create may wait for a runner: sandbar places at once or refuses, so any positive value holds.
    pub queue_timeout: Option<i64>,
    /// Set as `HTTP_PROXY`/`HTTPS_PROXY` (and lowercase) in the sandbox's environment.
    pub outbound_proxy_url: Option<String>,
    /// Refused unless empty.
    pub otel_endpoint_override: Option<String>,
    /// Refused unless false.
    pub spot: Option<bool>,
    /// Refused unless empty.
    pub gpu_type: Option<Vec<String>>,
}

/// Daytona's `SandboxVolume`: `volumeId` is the volume's ID or name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMountBody {
    pub volume_id: String,
    pub mount_path: String,
    pub subpath: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResizeBody {
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct LabelsBody {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortPreviewUrl {
    pub sandbox_id: String,
    pub url: String,
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedPortPreviewUrl {
    pub sandbox_id: String,
    pub port: i64,
    pub token: String,
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessDto {
    pub id: String,
    pub sandbox_id: String,
    pub token: String,
    pub expires_at: String,
    pub created_at: String,
    pub updated_at: String,
    pub ssh_command: String,
    /// sandbar's addition: the SSH gateway's host and port as fields, so a client builds its `ssh` argv from them
    /// (with `token` as the user) instead of parsing `sshCommand`.
    pub ssh_host: String,
    pub ssh_port: u16,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessValidationDto {
    pub valid: bool,
    pub sandbox_id: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolboxProxyUrl {
    pub url: String,
}
