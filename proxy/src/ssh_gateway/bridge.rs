//! One channel pair copied both ways until both sides have closed, and the queue that matches a session channel's
//! requests with the daemon's answers to them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use russh::server::Msg as ServerMsg;
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use sandbar_support::sync::lock;
use tokio::sync::oneshot;

use super::ConnActivity;

/// The daemon's answers to a channel's requests, matched in order with the client's requests waiting for them.
#[derive(Default)]
pub(super) struct Replies {
    waiting: VecDeque<oneshot::Sender<bool>>,
    early: VecDeque<bool>,
}

pub(super) type SharedReplies = Arc<Mutex<Replies>>;

pub(super) fn reply_wait(r: &SharedReplies) -> oneshot::Receiver<bool> {
    let (tx, rx) = oneshot::channel();
    let mut r = lock(r);
    match r.early.pop_front() {
        Some(ok) => {
            let _ = tx.send(ok);
        }
        None => r.waiting.push_back(tx),
    }
    rx
}

fn reply_answer(r: &SharedReplies, ok: bool) {
    let mut r = lock(r);
    match r.waiting.pop_front() {
        Some(tx) => {
            let _ = tx.send(ok);
        }
        None => r.early.push_back(ok),
    }
}

pub(super) fn open_failure(e: &russh::Error) -> ChannelOpenFailure {
    match e {
        russh::Error::ChannelOpenFailure(r) => r.clone(),
        _ => ChannelOpenFailure::ConnectFailed,
    }
}

/// Copies one channel pair both ways until both sides have closed. `replies` is set for session channels: the
/// client's channel requests go to the daemon in order and the daemon's answers come back through it.
pub(super) async fn bridge(
    down: Channel<ServerMsg>,
    up: Channel<russh::client::Msg>,
    down_handle: russh::server::Handle,
    activity: Arc<ConnActivity>,
    replies: Option<SharedReplies>,
) {
    let down_id = down.id();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    let act = activity.clone();
    // Client -> daemon.
    let to_up = async move {
        while let Some(msg) = down_rx.wait().await {
            act.touch();
            let sent = match msg {
                ChannelMsg::Data { data } => up_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => up_tx.extended_data_bytes(ext, data).await,
                ChannelMsg::Eof => up_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term, col_width, row_height, pix_width, pix_height, terminal_modes, ..
                } => {
                    up_tx.request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
                }
                ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                    up_tx.set_env(true, variable_name, variable_value).await
                }
                ChannelMsg::RequestShell { .. } => up_tx.request_shell(true).await,
                ChannelMsg::Exec { command, .. } => up_tx.exec(true, command).await,
                ChannelMsg::RequestSubsystem { name, .. } => up_tx.request_subsystem(true, name).await,
                ChannelMsg::AgentForward { .. } => up_tx.agent_forward(true).await,
                ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                    up_tx.window_change(col_width, row_height, pix_width, pix_height).await
                }
                ChannelMsg::Signal { signal } => up_tx.signal(signal).await,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    };
    // Daemon -> client.
    let to_down = async move {
        while let Some(msg) = up_rx.wait().await {
            activity.touch();
            let sent = match msg {
                ChannelMsg::Data { data } => down_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => down_tx.extended_data_bytes(ext, data).await,
                ChannelMsg::Eof => down_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::ExitStatus { exit_status } => down_tx.exit_status(exit_status).await,
                ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => down_handle
                    .exit_signal_request(down_id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|()| russh::Error::SendError),
                ChannelMsg::XonXoff { client_can_do } => {
                    down_handle.xon_xoff_request(down_id, client_can_do).await.map_err(|()| russh::Error::SendError)
                }
                ChannelMsg::Success => {
                    if let Some(r) = &replies {
                        reply_answer(r, true);
                    }
                    Ok(())
                }
                ChannelMsg::Failure => {
                    if let Some(r) = &replies {
                        reply_answer(r, false);
                    }
                    Ok(())
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = down_tx.close().await;
    };
    tokio::join!(to_up, to_down);
}
