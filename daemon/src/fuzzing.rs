//! Entry points for the fuzzers, not an API: each feeds untrusted bytes to one of the daemon's parsers the way the
//! server does, and panics only when the parser panics or breaks a promise. The cargo-fuzz crate at the
//! repository's root (`fuzz/`, run by `scripts/fuzz`) calls them with coverage guidance; the seeded loops at the
//! bottom call them from `cargo test`, so CI covers them without a sanitizer build, and replay every input under
//! `fuzz/regressions/<target>/` (inputs that once crashed) and `fuzz/seeds/<target>/`.
//!
//! Targets: the toolbox's query and JSON extractors for every request type, multipart uploads as `upload` and
//! `bulk-upload` read them, the PTY `create-connect` environment subprotocol, the web terminal's frames, the code
//! interpreter's request frame, LSP's Content-Length framing, and the session log's frames.

use std::future::Future;

use axum::extract::{FromRequest, FromRequestParts, Multipart};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use sandbar_proto::toolbox as dto;

use crate::engine::lsp::codec;
use crate::engine::session::log::Deframer;
use crate::toolbox::extract::{ApiJson, ApiQuery};
use crate::utf8::Utf8Stream;

/// A fuzz target: any bytes in, a panic only for a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name the cargo-fuzz crate and `fuzz/seeds/` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("toolbox_request", toolbox_request),
    ("multipart", multipart),
    ("pty_envs", pty_envs),
    ("terminal_message", terminal_message),
    ("interpreter_request", interpreter_request),
    ("lsp_frames", lsp_frames),
    ("session_log", session_log),
];

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> =
        tokio::runtime::Builder::new_current_thread().enable_all().build().ok();
}

fn block_on<F: Future>(f: F) -> Option<F::Output> {
    RUNTIME.with(|rt| rt.as_ref().map(|rt| rt.block_on(f)))
}

/// First byte: which request type; then the query string, a newline, and the JSON body. Each goes through the
/// extractor handlers use; a refusal must be a 4xx.
pub fn toolbox_request(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..).unwrap_or_default()),
        None => (rest, &b""[..]),
    };
    macro_rules! query_types {
        ($($t:ty),*) => { [$(check_query::<$t> as fn(&[u8])),*] };
    }
    macro_rules! json_types {
        ($($t:ty),*) => { [$(check_json::<$t> as fn(&[u8])),*] };
    }
    let queries = query_types!(
        dto::PathQuery,
        dto::FolderQuery,
        dto::MoveQuery,
        dto::PermissionsQuery,
        dto::DeleteQuery,
        dto::PatternQuery,
        dto::PtyConnectQuery,
        dto::LspServerRequest,
        dto::LspDocumentRequest,
        dto::LspWorkspaceQuery,
        dto::GitConfigQuery,
        dto::LogsQuery,
        dto::RepoQuery
    );
    let bodies = json_types!(
        dto::BulkDownloadRequest,
        dto::CodeRunRequest,
        dto::CreateContextRequest,
        dto::CreateSessionRequest,
        dto::EnvUpdate,
        dto::ExecuteRequest,
        dto::GitAddRemoteRequest,
        dto::GitAddRequest,
        dto::GitBranchRequest,
        dto::GitCheckoutRequest,
        dto::GitCloneRequest,
        dto::GitCommitRequest,
        dto::GitConfigureUserRequest,
        dto::GitCredentialsRequest,
        dto::GitInitRequest,
        dto::GitPullRequest,
        dto::GitPushRequest,
        dto::GitResetRequest,
        dto::GitRestoreRequest,
        dto::GitSetConfigRequest,
        dto::InitRequest,
        dto::LspCompletionRequest,
        dto::LspDocumentRequest,
        dto::LspServerRequest,
        dto::PtyCreateRequest,
        dto::PtyResizeRequest,
        dto::ReplaceRequest,
        dto::SessionExecuteRequest,
        dto::SessionInputRequest
    );
    if let Some(f) = queries.get(usize::from(which) % queries.len()) {
        f(query);
    }
    if let Some(f) = bodies.get(usize::from(which) % bodies.len()) {
        f(body);
    }
}

fn check_query<T: serde::de::DeserializeOwned>(query: &[u8]) {
    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(req) = Request::builder().uri(format!("/x?{query}")).body(()) else { return };
    let (mut parts, ()) = req.into_parts();
    if let Some(Err(e)) = block_on(ApiQuery::<T>::from_request_parts(&mut parts, &())) {
        assert!(e.status.is_client_error(), "query {query:?} refused with {e}");
    }
}

fn check_json<T: serde::de::DeserializeOwned>(body: &[u8]) {
    let req = Request::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .unwrap_or_default();
    if let Some(Err(e)) = block_on(ApiJson::<T>::from_request(req, &())) {
        assert!(e.status.is_client_error(), "body refused with {e}");
    }
}

/// First line: the boundary; the rest: the body. Walked as `upload` and `bulk-upload` do (field names,
/// `files[i].path` as text, files in chunks); an error must map to an error status.
pub fn multipart(data: &[u8]) {
    let (boundary, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data.get(..i).unwrap_or_default(), data.get(i + 1..).unwrap_or_default()),
        None => (&b"X"[..], data),
    };
    let Ok(boundary) = std::str::from_utf8(boundary) else { return };
    let Ok(req) = Request::builder()
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    block_on(async {
        let Ok(mut mp) = Multipart::from_request(req, &()).await else { return };
        let mut received = 0usize;
        loop {
            let mut field = match mp.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => return refused(e),
            };
            let indexed = field.name().and_then(crate::toolbox::fs::indexed_field).map(|(i, k)| (i, k.to_owned()));
            if let Some((_, kind)) = &indexed
                && kind == "path"
            {
                match field.text().await {
                    Ok(text) => received += text.len(),
                    Err(e) => return refused(e),
                }
                continue;
            }
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => received += chunk.len(),
                    Ok(None) => break,
                    Err(e) => return refused(e),
                }
            }
        }
        assert!(received <= body.len(), "{received} bytes of fields from a {}-byte body", body.len());
    });
}

fn refused(e: axum::extract::multipart::MultipartError) {
    let e = crate::toolbox::fs::multipart_error(e);
    assert!(!e.status.is_success(), "a multipart error answered {e}");
}

/// Newline-separated `Sec-WebSocket-Protocol` header values, as a `create-connect` client offers them.
pub fn pty_envs(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    if let Ok(envs) = crate::toolbox::pty::envs_from_protocols(&headers) {
        assert!(crate::engine::pty::check_envs(&envs).is_ok());
    }
}

/// One text frame from the web terminal's client: a resize or input.
pub fn terminal_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(Ok(r)) = crate::terminal::parse_resize(&text) {
        // What the session then does with the size: refused when out of range, never a panic.
        let _ = crate::engine::pty::check_size(r.cols, r.rows);
    }
}

/// The code interpreter's request frame: parsed, its environment checked, its timeout made a deadline, and the
/// reason a refusal closes with cut to a close frame.
pub fn interpreter_request(data: &[u8]) {
    use crate::toolbox::interpreter::{close_reason, parse_request};
    match parse_request(data) {
        Ok(req) => {
            if let Some(envs) = &req.envs {
                let _ = crate::engine::interpreter::check_envs(envs);
            }
            if let Some(t) = crate::engine::interpreter::run_timeout(req.timeout) {
                let _ = crate::util::deadline_after(t);
            }
        }
        Err(reason) => {
            let cut = close_reason(&reason);
            assert!(cut.len() <= 123 && reason.starts_with(cut));
        }
    }
}

/// A language server's output: first byte picks the read buffer's size. Every message read must be within the
/// limit, and framing it again must read back the same body.
pub fn lsp_frames(data: &[u8]) {
    let Some((&cap, stream)) = data.split_first() else { return };
    block_on(async {
        let mut r = tokio::io::BufReader::with_capacity(usize::from(cap % 64) + 1, stream);
        while let Ok(Some(body)) = codec::read_message(&mut r).await {
            assert!(body.len() <= codec::MAX_MESSAGE);
            let framed = codec::frame(&body);
            let mut again = tokio::io::BufReader::new(&framed[..]);
            let back = codec::read_message(&mut again).await;
            assert!(matches!(back, Ok(Some(b)) if b == body), "a framed message does not read back");
        }
    });
}

/// A session log file: first byte picks the size of the pieces it is read in. Any split must give the same
/// payloads as one read, never more bytes than the file, and text decoded piecewise as `from_utf8_lossy` would.
pub fn session_log(data: &[u8]) {
    let Some((&piece, file)) = data.split_first() else { return };
    let whole = deframe(file, file.len().max(1));
    let pieces = deframe(file, usize::from(piece % 16) + 1);
    assert_eq!(whole, pieces, "deframing depends on how the file is split");
    let payload: Vec<u8> = whole.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    assert!(payload.len() <= file.len());
    let mut utf8 = Utf8Stream::default();
    let mut text = String::new();
    for chunk in payload.chunks(usize::from(piece % 7) + 1) {
        text.push_str(&utf8.push(chunk));
    }
    text.push_str(&utf8.finish());
    assert_eq!(text, String::from_utf8_lossy(&payload));
}

/// Payloads as a follower merges them: consecutive frames of one stream joined.
fn deframe(file: &[u8], piece: usize) -> Vec<(u8, Vec<u8>)> {
    let mut d = Deframer::default();
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    for chunk in file.chunks(piece) {
        d.feed(chunk, |stream, payload| match out.last_mut() {
            Some((s, bytes)) if *s == stream => bytes.extend_from_slice(payload),
            _ => out.push((stream, payload.to_vec())),
        });
    }
    out.retain(|(_, p)| !p.is_empty());
    out
}

#[cfg(test)]
mod tests {
    //! The seeded loops (`sandbar_testkit::fuzz`): each target's committed seeds and regressions, then mutations
    //! of them from a fixed seed.

    /// Fragments that mean something to one parser or another.
    const PIECES: &[&[u8]] = &[
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"Content-Length: ",
        b"content-length:",
        b"18446744073709551615",
        b"4294967295",
        b"-1",
        b"0",
        b"65536",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"\"timeout\":",
        b"\"rows\":",
        b"\"cols\":",
        b"\"envs\":{\"A\":\"b\"}",
        b"\"code\":\"1\"",
        b"\\u0000",
        b"\\ud800",
        b"%00",
        b"%ff",
        b"%",
        b"&",
        b"=",
        b"+",
        b"path=",
        b"--",
        b"--X",
        b"--X--",
        b"Content-Disposition: form-data; name=\"",
        b"files[0].path",
        b"files[18446744073709551616].file",
        b"X-Daytona-Pty-Envs~",
        b"eyJBIjoiYiJ9",
        b"\xff",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\x01\x05\x00\x00\x00",
        b"\x02\xff\xff\xff\xff",
    ];

    #[test]
    fn seeded_inputs_never_panic() {
        for (i, (name, target)) in super::TARGETS.iter().enumerate() {
            sandbar_testkit::fuzz::run(name, 0x5eed_0000 + i as u64, PIECES, target);
        }
    }
}
