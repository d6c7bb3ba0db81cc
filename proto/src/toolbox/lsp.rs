//! `/lsp/...`: Daytona's HTTP endpoints on the shared language servers, and the `/lsp/ws` query.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /lsp/start`, `POST /lsp/stop`; also the query of `GET /lsp/ws`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LspServerRequest {
    pub language_id: String,
    pub path_to_project: String,
}

/// `POST /lsp/did-open`, `POST /lsp/did-close`, `GET /lsp/document-symbols`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LspDocumentRequest {
    pub language_id: String,
    pub path_to_project: String,
    pub uri: String,
}

/// A position in a document, as LSP counts it (zero-based line and UTF-16 character).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LspPosition {
    pub line: u32,
    pub character: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LspRange {
    pub start: LspPosition,
    pub end: LspPosition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LspLocation {
    pub uri: String,
    pub range: LspRange,
}

/// `POST /lsp/completions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LspCompletionRequest {
    pub language_id: String,
    pub path_to_project: String,
    pub uri: String,
    pub position: LspPosition,
    #[serde(default)]
    pub context: Option<Value>,
}

/// `GET /lsp/workspacesymbols?query=&languageId=&pathToProject=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LspWorkspaceQuery {
    #[serde(default)]
    pub query: String,
    pub language_id: String,
    pub path_to_project: String,
}

/// Daytona's `CompletionList`: `documentation` must be an object (`MarkupContent`), never a plain string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionList {
    pub is_incomplete: bool,
    pub items: Vec<CompletionItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionItem {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documentation: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_text: Option<String>,
}

/// Daytona's `LspSymbol`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LspSymbol {
    pub kind: i64,
    pub name: String,
    pub location: LspLocation,
}
