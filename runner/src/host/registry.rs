//! The operator's internal registry for sandbar's own images (`image_registry` in the runner's configuration):
//! where a runner pushes the images it makes (a snapshot of a sandbox, a Dockerfile build), so that a sandbox of
//! such an image may be placed on any runner, which pulls it first.
//!
//! ## Why the runner holds the setting (and not the API)
//! The registry is where Docker on this host pushes and pulls, so its address is what this host's Docker reaches
//! (a registry may be `10.0.0.9:5000` for one network and a name for another), whether Docker speaks plain HTTP to
//! it (its own `insecure-registries`) and the credentials Docker sends are host concerns, like the archive store's.
//! Keeping them on the runner means no job carries a secret (as for the organizations' registries, whose
//! credentials are asked for at the time) and the API needs no new setting: it learns a pushed copy from the job's
//! result ([`SnapshotImage::pushed`](sandbar_proto::runner::SnapshotImage)) and hands that reference to whichever
//! runner it places a sandbox on ([`CreateSandbox::pull_from`](sandbar_proto::runner::CreateSandbox)). An
//! operator therefore gives every runner the same registry (and credentials that may push and pull); a runner
//! without one still pulls a copy anonymously when the registry allows it.
//!
//! ## What happens
//! - After a snapshot or a build made `sandbar-snapshot:{id}` / `sandbar-build:{hash}`, the runner tags it
//!   `{registry}/sandbar-snapshot:{id}` / `{registry}/sandbar-build:{build id}` (per build, not per Dockerfile:
//!   identical Dockerfiles of two organizations are two builds whose images may differ), pushes it (Docker's `POST /images/{name}/push`, the credentials in
//!   `X-Registry-Auth` only), and removes that second tag again, so the local image keeps one name and removing
//!   it still frees it. A push that fails fails nothing: the job succeeds, its result says why the push failed, and
//!   the image stays pinned to this runner, as without a registry.
//! - A create whose image is not here pulls its `pull_from` copy and tags it with the local name before the create
//!   (the rest of the runner, archives included, sees the local name only). An image already here is used as it
//!   is: it is the same image (same name, same ID the API was told), unlike a tenant's registry image, which is
//!   pulled at every use because the registry decides who may have it.
//! - A deleted snapshot's copy is deleted from the registry by digest (`HEAD` then `DELETE
//!   /v2/{name}/manifests/{digest}`, basic auth); a registry that does not allow deletes (`storage.delete.enabled`
//!   off, a 405) or cannot be reached keeps it, which is logged and fails nothing. Only the manifest goes: the
//!   registry's own garbage collection (`registry garbage-collect`) frees the blobs.
//!
//! Measured on this repository's CI machine (`tests/python/stack/test_hosts.py`, two engines, the busybox test image,
//! `docker-registry` over plain HTTP on the same machine): the push of a snapshot's image 0.43-0.53 s (the whole
//! snapshot with its push about 1.04 s through the SDK), the pull on the other host 0.39-0.43 s; a create there that
//! pulls first 0.91-1.24 s from the SDK's call to `started`, against 0.57-0.87 s for one that finds the image.
//!
//! The registry holds every organization's snapshots: sandboxes must not reach it (give its address to every
//! runner's `--deny-cidr` when it lies in a range sandboxes may otherwise reach), and it should accept only the
//! runners' credentials.
//!
//! Forks are not pushed: a fork's image is a tag of its source's base image (its own files are its container's
//! layer, see `super::archive`), so the fork itself cannot start elsewhere without its layer, and its base is
//! already the source's image (pushed if it is a snapshot's or a build's).

use std::time::Instant;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder};
use futures_util::StreamExt;
use sandbar_proto::runner::RegistryAuth;

use super::Runner;
use crate::error::{PullError, SandboxError, docker_status};

/// The internal registry: where the runner pushes its images and from where it pulls others' (see the module doc).
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRegistry {
    /// `host[:port][/prefix]`: pushed images are `{base}/{repo}:{tag}`.
    pub base: String,
    /// The runner's own calls to the registry's API (deletes) go over plain HTTP (`http://` in the setting);
    /// Docker's pushes and pulls follow Docker's own `insecure-registries`.
    pub plain_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for ImageRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRegistry")
            .field("base", &self.base)
            .field("plain_http", &self.plain_http)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ImageRegistry {
    /// Parses the `image_registry` setting: `[http://|https://]host[:port][/prefix]`.
    pub fn parse(value: &str, username: Option<String>, password: Option<String>) -> Result<Self, String> {
        let v = value.trim();
        let (plain_http, rest) = match (v.strip_prefix("http://"), v.strip_prefix("https://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => (false, v),
        };
        let base = rest.trim_end_matches('/');
        let (host, path) = base.split_once('/').unwrap_or((base, ""));
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            && (host.contains('.') || host.contains(':') || host == "localhost");
        let path_ok = path.is_empty()
            || path.split('/').all(|s| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            });
        if !host_ok || !path_ok {
            return Err(format!(
                "image registry {value:?} must be host[:port][/prefix] (the host with a dot or a port, or localhost; \
                 a lowercase path), optionally with http:// for plain HTTP"
            ));
        }
        if username.is_some() != password.is_some() {
            return Err("the image registry's username and password go together".into());
        }
        Ok(Self { base: base.to_owned(), plain_http, username, password })
    }

    /// The registry's host (and port).
    pub fn host(&self) -> &str {
        self.base.split_once('/').map_or(self.base.as_str(), |(h, _)| h)
    }

    /// Where local image `local` (`repo:tag`) goes in the registry.
    pub fn reference(&self, local: &str) -> String {
        format!("{}/{local}", self.base)
    }

    fn credentials(&self) -> Option<DockerCredentials> {
        Some(DockerCredentials {
            username: self.username.clone(),
            password: self.password.clone(),
            serveraddress: Some(self.host().to_owned()),
            ..Default::default()
        })
        .filter(|_| self.username.is_some())
    }

    fn auth(&self) -> Vec<RegistryAuth> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => {
                vec![RegistryAuth { server: self.host().to_owned(), username: u.clone(), password: p.clone() }]
            }
            _ => Vec::new(),
        }
    }
}

/// `reference` split into repository and tag (`repo:tag`; a port in the host is not a tag).
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

impl Runner {
    /// The configured internal registry, if any.
    pub fn image_registry(&self) -> Option<&ImageRegistry> {
        self.inner.config.image_registry.as_ref()
    }

    /// Pushes local image `local` to the internal registry (under its own tag, or `tag` when given): `Ok(None)`
    /// without one, `Ok(Some(reference))` once pushed, `Err(reason)` when the push failed (nothing else is undone;
    /// see the module doc).
    pub async fn push_own_image(&self, local: &str, tag: Option<&str>) -> Result<Option<String>, String> {
        let Some(registry) = self.image_registry() else { return Ok(None) };
        let target = match tag {
            Some(t) => registry.reference(&format!("{}:{t}", split_tag(local).0)),
            None => registry.reference(local),
        };
        let (repo, tag) = split_tag(&target);
        let started = Instant::now();
        let opts = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
        self.docker().tag_image(local, Some(opts)).await.map_err(|e| format!("tagging {local} as {target}: {e}"))?;
        let pushed = self.push_tagged(registry, repo, tag).await;
        // The registry's name goes again, whatever happened: the local image keeps its one name.
        let rm = RemoveImageOptionsBuilder::default().noprune(true).build();
        if let Err(e) = self.docker().remove_image(&target, Some(rm), None).await
            && docker_status(&e) != Some(404)
        {
            tracing::warn!(image = %target, error = %e, "cannot remove the registry tag after the push");
        }
        match pushed {
            Ok(()) => {
                tracing::info!(image = %local, pushed = %target, secs = started.elapsed().as_secs_f64(), "image pushed");
                Ok(Some(target))
            }
            Err(reason) => {
                tracing::warn!(image = %local, target = %target, reason = %reason, "push to the image registry failed; the image stays on this runner only");
                Err(format!("pushing {local} to {target}: {reason}"))
            }
        }
    }

    async fn push_tagged(&self, registry: &ImageRegistry, repo: &str, tag: &str) -> Result<(), String> {
        let opts = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self.docker().push_image(repo, Some(opts), registry.credentials());
        let stall = self.inner.config.pull_stall_timeout;
        loop {
            match tokio::time::timeout(stall, stream.next()).await {
                Err(_) => return Err(format!("the registry sent nothing for {} s", stall.as_secs())),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(match e {
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    });
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Makes sure local image `image` is here before a create: when it is not, pulls `pull_from` (its copy in the
    /// internal registry) and tags it `image`.
    pub async fn ensure_own_image(&self, image: &str, pull_from: &str) -> Result<(), SandboxError> {
        if super::image::inspect(self.docker(), image).await?.is_some() {
            return Ok(());
        }
        let auth = self.image_registry().filter(|r| pull_from.starts_with(&format!("{}/", r.base))).map(|r| r.auth());
        let started = Instant::now();
        let mut log = |line: &str| tracing::debug!(image, line, "pull of a pushed image");
        let pulled = self.pull_image(pull_from, &auth.unwrap_or_default(), &mut log).await.map_err(|e| match e {
            PullError::Unauthorized { image, registry, reason } => PullError::Failed {
                image,
                registry,
                reason: format!(
                    "the internal registry refused this runner ({reason}); give it image_registry_username and \
                     image_registry_password"
                ),
            },
            other => other,
        })?;
        let (repo, tag) = split_tag(image);
        let opts = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
        self.docker().tag_image(&pulled.reference, Some(opts)).await?;
        let rm = RemoveImageOptionsBuilder::default().noprune(true).build();
        if let Err(e) = self.docker().remove_image(&pulled.reference, Some(rm), None).await
            && docker_status(&e) != Some(404)
        {
            tracing::warn!(image = %pulled.reference, error = %e, "cannot remove the registry tag after the pull");
        }
        tracing::info!(image, from = pull_from, secs = started.elapsed().as_secs_f64(), "pushed image pulled");
        Ok(())
    }

    /// Deletes `reference` (a copy this fleet pushed) from the internal registry; logs what it cannot do.
    pub async fn delete_pushed(&self, reference: &str) {
        let Some(registry) = self.image_registry().cloned() else {
            tracing::warn!(image = reference, "no image registry configured here: the pushed copy stays");
            return;
        };
        match delete_manifest(&registry, reference).await {
            Ok(()) => tracing::info!(image = reference, "pushed copy deleted from the image registry"),
            Err(reason) => {
                tracing::warn!(image = reference, reason = %reason, "pushed copy not deleted from the image registry")
            }
        }
    }
}

/// `HEAD` the manifest for its digest, then `DELETE` it by digest (registry API v2).
async fn delete_manifest(registry: &ImageRegistry, reference: &str) -> Result<(), String> {
    let Some(rest) = reference.strip_prefix(&format!("{}/", registry.host())) else {
        return Err(format!("{reference} is not in the image registry {}", registry.base));
    };
    let (name, tag) = split_tag(rest);
    let scheme = if registry.plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/{name}/manifests/", registry.host());
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let with_auth = |rb: reqwest::RequestBuilder| match (&registry.username, &registry.password) {
        (Some(u), Some(p)) => rb.basic_auth(u, Some(p)),
        _ => rb,
    };
    let accept = "application/vnd.docker.distribution.manifest.v2+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, \
                  application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let head = with_auth(client.head(format!("{url}{tag}")).header("Accept", accept))
        .send()
        .await
        .map_err(|e| format!("reading its digest: {e}"))?;
    if head.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    if !head.status().is_success() {
        return Err(format!("reading its digest: the registry answered {}", head.status()));
    }
    let digest = head
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| {
            d.starts_with("sha256:")
                && d.len() == 71
                && d.get(7..).is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .ok_or("the registry sent no digest")?
        .to_owned();
    let del = with_auth(client.delete(format!("{url}{digest}"))).send().await.map_err(|e| format!("DELETE: {e}"))?;
    match del.status() {
        s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
        reqwest::StatusCode::METHOD_NOT_ALLOWED => {
            Err("the registry does not allow deletes (docker-registry: storage.delete.enabled)".into())
        }
        s => Err(format!("DELETE answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        let r = ImageRegistry::parse("http://10.0.0.9:5000/sandbar/", None, None).unwrap();
        assert_eq!((r.base.as_str(), r.plain_http, r.host()), ("10.0.0.9:5000/sandbar", true, "10.0.0.9:5000"));
        assert_eq!(r.reference("sandbar-snapshot:ab"), "10.0.0.9:5000/sandbar/sandbar-snapshot:ab");
        let r = ImageRegistry::parse("registry.example.com", Some("u".into()), Some("p".into())).unwrap();
        assert!(!r.plain_http && r.credentials().is_some() && r.auth().len() == 1);
        assert!(!format!("{r:?}").contains("\"p\""));
        for bad in ["", "noport", "h:1/Upper", "h:1//x", "ftp://h:1"] {
            assert!(ImageRegistry::parse(bad, None, None).is_err(), "{bad}");
        }
        assert!(ImageRegistry::parse("h:1", Some("u".into()), None).is_err());
    }

    #[test]
    fn tags_split_after_the_port() {
        assert_eq!(split_tag("h:5000/p/sandbar-snapshot:ab"), ("h:5000/p/sandbar-snapshot", "ab"));
        assert_eq!(split_tag("h:5000/p/x"), ("h:5000/p/x", "latest"));
        assert_eq!(split_tag("sandbar-build:cafe"), ("sandbar-build", "cafe"));
    }
}
