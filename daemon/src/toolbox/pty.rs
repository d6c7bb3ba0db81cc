//! PTY sessions in the toolbox API, with Daytona's wire protocol: create, list, get, resize, delete, `connect` and
//! `create-connect` WebSockets (the socket side lives here; the PTY itself in `engine::pty`), plus recordings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use sandbar_proto::toolbox::{
    PtyConnectQuery, PtyCreateRequest, PtyCreateResponse, PtyListResponse, PtyRecordingList, PtyResizeRequest,
    PtySessionInfo,
};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, WsUpgrade};
use crate::AppState;
use crate::engine::procs::Exit;
use crate::engine::pty::{self, PtyError, PtyOptions, PtySession, exit_reason};

pub const EXIT_CONTROL_PROTOCOL: &str = "X-Daytona-Pty-Exit-Control";
const ENVS_PROTOCOL_PREFIX: &str = "X-Daytona-Pty-Envs~";
/// Largest client message (keystrokes and pastes); bigger ones close the socket with 1009.
pub const MAX_INPUT_MESSAGE: usize = 1 << 20;
/// A client that cannot take one frame in this long is dropped (it never read, or its network is gone).
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle terminals get a ping this often so proxies that cut idle connections leave them alone.
pub const PING_EVERY: Duration = Duration::from_secs(20);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process/pty", get(list).post(create))
        .route("/process/pty/create-connect", get(create_connect))
        .route("/process/pty/recordings", get(list_recordings))
        .route("/process/pty/recordings/{name}", get(download_recording))
        .route("/process/pty/{id}", get(info).delete(kill))
        .route("/process/pty/{id}/resize", post(resize))
        .route("/process/pty/{id}/connect", get(connect))
}

async fn create(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<PtyCreateRequest>,
) -> ApiResult<(StatusCode, Json<PtyCreateResponse>)> {
    let envs = req.envs.unwrap_or_default();
    pty::check_envs(&envs)?;
    let opts = PtyOptions {
        id: req.id,
        cwd: req.cwd.or_else(|| Some(d.work_dir.to_string_lossy().into_owned())),
        envs,
        cols: req.cols.unwrap_or(80),
        rows: req.rows.unwrap_or(24),
        lazy_start: req.lazy_start.unwrap_or(false),
        record: req.record.unwrap_or(false),
    };
    let s = d.ptys.create(&d, opts, false)?;
    Ok((StatusCode::CREATED, Json(PtyCreateResponse { session_id: s.id.clone() })))
}

async fn list(State(d): State<AppState>) -> Json<PtyListResponse> {
    Json(PtyListResponse { sessions: d.ptys.list().iter().map(|s| s.info()).collect() })
}

async fn info(State(d): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<PtySessionInfo>> {
    let s = d.ptys.get(&id)?;
    Ok(Json(s.info()))
}

async fn resize(
    State(d): State<AppState>,
    UrlPath(id): UrlPath<String>,
    ApiJson(req): ApiJson<PtyResizeRequest>,
) -> ApiResult<Json<PtySessionInfo>> {
    let s = d.ptys.get(&id)?;
    if s.exit().is_some() {
        return Err(PtyError::Ended.into());
    }
    s.resize(req.cols, req.rows)?;
    Ok(Json(s.info()))
}

async fn kill(State(d): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<serde_json::Value>> {
    let s = d.ptys.remove(&id).ok_or_else(|| PtyError::NotFound(id.clone()))?;
    s.kill(nix::sys::signal::Signal::SIGKILL);
    tracing::info!(pty = %id, "PTY session killed");
    Ok(Json(serde_json::json!({"message": format!("PTY session {id} killed")})))
}

fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

async fn connect(
    State(d): State<AppState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> ApiResult<Response> {
    let ws = ws.map_err(|_| ApiError::bad_request("this endpoint needs a WebSocket upgrade"))?;
    let s = d.ptys.get(&id)?;
    s.start(&d)?;
    Ok(upgrade(d, ws, s, &headers))
}

async fn create_connect(
    State(d): State<AppState>,
    ApiQuery(q): ApiQuery<PtyConnectQuery>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> ApiResult<Response> {
    let ws = ws.map_err(|_| ApiError::bad_request("this endpoint needs a WebSocket upgrade"))?;
    let envs = envs_from_protocols(&headers)?;
    let opts = PtyOptions {
        id: q.id,
        cwd: q.cwd.or_else(|| Some(d.work_dir.to_string_lossy().into_owned())),
        envs,
        cols: q.cols.unwrap_or(80),
        rows: q.rows.unwrap_or(24),
        lazy_start: false,
        record: false,
    };
    let s = d.ptys.create(&d, opts, false)?;
    Ok(upgrade(d, ws, s, &headers))
}

/// The environment a `create-connect` client sends in its `X-Daytona-Pty-Envs~<base64url JSON>` subprotocol (the
/// last one wins), checked as a PTY's environment must be.
pub(crate) fn envs_from_protocols(headers: &HeaderMap) -> ApiResult<BTreeMap<String, String>> {
    let mut envs = BTreeMap::new();
    for p in offered_protocols(headers) {
        if let Some(encoded) = p.strip_prefix(ENVS_PROTOCOL_PREFIX) {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .map_err(|_| ApiError::bad_request("X-Daytona-Pty-Envs is not base64url"))?;
            envs = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::bad_request("X-Daytona-Pty-Envs is not a JSON object of strings"))?;
        }
    }
    pty::check_envs(&envs)?;
    Ok(envs)
}

fn upgrade(d: AppState, ws: WebSocketUpgrade, s: Arc<PtySession>, headers: &HeaderMap) -> Response {
    let exit_control = offered_protocols(headers).iter().any(|p| p == EXIT_CONTROL_PROTOCOL);
    let shutdown = d.shutdown.clone();
    ws.protocols([EXIT_CONTROL_PROTOCOL])
        .max_message_size(MAX_INPUT_MESSAGE)
        .max_frame_size(MAX_INPUT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, s, exit_control, shutdown))
}

/// One attached client: replay, then live output as binary frames; every client frame is input. The session
/// survives the socket.
async fn serve(
    mut socket: WebSocket,
    s: Arc<PtySession>,
    exit_control: bool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut att = s.attach();
    let connected = serde_json::json!({"type": "control", "status": "connected"}).to_string();
    if socket.send(Message::Text(connected.into())).await.is_err() {
        return;
    }
    if !att.replay.is_empty() && socket.send(Message::Binary(att.replay.clone())).await.is_err() {
        return;
    }
    let input = s.input();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let exit = loop {
        if let Some(e) = *att.exit.borrow_and_update() {
            break e;
        }
        tokio::select! {
            out = att.live.recv() => match out {
                Some(chunk) => {
                    let frame = coalesce(chunk, &mut att.live);
                    if !send_timely(&mut socket, Message::Binary(frame)).await { return }
                }
                None => {
                    close(&mut socket, 1008, "client too slow: output dropped").await;
                    return;
                }
            },
            _ = att.exit.changed() => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => send_input(&input, b).await,
                Some(Ok(Message::Text(t))) => send_input(&input, bytes::Bytes::from(t.as_str().to_owned())).await,
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "PTY client error");
                    close(&mut socket, 1009, "message too big or malformed").await;
                    return;
                }
            },
            _ = ping.tick() => if socket.send(Message::Ping(bytes::Bytes::new())).await.is_err() { return },
            _ = shutdown.cancelled() => {
                close(&mut socket, 1001, "sandbox shutting down").await;
                return;
            }
        }
    };
    // The reader finished before the exit was published: what is left in the channel is the last output.
    while let Ok(chunk) = att.live.try_recv() {
        if !send_timely(&mut socket, Message::Binary(chunk)).await {
            return;
        }
    }
    send_exit(&mut socket, exit, exit_control).await;
}

/// Largest output frame: chunks already waiting are sent together, which keeps a busy terminal's frame count (and
/// so the chance of a reader falling behind) down.
const MAX_FRAME: usize = 256 * 1024;

/// `first` plus whatever output is already queued for this client, up to `MAX_FRAME`.
pub fn coalesce(first: bytes::Bytes, live: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>) -> bytes::Bytes {
    let mut buf: Option<bytes::BytesMut> = None;
    while buf.as_ref().map_or(first.len(), |b| b.len()) < MAX_FRAME {
        match live.try_recv() {
            Ok(more) => buf.get_or_insert_with(|| bytes::BytesMut::from(&first[..])).extend_from_slice(&more),
            Err(_) => break,
        }
    }
    buf.map_or(first, bytes::BytesMut::freeze)
}

async fn send_timely(socket: &mut WebSocket, msg: Message) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await, Ok(Ok(())))
}

pub(crate) async fn send_input(input: &Option<tokio::sync::mpsc::Sender<bytes::Bytes>>, data: bytes::Bytes) {
    if let Some(tx) = input {
        let _ = tx.send(data).await;
    }
}

/// Closes the WebSocket with `code` and `reason`; a peer already gone changes nothing.
pub(crate) async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

/// The `exited` control message (when the client asked for it), then close 1000 for exit 0, else 1011, with the
/// exit code as the JSON reason.
pub async fn send_exit(socket: &mut WebSocket, exit: Exit, exit_control: bool) {
    let code = exit.code();
    let reason = exit_reason(exit);
    let mut body = serde_json::json!({"exitCode": code});
    if let Some(r) = &reason {
        body["exitReason"] = serde_json::Value::String(r.clone());
    }
    if exit_control {
        let mut msg = serde_json::json!({"type": "control", "status": "exited", "exitCode": code});
        if let Some(r) = &reason {
            msg["exitReason"] = serde_json::Value::String(r.clone());
        }
        let _ = socket.send(Message::Text(msg.to_string().into())).await;
    }
    close(socket, if code == 0 { 1000 } else { 1011 }, &body.to_string()).await;
}

async fn list_recordings(State(d): State<AppState>) -> ApiResult<Json<PtyRecordingList>> {
    Ok(Json(PtyRecordingList { recordings: d.ptys.recordings().await? }))
}

async fn download_recording(State(d): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult<Response> {
    let (file, len) = d.ptys.recording(&name).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response())
}
