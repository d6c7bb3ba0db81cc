//! `/files/...`: listing, transfers, folders, moves, permissions, deletes, find, search and replace.

use serde::{Deserialize, Serialize};

/// Daytona's `FileInfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Like Go's `FileMode.String()`: `drwxr-xr-x`, `-rw-r--r--`.
    pub mode: String,
    pub mod_time: String,
    /// Octal, four digits: `0644`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub path: String,
}

/// `?path=&depth=` of `GET /files`, `/files/info`, `/files/download`, `/files/upload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathQuery {
    pub path: String,
    #[serde(default)]
    pub depth: Option<u32>,
}

/// `POST /files/bulk-download`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkDownloadRequest {
    pub paths: Vec<String>,
}

/// `POST /files/folder?path=&mode=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderQuery {
    pub path: String,
    #[serde(default)]
    pub mode: Option<String>,
}

/// `POST /files/move?source=&destination=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveQuery {
    pub source: String,
    pub destination: String,
}

/// `POST /files/permissions?path=&mode=&owner=&group=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermissionsQuery {
    pub path: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// `DELETE /files?path=&recursive=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteQuery {
    pub path: String,
    #[serde(default)]
    pub recursive: Option<bool>,
}

/// `GET /files/find?path=&pattern=` (content) and `GET /files/search` (names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatternQuery {
    pub path: String,
    pub pattern: String,
}

/// One line of `GET /files/find`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Match {
    pub file: String,
    pub line: usize,
    pub content: String,
}

/// `GET /files/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    pub files: Vec<String>,
}

/// `POST /files/replace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaceRequest {
    pub files: Vec<String>,
    pub pattern: String,
    pub new_value: String,
}

/// One file of `POST /files/replace`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplaceResult {
    pub file: String,
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
