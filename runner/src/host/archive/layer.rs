//! A sandbox's own layer: the upper directory of its container, as a tar stream and back.
//!
//! The stream is an OCI-style layer diff: paths relative to the container's `/`, owners as the container sees them,
//! a deletion as an empty `dir/.wh.NAME` and a directory that hides what the image had below it (rm -rf, then
//! mkdir again) as `dir/.wh..wh..opq`, extended attributes as PAX `SCHILY.xattr.*` records, a second name of a hard
//! link as a link entry to the first, and symlinks, fifos and devices as themselves. Entries come parents first.
//!
//! On disk the upper directory speaks the storage driver's dialect, which [`write_layer`] reads and [`apply_layer`]
//! writes:
//! - **deletions**: fuse-overlayfs (and the kernel's overlay) mark one with a character device 0/0 where it may
//!   `mknod` (it runs as root under Docker, so this host's upper dirs have those), else with a `.wh.NAME` file; both
//!   are read, and a deletion is written back as the device (a `.wh.` file where `mknod` is refused). fuse-overlayfs
//!   honours either when it mounts.
//! - **opaque directories**: the `trusted.overlay.opaque`, `user.overlay.opaque` or `user.fuseoverlayfs.opaque`
//!   attribute set to `y`, or a `.wh..wh..opq` file inside; written back as `trusted.overlay.opaque=y`. These
//!   attributes are the driver's bookkeeping and never go into the stream as attributes.
//! - **owners** are host ids: with `userns-remap`, container uid `n` is host uid `base + n` for the 65536 ids of the
//!   remap range ([`IdMap`]). An id outside the range (the container could not have made it) becomes 65534, as the
//!   kernel shows it inside.
//!
//! Applying refuses paths that leave the directory (absolute, `..`) and never follows a symlink of the layer on
//! the way to an entry: every parent is checked to be a real directory first, so a layer cannot write outside the
//! container's upper directory whoever wrote it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// The prefix of a deletion's name in the stream (and of the driver's file form).
const WHITEOUT_PREFIX: &str = ".wh.";
/// The name that marks its directory opaque.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The attributes drivers mark an opaque directory with.
const OPAQUE_XATTRS: [&str; 3] = ["trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque"];
/// Attributes that are the driver's bookkeeping, not the sandbox's.
const DRIVER_XATTR_PREFIXES: [&str; 3] = ["trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."];
const PAX_XATTR: &str = "SCHILY.xattr.";
/// Ids in a user namespace range, and what an id outside it shows as.
const RANGE: u32 = 65536;
const OVERFLOW_ID: u32 = 65534;

/// How a container's ids map to the host's: container id `n` is host id `uid + n` (`gid + n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct IdMap {
    pub uid: u32,
    pub gid: u32,
}

impl IdMap {
    /// The map Docker uses, from its root dir: with `userns-remap` it is `<root>/<uid>.<gid>`.
    pub(crate) fn from_docker_root(root: &str) -> Self {
        let last = root.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        match last.split_once('.').map(|(u, g)| (u.parse(), g.parse())) {
            Some((Ok(uid), Ok(gid))) => Self { uid, gid },
            _ => Self::default(),
        }
    }

    fn down(base: u32, host: u32) -> u32 {
        host.checked_sub(base).filter(|n| *n < RANGE).unwrap_or(OVERFLOW_ID)
    }

    fn up(base: u32, container: u64) -> io::Result<u32> {
        u32::try_from(container)
            .ok()
            .filter(|n| *n < RANGE)
            .and_then(|n| base.checked_add(n))
            .ok_or_else(|| invalid(format!("owner id {container} is outside the container's range")))
    }
}

/// What a layer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerStats {
    pub entries: u64,
    /// Bytes of regular files' contents.
    pub file_bytes: u64,
    pub whiteouts: u64,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn xattr_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        // A file system without attributes has none to keep.
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len];
    let got = rustix::fs::llistxattr(path, &mut buf[..])?;
    buf.truncate(got);
    Ok(buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect())
}

fn xattr_value(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = OsStr::from_bytes(name);
    let len = match rustix::fs::lgetxattr_query(path, name) {
        Ok(n) => n,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; len];
    let got = rustix::fs::lgetxattr(path, name, &mut buf[..])?;
    buf.truncate(got);
    Ok(Some(buf))
}

fn is_driver_xattr(name: &[u8]) -> bool {
    DRIVER_XATTR_PREFIXES.iter().any(|p| name.starts_with(p.as_bytes()))
}

/// Extended attributes as PAX records: `SCHILY.xattr.NAME` and the value.
type PaxXattrs = Vec<(String, Vec<u8>)>;

/// The sandbox's own attributes of `path` (the driver's left out), and whether the driver marks it opaque.
fn read_xattrs(path: &Path) -> io::Result<(PaxXattrs, bool)> {
    let mut kept = Vec::new();
    let mut opaque = false;
    for name in xattr_names(path)? {
        let Some(value) = xattr_value(path, &name)? else { continue };
        if is_driver_xattr(&name) {
            opaque |= OPAQUE_XATTRS.iter().any(|o| o.as_bytes() == name.as_slice()) && value == b"y";
            continue;
        }
        // PAX keys are UTF-8; Linux attribute names in practice are ASCII.
        let Ok(name) = String::from_utf8(name) else { continue };
        kept.push((format!("{PAX_XATTR}{name}"), value));
    }
    Ok((kept, opaque))
}

/// Writes the layer of the upper directory `upper` (host ids mapped by `ids`) to `out` as a tar stream.
pub(crate) fn write_layer<W: Write>(upper: &Path, ids: IdMap, out: W) -> io::Result<(W, LayerStats)> {
    let mut tar = tar::Builder::new(out);
    let mut stats = LayerStats::default();
    // The first path of each multiply linked inode.
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walk = walkdir::WalkDir::new(upper).min_depth(1).follow_links(false).sort_by_file_name();
    for entry in walk {
        let entry = entry.map_err(io::Error::other)?;
        let path = entry.path();
        let rel = path.strip_prefix(upper).map_err(io::Error::other)?.to_path_buf();
        let meta = fs::symlink_metadata(path)?;
        let ft = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(IdMap::down(ids.uid, meta.uid())));
        header.set_gid(u64::from(IdMap::down(ids.gid, meta.gid())));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        header.set_size(0);
        stats.entries += 1;

        if ft.is_char_device() && meta.rdev() == 0 {
            // The driver's deletion mark.
            let name = rel.file_name().unwrap_or_default();
            let mut wh = OsStr::new(WHITEOUT_PREFIX).to_os_string();
            wh.push(name);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o600);
            header.set_size(0);
            tar.append_data(&mut header, rel.with_file_name(wh), io::empty())?;
            stats.whiteouts += 1;
            continue;
        }
        let is_marker = rel.file_name().is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()));
        let (xattrs, opaque) = if is_marker { (Vec::new(), false) } else { read_xattrs(path)? };
        if !xattrs.is_empty() {
            tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut header, &rel, io::empty())?;
            if opaque {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o600);
                header.set_size(0);
                tar.append_data(&mut header, rel.join(OPAQUE_MARKER), io::empty())?;
                stats.entries += 1;
            }
        } else if ft.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut header, &rel, fs::read_link(path)?)?;
        } else if ft.is_file() {
            if is_marker && rel.file_name().is_some_and(|n| n != OPAQUE_MARKER) {
                stats.whiteouts += 1;
            }
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    header.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut header, &rel, first)?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), rel.clone());
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(path)?;
            // A file that changed size under us would corrupt the stream: the header's size is what is read.
            tar.append_data(&mut header, &rel, file.take(meta.len()))?;
            stats.file_bytes += meta.len();
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let dev = meta.rdev();
            header.set_device_major(rustix::fs::major(dev))?;
            header.set_device_minor(rustix::fs::minor(dev))?;
            tar.append_data(&mut header, &rel, io::empty())?;
        } else {
            // Sockets: only meaningful to a process that is gone.
            stats.entries -= 1;
        }
    }
    let out = tar.into_inner()?;
    Ok((out, stats))
}

/// A path of the stream, checked to stay inside the directory.
fn clean_path(raw: &[u8]) -> io::Result<PathBuf> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return Err(invalid(format!("layer path {path:?} leaves the directory"))),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(invalid("layer entry without a path".into()));
    }
    Ok(clean)
}

/// Applies a layer stream to an upper directory; see [`Applier`].
pub(crate) fn apply_layer<R: Read>(input: R, upper: &Path, ids: IdMap) -> io::Result<LayerStats> {
    let mut applier = Applier { upper: upper.to_path_buf(), ids, dirs: HashSet::new(), dir_times: Vec::new() };
    let mut archive = tar::Archive::new(input);
    let mut stats = LayerStats::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        applier.entry(&mut entry, &mut stats)?;
    }
    // Directory times last: creating their children changed them.
    for (path, mtime) in applier.dir_times.iter().rev() {
        set_mtime(path, *mtime)?;
    }
    Ok(stats)
}

/// Writes entries into an upper directory, never through a symlink.
struct Applier {
    upper: PathBuf,
    ids: IdMap,
    /// Directories (relative) known to be real directories.
    dirs: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, i64)>,
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
    rustix::fs::utimensat(CWD, path, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Removes whatever is at `path` (not following a symlink), so an entry replaces it.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Applier {
    /// Makes sure every parent of `rel` is a real directory (made, owned by the container's root, when missing).
    fn parents(&mut self, rel: &Path) -> io::Result<()> {
        let mut at = PathBuf::new();
        let Some(parent) = rel.parent() else { return Ok(()) };
        for part in parent.components() {
            at.push(part);
            if self.dirs.contains(&at) {
                continue;
            }
            let full = self.upper.join(&at);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(invalid(format!("layer path {rel:?} goes through {at:?}, which is no directory"))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&full)?;
                    std::os::unix::fs::lchown(&full, Some(self.ids.uid), Some(self.ids.gid))?;
                }
                Err(e) => return Err(e),
            }
            self.dirs.insert(at.clone());
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, stats: &mut LayerStats) -> io::Result<()> {
        let rel = clean_path(&entry.path_bytes())?;
        self.parents(&rel)?;
        let full = self.upper.join(&rel);
        let name = rel.file_name().unwrap_or_default().as_bytes().to_vec();
        stats.entries += 1;
        if name == OPAQUE_MARKER.as_bytes() {
            let dir = full.parent().unwrap_or(&self.upper);
            rustix::fs::lsetxattr(dir, OPAQUE_XATTRS[0], b"y", XattrFlags::empty())?;
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let target = full.with_file_name(OsStr::from_bytes(hidden));
            clear(&target)?;
            let device = rustix::fs::mknodat(CWD, &target, FileType::CharacterDevice, Mode::empty(), 0);
            if device.is_err() {
                // Where mknod is refused, the driver's other form.
                clear(&full)?;
                File::create(&full)?;
            }
            stats.whiteouts += 1;
            return Ok(());
        }
        let header = entry.header().clone();
        let mode = header.mode()? & 0o7777;
        let uid = IdMap::up(self.ids.uid, header.uid()?)?;
        let gid = IdMap::up(self.ids.gid, header.gid()?)?;
        let mtime = i64::try_from(header.mtime()?).unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Ok(key) = ext.key()
                    && let Some(attr) = key.strip_prefix(PAX_XATTR)
                    && !is_driver_xattr(attr.as_bytes())
                {
                    xattrs.push((attr.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        clear(&full)?;
                        fs::create_dir(&full)?;
                    }
                    Err(_) => fs::create_dir(&full)?,
                }
                self.dirs.insert(rel.clone());
                self.dir_times.push((full.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&full)?;
                let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&full)?;
                stats.file_bytes += io::copy(entry, &mut file)?;
            }
            tar::EntryType::Symlink => {
                let target = header.link_name()?.ok_or_else(|| invalid(format!("symlink {rel:?} without target")))?;
                clear(&full)?;
                std::os::unix::fs::symlink(target, &full)?;
            }
            tar::EntryType::Link => {
                let first = header.link_name_bytes().ok_or_else(|| invalid(format!("link {rel:?} without target")))?;
                let first = clean_path(&first)?;
                self.parents(&first)?;
                clear(&full)?;
                fs::hard_link(self.upper.join(first), &full)?;
                // The first name carries the owner, mode and attributes.
                return Ok(());
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let ft = match kind {
                    tar::EntryType::Fifo => FileType::Fifo,
                    tar::EntryType::Char => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let dev = rustix::fs::makedev(header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0));
                clear(&full)?;
                rustix::fs::mknodat(CWD, &full, ft, Mode::from_raw_mode(mode), dev)?;
            }
            other => return Err(invalid(format!("layer entry {rel:?} of unsupported type {other:?}"))),
        }
        std::os::unix::fs::lchown(&full, Some(uid), Some(gid))?;
        for (name, value) in &xattrs {
            rustix::fs::lsetxattr(&full, name.as_str(), value, XattrFlags::empty())?;
        }
        if kind != tar::EntryType::Symlink {
            // After the owner: chown clears set-id bits.
            fs::set_permissions(&full, fs::Permissions::from_mode(mode))?;
        }
        if kind != tar::EntryType::Directory {
            set_mtime(&full, mtime)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_from_dockers_root() {
        assert_eq!(IdMap::from_docker_root("/var/lib/docker/100000.100000"), IdMap { uid: 100000, gid: 100000 });
        assert_eq!(IdMap::from_docker_root("/var/lib/docker/"), IdMap::default());
        assert_eq!(IdMap::down(100000, 101000), 1000);
        assert_eq!(IdMap::down(100000, 0), OVERFLOW_ID);
        assert_eq!(IdMap::up(100000, 1000).ok(), Some(101000));
        assert!(IdMap::up(100000, 70000).is_err());
    }

    /// One line per entry of an upper dir, in the container's ids, deletions and opaque marks in either of the
    /// driver's forms read alike: what must survive a layer's round trip.
    pub(crate) fn manifest(upper: &Path, ids: IdMap) -> Vec<String> {
        use sha2::{Digest, Sha256};
        let mut lines = Vec::new();
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        for e in walkdir::WalkDir::new(upper).min_depth(1).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(upper).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let ft = m.file_type();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == OPAQUE_MARKER {
                lines.push(format!("{} opaque", rel.trim_end_matches(OPAQUE_MARKER).trim_end_matches('/')));
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                lines.push(format!("{} whiteout", Path::new(&rel).with_file_name(hidden).display()));
                continue;
            }
            if ft.is_char_device() && m.rdev() == 0 {
                lines.push(format!("{rel} whiteout"));
                continue;
            }
            let (xattrs, opaque) = read_xattrs(e.path()).unwrap();
            if opaque {
                lines.push(format!("{rel} opaque"));
            }
            let what = if ft.is_dir() {
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("symlink -> {}", fs::read_link(e.path()).unwrap().display())
            } else if ft.is_file() {
                let first = inodes.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone());
                let hash = Sha256::digest(fs::read(e.path()).unwrap());
                format!("file {} {:x} first-name {first}", m.len(), hash)
            } else if ft.is_fifo() {
                "fifo".to_owned()
            } else {
                format!("dev {}:{}", rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()))
            };
            let mode = if ft.is_symlink() { 0 } else { m.mode() & 0o7777 };
            let mtime = if ft.is_dir() || ft.is_symlink() { 0 } else { m.mtime() };
            lines.push(format!(
                "{rel} {what} mode {mode:o} owner {}:{} mtime {mtime} xattrs {xattrs:?}",
                IdMap::down(ids.uid, m.uid()),
                IdMap::down(ids.gid, m.gid()),
            ));
        }
        lines.sort();
        lines
    }

    /// An upper dir with every kind of change, in both of the driver's deletion forms; host ids `base + n`.
    fn fill_upper(dir: &Path, ids: IdMap) {
        let p = |rel: &str| dir.join(rel);
        let own = |rel: &str, uid: u32, gid: u32| {
            std::os::unix::fs::lchown(p(rel), Some(ids.uid + uid), Some(ids.gid + gid)).unwrap()
        };
        fs::create_dir_all(p("home/user/deep/er")).unwrap();
        fs::write(p("home/user/notes.txt"), "hello\n").unwrap();
        fs::write(p("home/user/deep/er/big.bin"), (0..300_000u32).flat_map(u32::to_le_bytes).collect::<Vec<_>>())
            .unwrap();
        fs::set_permissions(p("home/user/notes.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        own("home/user", 1000, 1000);
        own("home/user/notes.txt", 1000, 1001);
        own("home/user/deep/er/big.bin", 4321, 8765);
        fs::write(p("home/user/suid"), "#!/bin/sh\n").unwrap();
        own("home/user/suid", 0, 0);
        fs::set_permissions(p("home/user/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(p("home/user/notes.txt"), p("home/user/deep/hard")).unwrap();
        std::os::unix::fs::symlink("../notes.txt", p("home/user/deep/sym")).unwrap();
        std::os::unix::fs::symlink("/nowhere/at/all", p("home/user/dangling")).unwrap();
        own("home/user/dangling", 1000, 1000);
        rustix::fs::lsetxattr(p("home/user/notes.txt"), "user.origin", b"tests\0bin", XattrFlags::empty()).unwrap();
        rustix::fs::lsetxattr(p("home/user"), "trusted.sandbox", b"kept", XattrFlags::empty()).unwrap();
        rustix::fs::mknodat(CWD, p("home/user/fifo"), FileType::Fifo, Mode::from_raw_mode(0o620), 0).unwrap();
        rustix::fs::mknodat(
            CWD,
            p("home/user/null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        // Deletions: a device 0/0 and a `.wh.` file; an opaque directory by attribute and one by marker file.
        fs::create_dir_all(p("etc/apt")).unwrap();
        rustix::fs::mknodat(CWD, p("etc/motd"), FileType::CharacterDevice, Mode::empty(), 0).unwrap();
        fs::write(p("etc/.wh.issue"), "").unwrap();
        fs::create_dir(p("opt")).unwrap();
        rustix::fs::lsetxattr(p("opt"), "trusted.overlay.opaque", b"y", XattrFlags::empty()).unwrap();
        fs::write(p("opt/new"), "x").unwrap();
        fs::create_dir(p("srv")).unwrap();
        fs::write(p("srv/.wh..wh..opq"), "").unwrap();
        // A long name, past ustar's 100 bytes.
        let long = format!("home/user/{}", "n".repeat(180));
        fs::write(p(&long), "long").unwrap();
        let mtime = Timespec { tv_sec: 1_600_000_000, tv_nsec: 0 };
        rustix::fs::utimensat(
            CWD,
            p("home/user/notes.txt"),
            &Timestamps { last_access: mtime, last_modification: mtime },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    #[test]
    fn a_layer_round_trip_keeps_the_tree() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: owners, devices and trusted attributes need root");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let ids = IdMap { uid: 200_000, gid: 300_000 };
        fill_upper(src.path(), ids);
        let (tar, written) = write_layer(src.path(), ids, Vec::new()).unwrap();
        assert_eq!(written.whiteouts, 2);
        assert_eq!(written.file_bytes, 1_200_000 + 6 + 10 + 1 + 4);

        // Into a fresh upper dir with the same map, and with another one (a fork under another runtime).
        for to_ids in [ids, IdMap { uid: 100_000, gid: 100_000 }] {
            let dst = tempfile::tempdir().unwrap();
            let applied = apply_layer(tar.as_slice(), dst.path(), to_ids).unwrap();
            assert_eq!(applied.entries, written.entries);
            assert_eq!(manifest(dst.path(), to_ids), manifest(src.path(), ids));
            // Deletions written back in the driver's device form.
            let motd = fs::symlink_metadata(dst.path().join("etc/issue")).unwrap();
            assert!(motd.file_type().is_char_device() && motd.rdev() == 0);
            // The driver's own attributes are not the sandbox's: none went into the stream.
            assert!(!manifest(dst.path(), to_ids).iter().any(|l| l.contains("overlay.opaque")));
        }
    }

    #[test]
    fn a_layer_cannot_write_through_its_own_symlinks() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: applying sets owners, which needs root");
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        tar.append_link(&mut h, "escape", outside.path()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(3);
        tar.append_data(&mut h, "escape/owned", &b"bad"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = apply_layer(tar.as_slice(), dst.path(), IdMap::default()).unwrap_err();
        assert!(err.to_string().contains("no directory"), "{err}");
        assert!(!outside.path().join("owned").exists());
    }

    #[test]
    fn paths_stay_inside() {
        assert_eq!(clean_path(b"./a/b").ok(), Some(PathBuf::from("a/b")));
        for bad in [&b"/etc/passwd"[..], b"a/../../x", b"..", b""] {
            assert!(clean_path(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
