//! `/version`, `/user-home-dir`, `/work-dir`, `/env`, `/init`.

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
