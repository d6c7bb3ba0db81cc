//! `/process/interpreter/*` (engine: `engine::interpreter`): contexts over plain HTTP, runs over a WebSocket.
//!
//! `GET /process/interpreter/execute` upgrades, then reads one text frame `{code, contextId?, envs?, timeout?}`
//! and streams `{"type": "stdout"|"stderr", "text"}` and `{"type": "error", name, value, traceback}` frames; it
//! closes with 1000 when the run is over and 4008 when it timed out (the SDK raises `DaytonaTimeoutError`). A bad
//! request closes with 4400 (4404 for an unknown context) and the reason; the daemon failing, with 1011. Like
//! every toolbox route, both need the signed daemon credential (checked before the upgrade).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use sandbar_proto::toolbox::{
    CreateContextRequest, InterpreterContext, InterpreterFrame, InterpreterRunRequest, ListContextsResponse,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, WsUpgrade};
use crate::AppState;
use crate::engine::ErrorKind;
use crate::engine::interpreter::RunEnd;

/// Close code for a run that timed out, as the SDK reads it.
const CLOSE_TIMEOUT: u16 = 4008;
/// How long a client has to send its request after the upgrade.
const REQUEST_WAIT: Duration = Duration::from_secs(30);
/// Largest request frame (the code) accepted.
const MAX_REQUEST: usize = 16 << 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/process/interpreter/context", post(create_context).get(list_contexts))
        .route("/process/interpreter/context/{id}", delete(delete_context))
        .route("/process/interpreter/execute", get(execute))
}

async fn create_context(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<CreateContextRequest>,
) -> ApiResult<Json<InterpreterContext>> {
    Ok(Json(d.interpreters.create(&d, req).await?))
}

async fn list_contexts(State(d): State<AppState>) -> Json<ListContextsResponse> {
    Json(ListContextsResponse { contexts: d.interpreters.list() })
}

async fn delete_context(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<std::collections::BTreeMap<String, String>>> {
    d.interpreters.delete(&id).await?;
    Ok(Json([("message".to_owned(), format!("context {id} deleted"))].into()))
}

async fn execute(State(d): State<AppState>, ws: WsUpgrade) -> ApiResult<Response> {
    let ws = ws.map_err(|_| ApiError::bad_request("the interpreter's execute endpoint needs a WebSocket upgrade"))?;
    Ok(ws.max_message_size(MAX_REQUEST).on_upgrade(move |socket| serve(socket, d)).into_response())
}

async fn serve(mut socket: WebSocket, d: AppState) {
    let req = match read_request(&mut socket).await {
        Ok(req) => req,
        Err(reason) => return close(&mut socket, 4400, &reason).await,
    };
    let (tx, mut rx) = mpsc::channel::<InterpreterFrame>(64);
    let client_gone = CancellationToken::new();
    let run = {
        let (d, gone) = (d.clone(), client_gone.clone());
        tokio::spawn(async move { d.interpreters.run(&d, req, tx, gone).await })
    };
    let mut open = true;
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                if open && send_frame(&mut socket, &frame).await.is_err() {
                    open = false;
                    client_gone.cancel();
                }
            }
            msg = socket.recv(), if open => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    open = false;
                    client_gone.cancel();
                }
                Some(Ok(_)) => {}
            },
        }
    }
    if !open {
        return;
    }
    match run.await {
        Ok(Ok(RunEnd::Done)) => close(&mut socket, 1000, "done").await,
        Ok(Ok(RunEnd::TimedOut)) => close(&mut socket, CLOSE_TIMEOUT, "execution timed out").await,
        Ok(Err(e)) => {
            let code = match e.kind {
                ErrorKind::BadRequest => 4400,
                ErrorKind::NotFound => 4404,
                ErrorKind::Conflict => 4409,
                ErrorKind::Unavailable => 1001,
                _ => 1011,
            };
            close(&mut socket, code, &e.message).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "interpreter run task failed");
            close(&mut socket, 1011, "internal error").await;
        }
    }
}

/// The client's one request frame (text, or binary holding JSON).
async fn read_request(socket: &mut WebSocket) -> Result<InterpreterRunRequest, String> {
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.recv())
            .await
            .map_err(|_| "no request arrived: send {\"code\": ...} first".to_owned())?;
        let bytes = match msg {
            Some(Ok(Message::Text(t))) => t.as_str().as_bytes().to_vec(),
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return Err("the connection closed before a request arrived".into()),
        };
        return parse_request(&bytes);
    }
}

/// The run request of one client frame, or the reason the socket closes with 4400.
pub(crate) fn parse_request(bytes: &[u8]) -> Result<InterpreterRunRequest, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("invalid request: {e}"))
}

async fn send_frame(socket: &mut WebSocket, frame: &InterpreterFrame) -> Result<(), axum::Error> {
    let text = serde_json::to_string(frame).map_err(axum::Error::new)?;
    socket.send(Message::Text(text.into())).await
}

/// `reason` cut to the 123 bytes a close frame can carry, on a character boundary.
pub(crate) fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

/// Closes with `code` and `reason` (cut to the 123 bytes a close frame can carry).
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let reason = close_reason(reason);
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}
