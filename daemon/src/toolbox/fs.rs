//! `/files/...` (engine: `engine::fs`), plus the encodings that are HTTP's own: downloads with their
//! `Content-Disposition`, and multipart bodies both ways exactly as the Daytona SDK speaks them. Transfers are
//! streamed: a file never sits whole in memory.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use sandbar_proto::toolbox::{
    BulkDownloadRequest, DeleteQuery, FileInfo, FolderQuery, Match, MoveQuery, PathQuery, PatternQuery,
    PermissionsQuery, ReplaceRequest, ReplaceResult, SearchResponse,
};
use tokio::io::AsyncReadExt;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use crate::AppState;
use crate::engine::fs::{self, Incoming};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/files", get(list).delete(delete))
        .route("/files/info", get(info))
        .route("/files/download", get(download))
        .route("/files/upload", post(upload).layer(DefaultBodyLimit::disable()))
        .route("/files/bulk-upload", post(bulk_upload).layer(DefaultBodyLimit::disable()))
        .route("/files/bulk-download", post(bulk_download))
        .route("/files/folder", post(create_folder))
        .route("/files/move", post(move_files))
        .route("/files/permissions", post(set_permissions))
        .route("/files/find", get(find))
        .route("/files/search", get(search))
        .route("/files/replace", post(replace))
}

/// `Content-Disposition` filename parameters: a quoted string, plus RFC 5987's `filename*` when not ASCII.
fn disposition_filename(name: &str) -> String {
    let quoted: String = name
        .chars()
        .map(|c| match c {
            '"' => "\\\"".to_owned(),
            '\\' => "\\\\".to_owned(),
            '\r' | '\n' => " ".to_owned(),
            c => c.to_string(),
        })
        .collect();
    if name.is_ascii() {
        format!("filename=\"{quoted}\"")
    } else {
        let ascii: String = quoted.chars().map(|c| if c.is_ascii() { c } else { '_' }).collect();
        let pct = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        format!("filename=\"{ascii}\"; filename*=utf-8''{pct}")
    }
}

async fn download(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Response> {
    let (file, len) = fs::open(&d, &q.path).await?;
    let name = d.resolve(&q.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; {}", disposition_filename(&name))),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)),
    )
        .into_response())
}

pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(e.status(), format!("malformed multipart body: {}", e.body_text()))
}

/// Streams one multipart field into `dest` (creating parent directories).
async fn receive_field(field: &mut axum::extract::multipart::Field<'_>, dest: &Path, shown: &str) -> ApiResult<()> {
    let mut incoming = Incoming::start(dest, shown).await?;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if let Err(e) = incoming.write(&chunk).await {
                    incoming.abort().await;
                    return Err(io_error(shown, &e));
                }
            }
            Ok(None) => break,
            Err(e) => {
                incoming.abort().await;
                return Err(multipart_error(e));
            }
        }
    }
    incoming.finish(dest).await.map_err(|e| io_error(shown, &e))
}

async fn upload(
    State(d): State<AppState>,
    ApiQuery(q): ApiQuery<PathQuery>,
    mut mp: Multipart,
) -> ApiResult<StatusCode> {
    fs::nonempty("path", &q.path)?;
    let dest = d.resolve(&q.path);
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        if field.name() == Some("file") {
            receive_field(&mut field, &dest, &q.path).await?;
            return Ok(StatusCode::OK);
        }
    }
    Err(ApiError::bad_request("multipart body has no field named \"file\""))
}

/// `files[3].path` -> (3, "path").
pub(crate) fn indexed_field(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("files[")?;
    let (index, rest) = rest.split_once("].")?;
    Some((index.parse().ok()?, rest))
}

async fn bulk_upload(State(d): State<AppState>, mut mp: Multipart) -> ApiResult<StatusCode> {
    let mut paths: HashMap<usize, String> = HashMap::new();
    // Files whose path part had not arrived yet wait in the state dir.
    let mut parked: HashMap<usize, PathBuf> = HashMap::new();
    let mut count = 0usize;
    let result: ApiResult<()> = async {
        while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
            let Some((index, kind)) = field.name().and_then(indexed_field) else {
                continue; // unknown fields are ignored, as multipart forms allow
            };
            match kind {
                "path" => {
                    let path = field.text().await.map_err(multipart_error)?;
                    fs::nonempty("files[].path", &path)?;
                    if let Some(tmp) = parked.remove(&index) {
                        let dest = d.resolve(&path);
                        if let Some(parent) = dest.parent() {
                            tokio::fs::create_dir_all(parent).await.map_err(|e| io_error(&path, &e))?;
                        }
                        fs::move_path(&tmp, &dest).await.map_err(|e| io_error(&path, &e))?;
                        count += 1;
                    }
                    paths.insert(index, path);
                }
                "file" => match paths.get(&index).cloned() {
                    Some(path) => {
                        receive_field(&mut field, &d.resolve(&path), &path).await?;
                        count += 1;
                    }
                    None => {
                        let park = d.state_dir.join("uploads");
                        let tmp = park.join(uuid::Uuid::new_v4().simple().to_string());
                        receive_field(&mut field, &tmp, "upload").await?;
                        parked.insert(index, tmp);
                    }
                },
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    for tmp in parked.values() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    result?;
    if !parked.is_empty() {
        return Err(ApiError::bad_request("a files[i].file part has no files[i].path part"));
    }
    if count == 0 {
        return Err(ApiError::bad_request("no files in the multipart body (expected files[i].path and files[i].file)"));
    }
    Ok(StatusCode::OK)
}

async fn bulk_download(State(d): State<AppState>, ApiJson(req): ApiJson<BulkDownloadRequest>) -> ApiResult<Response> {
    if req.paths.is_empty() {
        return Err(ApiError::bad_request("paths must not be empty"));
    }
    let boundary = format!("sandbar-{}", uuid::Uuid::new_v4().simple());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(8);
    let b = boundary.clone();
    tokio::spawn(async move {
        for requested in req.paths {
            if !send_part(&d, &tx, &b, &requested).await {
                return; // the client went away
            }
        }
        let _ = tx.send(Ok(Bytes::from(format!("--{b}--\r\n")))).await;
    });
    Ok((
        [(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Writes one part: the file's bytes, or an error part the SDK turns into a typed exception. False when the
/// client is gone.
async fn send_part(
    d: &AppState,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    boundary: &str,
    requested: &str,
) -> bool {
    let filename = disposition_filename(requested);
    let opened = async {
        if requested.is_empty() || requested.contains('\0') {
            return Err(ApiError::bad_request("empty path").with_code("INVALID_FILE_PATH"));
        }
        Ok(fs::open(d, requested).await?)
    }
    .await;
    match opened {
        Err(e) => {
            let body = serde_json::to_string(&e.body()).unwrap_or_default();
            let part = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"error\"; {filename}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\r\n",
                body.len()
            );
            tx.send(Ok(Bytes::from(part))).await.is_ok()
        }
        Ok((mut file, len)) => {
            let head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; {filename}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            );
            if tx.send(Ok(Bytes::from(head))).await.is_err() {
                return false;
            }
            let mut sent = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            while sent < len {
                let want = buf.len().min(usize::try_from(len - sent).unwrap_or(usize::MAX));
                let Some(slice) = buf.get_mut(..want) else { break };
                match file.read(slice).await {
                    Ok(0) => break,
                    Ok(n) => {
                        sent += n as u64;
                        if tx.send(Ok(Bytes::copy_from_slice(slice.get(..n).unwrap_or_default()))).await.is_err() {
                            return false;
                        }
                    }
                    Err(e) => {
                        // The part's length is already promised: end the response broken, not silently short.
                        let _ = tx.send(Err(e)).await;
                        return false;
                    }
                }
            }
            if sent < len {
                let _ = tx.send(Err(io::Error::other("file shrank while it was being sent"))).await;
                return false;
            }
            tx.send(Ok(Bytes::from_static(b"\r\n"))).await.is_ok()
        }
    }
}

async fn list(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<Vec<FileInfo>>> {
    Ok(Json(fs::list(&d, q).await?))
}

async fn info(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<FileInfo>> {
    Ok(Json(fs::info(&d, &q.path).await?))
}

async fn create_folder(State(d): State<AppState>, ApiQuery(q): ApiQuery<FolderQuery>) -> ApiResult<StatusCode> {
    fs::create_folder(&d, q).await?;
    Ok(StatusCode::CREATED)
}

async fn move_files(State(d): State<AppState>, ApiQuery(q): ApiQuery<MoveQuery>) -> ApiResult<StatusCode> {
    fs::move_files(&d, q).await?;
    Ok(StatusCode::OK)
}

async fn set_permissions(State(d): State<AppState>, ApiQuery(q): ApiQuery<PermissionsQuery>) -> ApiResult<StatusCode> {
    fs::set_permissions(&d, q).await?;
    Ok(StatusCode::OK)
}

async fn delete(State(d): State<AppState>, ApiQuery(q): ApiQuery<DeleteQuery>) -> ApiResult<StatusCode> {
    fs::delete(&d, q).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn find(State(d): State<AppState>, ApiQuery(q): ApiQuery<PatternQuery>) -> ApiResult<Json<Vec<Match>>> {
    Ok(Json(fs::find(&d, q).await?))
}

async fn search(State(d): State<AppState>, ApiQuery(q): ApiQuery<PatternQuery>) -> ApiResult<Json<SearchResponse>> {
    Ok(Json(fs::search(&d, q).await?))
}

async fn replace(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<ReplaceRequest>,
) -> ApiResult<Json<Vec<ReplaceResult>>> {
    Ok(Json(fs::replace(&d, req).await?))
}

fn io_error(path: &str, e: &io::Error) -> ApiError {
    crate::engine::Error::io(path, e).into()
}
