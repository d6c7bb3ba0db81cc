//! Where `sandbar up` finds the two things it needs besides the service binaries: the static `sandbar-daemon` that
//! becomes PID 1 of every sandbox, and the recipe of the default sandbox image (`build-sandbox-image`).
//!
//! An installed `sandbar` never reads a source tree. Each is looked for, in order:
//! 1. where the operator says (`--daemon-binary` / `SANDBAR_STATIC_DAEMON`, `--image-recipe` /
//!    `SANDBAR_IMAGE_RECIPE`);
//! 2. beside the executable, then in its prefix's `lib/sandbar/` (the daemon) or `share/sandbar/` (the recipe):
//!    `/usr/bin/sandbar` finds `/usr/lib/sandbar/sandbar-daemon`, an unpacked tarball its neighbours;
//! 3. only when the executable lives inside the source tree it was built from (a `cargo build` in a checkout): the
//!    checkout's `scripts/build-daemon` and `scripts/build-sandbox-image`, which build what is missing;
//! 4. the package's paths, `/usr/lib/sandbar/sandbar-daemon` and `/usr/share/sandbar/build-sandbox-image`.
//!
//! A daemon candidate counts only if it is a static executable: a dev build puts a dynamically linked
//! `sandbar-daemon` beside `sandbar`, and that one would not start inside an image without the host's libraries.

use std::path::{Path, PathBuf};

/// The daemon's file name, wherever it lives.
pub const DAEMON: &str = "sandbar-daemon";
/// The default image recipe's file name.
pub const RECIPE: &str = "build-sandbox-image";
/// Where the Debian package installs the daemon.
pub const SYSTEM_DAEMON: &str = "/usr/lib/sandbar/sandbar-daemon";
/// Where the Debian package installs the recipe.
pub const SYSTEM_RECIPE: &str = "/usr/share/sandbar/build-sandbox-image";

/// What the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A file to use as it is.
    File(PathBuf),
    /// A checkout's script that builds it (the daemon: prints its path last).
    Script(PathBuf),
}

/// Where to look: the running executable, the checkout it was built from (only when it runs from inside it) and
/// the system prefix (`/` outside tests).
#[derive(Debug, Clone)]
pub struct Places {
    pub exe: PathBuf,
    pub checkout: Option<PathBuf>,
    pub root: PathBuf,
}

impl Places {
    /// This process: its executable and, when that lies inside the source tree `sandbar` was compiled from, the tree.
    pub fn current() -> std::io::Result<Self> {
        let exe = std::fs::canonicalize(std::env::current_exe()?)?;
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let checkout = std::fs::canonicalize(source).ok().filter(|tree| exe.starts_with(tree));
        Ok(Self { exe, checkout, root: PathBuf::from("/") })
    }

    fn exe_dir(&self) -> Option<&Path> {
        self.exe.parent()
    }

    fn system(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The static daemon: `explicit` when given, else the first static executable among the places above, else the
    /// checkout's build script.
    pub fn daemon(&self, explicit: Option<&Path>) -> Option<Found> {
        if let Some(p) = explicit {
            return Some(Found::File(p.to_owned()));
        }
        let dir = self.exe_dir()?;
        let near = [Some(dir.join(DAEMON)), dir.parent().map(|prefix| prefix.join("lib/sandbar").join(DAEMON))];
        if let Some(p) = near.into_iter().flatten().find(|p| is_static_executable(p)) {
            return Some(Found::File(p));
        }
        if let Some(s) = self.checkout_script("build-daemon") {
            return Some(Found::Script(s));
        }
        let system = self.system(SYSTEM_DAEMON);
        is_static_executable(&system).then_some(Found::File(system))
    }

    /// The default image's recipe: `explicit` when given, else the first one found in the places above.
    pub fn recipe(&self, explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_owned());
        }
        let dir = self.exe_dir()?;
        let near = [Some(dir.join(RECIPE)), dir.parent().map(|prefix| prefix.join("share/sandbar").join(RECIPE))];
        if let Some(p) = near.into_iter().flatten().find(|p| is_executable(p)) {
            return Some(p);
        }
        if let Some(s) = self.checkout_script(RECIPE) {
            return Some(s);
        }
        let system = self.system(SYSTEM_RECIPE);
        is_executable(&system).then_some(system)
    }

    fn checkout_script(&self, name: &str) -> Option<PathBuf> {
        let s = self.checkout.as_ref()?.join("scripts").join(name);
        is_executable(&s).then_some(s)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// A 64-bit little-endian ELF executable without a `PT_INTERP` program header, that is one the kernel runs without
/// a dynamic loader (static or static-pie). Anything unreadable or malformed is not.
pub fn is_static_executable(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    if !is_executable(path) {
        return false;
    }
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut head = [0u8; 64];
    if f.read_exact(&mut head).is_err() || head[..4] != *b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&head[0x20..0x28]);
    let (phoff, phentsize, phnum) = (u64::from_le_bytes(phoff), u16_at(0x36), u16_at(0x38));
    if phentsize < 4 || phnum == 0 {
        return false;
    }
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    if f.seek(SeekFrom::Start(phoff)).is_err() || f.read_exact(&mut table).is_err() {
        return false;
    }
    table.chunks_exact(usize::from(phentsize)).all(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != PT_INTERP)
}

/// The CLI's data directory: the flag, else `$XDG_DATA_HOME/sandbar` (an absolute `XDG_DATA_HOME` only, as the XDG
/// base directory specification says), else `$HOME/.local/share/sandbar`.
pub fn data_dir(flag: Option<&Path>, xdg_data_home: Option<&str>, home: Option<&str>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_owned();
    }
    if let Some(x) = xdg_data_home.map(Path::new).filter(|p| p.is_absolute()) {
        return x.join("sandbar");
    }
    PathBuf::from(home.filter(|h| !h.is_empty()).unwrap_or("/root")).join(".local/share/sandbar")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A minimal ELF64 header with one program header of type `ptype`.
    fn elf(path: &Path, ptype: u32) {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        write_exec(path, &b);
    }

    fn write_exec(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn places(root: &Path, exe: &str, checkout: Option<&str>) -> Places {
        Places { exe: root.join(exe), checkout: checkout.map(|c| root.join(c)), root: root.to_owned() }
    }

    #[test]
    fn static_means_no_interpreter() {
        let d = tempfile::tempdir().unwrap();
        elf(&d.path().join("static"), 1);
        elf(&d.path().join("dynamic"), PT_INTERP);
        write_exec(&d.path().join("script"), b"#!/bin/sh\n");
        assert!(is_static_executable(&d.path().join("static")));
        assert!(!is_static_executable(&d.path().join("dynamic")));
        assert!(!is_static_executable(&d.path().join("script")));
        assert!(!is_static_executable(&d.path().join("missing")));
        // The test binary itself is linked dynamically.
        assert!(!is_static_executable(&std::env::current_exe().unwrap()));
    }

    #[test]
    fn an_installed_sandbar_finds_the_package_paths_and_never_the_checkout() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        elf(&r.join("usr/lib/sandbar/sandbar-daemon"), 1);
        write_exec(&r.join("usr/share/sandbar/build-sandbox-image"), b"#!/bin/sh\n");
        elf(&r.join("opt/sb/lib/sandbar/sandbar-daemon"), 1);
        write_exec(&r.join("opt/sb/share/sandbar/build-sandbox-image"), b"#!/bin/sh\n");
        write_exec(&r.join("src/scripts/build-daemon"), b"#!/bin/sh\n");
        // <prefix>/bin/sandbar: its prefix's lib/ and share/ first.
        let p = places(r, "opt/sb/bin/sandbar", None);
        assert_eq!(p.daemon(None), Some(Found::File(r.join("opt/sb/lib/sandbar/sandbar-daemon"))));
        assert_eq!(p.recipe(None), Some(r.join("opt/sb/share/sandbar/build-sandbox-image")));
        // A copy in ~/bin still finds the package's files; no checkout was given, so none is read.
        let p = places(r, "home/me/bin/sandbar", None);
        assert_eq!(p.daemon(None), Some(Found::File(r.join("usr/lib/sandbar/sandbar-daemon"))));
        assert_eq!(p.recipe(None), Some(r.join("usr/share/sandbar/build-sandbox-image")));
        // What the operator names wins.
        let mine = Path::new("/opt/daemon");
        assert_eq!(p.daemon(Some(mine)), Some(Found::File(mine.to_owned())));
    }

    #[test]
    fn a_dev_build_skips_its_dynamic_daemon_and_builds_from_its_checkout() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        elf(&r.join("src/target/debug/sandbar-daemon"), PT_INTERP);
        write_exec(&r.join("src/scripts/build-daemon"), b"#!/bin/sh\n");
        write_exec(&r.join("src/scripts/build-sandbox-image"), b"#!/bin/sh\n");
        // Installed files too: the checkout's own scripts come first for a binary built in it.
        elf(&r.join("usr/lib/sandbar/sandbar-daemon"), 1);
        write_exec(&r.join("usr/share/sandbar/build-sandbox-image"), b"#!/bin/sh\n");
        let p = places(r, "src/target/debug/sandbar", Some("src"));
        assert_eq!(p.daemon(None), Some(Found::Script(r.join("src/scripts/build-daemon"))));
        assert_eq!(p.recipe(None), Some(r.join("src/scripts/build-sandbox-image")));
    }

    #[test]
    fn a_tarball_finds_its_neighbours_and_nothing_is_none() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(places(r, "opt/sandbar/sandbar", None).daemon(None), None);
        assert_eq!(places(r, "opt/sandbar/sandbar", None).recipe(None), None);
        elf(&r.join("opt/sandbar/sandbar-daemon"), 1);
        write_exec(&r.join("opt/sandbar/build-sandbox-image"), b"#!/bin/sh\n");
        let p = places(r, "opt/sandbar/sandbar", None);
        assert_eq!(p.daemon(None), Some(Found::File(r.join("opt/sandbar/sandbar-daemon"))));
        assert_eq!(p.recipe(None), Some(r.join("opt/sandbar/build-sandbox-image")));
    }

    #[test]
    fn data_dir_follows_xdg() {
        let flag = Path::new("/data");
        assert_eq!(data_dir(Some(flag), Some("/x"), Some("/home/me")), flag);
        assert_eq!(data_dir(None, Some("/x"), Some("/home/me")), Path::new("/x/sandbar"));
        // A relative XDG_DATA_HOME is invalid and ignored, as is an empty one.
        assert_eq!(data_dir(None, Some("x"), Some("/home/me")), Path::new("/home/me/.local/share/sandbar"));
        assert_eq!(data_dir(None, Some(""), Some("/home/me")), Path::new("/home/me/.local/share/sandbar"));
        assert_eq!(data_dir(None, None, None), Path::new("/root/.local/share/sandbar"));
    }
}
