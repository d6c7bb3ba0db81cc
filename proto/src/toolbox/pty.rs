//! `/process/pty/...`: PTY sessions and their recordings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /process/pty`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtyCreateRequest {
    pub id: String,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    #[serde(default)]
    pub lazy_start: Option<bool>,
    /// sandbar extension: record the session as an asciicast v2 file.
    #[serde(default)]
    pub record: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtyCreateResponse {
    pub session_id: String,
}

/// Daytona's `PtySessionInfo`: every field required.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtySessionInfo {
    pub id: String,
    pub cwd: String,
    pub envs: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    pub created_at: String,
    pub active: bool,
    pub lazy_start: bool,
}

/// `GET /process/pty`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtyListResponse {
    pub sessions: Vec<PtySessionInfo>,
}

/// `POST /process/pty/{id}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtyResizeRequest {
    pub cols: u16,
    pub rows: u16,
}

/// One asciicast file of `GET /process/pty/recordings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtyRecording {
    pub name: String,
    pub size: u64,
    pub mod_time: String,
}

/// `GET /process/pty/recordings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtyRecordingList {
    pub recordings: Vec<PtyRecording>,
}

/// `?id=&cols=&rows=&cwd=` of the `create-connect` WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtyConnectQuery {
    pub id: String,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    #[serde(default)]
    pub cwd: Option<String>,
}
