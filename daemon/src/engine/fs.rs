//! The file system as the toolbox sees it: list, info, open for download, uploads (`Incoming`: a temporary file
//! next to its destination, renamed into place only when complete), folders, move, permissions, delete, find
//! (content), search (names) and replace. The multipart encodings live in `toolbox::fs`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sandbar_proto::toolbox::{
    DeleteQuery, FileInfo, FolderQuery, Match, MoveQuery, PathQuery, PatternQuery, PermissionsQuery, ReplaceRequest,
    ReplaceResult, SearchResponse,
};
use tokio::io::AsyncWriteExt;

use super::{Daemon, Error, Result};

/// Files larger than this are skipped by `find` and refused by `replace`.
const MAX_TEXT_FILE: u64 = 10 << 20;
const MAX_RESULTS: usize = 10_000;

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
        cached(&mut self.users, uid, || nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
    }

    fn group(&mut self, gid: u32) -> String {
        cached(&mut self.groups, gid, || nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name))
    }
}

/// The name of `id` from `cache`, looked up once; the number itself when it has no name.
fn cached(cache: &mut HashMap<u32, String>, id: u32, lookup: impl FnOnce() -> Option<String>) -> String {
    cache.entry(id).or_insert_with(|| lookup().unwrap_or_else(|| id.to_string())).clone()
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

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal("file operation", e))?
}

pub fn nonempty(name: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.contains('\0') {
        return Err(Error::bad_request(format!("{name} must be a non-empty path")).with_code("INVALID_FILE_PATH"));
    }
    Ok(())
}

/// The entries under `q.path`, `q.depth` levels deep (1 by default), sorted by name.
pub async fn list(d: &Daemon, q: PathQuery) -> Result<Vec<FileInfo>> {
    nonempty("path", &q.path)?;
    let dir = d.resolve(&q.path);
    let depth = q.depth.unwrap_or(1).clamp(1, 64) as usize;
    let shown = q.path.clone();
    let items = blocking(move || {
        let meta = std::fs::metadata(&dir).map_err(|e| Error::io(&shown, &e))?;
        if !meta.is_dir() {
            return Err(Error::bad_request(format!("{shown} is not a directory")).with_code("INVALID_FILE_PATH"));
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
    Ok(items)
}

pub async fn info(d: &Daemon, shown: &str) -> Result<FileInfo> {
    nonempty("path", shown)?;
    let path = d.resolve(shown);
    let meta = tokio::fs::metadata(&path).await.map_err(|e| Error::io(shown, &e))?;
    Ok(file_info(&path, &meta, &mut Names::default()))
}

/// Opens a regular file for reading; returns it with its length.
pub async fn open(d: &Daemon, shown: &str) -> Result<(tokio::fs::File, u64)> {
    nonempty("path", shown)?;
    let file = tokio::fs::File::open(d.resolve(shown)).await.map_err(|e| Error::io(shown, &e))?;
    let meta = file.metadata().await.map_err(|e| Error::io(shown, &e))?;
    if meta.is_dir() {
        return Err(Error::bad_request(format!("{shown} is a directory")).with_code("INVALID_FILE_PATH"));
    }
    Ok((file, meta.len()))
}

/// An upload in progress: a temporary file renamed onto its destination once complete.
pub struct Incoming {
    tmp: PathBuf,
    file: tokio::fs::File,
}

impl Incoming {
    /// Starts an upload to `dest` (shown to the client as `shown`): a directory there is refused.
    pub async fn start(dest: &Path, shown: &str) -> Result<Self> {
        if tokio::fs::metadata(dest).await.is_ok_and(|m| m.is_dir()) {
            return Err(Error::bad_request(format!("{shown} is a directory")).with_code("INVALID_FILE_PATH"));
        }
        let parent = dest.parent().unwrap_or(Path::new("/"));
        Self::create(parent).await.map_err(|e| Error::io(shown, &e))
    }

    async fn create(dest_dir: &Path) -> io::Result<Self> {
        tokio::fs::create_dir_all(dest_dir).await?;
        let tmp = dest_dir.join(format!(".sandbar-upload-{}", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Self { tmp, file })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk).await
    }

    pub async fn finish(mut self, dest: &Path) -> io::Result<()> {
        self.file.flush().await?;
        drop(self.file);
        if let Err(e) = tokio::fs::rename(&self.tmp, dest).await {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(e);
        }
        Ok(())
    }

    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// Rename, or copy and delete across file systems.
pub async fn move_path(from: &Path, to: &Path) -> io::Result<()> {
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

fn parse_mode(mode: &str) -> Result<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::bad_request(format!("invalid mode {mode:?}: use octal like 755")))
}

pub async fn create_folder(d: &Daemon, q: FolderQuery) -> Result<()> {
    nonempty("path", &q.path)?;
    let mode = parse_mode(q.mode.as_deref().filter(|m| !m.is_empty()).unwrap_or("755"))?;
    let dir = d.resolve(&q.path);
    let shown = q.path.clone();
    blocking(move || {
        if dir.is_file() {
            return Err(Error::conflict(format!("{shown} exists and is a file")));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&shown, &e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(&shown, &e))
    })
    .await?;
    Ok(())
}

pub async fn move_files(d: &Daemon, q: MoveQuery) -> Result<()> {
    nonempty("source", &q.source)?;
    nonempty("destination", &q.destination)?;
    let (from, to) = (d.resolve(&q.source), d.resolve(&q.destination));
    tokio::fs::symlink_metadata(&from).await.map_err(|e| Error::io(&q.source, &e))?;
    if tokio::fs::symlink_metadata(&to).await.is_ok() {
        return Err(Error::conflict(format!("{} already exists", q.destination)));
    }
    if to.starts_with(&from) {
        return Err(Error::bad_request("cannot move a directory into itself"));
    }
    move_path(&from, &to).await.map_err(|e| Error::io(&q.destination, &e))?;
    Ok(())
}

/// A user or group given by number or by name (`lookup` finds a name's id); `None` when absent or empty.
fn numeric_or_named(value: Option<&str>, what: &str, lookup: impl FnOnce(&str) -> Option<u32>) -> Result<Option<u32>> {
    let Some(v) = value.filter(|v| !v.is_empty()) else { return Ok(None) };
    match v.parse::<u32>() {
        Ok(n) => Ok(Some(n)),
        Err(_) => lookup(v).map(Some).ok_or_else(|| Error::bad_request(format!("unknown {what} {v:?}"))),
    }
}

pub async fn set_permissions(d: &Daemon, q: PermissionsQuery) -> Result<()> {
    nonempty("path", &q.path)?;
    let path = d.resolve(&q.path);
    let mode = q.mode.as_deref().filter(|m| !m.is_empty()).map(parse_mode).transpose()?;
    let uid = numeric_or_named(q.owner.as_deref(), "user", |o| {
        nix::unistd::User::from_name(o).ok().flatten().map(|u| u.uid.as_raw())
    })?
    .map(nix::unistd::Uid::from_raw);
    let gid = numeric_or_named(q.group.as_deref(), "group", |g| {
        nix::unistd::Group::from_name(g).ok().flatten().map(|g| g.gid.as_raw())
    })?
    .map(nix::unistd::Gid::from_raw);
    let shown = q.path.clone();
    blocking(move || {
        std::fs::metadata(&path).map_err(|e| Error::io(&shown, &e))?;
        if let Some(m) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).map_err(|e| Error::io(&shown, &e))?;
        }
        if uid.is_some() || gid.is_some() {
            nix::unistd::chown(&path, uid, gid).map_err(|e| Error::io(&shown, &io::Error::from(e)))?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

pub async fn delete(d: &Daemon, q: DeleteQuery) -> Result<()> {
    nonempty("path", &q.path)?;
    let path = d.resolve(&q.path);
    if path == Path::new("/") {
        return Err(Error::bad_request("refusing to delete /"));
    }
    let recursive = q.recursive.unwrap_or(false);
    let shown = q.path.clone();
    blocking(move || {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&shown, &e))?;
        let r = if !meta.is_dir() {
            std::fs::remove_file(&path)
        } else if recursive {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_dir(&path)
        };
        r.map_err(|e| Error::io(&shown, &e))
    })
    .await?;
    Ok(())
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
        .filter_map(std::result::Result::ok)
}

/// Lines matching `q.pattern` (a regex, or the literal text when it is not one) in the text files under `q.path`.
pub async fn find(d: &Daemon, q: PatternQuery) -> Result<Vec<Match>> {
    nonempty("path", &q.path)?;
    if q.pattern.is_empty() {
        return Err(Error::bad_request("pattern must not be empty"));
    }
    let re = regex::Regex::new(&q.pattern).or_else(|_| regex::Regex::new(&regex::escape(&q.pattern)));
    let re = re.map_err(|e| Error::bad_request(format!("invalid pattern: {e}")))?;
    let root = d.resolve(&q.path);
    let shown = q.path.clone();
    let matches = blocking(move || {
        std::fs::metadata(&root).map_err(|e| Error::io(&shown, &e))?;
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
    Ok(matches)
}

/// Paths under `q.path` whose name (or, for a pattern with `/`, relative path) matches the glob `q.pattern`.
pub async fn search(d: &Daemon, q: PatternQuery) -> Result<SearchResponse> {
    nonempty("path", &q.path)?;
    let glob = globset::GlobBuilder::new(&q.pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| Error::bad_request(format!("invalid glob pattern: {e}")))?
        .compile_matcher();
    let by_path = q.pattern.contains('/');
    let root = d.resolve(&q.path);
    let shown = q.path.clone();
    let files = blocking(move || {
        std::fs::metadata(&root).map_err(|e| Error::io(&shown, &e))?;
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
    Ok(SearchResponse { files })
}

fn replace_in(path: &Path, pattern: &str, new_value: &str) -> std::result::Result<(), String> {
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

/// Replaces the text `req.pattern` in each file, each file atomically; a failure is reported per file.
pub async fn replace(d: &Daemon, req: ReplaceRequest) -> Result<Vec<ReplaceResult>> {
    if req.pattern.is_empty() {
        return Err(Error::bad_request("pattern must not be empty"));
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
    Ok(results)
}
