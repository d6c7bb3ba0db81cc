//! Least privilege for every sandbox container: the part of its `HostConfig` that is not about resources.
//!
//! Code in a sandbox is hostile and is root inside it (the default image's user has passwordless `sudo`, which
//! agents need). What keeps that root harmless outside:
//! - **Capabilities**: all dropped, then only [`SANDBOX_CAPS`] added back: what `sudo`, `apt-get` (dpkg, and apt's
//!   switch to its `_apt` user) and `pip install` need. Gone from Docker's default set: `NET_RAW` (raw sockets:
//!   spoofed packets and ARP answers for a neighbour's address), `MKNOD`, `SETFCAP`, `SETPCAP`, `AUDIT_WRITE`,
//!   `SYS_CHROOT` and `NET_BIND_SERVICE` (Docker already lets any user bind ports below 1024 in a container's own
//!   network namespace). `ping` needs the setuid fallback and fails; everything the tests drive works.
//! - **User namespaces**: container root is an unprivileged host uid (Docker's `userns-remap`, checked when the
//!   runner starts, see [`check_userns`]).
//! - **no-new-privileges** where the sandbox's user has nothing to gain from setuid (see
//!   [`NoNewPrivileges`](crate::config::NoNewPrivileges)).
//! - **Limits**: processes (`pids_limit`, set with the resources), open files per process (`nofile`), and Docker's
//!   log of the container (json-file, a few files of a bounded size), so an entrypoint printing forever cannot
//!   fill the host's disk.
//! - **Runtime**: runc, or gVisor's `runsc` where the operator allows it (`--runtimes`) and the create asks for it.
//!   Debian's runsc (release 20221219) cannot start inside Docker's remapped user namespace ("error setting up
//!   chroot: error converting mounts: operation not permitted"), so gVisor containers run with `userns_mode: host`:
//!   gVisor's sentry is their boundary then, not the user namespace. The image's files keep their remapped owners
//!   (uid 100000 and up), so on a remapping Docker gVisor suits images that run as root.

use std::collections::HashMap;

use bollard::models::{HostConfig, HostConfigLogConfig, ResourcesUlimits, SystemInfo};
use sandbar_proto::runner::CreateSandbox;

use super::Inner;
use crate::error::StartupError;

/// The capabilities a sandbox keeps; every other one is dropped.
pub const SANDBOX_CAPS: [&str; 7] = [
    // dpkg and `sudo chown` (file owners).
    "CHOWN",
    // Root reading and writing files it does not own (apt's lists and caches, dpkg's database).
    "DAC_OVERRIDE",
    // chmod/utime of files owned by others (dpkg, tar, pip as root).
    "FOWNER",
    // Keeping setuid/setgid bits across chown (dpkg installing setuid programs).
    "FSETID",
    // `sudo kill` of the user's processes.
    "KILL",
    // sudo, su, apt's `_apt` user, useradd: changing users and groups.
    "SETGID",
    "SETUID",
];

impl Inner {
    /// The hardening part of a sandbox's `HostConfig`; `image_user` is the image's default user.
    pub(super) fn hardening(&self, req: &CreateSandbox, image_user: Option<&str>) -> HostConfig {
        let c = &self.config;
        let runtime = req.runtime.clone().unwrap_or_else(|| c.default_runtime().to_owned());
        let user = req.user.as_deref().or(image_user);
        let nofile = i64::try_from(c.nofile_limit).unwrap_or(i64::MAX);
        let gvisor = self.host.gvisor_runtimes.contains(&runtime);
        HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(SANDBOX_CAPS.map(String::from).to_vec()),
            security_opt: Some(
                c.no_new_privileges.applies_to(user).then(|| "no-new-privileges:true".to_owned()).into_iter().collect(),
            ),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(nofile),
                hard: Some(nofile),
            }]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), c.log_max_size.clone()),
                    ("max-file".to_owned(), c.log_max_files.to_string()),
                ])),
            }),
            userns_mode: (gvisor && self.host.userns).then(|| "host".to_owned()),
            runtime: Some(runtime),
            ..Default::default()
        }
    }
}

/// Whether Docker remaps container root to an unprivileged host user (`userns-remap`): it lists `name=userns`
/// among its security options.
pub(super) fn has_userns(info: &SystemInfo) -> bool {
    info.security_options.iter().flatten().any(|o| o.split(',').any(|kv| kv == "name=userns"))
}

/// Refuses a Docker without user namespaces unless the operator allowed host root; logs which it is.
pub(super) fn check_userns(userns: bool, allow_host_root: bool) -> Result<(), StartupError> {
    match (userns, allow_host_root) {
        (true, _) => {
            tracing::info!("user namespaces on: root in a sandbox is an unprivileged user on this host");
            Ok(())
        }
        (false, true) => {
            tracing::warn!(
                "Docker has no user namespaces (userns-remap): root in a sandbox IS root on this host; running \
                 anyway because of --allow-host-root"
            );
            Ok(())
        }
        (false, false) => Err(StartupError::HostRoot),
    }
}

/// Checks that every allowed runtime is registered with Docker; returns those that are gVisor (`runsc`).
pub(super) fn check_runtimes(info: &SystemInfo, allowed: &[String]) -> Result<Vec<String>, StartupError> {
    let registered = info.runtimes.clone().unwrap_or_default();
    let mut gvisor = Vec::new();
    for name in allowed {
        let Some(rt) = registered.get(name) else {
            let mut known: Vec<_> = registered.keys().cloned().collect();
            known.sort();
            return Err(StartupError::Runtime { name: name.clone(), registered: known.join(", ") });
        };
        if rt.path.as_deref().is_some_and(|p| p.rsplit('/').next() == Some("runsc")) {
            gvisor.push(name.clone());
        }
    }
    Ok(gvisor)
}

#[cfg(test)]
mod tests {
    use bollard::models::Runtime;

    use super::*;

    #[test]
    fn userns_is_required_unless_host_root_is_allowed() {
        let info = |opts: &[&str]| SystemInfo {
            security_options: Some(opts.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert!(has_userns(&info(&["name=seccomp,profile=default", "name=userns"])));
        assert!(!has_userns(&info(&["name=seccomp,profile=default", "name=rootless"])));
        assert!(!has_userns(&SystemInfo::default()));
        assert!(check_userns(true, false).is_ok());
        assert!(check_userns(false, true).is_ok());
        let err = check_userns(false, false).unwrap_err().to_string();
        assert!(err.contains("userns-remap") && err.contains("--allow-host-root"), "{err}");
    }

    #[test]
    fn runtimes_must_be_registered() {
        let rt = |p: &str| Runtime { path: Some(p.into()), ..Default::default() };
        let info = SystemInfo {
            runtimes: Some(HashMap::from([("runc".into(), rt("runc")), ("gvisor".into(), rt("/usr/bin/runsc"))])),
            ..Default::default()
        };
        assert_eq!(check_runtimes(&info, &["runc".into()]).unwrap(), Vec::<String>::new());
        assert_eq!(check_runtimes(&info, &["runc".into(), "gvisor".into()]).unwrap(), vec!["gvisor".to_owned()]);
        let err = check_runtimes(&info, &["kata".into()]).unwrap_err().to_string();
        assert!(err.contains("kata") && err.contains("gvisor, runc"), "{err}");
    }
}
