//! `/process/session/...`: sessions, their commands, input, and logs (whole, or followed over a WebSocket as
//! Daytona's marker-prefixed chunks). Engine: `engine::session`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandbar_proto::toolbox::{
    CreateSessionRequest, LogsQuery, STDERR_MARKER, STDOUT_MARKER, Session, SessionCommand, SessionExecuteRequest,
    SessionExecuteResponse, SessionInputRequest,
};
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, WsUpgrade};
use crate::AppState;
use crate::engine::session::{Follower, Log, STDERR};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process/session", get(list).post(create))
        .route("/process/session/{sid}", get(get_session).delete(delete))
        .route("/process/session/{sid}/exec", post(exec))
        .route("/process/session/{sid}/logs", get(session_logs))
        .route("/process/session/{sid}/command/{cid}", get(get_command))
        .route("/process/session/{sid}/command/{cid}/input", post(send_input))
        .route("/process/session/{sid}/command/{cid}/logs", get(command_logs))
}

async fn list(State(d): State<AppState>) -> Json<Vec<Session>> {
    Json(d.sessions.list())
}

async fn create(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    Ok((StatusCode::CREATED, Json(d.sessions.create(&d, req.session_id)?)))
}

async fn get_session(State(d): State<AppState>, UrlPath(sid): UrlPath<String>) -> ApiResult<Json<Session>> {
    Ok(Json(d.sessions.session(&sid)?))
}

async fn delete(State(d): State<AppState>, UrlPath(sid): UrlPath<String>) -> ApiResult<StatusCode> {
    d.sessions.delete(&sid)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(d): State<AppState>,
    UrlPath(sid): UrlPath<String>,
    ApiJson(req): ApiJson<SessionExecuteRequest>,
) -> ApiResult<(StatusCode, Json<SessionExecuteResponse>)> {
    let body = d.sessions.exec(&d, &sid, req).await?;
    // Without an exit code the command was queued asynchronously.
    let status = if body.exit_code.is_some() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(body)))
}

async fn get_command(
    State(d): State<AppState>,
    UrlPath((sid, cid)): UrlPath<(String, String)>,
) -> ApiResult<Json<SessionCommand>> {
    Ok(Json(d.sessions.command(&sid, &cid)?))
}

async fn send_input(
    State(d): State<AppState>,
    UrlPath((sid, cid)): UrlPath<(String, String)>,
    ApiJson(req): ApiJson<SessionInputRequest>,
) -> ApiResult<StatusCode> {
    d.sessions.send_input(&sid, &cid, &req.data).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn command_logs(
    State(d): State<AppState>,
    UrlPath((sid, cid)): UrlPath<(String, String)>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> ApiResult<Response> {
    let log = d.sessions.command_log(&sid, &cid)?;
    logs_response(d, log, q, headers, ws).await
}

/// `GET /process/session/{sid}/logs`: the entrypoint's output (Daytona's `get_entrypoint_logs`).
async fn session_logs(
    State(d): State<AppState>,
    UrlPath(sid): UrlPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> ApiResult<Response> {
    let log = d.sessions.last_log(&sid)?;
    logs_response(d, log, q, headers, ws).await
}

async fn logs_response(
    d: AppState,
    log: Arc<Log>,
    q: LogsQuery,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> ApiResult<Response> {
    if q.follow.unwrap_or(false) {
        let ws = ws.map_err(|_| ApiError::bad_request("follow=true needs a WebSocket upgrade"))?;
        let shutdown = d.shutdown.clone();
        return Ok(ws.on_upgrade(move |socket| follow(socket, Follower::new(log), shutdown)));
    }
    let logs = log.read_all().await.map_err(|e| crate::engine::Error::internal("reading command log", e))?;
    let wants_json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"));
    if wants_json {
        Ok(Json(logs).into_response())
    } else {
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from(logs.output)).into_response())
    }
}

/// Streams the log as Daytona's marker-prefixed chunks until the command ends (close 1000), the client goes
/// away, or the daemon shuts down (close 1001).
async fn follow(mut socket: WebSocket, mut log: Follower, shutdown: CancellationToken) {
    loop {
        match log.read().await {
            Ok(chunks) if !chunks.is_empty() => {
                for (stream, chunk) in chunks {
                    if send_chunk(&mut socket, stream, &chunk).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(_) => break,
        }
        if log.finished() {
            let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "command exited".into() }))).await;
            return;
        }
        tokio::select! {
            r = log.changed() => if !r { break },
            _ = shutdown.cancelled() => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: 1001, reason: "sandbox shutting down".into() })))
                    .await;
                return;
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame { code: 1011, reason: "cannot read the command log".into() })))
        .await;
}

async fn send_chunk(socket: &mut WebSocket, stream: u8, chunk: &[u8]) -> Result<(), axum::Error> {
    let marker = if stream == STDERR { STDERR_MARKER } else { STDOUT_MARKER };
    let mut msg = Vec::with_capacity(chunk.len() + 3);
    msg.extend_from_slice(&marker);
    msg.extend_from_slice(chunk);
    socket.send(Message::Binary(msg.into())).await
}
