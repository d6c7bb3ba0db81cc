//! `/process/interpreter/...`: the code interpreter's contexts, and the frames of its execute WebSocket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /process/interpreter/context`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateContextRequest {
    #[serde(default)]
    pub cwd: Option<String>,
    /// Only `python` (the default) is served.
    #[serde(default)]
    pub language: Option<String>,
}

/// A context as the SDK's `InterpreterContext` reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterpreterContext {
    pub id: String,
    pub cwd: String,
    pub language: String,
    pub created_at: String,
    /// Whether its interpreter process is running (it starts on the first run and after a crash).
    pub active: bool,
}

/// `GET /process/interpreter/context`: the contexts made with `POST` (never the default one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListContextsResponse {
    pub contexts: Vec<InterpreterContext>,
}

/// The one text frame a client sends on `GET /process/interpreter/execute`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterpreterRunRequest {
    pub code: String,
    /// The default context when absent.
    #[serde(default)]
    pub context_id: Option<String>,
    /// Set for this run only.
    #[serde(default)]
    pub envs: Option<BTreeMap<String, String>>,
    /// Seconds; 0 means none, absent means ten minutes (the SDK's documented default).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// A frame the server sends on the execute WebSocket; close 1000 ends a run, 4008 a run that timed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum InterpreterFrame {
    Stdout { text: String },
    Stderr { text: String },
    Error { name: String, value: String, traceback: String },
}
