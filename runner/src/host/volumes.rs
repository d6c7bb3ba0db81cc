//! Volumes on this host: an organization's named storage that outlives its sandboxes, bind-mounted into the
//! sandboxes that ask for it. Behind [`VolumeDriver`], so another backend (object storage mounted through FUSE,
//! a network file system) can replace the local one without touching containers: a driver makes the data reachable
//! at a host path, removes it, and measures it.
//!
//! [`LocalVolumes`] keeps each volume in `<state_dir>/volumes/<organization>/<volume id>`, so a job can never
//! reach another organization's data whatever id it names. The directories (and subpaths, made on first use) are
//! owned by the host uid and gid the sandbox user (uid 1000 inside) has under Docker's `userns-remap` (the subuid
//! range of `dockremap` + 1000), mode 0775: the default user and root inside (which keeps `DAC_OVERRIDE`) write,
//! other users read. A subpath is walked one directory at a time without following symlinks (a sandbox that
//! mounts the whole volume could plant one to point a later mount at the host), then checked to be inside.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sandbar_proto::runner::{VolumeMount, VolumeUsage};

use crate::config::valid_name;
use crate::error::SandboxError;

/// Why a volume could not be prepared, removed or measured.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The mount asks for something no volume may be (a bad id, path or subpath).
    #[error("volume {0}")]
    Invalid(String),
    /// The host refused (disk full, permissions).
    #[error("volume {what}: {err}")]
    Io { what: String, err: std::io::Error },
    /// The runner has nowhere to keep volumes.
    #[error("this runner keeps no volumes: start it with a state dir (--runner-state-dir)")]
    NoStore,
}

impl From<VolumeError> for SandboxError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Invalid(_) | VolumeError::NoStore => SandboxError::InvalidRequest(e.to_string()),
            VolumeError::Io { .. } => SandboxError::Internal(e.to_string()),
        }
    }
}

/// Where volumes live. Implementations must keep organizations apart and never return a path outside a volume.
pub trait VolumeDriver: Send + Sync + std::fmt::Debug {
    /// Makes the volume (and the mount's subpath in it) if missing; answers the host path to bind-mount.
    fn prepare(&self, org: &str, mount: &VolumeMount) -> Result<PathBuf, VolumeError>;
    /// Deletes the volume's data; a volume that is gone already is success.
    fn remove(&self, org: &str, volume_id: &str) -> Result<(), VolumeError>;
    /// Bytes held by every volume this driver keeps.
    fn usage(&self) -> Result<Vec<VolumeUsage>, VolumeError>;
}

/// Volumes as directories on this host (see the module doc).
#[derive(Debug, Clone)]
pub struct LocalVolumes {
    root: PathBuf,
    /// Host `(uid, gid)` of the sandbox user; `None`: leave ownership alone (not root, tests).
    owner: Option<(u32, u32)>,
}

/// The in-sandbox uid and gid volumes are made for (the default image's `daytona` user).
pub const SANDBOX_UID: u32 = 1000;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |err| VolumeError::Io { what, err }
}

/// The first id of the range `/etc/subuid` (or `/etc/subgid`) gives Docker's `dockremap` user.
fn remap_base(file: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == "dockremap").then_some(())?;
        f.next()?.trim().parse().ok()
    })
}

/// Checks a subpath (segments only, no `.`, `..` or empty ones) and splits it.
fn segments(sub: &str) -> Result<Vec<&str>, VolumeError> {
    let clean = sub.trim_matches('/');
    if clean.is_empty() {
        return Ok(Vec::new());
    }
    if clean.len() > 512
        || clean.chars().any(|c| c.is_control() || c == '\\')
        || clean.split('/').any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(VolumeError::Invalid(format!("subpath {sub:?} is not a plain path inside the volume")));
    }
    Ok(clean.split('/').collect())
}

/// Checks a mount path inside the sandbox: absolute, plain, not `/`, not over the daemon or the kernel's.
pub fn check_mount_path(path: &str) -> Result<(), VolumeError> {
    let bad = |why: &str| Err(VolumeError::Invalid(format!("mount path {path:?}: {why}")));
    let clean = path.trim_end_matches('/');
    if !path.starts_with('/') || clean.is_empty() {
        return bad("must be absolute and not /");
    }
    if clean.chars().any(|c| c.is_control() || matches!(c, ':' | ',')) || clean.len() > 1024 {
        return bad("no control characters, ':' or ','");
    }
    if clean[1..].split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("no '.', '..' or empty segments");
    }
    let covers = |p: &str| p == clean || p.starts_with(&format!("{clean}/"));
    if covers(crate::config::DAEMON_MOUNT_PATH)
        || ["/proc", "/sys", "/dev"].iter().any(|s| covers(s) || clean.starts_with(&format!("{s}/")))
    {
        return bad("would cover the daemon or a kernel file system");
    }
    Ok(())
}

impl LocalVolumes {
    /// Volumes under `root`, owned for the sandbox user as Docker maps it (`userns`: remapped by `dockremap`'s
    /// subordinate ids). Ownership is set only when the runner is root.
    pub fn new(root: PathBuf, userns: bool) -> Self {
        let is_root = nix::unistd::geteuid().is_root();
        let owner = is_root.then(|| {
            if userns {
                let uid = remap_base("/etc/subuid").unwrap_or(100_000);
                let gid = remap_base("/etc/subgid").unwrap_or(100_000);
                (uid + SANDBOX_UID, gid + SANDBOX_UID)
            } else {
                (SANDBOX_UID, SANDBOX_UID)
            }
        });
        Self { root, owner }
    }

    /// The directory of a volume.
    fn dir(&self, org: &str, volume_id: &str) -> Result<PathBuf, VolumeError> {
        for (what, v) in [("organization", org), ("id", volume_id)] {
            if !valid_name(v) {
                return Err(VolumeError::Invalid(format!("{what} {v:?} is not a plain name")));
            }
        }
        Ok(self.root.join(org).join(volume_id))
    }

    /// Makes `dir` (one level) for the sandbox user, or checks that what is there is a real directory.
    fn make_dir(&self, dir: &Path) -> Result<(), VolumeError> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_dir() => return Ok(()),
            Ok(_) => {
                return Err(VolumeError::Invalid(format!(
                    "path {} inside the volume is not a directory (a file or a symlink)",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(dir.display().to_string())(e)),
        }
        let what = dir.display().to_string();
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(what)(e)),
            _ => {}
        }
        // Through a descriptor opened without following a symlink, so a swap after the check changes nothing.
        use std::os::unix::fs::OpenOptionsExt;
        let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_DIRECTORY;
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(dir)
            .map_err(|_| VolumeError::Invalid(format!("path {what} inside the volume is not a directory")))?;
        fd.set_permissions(std::fs::Permissions::from_mode(0o775)).map_err(io(what.clone()))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(io(what))?;
        }
        Ok(())
    }
}

impl VolumeDriver for LocalVolumes {
    fn prepare(&self, org: &str, mount: &VolumeMount) -> Result<PathBuf, VolumeError> {
        check_mount_path(&mount.mount_path)?;
        let dir = self.dir(org, &mount.volume_id)?;
        let parts = segments(mount.subpath.as_deref().unwrap_or(""))?;
        // The store and the organization's folder: the runner's only (a sandbox never sees them).
        for d in [&self.root, &self.root.join(org)] {
            std::fs::create_dir_all(d).map_err(io(d.display().to_string()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).map_err(io(d.display().to_string()))?;
        }
        self.make_dir(&dir)?;
        let mut path = dir.clone();
        for p in parts {
            path.push(p);
            self.make_dir(&path)?;
        }
        // Nothing above followed a symlink; check again where the path really leads.
        let real = std::fs::canonicalize(&path).map_err(io(path.display().to_string()))?;
        let base = std::fs::canonicalize(&dir).map_err(io(dir.display().to_string()))?;
        if !real.starts_with(&base) {
            return Err(VolumeError::Invalid(format!("subpath of volume {} leads outside it", mount.volume_id)));
        }
        Ok(real)
    }

    fn remove(&self, org: &str, volume_id: &str) -> Result<(), VolumeError> {
        let dir = self.dir(org, volume_id)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir.display().to_string())(e)),
            _ => Ok(()),
        }
    }

    fn usage(&self) -> Result<Vec<VolumeUsage>, VolumeError> {
        let mut out = Vec::new();
        let Ok(orgs) = std::fs::read_dir(&self.root) else { return Ok(out) };
        for org in orgs.flatten() {
            let Ok(vols) = std::fs::read_dir(org.path()) else { continue };
            for vol in vols.flatten() {
                let id = vol.file_name().to_string_lossy().into_owned();
                out.push(VolumeUsage { volume_id: id, bytes: tree_bytes(&vol.path()) });
            }
        }
        out.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        Ok(out)
    }
}

/// Bytes of the files under `dir` (allocated blocks, so sparse files count for what they hold), symlinks not
/// followed, one device only.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return 0 };
    let dev = top.dev();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if m.dev() != dev {
                continue;
            }
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.file_type().is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Measures the volumes every `every` into `cache` (read by the heartbeat), until the runner is dropped.
pub(super) async fn measure(
    driver: Arc<dyn VolumeDriver>,
    cache: std::sync::Weak<std::sync::Mutex<Vec<VolumeUsage>>>,
    every: Duration,
) {
    loop {
        let d = driver.clone();
        match tokio::task::spawn_blocking(move || d.usage()).await {
            Ok(Ok(usage)) => {
                let Some(cache) = cache.upgrade() else { return };
                *sandbar_support::sync::lock(&cache) = usage;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot measure volumes"),
            Err(e) => tracing::warn!(error = %e, "volume measuring task failed"),
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: &str, sub: Option<&str>) -> VolumeMount {
        VolumeMount { volume_id: id.into(), mount_path: "/data".into(), subpath: sub.map(str::to_owned) }
    }

    #[test]
    fn subpaths_stay_inside_and_symlinks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let v = LocalVolumes { root: tmp.path().join("volumes"), owner: None };
        let whole = v.prepare("org1", &mount("v1", None)).unwrap();
        assert!(whole.ends_with("org1/v1") && whole.is_dir());
        let sub = v.prepare("org1", &mount("v1", Some("a/b/"))).unwrap();
        assert!(sub.ends_with("org1/v1/a/b") && sub.is_dir());
        // A symlink planted by a sandbox that mounts the whole volume is never followed.
        std::os::unix::fs::symlink("/etc", whole.join("evil")).unwrap();
        assert!(v.prepare("org1", &mount("v1", Some("evil"))).is_err());
        assert!(v.prepare("org1", &mount("v1", Some("evil/x"))).is_err());
        std::fs::write(whole.join("file"), b"x").unwrap();
        assert!(v.prepare("org1", &mount("v1", Some("file"))).is_err());
        for bad in ["..", "a/../..", "./a", "a//b"] {
            assert!(v.prepare("org1", &mount("v1", Some(bad))).is_err(), "{bad}");
        }
        assert!(v.prepare("../org2", &mount("v1", None)).is_err());
        assert!(v.prepare("org1", &mount("../v2", None)).is_err());
        let usage = v.usage().unwrap();
        assert_eq!(usage.len(), 1);
        assert!(usage[0].bytes > 0);
        v.remove("org1", "v1").unwrap();
        v.remove("org1", "v1").unwrap();
        assert!(!whole.exists());
    }

    #[test]
    fn mount_paths() {
        assert!(check_mount_path("/data").is_ok() && check_mount_path("/home/daytona/x/").is_ok());
        for bad in ["/", "data", "/usr/local", "/proc/x", "/a/../b", "/a:b"] {
            assert!(check_mount_path(bad).is_err(), "{bad}");
        }
    }
}
