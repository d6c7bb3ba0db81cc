//! Response bodies streamed from a command's output file ([`LogText`]), for answers too large to build in memory:
//! hyper asks for the next piece only once the last one was sent, so a slow client holds one piece, not the log.
//! JSON strings are written piece by piece, escaped exactly as serde_json escapes, their text decoded as
//! `String::from_utf8_lossy` would decode the whole. A body has no `Content-Length`; a read failing midway ends it
//! early (the connection is cut, so the client sees a broken body, never a short one that looks whole).

use std::collections::VecDeque;
use std::sync::LazyLock;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::engine::session::LogText;

/// A part of a streamed body.
pub enum Piece {
    /// Sent as is.
    Raw(Bytes),
    /// Sent as is: text.
    Text(LogText),
    /// Sent as the inside of a JSON string.
    Json(LogText),
}

pub fn json_response(pieces: VecDeque<Piece>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body_stream(pieces))).into_response()
}

/// The pieces' bytes, read one block of the log at a time: hyper asks for the next only once the last was sent.
pub fn body_stream(
    pieces: VecDeque<Piece>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(pieces, |mut pieces| async move {
        loop {
            let next = match pieces.front_mut() {
                None => return Ok(None),
                Some(Piece::Raw(bytes)) => {
                    let bytes = std::mem::take(bytes);
                    pieces.pop_front();
                    return Ok(Some((bytes, pieces)));
                }
                Some(Piece::Text(text)) => text.next().await.map_err(log_read_error)?.map(Bytes::from),
                Some(Piece::Json(text)) => text.next().await.map_err(log_read_error)?.map(|s| json_string_inside(&s)),
            };
            match next {
                Some(bytes) => return Ok(Some((bytes, pieces))),
                None => {
                    pieces.pop_front();
                }
            }
        }
    })
}

fn log_read_error(e: std::io::Error) -> std::io::Error {
    tracing::warn!(error = %e, "cannot read the command log; response cut short");
    e
}

/// `s` escaped as the inside of a JSON string, byte for byte as serde_json writes it (`"` and `\` escaped, the
/// control characters as `\b \f \n \r \t` or `\u00xx`, everything else as is). The scan is the `regex`
/// crate's, not a byte loop of ours: dependencies are optimised in every profile, so a debug daemon streams
/// gigabytes in seconds too (serde_json's own writer would be compiled into this crate, unoptimised there).
fn json_string_inside(s: &str) -> Bytes {
    static SPECIAL: LazyLock<Option<regex::bytes::Regex>> =
        LazyLock::new(|| regex::bytes::Regex::new(r#"[\x00-\x1f"\\]"#).ok());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8);
    let mut from = 0;
    let specials = SPECIAL.as_ref().map(|re| re.find_iter(bytes).map(|m| m.start()));
    let positions: Box<dyn Iterator<Item = usize>> = match specials {
        Some(it) => Box::new(it),
        // The pattern is a constant that compiles; without it, every byte is looked at.
        None => Box::new(
            bytes.iter().enumerate().filter(|(_, b)| **b < 0x20 || **b == b'"' || **b == b'\\').map(|(i, _)| i),
        ),
    };
    for at in positions {
        out.extend_from_slice(bytes.get(from..at).unwrap_or_default());
        let b = bytes.get(at).copied().unwrap_or_default();
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]),
        }
        from = at + 1;
    }
    out.extend_from_slice(bytes.get(from..).unwrap_or_default());
    Bytes::from(out)
}

/// `response` serialized, with its string member `field` (serialized empty) filled with `text`, streamed.
pub fn json_with_text<T: Serialize>(response: &T, field: &str, text: LogText) -> std::io::Result<VecDeque<Piece>> {
    let whole = serde_json::to_vec(response)?;
    let member = format!("\"{field}\":\"\"");
    let at = whole
        .windows(member.len())
        .position(|w| w == member.as_bytes())
        .ok_or_else(|| std::io::Error::other(format!("no empty {field} member to stream into")))?;
    // Up to and with the opening quote; from the closing quote on.
    let (head, tail) = whole.split_at(at + member.len() - 1);
    Ok(VecDeque::from([
        Piece::Raw(Bytes::copy_from_slice(head)),
        Piece::Json(text),
        Piece::Raw(Bytes::copy_from_slice(tail)),
    ]))
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use sandbar_proto::toolbox::{Artifacts, CodeRunResponse, ExecuteResponse};

    use super::*;
    use crate::engine::session::{Log, STDERR, STDOUT, Streams};

    #[tokio::test]
    async fn a_response_gets_its_result_streamed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(dir.path().join("out")).unwrap();
        let mut all = Vec::new();
        for (stream, data) in [(STDOUT, &b"a \"b\" \xe2\x82"[..]), (STDERR, b"\xac\n\x01"), (STDOUT, &[b'z'; 300_000])]
        {
            log.append(stream, data);
            all.extend_from_slice(data);
        }
        let snap = log.snapshot().unwrap();
        let result = String::from_utf8_lossy(&all).into_owned();

        let exec =
            ExecuteResponse { exit_code: 2, result: String::new(), exit_reason: Some("exited".into()), signal: None };
        let pieces = json_with_text(&exec, "result", snap.text(Streams::Both)).unwrap();
        let got: Vec<Bytes> = body_stream(pieces).try_collect().await.unwrap();
        assert_eq!(got.concat(), serde_json::to_vec(&ExecuteResponse { result: result.clone(), ..exec }).unwrap());

        let run = CodeRunResponse { exit_code: 0, result: String::new(), artifacts: Artifacts::default() };
        let pieces = json_with_text(&run, "result", snap.text(Streams::Both)).unwrap();
        let got: Vec<Bytes> = body_stream(pieces).try_collect().await.unwrap();
        assert_eq!(got.concat(), serde_json::to_vec(&CodeRunResponse { result, ..run }).unwrap());

        // A response whose field is not empty cannot be filled: an error, not a malformed body.
        let full = ExecuteResponse { exit_code: 0, result: "x".into(), exit_reason: None, signal: None };
        assert!(json_with_text(&full, "result", snap.text(Streams::Both)).is_err());
    }
}
