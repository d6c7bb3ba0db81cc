//! `/process/session/...`: sessions, their commands and logs.

use serde::{Deserialize, Serialize};

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

/// `?follow=` of the log endpoints: `true` streams the log over a WebSocket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: Option<bool>,
}
