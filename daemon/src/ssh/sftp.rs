//! The `sftp` subsystem (SFTP v3, what OpenSSH's `sftp` and `scp` speak) over russh-sftp.
//!
//! Relative paths are taken from the sandbox user's home, like OpenSSH's sftp-server. File I/O uses positional
//! reads and writes on `std::fs::File` directly in the subsystem's task: requests are served one at a time anyway,
//! and a page-cache read or write of at most 256 KiB costs less than handing it to the blocking pool.
//! Paths must be UTF-8 (russh-sftp's types are `String`s); others are answered with an error, never mangled.

use std::collections::HashMap;
use std::fs::{File, ReadDir};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use russh::Channel;
use russh::server::Msg;
use russh_sftp::protocol::{
    Attrs, Data, File as SftpFile, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use crate::AppState;

/// Open handles per session.
const MAX_HANDLES: usize = 1024;
/// Largest read answered at once (OpenSSH asks for 32 KiB, or what `limits@openssh.com` allows).
const MAX_READ: u32 = 256 * 1024;
/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 128;
const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// Runs the SFTP server on the channel (in its own task) until the client closes it.
pub fn serve(channel: Channel<Msg>, d: AppState, handle: russh::server::Handle) {
    let home = d.home.clone();
    let cfg = russh_sftp::server::Config { max_client_packet_len: 512 * 1024 };
    let id = channel.id();
    // Like sshd when sftp-server exits: exit-status 0 and EOF once the client is done (OpenSSH's scp fails a
    // transfer whose subsystem ends without an exit status).
    let exit = Box::pin(async move {
        let _ = handle.exit_status_request(id, 0).await;
        let _ = handle.eof(id).await;
    });
    let stream = EndingStream { inner: channel.into_stream(), exit: Some(exit), eof: false };
    tokio::spawn(russh_sftp::server::run_with_config(stream, Sftp::new(home), cfg));
}

type ExitFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The channel as a byte stream that, when the client's EOF is read, first queues the exit status (before the
/// close that dropping the stream sends).
struct EndingStream {
    inner: russh::ChannelStream<Msg>,
    exit: Option<ExitFuture>,
    eof: bool,
}

impl tokio::io::AsyncRead for EndingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if !self.eof {
            let before = buf.filled().len();
            match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => self.eof = true,
                other => return other,
            }
        }
        if let Some(exit) = self.exit.as_mut() {
            if exit.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.exit = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for EndingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Open {
    File(File),
    Dir { dir: ReadDir, path: PathBuf },
}

pub struct Sftp {
    home: PathBuf,
    handles: HashMap<String, Open>,
    next: u64,
}

fn status(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "Ok".into(), language_tag: "en-US".into() }
}

fn io_error(e: std::io::Error) -> StatusReply {
    use std::io::ErrorKind;
    let code = match e.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

fn bad_handle() -> StatusReply {
    StatusCode::Failure.with_message("invalid handle")
}

/// SFTP attributes of a file, the type bits included (so symlinks show as links in `lstat`).
fn attrs(m: &std::fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(m.len()),
        uid: Some(m.uid()),
        user: None,
        gid: Some(m.gid()),
        group: None,
        permissions: Some(m.mode()),
        atime: Some(u32::try_from(m.atime().max(0)).unwrap_or(u32::MAX)),
        mtime: Some(u32::try_from(m.mtime().max(0)).unwrap_or(u32::MAX)),
    }
}

/// Removes `.` and resolves `..` without touching the disk (for paths that do not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

impl Sftp {
    pub fn new(home: PathBuf) -> Self {
        Self { home, handles: HashMap::new(), next: 0 }
    }

    fn path(&self, p: &str) -> PathBuf {
        if p.is_empty() {
            return self.home.clone();
        }
        let p = Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { self.home.join(p) }
    }

    fn insert(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        Ok(h)
    }

    fn file(&self, handle: &str) -> Result<&File, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(bad_handle()),
        }
    }

    fn rename_strict(&self, old: &str, new: &str) -> Result<(), StatusReply> {
        let (old, new) = (self.path(old), self.path(new));
        // SFTP v3 rename must not replace an existing file (posix-rename is the one that does).
        if std::fs::symlink_metadata(&new).is_ok() {
            return Err(StatusCode::Failure.with_message("the destination exists"));
        }
        std::fs::rename(old, new).map_err(io_error)
    }

    fn set_attrs(&self, path: Option<&Path>, file: Option<&File>, a: &FileAttributes) -> Result<(), StatusReply> {
        use nix::sys::stat::{UtimensatFlags, futimens, utimensat};
        use nix::sys::time::TimeSpec;
        if let Some(size) = a.size {
            match (file, path) {
                (Some(f), _) => f.set_len(size).map_err(io_error)?,
                (None, Some(p)) => {
                    std::fs::OpenOptions::new().write(true).open(p).and_then(|f| f.set_len(size)).map_err(io_error)?
                }
                _ => {}
            }
        }
        if let Some(mode) = a.permissions {
            let perms = std::fs::Permissions::from_mode(mode & 0o7777);
            match (file, path) {
                (Some(f), _) => f.set_permissions(perms).map_err(io_error)?,
                (None, Some(p)) => std::fs::set_permissions(p, perms).map_err(io_error)?,
                _ => {}
            }
        }
        if let (Some(uid), Some(gid)) = (a.uid, a.gid) {
            let (uid, gid) = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
            let r = match (file, path) {
                (Some(f), _) => nix::unistd::fchown(f, uid, gid),
                (None, Some(p)) => nix::unistd::chown(p, uid, gid),
                _ => Ok(()),
            };
            r.map_err(|e| io_error(e.into()))?;
        }
        if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
            let (at, mt) = (TimeSpec::new(i64::from(at), 0), TimeSpec::new(i64::from(mt), 0));
            let r = match (file, path) {
                (Some(f), _) => futimens(f, &at, &mt),
                (None, Some(p)) => utimensat(nix::fcntl::AT_FDCWD, p, &at, &mt, UtimensatFlags::FollowSymlink),
                _ => Ok(()),
            };
            r.map_err(|e| io_error(e.into()))?;
        }
        Ok(())
    }
}

/// Reads an SSH string (u32 length + bytes) from the front of `data`.
fn take_string(data: &mut &[u8]) -> Option<String> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    let s = rest.get(..len)?;
    *data = rest.get(len..)?;
    String::from_utf8(s.to_vec()).ok()
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(&mut self, _version: u32, _extensions: HashMap<String, String>) -> Result<Version, Self::Error> {
        let mut v = Version::new();
        v.extensions.insert(POSIX_RENAME.into(), "1".into());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let mut o = std::fs::OpenOptions::new();
        let create = pflags.contains(OpenFlags::CREATE);
        o.read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .create(create && !pflags.contains(OpenFlags::EXCLUDE))
            .create_new(create && pflags.contains(OpenFlags::EXCLUDE))
            .mode(attrs.permissions.map_or(0o666, |m| m & 0o7777));
        let f = o.open(self.path(&filename)).map_err(io_error)?;
        Ok(Handle { id, handle: self.insert(Open::File(f))? })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.handles.remove(&handle).ok_or_else(bad_handle)?;
        Ok(status(id))
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        let f = self.file(&handle)?;
        let want = usize::try_from(len.min(MAX_READ)).unwrap_or(32 * 1024);
        let mut data = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let Some(buf) = data.get_mut(got..) else { break };
            match f.read_at(buf, offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        if got == 0 && want > 0 {
            return Err(StatusCode::Eof.into());
        }
        data.truncate(got);
        Ok(Data { id, data })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, Self::Error> {
        let f = self.file(&handle)?;
        f.write_all_at(&data, offset).map_err(io_error)?;
        Ok(status(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = std::fs::symlink_metadata(self.path(&path)).map_err(io_error)?;
        Ok(Attrs { id, attrs: attrs(&m) })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = std::fs::metadata(self.path(&path)).map_err(io_error)?;
        Ok(Attrs { id, attrs: attrs(&m) })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let m = match self.handles.get(&handle) {
            Some(Open::File(f)) => f.metadata().map_err(io_error)?,
            Some(Open::Dir { path, .. }) => std::fs::metadata(path).map_err(io_error)?,
            None => return Err(bad_handle()),
        };
        Ok(Attrs { id, attrs: attrs(&m) })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let p = self.path(&path);
        self.set_attrs(Some(&p), None, &attrs)?;
        Ok(status(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let f = self.file(&handle)?;
        self.set_attrs(None, Some(f), &attrs)?;
        Ok(status(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.path(&path);
        let dir = std::fs::read_dir(&path).map_err(io_error)?;
        Ok(Handle { id, handle: self.insert(Open::Dir { dir, path })? })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { dir, path }) = self.handles.get_mut(&handle) else { return Err(bad_handle()) };
        let mut files = Vec::new();
        for entry in dir.by_ref() {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else { continue };
            let Ok(m) = std::fs::symlink_metadata(path.join(&name)) else { continue };
            files.push(SftpFile::new(name, attrs(&m)));
            if files.len() >= DIR_BATCH {
                break;
            }
        }
        if files.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        std::fs::remove_file(self.path(&filename)).map_err(io_error)?;
        Ok(status(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(attrs.permissions.map_or(0o777, |m| m & 0o7777))
            .create(self.path(&path))
            .map_err(io_error)?;
        Ok(status(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        std::fs::remove_dir(self.path(&path)).map_err(io_error)?;
        Ok(status(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(&path);
        let real = std::fs::canonicalize(&p).unwrap_or_else(|_| normalize(&p));
        let real =
            real.into_os_string().into_string().map_err(|_| StatusCode::Failure.with_message("path is not UTF-8"))?;
        Ok(Name { id, files: vec![SftpFile::dummy(real)] })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        self.rename_strict(&oldpath, &newpath)?;
        Ok(status(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = std::fs::read_link(self.path(&path)).map_err(io_error)?;
        let target =
            target.into_os_string().into_string().map_err(|_| StatusCode::Failure.with_message("link is not UTF-8"))?;
        Ok(Name { id, files: vec![SftpFile::dummy(target)] })
    }

    async fn symlink(&mut self, id: u32, linkpath: String, targetpath: String) -> Result<Status, Self::Error> {
        // OpenSSH's client and server put the target first, against the draft's order (see OpenSSH's
        // PROTOCOL file); russh-sftp names the fields by the draft, so the first one is the link's target here.
        let (target, link) = (linkpath, targetpath);
        std::os::unix::fs::symlink(target, self.path(&link)).map_err(io_error)?;
        Ok(status(id))
    }

    async fn extended(&mut self, id: u32, request: String, data: Vec<u8>) -> Result<Packet, Self::Error> {
        if request != POSIX_RENAME {
            return Err(StatusCode::OpUnsupported.into());
        }
        let mut rest = data.as_slice();
        let (Some(old), Some(new)) = (take_string(&mut rest), take_string(&mut rest)) else {
            return Err(StatusCode::BadMessage.into());
        };
        std::fs::rename(self.path(&old), self.path(&new)).map_err(io_error)?;
        Ok(Packet::Status(status(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn reads_ssh_strings() {
        let data = [0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c'];
        let mut rest = &data[..];
        assert_eq!(take_string(&mut rest).as_deref(), Some("a"));
        assert_eq!(take_string(&mut rest).as_deref(), Some("bc"));
        assert_eq!(take_string(&mut rest), None);
    }
}
