//! LSP in the toolbox API: Daytona's HTTP endpoints on the shared (language, project) servers of
//! `engine::lsp`, and `GET /lsp/ws`, a WebSocket that bridges an IDE to a real
//! language server.
//!
//! The WebSocket speaks JSON-RPC with one LSP message per frame (text from us; text or binary accepted), the
//! framing of vscode-ws-jsonrpc / monaco-languageclient, and the daemon translates to the server's
//! Content-Length framing. Each connection gets its own server process: the IDE's `initialize` (capabilities,
//! initialization options, workspace folders), its document versions and its request ids then reach the real
//! server unchanged. Sharing one server between IDEs would mean answering a second `initialize` from a cache
//! with the first IDE's options, merging two sets of document versions for the same URI, and choosing which IDE
//! answers the server's own requests: unsafe, so not done. Paths are the sandbox's own (the daemon and the
//! server run inside it): `file:///home/daytona/app/x.py` is that file.
//!
//! Bad input on the socket gets a JSON-RPC error (parse error, invalid request, a request before `initialize`)
//! or a close with a reason (1009 for an oversized message, 1011 when the server dies, 1001 when the sandbox
//! stops). A request the server does not answer in time gets an error answer; the late answer is dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use sandbar_proto::toolbox::{
    CompletionList, LspCompletionRequest, LspDocumentRequest, LspServerRequest, LspSymbol, LspWorkspaceQuery,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_lsp_server::jsonrpc::{self, ErrorCode};
use tower_lsp_server::ls_types::InitializeParams;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, WsUpgrade};
use crate::AppState;
use crate::engine::lsp::{Server, path_to_uri, queries};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/lsp/start", post(start))
        .route("/lsp/stop", post(stop))
        .route("/lsp/did-open", post(did_open))
        .route("/lsp/did-close", post(did_close))
        .route("/lsp/completions", post(completions))
        .route("/lsp/document-symbols", get(document_symbols))
        .route("/lsp/workspacesymbols", get(workspace_symbols))
        .route("/lsp/ws", get(ws))
}

async fn start(State(d): State<AppState>, ApiJson(r): ApiJson<LspServerRequest>) -> ApiResult<Json<Value>> {
    d.lsp.start(&d, &r.language_id, &r.path_to_project).await?;
    Ok(Json(json!({})))
}

async fn stop(State(d): State<AppState>, ApiJson(r): ApiJson<LspServerRequest>) -> ApiResult<Json<Value>> {
    d.lsp.stop(&d, &r.language_id, &r.path_to_project).await?;
    Ok(Json(json!({})))
}

async fn did_open(State(d): State<AppState>, ApiJson(r): ApiJson<LspDocumentRequest>) -> ApiResult<Json<Value>> {
    let shared = d.lsp.get(&d, &r.language_id, &r.path_to_project)?;
    shared.sync(&d, &d.lsp.config, &r.uri).await?;
    Ok(Json(json!({})))
}

async fn did_close(State(d): State<AppState>, ApiJson(r): ApiJson<LspDocumentRequest>) -> ApiResult<Json<Value>> {
    let shared = d.lsp.get(&d, &r.language_id, &r.path_to_project)?;
    shared.close(&d, &d.lsp.config, &r.uri).await?;
    Ok(Json(json!({})))
}

async fn completions(
    State(d): State<AppState>,
    ApiJson(r): ApiJson<LspCompletionRequest>,
) -> ApiResult<Json<CompletionList>> {
    Ok(Json(queries::completions(&d, r).await?))
}

async fn document_symbols(
    State(d): State<AppState>,
    ApiQuery(r): ApiQuery<LspDocumentRequest>,
) -> ApiResult<Json<Vec<LspSymbol>>> {
    Ok(Json(queries::document_symbols(&d, r).await?))
}

async fn workspace_symbols(
    State(d): State<AppState>,
    ApiQuery(r): ApiQuery<LspWorkspaceQuery>,
) -> ApiResult<Json<Vec<LspSymbol>>> {
    Ok(Json(queries::workspace_symbols(&d, r).await?))
}

// ---- the IDE WebSocket ----------------------------------------------------------------------------------------

/// Largest message an IDE may send (a `didOpen` of a big file); bigger ones close the socket with 1009.
pub const MAX_WS_MESSAGE: usize = 16 << 20;
/// Requests an IDE may have waiting on the server at once.
const MAX_IN_FLIGHT: usize = 1024;
/// A client that cannot take one frame in this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages from the server waiting for a slow client; when full, the server's output waits (backpressure).
const SERVER_QUEUE: usize = 256;

/// `GET /lsp/ws?languageId=python&pathToProject=/abs/dir`. The server is started before the upgrade, so a missing
/// program or a bad directory is a plain JSON error.
async fn ws(State(d): State<AppState>, ApiQuery(q): ApiQuery<LspServerRequest>, ws: WsUpgrade) -> ApiResult<Response> {
    let ws = ws.map_err(|e| ApiError::bad_request(format!("/lsp/ws is a WebSocket endpoint: {e}")))?;
    let (language, root) = d.lsp.project(&d, &q.language_id, &q.path_to_project)?;
    let argv = d.lsp.config.command(&language)?.to_vec();
    let timeout = d.lsp.config.timeout;
    let (tx, rx) = mpsc::channel(SERVER_QUEUE);
    let server = Server::spawn(&d, &language, root.clone(), &argv, timeout, Some(tx))?;
    let shutdown = d.shutdown.clone();
    Ok(ws.max_message_size(MAX_WS_MESSAGE * 2).max_frame_size(MAX_WS_MESSAGE * 2).on_upgrade(
        move |socket| async move {
            let span = tracing::info_span!("lsp_ws", language = %language, pid = server.pid);
            let bridge =
                Bridge { server, root, timeout, initialized: false, pending: HashMap::new(), exit_sent: false };
            tracing::Instrument::instrument(bridge.run(socket, rx, shutdown), span).await;
        },
    ))
}

struct Bridge {
    server: Arc<Server>,
    root: PathBuf,
    timeout: Duration,
    /// Whether the IDE's `initialize` went to the server.
    initialized: bool,
    /// The IDE's requests waiting for the server: id (as JSON text) -> (id, deadline, method).
    pending: HashMap<String, (Value, Instant, String)>,
    /// Whether the IDE sent `exit`: the server's end is then the normal end of the session.
    exit_sent: bool,
}

/// What ends a bridge.
enum End {
    /// The client closed or vanished: nothing to send.
    Client,
    Close(u16, String),
}

impl Bridge {
    async fn run(mut self, mut socket: WebSocket, mut from_server: mpsc::Receiver<Value>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                m = socket.recv() => match m {
                    None | Some(Ok(Message::Close(_))) => break End::Client,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        let code = if text.contains("too long") || text.contains("limit") { 1009 } else { 1002 };
                        break End::Close(code, format!("bad WebSocket frame: {text}"));
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Err(end) = self.on_client(&mut socket, t.as_bytes()).await { break end; }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        if let Err(end) = self.on_client(&mut socket, &b).await { break end; }
                    }
                    Some(Ok(_)) => {}
                },
                m = from_server.recv() => match m {
                    Some(msg) => {
                        if let Err(end) = self.on_server(&mut socket, msg).await { break end; }
                    }
                    None => {
                        let err = self.server.exited_error().await;
                        self.fail_pending(&mut socket, &err.to_string()).await;
                        let code = if self.exit_sent { 1000 } else { 1011 };
                        break End::Close(code, err.to_string());
                    }
                },
                _ = tick.tick() => {
                    if let Err(end) = self.expire(&mut socket).await { break end; }
                }
                _ = shutdown.cancelled() => break End::Close(1001, "sandbox shutting down".into()),
            }
        };
        if let End::Close(code, reason) = end {
            tracing::info!(code, reason = %reason, "closing LSP WebSocket");
            let reason = truncate(&reason, 120);
            let _ = tokio::time::timeout(
                SEND_TIMEOUT,
                socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))),
            )
            .await;
        }
        drop(socket);
        // Nobody reads the server's output any more: let it fail fast instead of filling the queue.
        drop(from_server);
        self.server.shutdown().await;
    }

    async fn send(&self, socket: &mut WebSocket, msg: &Value) -> Result<(), End> {
        let text = serde_json::to_string(msg).map_err(|e| End::Close(1011, e.to_string()))?;
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(End::Close(1008, "client did not read its messages".into())),
        }
    }

    async fn error(&self, socket: &mut WebSocket, id: Value, code: ErrorCode, message: String) -> Result<(), End> {
        let err = jsonrpc::Error { code, message: message.into(), data: None };
        self.send(socket, &json!({"jsonrpc": "2.0", "id": id, "error": err})).await
    }

    async fn on_client(&mut self, socket: &mut WebSocket, bytes: &[u8]) -> Result<(), End> {
        if bytes.len() > MAX_WS_MESSAGE {
            return Err(End::Close(
                1009,
                format!("message of {} bytes is over the {MAX_WS_MESSAGE}-byte limit", bytes.len()),
            ));
        }
        let mut msg: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => return self.error(socket, Value::Null, ErrorCode::ParseError, format!("parse error: {e}")).await,
        };
        let Some(obj) = msg.as_object() else {
            let what = if msg.is_array() { "batches are not part of LSP" } else { "a message must be a JSON object" };
            return self.error(socket, Value::Null, ErrorCode::InvalidRequest, what.into()).await;
        };
        let id = obj.get("id").cloned();
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return self
                .error(socket, id.unwrap_or(Value::Null), ErrorCode::InvalidRequest, "jsonrpc must be \"2.0\"".into())
                .await;
        }
        if let Some(id) = &id
            && !(id.is_string() || id.is_i64() || id.is_u64())
        {
            return self
                .error(socket, Value::Null, ErrorCode::InvalidRequest, "id must be a number or a string".into())
                .await;
        }
        let method = match obj.get("method") {
            None => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => {
                return self
                    .error(
                        socket,
                        id.unwrap_or(Value::Null),
                        ErrorCode::InvalidRequest,
                        "method must be a string".into(),
                    )
                    .await;
            }
        };
        match (method, id) {
            // The IDE's answer to a request of the server.
            (None, Some(_)) => {}
            (None, None) => {
                return self
                    .error(
                        socket,
                        Value::Null,
                        ErrorCode::InvalidRequest,
                        "neither a request, a notification nor a response".into(),
                    )
                    .await;
            }
            (Some(method), Some(id)) => {
                if id.as_str().is_some_and(|s| s.starts_with(crate::engine::lsp::server::OWN_ID_PREFIX)) {
                    return self
                        .error(
                            socket,
                            id,
                            ErrorCode::InvalidRequest,
                            "ids starting with \"sandbar:\" are reserved".into(),
                        )
                        .await;
                }
                if method == "initialize" {
                    if self.initialized {
                        return self
                            .error(socket, id, ErrorCode::InvalidRequest, "initialize was already sent".into())
                            .await;
                    }
                    let params = msg.get("params").cloned().unwrap_or(Value::Null);
                    if let Err(e) = serde_json::from_value::<InitializeParams>(params) {
                        return self
                            .error(socket, id, ErrorCode::InvalidParams, format!("invalid initialize params: {e}"))
                            .await;
                    }
                    self.fill_root(&mut msg);
                    self.initialized = true;
                } else if !self.initialized {
                    return self
                        .error(
                            socket,
                            id,
                            ErrorCode::ServerError(-32002),
                            format!("server not initialized: send initialize before {method}"),
                        )
                        .await;
                }
                if self.pending.len() >= MAX_IN_FLIGHT {
                    return self
                        .error(
                            socket,
                            id,
                            ErrorCode::InternalError,
                            format!("more than {MAX_IN_FLIGHT} requests in flight"),
                        )
                        .await;
                }
                let key = id.to_string();
                if self.pending.contains_key(&key) {
                    return self
                        .error(
                            socket,
                            id,
                            ErrorCode::InvalidRequest,
                            "a request with this id is already in flight".into(),
                        )
                        .await;
                }
                self.pending.insert(key, (id, Instant::now() + self.timeout, method));
            }
            // Notifications before initialize are dropped, as the protocol says (except exit).
            (Some(method), None) if !self.initialized && method != "exit" => return Ok(()),
            (Some(method), None) => self.exit_sent |= method == "exit",
        }
        if let Err(e) = self.server.send(&msg).await {
            return Err(End::Close(1011, e.to_string()));
        }
        Ok(())
    }

    /// An IDE that names no workspace gets the project the socket was opened for.
    fn fill_root(&self, msg: &mut Value) {
        let uri = path_to_uri(&self.root);
        let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) else { return };
        let has_root = params.get("rootUri").is_some_and(|v| !v.is_null());
        let has_folders = params.get("workspaceFolders").is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()));
        if !has_root && !has_folders {
            params.insert("rootUri".into(), Value::String(uri));
            params.insert("rootPath".into(), Value::String(self.root.display().to_string()));
        }
    }

    async fn on_server(&mut self, socket: &mut WebSocket, msg: Value) -> Result<(), End> {
        let is_response = msg.get("method").is_none();
        if is_response && let Some(id) = msg.get("id") {
            // An answer whose request already timed out was answered with an error: drop it.
            if self.pending.remove(&id.to_string()).is_none() {
                return Ok(());
            }
        }
        self.send(socket, &msg).await
    }

    async fn expire(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let now = Instant::now();
        let late: Vec<String> =
            self.pending.iter().filter(|(_, (_, at, _))| *at <= now).map(|(k, _)| k.clone()).collect();
        for key in late {
            if let Some((id, _, method)) = self.pending.remove(&key) {
                let _ = self.server.notify("$/cancelRequest", json!({"id": id})).await;
                let secs = self.timeout.as_secs();
                self.error(
                    socket,
                    id,
                    ErrorCode::ServerError(-32803),
                    format!("the language server did not answer {method} within {secs} s"),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn fail_pending(&mut self, socket: &mut WebSocket, why: &str) {
        let pending: Vec<(Value, Instant, String)> = self.pending.drain().map(|(_, v)| v).collect();
        for (id, _, _) in pending {
            if self.error(socket, id, ErrorCode::InternalError, why.to_owned()).await.is_err() {
                return;
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}
