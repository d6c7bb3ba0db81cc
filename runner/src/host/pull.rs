//! Pulls from registries (Docker's `POST /images/create`) for creates, builds and snapshots that name a registry
//! image. The control plane decides what is pulled (`CreateSandbox::pull`, `BuildSnapshot::pull`, `PULL_IMAGE`);
//! the job's runner asks it for the organization's credentials right before the pull, and they go to Docker in the
//! request's `X-Registry-Auth` header only: never to disk, a label or the log.
//!
//! Every use pulls, even when the image is on the host already: the registry answers "up to date" in one round
//! trip, and so it is the registry, with this organization's credentials, that decides whether the organization
//! may have the image, never this host's cache. A pull that sends nothing for `pull_stall_timeout` is dropped,
//! which makes Docker cancel it. A failed pull tags nothing (Docker names the image last), so nothing half-pulled
//! can be used.

use std::collections::HashMap;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use sandbar_proto::runner::{RegistryAuth, registry_host};

use super::Runner;
use super::image::{self, ImageInfo};
use crate::error::{PullError, docker_status};

/// `reference` with `:latest` when it names no tag and no digest (Docker would otherwise pull every tag).
pub fn with_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || last.contains('@') { reference.to_owned() } else { format!("{reference}:latest") }
}

/// True when credentials saved for `server` (a host, `host:port`, or a URL as users paste them) are for `registry`.
fn same_registry(server: &str, registry: &str) -> bool {
    let s = server.trim().trim_start_matches("https://").trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or(s);
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    s.eq_ignore_ascii_case(registry) || (hub(s) && hub(registry))
}

/// Sorts Docker's reason for a failed pull into what the user can act on.
fn classify(image: &str, registry: &str, e: bollard::errors::Error) -> PullError {
    let status = docker_status(&e);
    let reason = match e {
        bollard::errors::Error::DockerStreamError { error } => error,
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    let (image, registry) = (image.to_owned(), registry.to_owned());
    let r = reason.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if any(&["unauthorized", "authentication required", "no basic auth credentials", "denied", "forbidden"]) {
        PullError::Unauthorized { image, registry, reason }
    } else if any(&["manifest unknown", "not found", "name unknown"]) || status == Some(404) {
        PullError::NotFound { image, registry, reason }
    } else if any(&["x509", "certificate"]) {
        let reason = format!(
            "{reason} (a registry with its own certificate authority needs it on the runner's host, in \
             /etc/docker/certs.d/{registry}/ca.crt)"
        );
        PullError::Unreachable { image, registry, reason }
    } else if any(&["connection refused", "no such host", "timeout", "dial tcp", "eof", "connection reset", "tls"]) {
        PullError::Unreachable { image, registry, reason }
    } else {
        PullError::Failed { image, registry, reason }
    }
}

/// Turns Docker's pull progress into log lines: one per layer and status change, and a `Downloading` layer at
/// every quarter of its size.
#[derive(Default)]
struct Progress {
    /// Per layer: its last status and the last quarter logged.
    layers: HashMap<String, (String, u64)>,
}

impl Progress {
    fn line(&mut self, id: Option<&str>, status: &str, current: Option<i64>, total: Option<i64>) -> Option<String> {
        let Some(id) = id.filter(|i| !i.is_empty()) else { return Some(status.to_owned()) };
        let quarter = match (current, total) {
            (Some(c), Some(t)) if t > 0 && c >= 0 => (c.min(t) * 4 / t) as u64,
            _ => 0,
        };
        let entry = self.layers.entry(id.to_owned()).or_insert_with(|| (String::new(), u64::MAX));
        if entry.0 == status && entry.1 == quarter {
            return None;
        }
        let changed = entry.0 != status;
        *entry = (status.to_owned(), quarter);
        match (changed, total) {
            (false, Some(t)) if t > 0 => Some(format!("{id}: {status} {}%", quarter * 25)),
            (false, _) => None,
            (true, _) => Some(format!("{id}: {status}")),
        }
    }
}

impl Runner {
    /// Pulls `reference` from its registry with the matching entry of `auth` (none: anonymously), reporting
    /// progress to `on_log`, and answers the local image.
    pub async fn pull_image(
        &self,
        reference: &str,
        auth: &[RegistryAuth],
        on_log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ImageInfo, PullError> {
        let reference = with_tag(reference.trim());
        let registry = registry_host(&reference).to_owned();
        let credentials = auth.iter().find(|a| same_registry(&a.server, &registry)).map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let with_auth = if credentials.is_some() { " with the organization's credentials" } else { "" };
        on_log(&format!("Pulling {reference} from {registry}{with_auth}"));
        let started = std::time::Instant::now();
        let stall = self.inner.config.pull_stall_timeout;
        let options = CreateImageOptionsBuilder::new().from_image(&reference).build();
        let mut stream = self.docker().create_image(Some(options), None, credentials);
        let mut progress = Progress::default();
        loop {
            match tokio::time::timeout(stall, stream.next()).await {
                Err(_) => {
                    return Err(PullError::Stalled { image: reference, registry, secs: stall.as_secs() });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e = classify(&reference, &registry, e);
                    tracing::warn!(image = %reference, error = %e, "pull failed");
                    return Err(e);
                }
                Ok(Some(Ok(info))) => {
                    let Some(status) = info.status.as_deref() else { continue };
                    let detail = info.progress_detail.as_ref();
                    let (current, total) = (detail.and_then(|d| d.current), detail.and_then(|d| d.total));
                    if let Some(line) = progress.line(info.id.as_deref(), status, current, total) {
                        on_log(&line);
                    }
                }
            }
        }
        let found = image::inspect(self.docker(), &reference).await.map_err(|e| PullError::Failed {
            image: reference.clone(),
            registry: registry.clone(),
            reason: e.to_string(),
        })?;
        let info = found.ok_or_else(|| PullError::Failed {
            image: reference.clone(),
            registry: registry.clone(),
            reason: "the pull ended but the image is not on the host".into(),
        })?;
        tracing::info!(image = %reference, secs = started.elapsed().as_secs_f64(), size = info.size, "image pulled");
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_registries() {
        assert_eq!(with_tag("127.0.0.1:5000/team/app"), "127.0.0.1:5000/team/app:latest");
        assert_eq!(with_tag("127.0.0.1:5000/team/app:1"), "127.0.0.1:5000/team/app:1");
        assert_eq!(with_tag("busybox"), "busybox:latest");
        assert!(same_registry("https://127.0.0.1:5000/", "127.0.0.1:5000"));
        assert!(same_registry("index.docker.io", "docker.io"));
        assert!(!same_registry("127.0.0.1:5001", "127.0.0.1:5000"));
    }

    #[test]
    fn reasons_are_sorted() {
        let e = |m: &str| bollard::errors::Error::DockerStreamError { error: m.into() };
        assert!(matches!(classify("a", "r", e("no basic auth credentials")), PullError::Unauthorized { .. }));
        assert!(matches!(classify("a", "r", e("manifest unknown: manifest unknown")), PullError::NotFound { .. }));
        assert!(matches!(
            classify("a", "r", e("Get \"https://r/v2/\": dial tcp 127.0.0.1:9: connect: connection refused")),
            PullError::Unreachable { .. }
        ));
        let x509 = classify("a", "r:1", e("x509: certificate signed by unknown authority"));
        assert!(x509.to_string().contains("/etc/docker/certs.d/r:1/ca.crt"), "{x509}");
        assert!(matches!(classify("a", "r", e("something else")), PullError::Failed { .. }));
    }

    #[test]
    fn progress_logs_changes_and_quarters() {
        let mut p = Progress::default();
        assert_eq!(p.line(None, "Pulling from team/app", None, None).as_deref(), Some("Pulling from team/app"));
        assert_eq!(p.line(Some("l1"), "Pulling fs layer", None, None).as_deref(), Some("l1: Pulling fs layer"));
        assert_eq!(p.line(Some("l1"), "Downloading", Some(1), Some(100)).as_deref(), Some("l1: Downloading"));
        assert_eq!(p.line(Some("l1"), "Downloading", Some(2), Some(100)), None);
        assert_eq!(p.line(Some("l1"), "Downloading", Some(60), Some(100)).as_deref(), Some("l1: Downloading 50%"));
        assert_eq!(p.line(Some("l1"), "Pull complete", None, None).as_deref(), Some("l1: Pull complete"));
    }
}
