//! The file-system endpoints: list, info, download, upload, bulk upload and download (multipart exactly as the
//! Daytona SDK speaks it, see shared/daytona-compat.md §6), folders, move, permissions, delete, find (content),
//! search (names) and replace. Transfers are streamed both ways: a file never sits whole in memory, and an upload
//! lands in a temporary file next to its destination that is renamed into place only when complete.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::util::{ApiJson, ApiQuery};

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

/// Files larger than this are skipped by `find` and refused by `replace`.
const MAX_TEXT_FILE: u64 = 10 << 20;
const MAX_RESULTS: usize = 10_000;

/// Daytona's `FileInfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    name: String,
    is_dir: bool,
    size: u64,
    mode: String,
    mod_time: String,
    permissions: String,
    owner: String,
    group: String,
    path: String,
}

/// Renders a mode like Go's `FileMode.String()` (`drwxr-xr-x`, `-rw-r--r--`), which Daytona's daemon sends.
fn mode_string(meta: &std::fs::Metadata) -> String {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'L'
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
        'p'
    } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
        'S'
    } else if std::os::unix::fs::FileTypeExt::is_block_device(&ft)
        || std::os::unix::fs::FileTypeExt::is_char_device(&ft)
    {
        'D'
    } else {
        '-'
    };
    let m = meta.permissions().mode();
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (bit, c) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o40, 'r'),
        (0o20, 'w'),
        (0o10, 'x'),
        (0o4, 'r'),
        (0o2, 'w'),
        (0o1, 'x'),
    ] {
        s.push(if m & bit != 0 { c } else { '-' });
    }
    s
}

/// Resolves uid/gid to names once per request.
#[derive(Default)]
struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| gid.to_string())
            })
            .clone()
    }
}

fn file_info(path: &Path, meta: &std::fs::Metadata, names: &mut Names) -> FileInfo {
    let mod_time =
        meta.modified().ok().map(|t| crate::util::rfc3339(time::OffsetDateTime::from(t))).unwrap_or_default();
    FileInfo {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        is_dir: meta.is_dir(),
        size: meta.len(),
        mode: mode_string(meta),
        mod_time,
        permissions: format!("{:04o}", meta.permissions().mode() & 0o7777),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        path: path.to_string_lossy().into_owned(),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal("file operation", e))?
}

fn nonempty(name: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.contains('\0') {
        return Err(ApiError::bad_request(format!("{name} must be a non-empty path")).with_code("INVALID_FILE_PATH"));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct PathQuery {
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

async fn list(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<Vec<FileInfo>>> {
    nonempty("path", &q.path)?;
    let dir = d.resolve(&q.path);
    let depth = q.depth.unwrap_or(1).clamp(1, 64) as usize;
    let shown = q.path.clone();
    let items = blocking(move || {
        let meta = std::fs::metadata(&dir).map_err(|e| ApiError::io(&shown, &e))?;
        if !meta.is_dir() {
            return Err(ApiError::bad_request(format!("{shown} is not a directory")).with_code("INVALID_FILE_PATH"));
        }
        let mut names = Names::default();
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(1).max_depth(depth).sort_by_file_name() {
            let Ok(entry) = entry else { continue };
            // A dangling symlink still shows up, described by the link itself.
            let meta = match entry.path().metadata() {
                Ok(m) => m,
                Err(_) => match entry.path().symlink_metadata() {
                    Ok(m) => m,
                    Err(_) => continue,
                },
            };
            out.push(file_info(entry.path(), &meta, &mut names));
            if out.len() >= 100_000 {
                break;
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(items))
}

async fn info(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<FileInfo>> {
    nonempty("path", &q.path)?;
    let path = d.resolve(&q.path);
    let meta = tokio::fs::metadata(&path).await.map_err(|e| ApiError::io(&q.path, &e))?;
    Ok(Json(file_info(&path, &meta, &mut Names::default())))
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
    nonempty("path", &q.path)?;
    let path = d.resolve(&q.path);
    let file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::io(&q.path, &e))?;
    let meta = file.metadata().await.map_err(|e| ApiError::io(&q.path, &e))?;
    if meta.is_dir() {
        return Err(ApiError::bad_request(format!("{} is a directory", q.path)).with_code("INVALID_FILE_PATH"));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, meta.len().to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; {}", disposition_filename(&name))),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)),
    )
        .into_response())
}

/// An upload in progress: a temporary file renamed onto its destination once complete.
struct Incoming {
    tmp: PathBuf,
    file: tokio::fs::File,
}

impl Incoming {
    async fn create(dest_dir: &Path) -> io::Result<Self> {
        tokio::fs::create_dir_all(dest_dir).await?;
        let tmp = dest_dir.join(format!(".sandbar-upload-{}", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Self { tmp, file })
    }

    async fn finish(mut self, dest: &Path) -> io::Result<()> {
        self.file.flush().await?;
        drop(self.file);
        if let Err(e) = tokio::fs::rename(&self.tmp, dest).await {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(e);
        }
        Ok(())
    }

    async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(e.status(), format!("malformed multipart body: {}", e.body_text()))
}

/// Streams one multipart field into `dest` (creating parent directories).
async fn receive_field(field: &mut axum::extract::multipart::Field<'_>, dest: &Path, shown: &str) -> ApiResult<()> {
    if tokio::fs::metadata(dest).await.is_ok_and(|m| m.is_dir()) {
        return Err(ApiError::bad_request(format!("{shown} is a directory")).with_code("INVALID_FILE_PATH"));
    }
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let mut incoming = Incoming::create(parent).await.map_err(|e| ApiError::io(shown, &e))?;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if let Err(e) = incoming.file.write_all(&chunk).await {
                    incoming.abort().await;
                    return Err(ApiError::io(shown, &e));
                }
            }
            Ok(None) => break,
            Err(e) => {
                incoming.abort().await;
                return Err(multipart_error(e));
            }
        }
    }
    incoming.finish(dest).await.map_err(|e| ApiError::io(shown, &e))
}

async fn upload(
    State(d): State<AppState>,
    ApiQuery(q): ApiQuery<PathQuery>,
    mut mp: Multipart,
) -> ApiResult<StatusCode> {
    nonempty("path", &q.path)?;
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
fn indexed_field(name: &str) -> Option<(usize, &str)> {
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
                    nonempty("files[].path", &path)?;
                    if let Some(tmp) = parked.remove(&index) {
                        let dest = d.resolve(&path);
                        if let Some(parent) = dest.parent() {
                            tokio::fs::create_dir_all(parent).await.map_err(|e| ApiError::io(&path, &e))?;
                        }
                        move_path(&tmp, &dest).await.map_err(|e| ApiError::io(&path, &e))?;
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

/// Rename, or copy and delete across file systems.
async fn move_path(from: &Path, to: &Path) -> io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let (from, to) = (from.to_path_buf(), to.to_path_buf());
            tokio::task::spawn_blocking(move || {
                copy_recursive(&from, &to)?;
                if from.is_dir() { std::fs::remove_dir_all(&from) } else { std::fs::remove_file(&from) }
            })
            .await
            .map_err(io::Error::other)?
        }
        r => r,
    }
}

fn copy_recursive(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        std::fs::set_permissions(to, meta.permissions())?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_recursive(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

#[derive(Debug, Deserialize)]
struct BulkDownloadRequest {
    paths: Vec<String>,
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
        let file = tokio::fs::File::open(d.resolve(requested)).await.map_err(|e| ApiError::io(requested, &e))?;
        let meta = file.metadata().await.map_err(|e| ApiError::io(requested, &e))?;
        if meta.is_dir() {
            return Err(ApiError::bad_request(format!("{requested} is a directory")).with_code("INVALID_FILE_PATH"));
        }
        Ok((file, meta.len()))
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

fn parse_mode(mode: &str) -> ApiResult<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ApiError::bad_request(format!("invalid mode {mode:?}: use octal like 755")))
}

#[derive(Debug, Deserialize)]
struct FolderQuery {
    path: String,
    #[serde(default)]
    mode: Option<String>,
}

async fn create_folder(State(d): State<AppState>, ApiQuery(q): ApiQuery<FolderQuery>) -> ApiResult<StatusCode> {
    nonempty("path", &q.path)?;
    let mode = parse_mode(q.mode.as_deref().filter(|m| !m.is_empty()).unwrap_or("755"))?;
    let dir = d.resolve(&q.path);
    let shown = q.path.clone();
    blocking(move || {
        if dir.is_file() {
            return Err(ApiError::conflict(format!("{shown} exists and is a file")));
        }
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::io(&shown, &e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(|e| ApiError::io(&shown, &e))
    })
    .await?;
    Ok(StatusCode::CREATED)
}

#[derive(Debug, Deserialize)]
struct MoveQuery {
    source: String,
    destination: String,
}

async fn move_files(State(d): State<AppState>, ApiQuery(q): ApiQuery<MoveQuery>) -> ApiResult<StatusCode> {
    nonempty("source", &q.source)?;
    nonempty("destination", &q.destination)?;
    let (from, to) = (d.resolve(&q.source), d.resolve(&q.destination));
    tokio::fs::symlink_metadata(&from).await.map_err(|e| ApiError::io(&q.source, &e))?;
    if tokio::fs::symlink_metadata(&to).await.is_ok() {
        return Err(ApiError::conflict(format!("{} already exists", q.destination)));
    }
    if to.starts_with(&from) {
        return Err(ApiError::bad_request("cannot move a directory into itself"));
    }
    move_path(&from, &to).await.map_err(|e| ApiError::io(&q.destination, &e))?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct PermissionsQuery {
    path: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

async fn set_permissions(State(d): State<AppState>, ApiQuery(q): ApiQuery<PermissionsQuery>) -> ApiResult<StatusCode> {
    nonempty("path", &q.path)?;
    let path = d.resolve(&q.path);
    let mode = q.mode.as_deref().filter(|m| !m.is_empty()).map(parse_mode).transpose()?;
    let uid = match q.owner.as_deref().filter(|o| !o.is_empty()) {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(n) => nix::unistd::Uid::from_raw(n),
            Err(_) => nix::unistd::User::from_name(o)
                .ok()
                .flatten()
                .map(|u| u.uid)
                .ok_or_else(|| ApiError::bad_request(format!("unknown user {o:?}")))?,
        }),
    };
    let gid = match q.group.as_deref().filter(|g| !g.is_empty()) {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .ok_or_else(|| ApiError::bad_request(format!("unknown group {g:?}")))?,
        }),
    };
    let shown = q.path.clone();
    blocking(move || {
        std::fs::metadata(&path).map_err(|e| ApiError::io(&shown, &e))?;
        if let Some(m) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))
                .map_err(|e| ApiError::io(&shown, &e))?;
        }
        if uid.is_some() || gid.is_some() {
            nix::unistd::chown(&path, uid, gid).map_err(|e| ApiError::io(&shown, &io::Error::from(e)))?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    path: String,
    #[serde(default)]
    recursive: Option<bool>,
}

async fn delete(State(d): State<AppState>, ApiQuery(q): ApiQuery<DeleteQuery>) -> ApiResult<StatusCode> {
    nonempty("path", &q.path)?;
    let path = d.resolve(&q.path);
    if path == Path::new("/") {
        return Err(ApiError::bad_request("refusing to delete /"));
    }
    let recursive = q.recursive.unwrap_or(false);
    let shown = q.path.clone();
    blocking(move || {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| ApiError::io(&shown, &e))?;
        let r = if !meta.is_dir() {
            std::fs::remove_file(&path)
        } else if recursive {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_dir(&path)
        };
        r.map_err(|e| ApiError::io(&shown, &e))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct PatternQuery {
    path: String,
    pattern: String,
}

#[derive(Debug, Serialize)]
struct Match {
    file: String,
    line: usize,
    content: String,
}

fn is_binary(path: &Path) -> bool {
    let mut head = [0u8; 8192];
    match std::fs::File::open(path).and_then(|mut f| io::Read::read(&mut f, &mut head)) {
        Ok(n) => head.get(..n).unwrap_or_default().contains(&0),
        Err(_) => true,
    }
}

fn walk(root: &Path) -> impl Iterator<Item = walkdir::DirEntry> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git")
        .filter_map(Result::ok)
}

async fn find(State(d): State<AppState>, ApiQuery(q): ApiQuery<PatternQuery>) -> ApiResult<Json<Vec<Match>>> {
    nonempty("path", &q.path)?;
    if q.pattern.is_empty() {
        return Err(ApiError::bad_request("pattern must not be empty"));
    }
    let re = regex::Regex::new(&q.pattern).or_else(|_| regex::Regex::new(&regex::escape(&q.pattern)));
    let re = re.map_err(|e| ApiError::bad_request(format!("invalid pattern: {e}")))?;
    let root = d.resolve(&q.path);
    let shown = q.path.clone();
    let matches = blocking(move || {
        std::fs::metadata(&root).map_err(|e| ApiError::io(&shown, &e))?;
        let mut out = Vec::new();
        for entry in walk(&root) {
            if !entry.file_type().is_file() || entry.metadata().map(|m| m.len() > MAX_TEXT_FILE).unwrap_or(true) {
                continue;
            }
            if is_binary(entry.path()) {
                continue;
            }
            let Ok(data) = std::fs::read(entry.path()) else { continue };
            let text = String::from_utf8_lossy(&data);
            for (i, line) in text.lines().enumerate() {
                if re.is_match(line) {
                    out.push(Match {
                        file: entry.path().to_string_lossy().into_owned(),
                        line: i + 1,
                        content: line.to_owned(),
                    });
                    if out.len() >= MAX_RESULTS {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(matches))
}

#[derive(Debug, Serialize)]
struct SearchResponse {
    files: Vec<String>,
}

async fn search(State(d): State<AppState>, ApiQuery(q): ApiQuery<PatternQuery>) -> ApiResult<Json<SearchResponse>> {
    nonempty("path", &q.path)?;
    let glob = globset::GlobBuilder::new(&q.pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| ApiError::bad_request(format!("invalid glob pattern: {e}")))?
        .compile_matcher();
    let by_path = q.pattern.contains('/');
    let root = d.resolve(&q.path);
    let shown = q.path.clone();
    let files = blocking(move || {
        std::fs::metadata(&root).map_err(|e| ApiError::io(&shown, &e))?;
        let mut out = Vec::new();
        for entry in walk(&root).filter(|e| e.depth() > 0) {
            let hit = if by_path {
                entry.path().strip_prefix(&root).is_ok_and(|rel| glob.is_match(rel))
            } else {
                glob.is_match(entry.file_name())
            };
            if hit {
                out.push(entry.path().to_string_lossy().into_owned());
                if out.len() >= MAX_RESULTS {
                    break;
                }
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(SearchResponse { files }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplaceRequest {
    files: Vec<String>,
    pattern: String,
    new_value: String,
}

#[derive(Debug, Serialize)]
struct ReplaceResult {
    file: String,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn replace_in(path: &Path, pattern: &str, new_value: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_TEXT_FILE {
        return Err(format!("file larger than {MAX_TEXT_FILE} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let replaced = text.replace(pattern, new_value);
    if replaced == text {
        return Ok(());
    }
    let tmp = path.with_file_name(format!(".sandbar-replace-{}", uuid::Uuid::new_v4().simple()));
    let written = std::fs::write(&tmp, replaced)
        .and_then(|()| std::fs::set_permissions(&tmp, meta.permissions()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.to_string());
    }
    Ok(())
}

async fn replace(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<ReplaceRequest>,
) -> ApiResult<Json<Vec<ReplaceResult>>> {
    if req.pattern.is_empty() {
        return Err(ApiError::bad_request("pattern must not be empty"));
    }
    let files: Vec<(String, PathBuf)> = req.files.into_iter().map(|f| (f.clone(), d.resolve(&f))).collect();
    let (pattern, new_value) = (req.pattern, req.new_value);
    let results = blocking(move || {
        Ok(files
            .into_iter()
            .map(|(shown, path)| match replace_in(&path, &pattern, &new_value) {
                Ok(()) => ReplaceResult { file: shown, success: true, error: None },
                Err(e) => ReplaceResult { file: shown, success: false, error: Some(e) },
            })
            .collect())
    })
    .await?;
    Ok(Json(results))
}
