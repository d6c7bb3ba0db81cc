//! Request and response bodies of the daemon's toolbox API. Field names and JSON types follow Daytona's daemon
//! (see shared/daytona-compat.md): the official SDK parses these with strict pydantic models.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionResponse {
    pub version: String,
}

/// `GET /user-home-dir`, `GET /work-dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirResponse {
    pub dir: String,
}

/// `POST /env`: variables applied to every process the daemon starts from now on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnvUpdate {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `POST /init`: the runner hands a pooled sandbox its identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    pub sandbox_id: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitResponse {
    pub sandbox_id: String,
}

/// `POST /process/execute`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteRequest {
    pub command: String,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub envs: Option<BTreeMap<String, String>>,
    /// Seconds; the whole process group is killed when it expires.
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    pub exit_code: i32,
    pub result: String,
}

/// `POST /process/code-run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunRequest {
    pub code: String,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Artifacts {
    pub charts: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunResponse {
    pub exit_code: i32,
    pub result: String,
    pub artifacts: Artifacts,
}

/// `POST /process/session`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSessionRequest {
    pub session_id: String,
}

/// `POST /process/session/{id}/exec`. The SDK sends `runAsync`; `async` is the deprecated spelling.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExecuteRequest {
    pub command: String,
    #[serde(default)]
    pub run_async: Option<bool>,
    #[serde(default, rename = "async")]
    pub async_: Option<bool>,
    #[serde(default)]
    pub suppress_input_echo: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExecuteResponse {
    pub cmd_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCommand {
    pub id: String,
    pub command: String,
    /// `null` while the command runs.
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: String,
    pub commands: Vec<SessionCommand>,
}

/// `GET /process/session/{sid}/command/{cid}/logs` with `Accept: application/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCommandLogs {
    pub output: String,
    pub stdout: String,
    pub stderr: String,
}

/// `POST /process/session/{sid}/command/{cid}/input`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInputRequest {
    pub data: String,
}

/// Marker that switches a followed log stream to stdout (Daytona's multiplexing).
pub const STDOUT_MARKER: [u8; 3] = [1, 1, 1];
/// Marker that switches a followed log stream to stderr.
pub const STDERR_MARKER: [u8; 3] = [2, 2, 2];
