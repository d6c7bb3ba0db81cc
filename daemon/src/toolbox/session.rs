//! `/process/session/...`: sessions, their commands, input, and logs (whole, or followed over a WebSocket as
//! Daytona's marker-prefixed chunks). Engine: `engine::session`.
//!
//! A command's output can be larger than the daemon's memory, so every answer carrying it (the whole log as JSON
//! or text, a synchronous execute's JSON) is a body streamed from the log file (`stream.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::FutureExt;
use sandbar_proto::toolbox::{
    CreateSessionRequest, LogsQuery, STDERR_MARKER, STDOUT_MARKER, Session, SessionCommand, SessionExecuteRequest,
    SessionExecuteResponse, SessionInputRequest,
};
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, WsUpgrade};
use super::stream::{Piece, body_stream, json_response};
use crate::AppState;
use crate::engine::session::{Executed, Follower, Log, LogSnapshot, STDERR, Streams};

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
    d.sessions.delete(&sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(d): State<AppState>,
    UrlPath(sid): UrlPath<String>,
    ApiJson(req): ApiJson<SessionExecuteRequest>,
) -> ApiResult<Response> {
    match d.sessions.exec(&d, &sid, req).await? {
        Executed::Queued { cmd_id } => {
            let body = SessionExecuteResponse { cmd_id, output: None, stdout: None, stderr: None, exit_code: None };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        // `SessionExecuteResponse`'s fields, in its order, with the output streamed from the log.
        Executed::Done { cmd_id, exit_code, log } => {
            let cmd_id = serde_json::to_string(&cmd_id).unwrap_or_else(|_| "\"\"".to_owned());
            let head = format!("{{\"cmdId\":{cmd_id},\"output\":\"");
            let tail = format!("\",\"exitCode\":{exit_code}}}");
            Ok(json_response(streams_json(head, &log, tail)))
        }
    }
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
    let snapshot = log.snapshot().map_err(|e| crate::engine::Error::internal("opening command log", e))?;
    let wants_json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"));
    if wants_json {
        // `SessionCommandLogs`: `{output, stdout, stderr}`.
        Ok(json_response(streams_json("{\"output\":\"".to_owned(), &snapshot, "\"}".to_owned())))
    } else {
        let body = Body::from_stream(body_stream(VecDeque::from([Piece::Text(snapshot.text(Streams::Both))])));
        Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
    }
}

/// `head`, then `output`, `stdout` and `stderr` as JSON string members, then `tail`: `head` opens the string of
/// `output`, `tail` closes the string of `stderr`.
fn streams_json(head: String, log: &LogSnapshot, tail: String) -> VecDeque<Piece> {
    VecDeque::from([
        Piece::Raw(head.into()),
        Piece::Json(log.text(Streams::Both)),
        Piece::Raw(Bytes::from_static(b"\",\"stdout\":\"")),
        Piece::Json(log.text(Streams::Stdout)),
        Piece::Raw(Bytes::from_static(b"\",\"stderr\":\"")),
        Piece::Json(log.text(Streams::Stderr)),
        Piece::Raw(tail.into()),
    ])
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
                // A long stream never waits below, so look at what the client sent meanwhile without waiting: its
                // keepalive pings get their pongs (with the next write), and a close ends the stream.
                if let Some(Some(Ok(Message::Close(_)) | Err(_)) | None) = socket.recv().now_or_never() {
                    return;
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

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use sandbar_proto::toolbox::SessionCommandLogs;

    use super::*;
    use crate::engine::session::STDOUT;

    async fn body(pieces: VecDeque<Piece>) -> Vec<u8> {
        let parts: Vec<Bytes> = body_stream(pieces).try_collect().await.unwrap();
        parts.concat()
    }

    #[tokio::test]
    async fn streamed_json_is_what_serde_json_writes_for_the_whole_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(dir.path().join("log")).unwrap();
        let writes: &[(u8, &[u8])] = &[
            (STDOUT, b"\"quotes\" \\ \x00\x01\x08\x0b\x0c\x1f\x7f \t\r\n</script> / \xe2\x80\xa8 \xc2\x85"),
            (STDERR, b"caf\xc3"), // split across frames of one stream
            (STDERR, b"\xa9 \xff"),
            (STDOUT, b"\xf0\x9f\x98"), // split across pieces by a long frame below
            (STDOUT, &[b'y'; 200_000]),
            (STDOUT, b"\xe2\x82"), // left incomplete at the end
        ];
        let (mut all, mut out, mut err) = (Vec::new(), Vec::new(), Vec::new());
        for (stream, data) in writes {
            log.append(*stream, data);
            all.extend_from_slice(data);
            if *stream == STDERR { err.extend_from_slice(data) } else { out.extend_from_slice(data) }
        }
        let snap = log.snapshot().unwrap();
        let want = SessionCommandLogs {
            output: String::from_utf8_lossy(&all).into_owned(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        };
        let got = body(streams_json("{\"output\":\"".to_owned(), &snap, "\"}".to_owned())).await;
        assert_eq!(got, serde_json::to_vec(&want).unwrap());

        let head = "{\"cmdId\":\"c-1\",\"output\":\"".to_owned();
        let got = body(streams_json(head, &snap, "\",\"exitCode\":3}".to_owned())).await;
        let want = SessionExecuteResponse {
            cmd_id: "c-1".into(),
            output: Some(want.output),
            stdout: Some(want.stdout),
            stderr: Some(want.stderr),
            exit_code: Some(3),
        };
        assert_eq!(got, serde_json::to_vec(&want).unwrap());

        let text = body(VecDeque::from([Piece::Text(snap.text(Streams::Both))])).await;
        assert_eq!(text, String::from_utf8_lossy(&all).as_bytes());
    }

    #[tokio::test]
    async fn an_empty_log_is_empty_strings() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(dir.path().join("log")).unwrap();
        let got = body(streams_json("{\"output\":\"".to_owned(), &log.snapshot().unwrap(), "\"}".to_owned())).await;
        assert_eq!(got, br#"{"output":"","stdout":"","stderr":""}"#);
    }
}
