//! The web terminal server (port 22222): a page running xterm.js at `GET /` and the terminal WebSocket at
//! `GET /ws`. Each socket gets its own shell on a PTY, ended (its whole process group) when the socket closes.
//!
//! Frames: a client text frame that parses as `{"rows":N,"cols":N}` resizes, anything else is input; output goes
//! out as text frames cut on character boundaries (never half a UTF-8 sequence). Every request (the page, its
//! assets, the socket) needs its own signed credential, as on the toolbox: the proxy signs each request it sends
//! (browsers reach the terminal through it, as `/proxy/22222/...` of the toolbox or a `22222-` host, and the
//! toolbox's port proxy signs again for this server). There is no token in a query parameter or a cookie: those
//! would put the daemon token on the wire and in the browser.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::engine::pty::{PtyOptions, PtySession};
use crate::toolbox::error::ApiError;
use crate::toolbox::extract::WsUpgrade;
use crate::toolbox::pty::{MAX_INPUT_MESSAGE, PING_EVERY, close, coalesce, send_input};
use crate::utf8::Utf8Stream;

mod page;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(page::routes())
        .route("/ws", get(ws))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(State(d): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = crate::toolbox::credential_ok(&d, &req) {
        tracing::info!(reason = %e, path = %req.uri().path(), "terminal: rejected daemon credential");
        return ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).with_code("UNAUTHORIZED").into_response();
    }
    next.run(req).await
}

async fn ws(State(d): State<AppState>, ws: WsUpgrade) -> Result<Response, ApiError> {
    let ws = ws.map_err(|_| ApiError::bad_request("/ws needs a WebSocket upgrade"))?;
    let id = format!("web-{}", uuid::Uuid::new_v4().simple());
    let opts =
        PtyOptions { id, cwd: None, envs: BTreeMap::new(), cols: 80, rows: 24, lazy_start: false, record: false };
    let session = d.ptys.create(&d, opts, true)?;
    let shutdown = d.shutdown.clone();
    Ok(ws.max_message_size(MAX_INPUT_MESSAGE).max_frame_size(MAX_INPUT_MESSAGE).on_upgrade(move |socket| async move {
        serve(socket, session.clone(), shutdown).await;
        end(&session).await;
    }))
}

/// Hangs the shell up, as closing a terminal window does, and kills what ignores that.
async fn end(s: &PtySession) {
    if s.exit().is_some() {
        return;
    }
    s.kill(nix::sys::signal::Signal::SIGHUP);
    let mut exit = s.exit_watch();
    let gone = tokio::time::timeout(Duration::from_secs(2), async {
        while exit.borrow_and_update().is_none() {
            if exit.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if gone.is_err() {
        s.kill(nix::sys::signal::Signal::SIGKILL);
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Resize {
    pub(crate) rows: u16,
    pub(crate) cols: u16,
}

/// `Some` when `t` is a resize message (a JSON object of exactly `rows` and `cols`), `Err` when its sizes are not
/// numbers a terminal can have; `None` when it is input.
pub(crate) fn parse_resize(t: &str) -> Option<Result<Resize, ()>> {
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let obj = v.as_object()?;
    if obj.len() != 2 || !obj.contains_key("rows") || !obj.contains_key("cols") {
        return None;
    }
    Some(serde_json::from_value(v).map_err(|_| ()))
}

async fn serve(mut socket: WebSocket, s: Arc<PtySession>, shutdown: tokio_util::sync::CancellationToken) {
    let mut att = s.attach();
    let input = s.input();
    let mut text = Utf8Stream::default();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let exit = loop {
        if let Some(e) = *att.exit.borrow_and_update() {
            break e;
        }
        tokio::select! {
            out = att.live.recv() => match out {
                Some(chunk) => {
                    let chunk = coalesce(chunk, &mut att.live);
                    let t = text.push(&chunk);
                    if !t.is_empty() && socket.send(Message::Text(t.into())).await.is_err() {
                        return;
                    }
                }
                None => return close(&mut socket, 1008, "client too slow: output dropped").await,
            },
            _ = att.exit.changed() => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => match parse_resize(t.as_str()) {
                    Some(Ok(r)) => if let Err(e) = s.resize(r.cols, r.rows) {
                        return close(&mut socket, 1008, &e.to_string()).await;
                    },
                    Some(Err(())) => return close(&mut socket, 1008, "invalid resize message").await,
                    None => send_input(&input, bytes::Bytes::from(t.as_str().to_owned())).await,
                },
                Some(Ok(Message::Binary(b))) => send_input(&input, b).await,
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
                Some(Err(_)) => return close(&mut socket, 1009, "message too big or malformed").await,
            },
            _ = ping.tick() => if socket.send(Message::Ping(bytes::Bytes::new())).await.is_err() { return },
            _ = shutdown.cancelled() => return close(&mut socket, 1001, "sandbox shutting down").await,
        }
    };
    while let Ok(chunk) = att.live.try_recv() {
        let t = text.push(&chunk);
        if !t.is_empty() && socket.send(Message::Text(t.into())).await.is_err() {
            return;
        }
    }
    let rest = text.finish();
    if !rest.is_empty() {
        let _ = socket.send(Message::Text(rest.into())).await;
    }
    let code = exit.code();
    let reason = serde_json::json!({"exitCode": code}).to_string();
    close(&mut socket, if code == 0 { 1000 } else { 1011 }, &reason).await;
}
