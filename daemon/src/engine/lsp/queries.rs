//! What Daytona's HTTP LSP endpoints ask of a shared server, answered in Daytona's shapes: completions, the
//! symbols of a document, and workspace symbols (searched in the opened documents when the server has no
//! `workspace/symbol`).

use sandbar_proto::toolbox::{
    CompletionItem, CompletionList, LspCompletionRequest, LspDocumentRequest, LspLocation, LspPosition, LspRange,
    LspSymbol, LspWorkspaceQuery,
};
use serde::Serialize;
use serde_json::{Value, json};
use tower_lsp_server::ls_types::{
    CompletionResponse, CompletionTextEdit, DocumentSymbol, DocumentSymbolResponse, Documentation, OneOf, Position,
    Range, SymbolInformation, Uri, WorkspaceSymbolResponse,
};

use super::{LspError, Server, has_workspace_symbols};
use crate::engine::Daemon;

/// `textDocument/completion` at a position, as Daytona's `CompletionList`.
pub async fn completions(d: &Daemon, r: LspCompletionRequest) -> Result<CompletionList, LspError> {
    let shared = d.lsp.get(d, &r.language_id, &r.path_to_project)?;
    // The file may have changed on disk since did-open: the server sees it as it is now.
    let (server, uri) = shared.sync(d, &d.lsp.config, &r.uri).await?;
    let mut params = json!({
        "textDocument": {"uri": uri},
        "position": {"line": r.position.line, "character": r.position.character},
    });
    if let (Some(ctx), Some(obj)) = (r.context.filter(Value::is_object), params.as_object_mut()) {
        obj.insert("context".into(), ctx);
    }
    let result = server.request("textDocument/completion", params).await?;
    let parsed: Option<CompletionResponse> =
        serde_json::from_value(result).map_err(|_| LspError::BadAnswer("textDocument/completion".into()))?;
    let (is_incomplete, items) = match parsed {
        None => (false, Vec::new()),
        Some(CompletionResponse::Array(items)) => (false, items),
        Some(CompletionResponse::List(l)) => (l.is_incomplete, l.items),
    };
    let items = items
        .into_iter()
        .map(|i| CompletionItem {
            kind: i.kind.and_then(|k| serde_json::to_value(k).ok()).and_then(|v| v.as_i64()),
            documentation: i.documentation.map(|doc| match doc {
                Documentation::String(s) => json!({"kind": "plaintext", "value": s}),
                Documentation::MarkupContent(m) => serde_json::to_value(m).unwrap_or(Value::Null),
            }),
            insert_text: i.insert_text.or_else(|| {
                i.text_edit.map(|e| match e {
                    CompletionTextEdit::Edit(e) => e.new_text,
                    CompletionTextEdit::InsertAndReplace(e) => e.new_text,
                })
            }),
            label: i.label,
            detail: i.detail,
            sort_text: i.sort_text,
            filter_text: i.filter_text,
        })
        .collect();
    Ok(CompletionList { is_incomplete, items })
}

/// The symbols of one document, flattened.
pub async fn document_symbols(d: &Daemon, r: LspDocumentRequest) -> Result<Vec<LspSymbol>, LspError> {
    let shared = d.lsp.get(d, &r.language_id, &r.path_to_project)?;
    let (server, uri) = shared.sync(d, &d.lsp.config, &r.uri).await?;
    symbols_of(&server, &uri).await
}

async fn symbols_of(server: &Server, uri: &str) -> Result<Vec<LspSymbol>, LspError> {
    let result = server.request("textDocument/documentSymbol", json!({"textDocument": {"uri": uri}})).await?;
    let parsed: Option<DocumentSymbolResponse> =
        serde_json::from_value(result).map_err(|_| LspError::BadAnswer("textDocument/documentSymbol".into()))?;
    Ok(match parsed {
        None => Vec::new(),
        Some(DocumentSymbolResponse::Flat(list)) => list.into_iter().map(flat_symbol).collect(),
        Some(DocumentSymbolResponse::Nested(list)) => {
            let uri = uri.parse().map_err(|_| LspError::BadAnswer("textDocument/documentSymbol".into()))?;
            let mut out = Vec::new();
            flatten(list, &uri, &mut out);
            out
        }
    })
}

fn kind_number<T: Serialize>(k: T) -> i64 {
    serde_json::to_value(k).ok().and_then(|v| v.as_i64()).unwrap_or(0)
}

fn flat_symbol(s: SymbolInformation) -> LspSymbol {
    LspSymbol { kind: kind_number(s.kind), name: s.name, location: location(&s.location.uri, s.location.range) }
}

fn location(uri: &Uri, range: Range) -> LspLocation {
    let position = |p: Position| LspPosition { line: p.line, character: p.character };
    LspLocation {
        uri: uri.as_str().to_owned(),
        range: LspRange { start: position(range.start), end: position(range.end) },
    }
}

fn flatten(list: Vec<DocumentSymbol>, uri: &Uri, out: &mut Vec<LspSymbol>) {
    for s in list {
        out.push(LspSymbol { kind: kind_number(s.kind), name: s.name, location: location(uri, s.range) });
        if let Some(children) = s.children {
            flatten(children, uri, out);
        }
    }
}

/// `workspace/symbol` when the server offers it. pylsp and a few others do not: then the daemon searches the
/// document symbols of the files opened through the API (a case-insensitive substring match on the name).
pub async fn workspace_symbols(d: &Daemon, r: LspWorkspaceQuery) -> Result<Vec<LspSymbol>, LspError> {
    let shared = d.lsp.get(d, &r.language_id, &r.path_to_project)?;
    let (server, capabilities, open) = shared.live(d, &d.lsp.config).await?;
    if has_workspace_symbols(&capabilities) {
        let result = server.request("workspace/symbol", json!({"query": r.query})).await?;
        let parsed: Option<WorkspaceSymbolResponse> =
            serde_json::from_value(result).map_err(|_| LspError::BadAnswer("workspace/symbol".into()))?;
        let out = match parsed {
            None => Vec::new(),
            Some(WorkspaceSymbolResponse::Flat(list)) => list.into_iter().map(flat_symbol).collect(),
            Some(WorkspaceSymbolResponse::Nested(list)) => list
                .into_iter()
                .map(|s| LspSymbol {
                    kind: kind_number(s.kind),
                    name: s.name,
                    location: match s.location {
                        OneOf::Left(l) => location(&l.uri, l.range),
                        OneOf::Right(w) => location(&w.uri, Range::default()),
                    },
                })
                .collect(),
        };
        return Ok(out);
    }
    let needle = r.query.to_lowercase();
    let mut out = Vec::new();
    for uri in open {
        let (server, uri) = shared.sync(d, &d.lsp.config, &uri).await?;
        out.extend(symbols_of(&server, &uri).await?.into_iter().filter(|s| s.name.to_lowercase().contains(&needle)));
    }
    Ok(out)
}
