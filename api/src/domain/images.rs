//! Which images an organization may name. Docker resolves any name it is handed from the host's images, including
//! other tenants' forks, archives, snapshots, builds and pulls and any short prefix of an image ID. So a create, a
//! snapshot or a build may name only:
//!
//! - an image the operator allows (`--allowed-image`, exact names or `prefix*`; the default snapshot always),
//!   used as it is on the runner;
//! - an image its own organization owns: `sandbar-fork:{id}` and `sandbar-archive:{id}` of its sandboxes,
//!   `sandbar-snapshot:{id}` of its snapshots, `sandbar-build:{hash}` of its builds; or
//! - any other well-formed name, as a **registry image** ([`pulled`]) on a registry the operator allows
//!   (`--allowed-registry`): the runner pulls it, with the organization's credentials for that registry
//!   (`/docker-registry`), every time it is used. So a copy another organization pulled to the host is never used
//!   unless the registry gives the image to this organization too: a public name is shared, a private one is not.
//!
//! Names that look like image IDs or digests (`sha256:...`, `name@sha256:...`, bare hex that Docker would take as
//! an ID prefix) are refused outright, and so is every other name: a 400 that does not say whether the image
//! exists, so nothing is learnt about other organizations. Names are compared after Docker's own normalisation
//! (`docker.io/library/x` is `x`), so a spelling Docker treats as the same image is judged as that image.

use sqlx::AnyConnection;

use super::builds::BUILD_IMAGE_REPO;
use super::snapshots::SNAPSHOT_IMAGE_REPO;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store;
use sandbar_proto::runner::FORK_IMAGE_REPO;

/// Repository of the images restores make (the runner's `sandbar-archive:{sandbox id}`).
pub const ARCHIVE_IMAGE_REPO: &str = "sandbar-archive";

/// Who owns an image of one of sandbar's own repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// A fork's or a restored archive's image: its sandbox.
    Sandbox(String),
    Snapshot(String),
    /// A build's image: the Dockerfile's hash.
    Build(String),
}

/// `name` as Docker resolves it locally: without the default registry and `library/`, with `:latest` when it has
/// no tag.
pub(crate) fn normalize(name: &str) -> String {
    let mut n = name;
    for registry in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = n.strip_prefix(registry) {
            n = rest;
            break;
        }
    }
    let n = n.strip_prefix("library/").unwrap_or(n);
    let last = n.rsplit('/').next().unwrap_or(n);
    if last.contains(':') { n.to_owned() } else { format!("{n}:latest") }
}

/// True for names Docker would resolve as an image ID, an ID prefix or a digest rather than a name.
pub fn looks_like_id(name: &str) -> bool {
    let n = name.trim();
    n.contains('@')
        || n.to_ascii_lowercase().starts_with("sha256:")
        || (!n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A syntactically plausible local reference: `[host[:port]/]path[:tag]`, lowercase path.
fn well_formed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && !name.contains("//")
}

/// The owner of an image of sandbar's own repositories, or `None` for any other name.
fn internal(normalized: &str) -> Option<Owner> {
    let (repo, tag) = normalized.rsplit_once(':')?;
    let owner = match repo {
        FORK_IMAGE_REPO | ARCHIVE_IMAGE_REPO => Owner::Sandbox(tag.to_owned()),
        SNAPSHOT_IMAGE_REPO => Owner::Snapshot(tag.to_owned()),
        BUILD_IMAGE_REPO => Owner::Build(tag.to_owned()),
        _ => return None,
    };
    Some(owner)
}

/// True when the operator's list allows `name` (entries are exact names, or prefixes ending in `*`).
pub(crate) fn operator_allows(allowed: &[String], default_image: &str, name: &str) -> bool {
    let n = normalize(name);
    if n == normalize(default_image) {
        return true;
    }
    allowed.iter().map(|a| a.trim()).filter(|a| !a.is_empty()).any(|a| match a.strip_suffix('*') {
        Some(prefix) => n.starts_with(prefix) || name.starts_with(prefix),
        None => n == normalize(a),
    })
}

fn refused(name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "image {name:?} is not allowed: name an image the operator allows, or a snapshot, fork or build of your \
         organization (by its snapshot name)"
    ))
}

/// True when `name` is a registry image: neither one of sandbar's own nor one the operator allows. The runner pulls
/// such an image before each use.
pub fn pulled(config: &crate::Config, name: &str) -> bool {
    let name = name.trim();
    !looks_like_id(name)
        && internal(&normalize(name)).is_none()
        && !operator_allows(&config.allowed_images, &config.default_snapshot, name)
}

/// True when the operator's `--allowed-registry` list allows pulls from `host`. `*` allows every registry except
/// the ones on this network (loopback, private, link-local and unique-local addresses, `localhost`, `.local` and
/// `.internal` names, where the runner's own services and the cloud's metadata live): those need their own entry.
pub fn registry_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    allowed.iter().map(|a| a.trim().to_ascii_lowercase()).filter(|a| !a.is_empty()).any(|a| {
        if a == "*" {
            !local_registry(&host)
        } else if let Some(prefix) = a.strip_suffix('*') {
            host.starts_with(prefix)
        } else {
            a == host
        }
    })
}

/// A registry host on the runners' own network (see [`registry_allowed`]).
fn local_registry(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                // 100.64.0.0/10 (carrier-grade NAT) included.
                v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || (a == 100 && b & 0xc0 == 64)
            }
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
                    || v6.to_ipv4_mapped().is_some()
            }
        };
    }
    name == "localhost" || name.ends_with(".localhost") || name.ends_with(".local") || name.ends_with(".internal")
}

/// Refuses with 400 an image `org` may not name (see the module doc); `what` says where it was named.
pub async fn check(app: &App, conn: &mut AnyConnection, org: &str, name: &str, what: &str) -> ApiResult<()> {
    let name = name.trim();
    if looks_like_id(name) {
        return Err(ApiError::bad_request(format!(
            "{what} {name:?} looks like an image ID or digest; name an image by repository and tag"
        )));
    }
    if !well_formed(name) {
        return Err(ApiError::bad_request(format!(
            "{what} {name:?} is not a valid image reference (lowercase repository[:tag])"
        )));
    }
    let n = normalize(name);
    let owned = match internal(&n) {
        None if operator_allows(&app.config.allowed_images, &app.config.default_snapshot, name) => return Ok(()),
        None => {
            let host = sandbar_proto::runner::registry_host(name);
            return if registry_allowed(&app.config.allowed_registries, host) {
                Ok(())
            } else {
                Err(ApiError::bad_request(format!(
                    "{what} {name:?} would be pulled from registry {host}, which the operator does not allow \
                     (--allowed-registry); name an allowed registry, an image the operator allows, or a snapshot of \
                     your organization"
                )))
            };
        }
        Some(Owner::Sandbox(id)) => {
            store::sandboxes::load(app.db.kind, conn, Some(org), &id, false).await?.is_some_and(|row| row.id == id)
        }
        Some(Owner::Snapshot(id)) => store::snapshots::find(conn, org, &id).await?.is_some_and(|s| s.id == id),
        Some(Owner::Build(hash)) => store::builds::owned(conn, org, &hash).await?,
    };
    if owned { Ok(()) } else { Err(refused(name)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_digests() {
        for id in ["sha256:abcd", "SHA256:ab", "busybox@sha256:0123", "deadbeef", "0", "abc123", &"a".repeat(64)] {
            assert!(looks_like_id(id), "{id}");
        }
        for name in ["busybox", "sandbar-fork:abc", "abc:latest", "deadbeefx", "team/x"] {
            assert!(!looks_like_id(name), "{name}");
        }
    }

    #[test]
    fn normalisation_and_the_operator_list() {
        assert_eq!(normalize("docker.io/library/sandbar-fork:x"), "sandbar-fork:x");
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
        let allowed = vec!["sandbar-test-busybox:*".to_owned(), "python:3.12".to_owned()];
        assert!(operator_allows(&allowed, "sandbar-sandbox:default", "docker.io/sandbar-sandbox:default"));
        assert!(operator_allows(&allowed, "d:1", "sandbar-test-busybox:abc"));
        assert!(operator_allows(&allowed, "d:1", "docker.io/library/python:3.12"));
        assert!(!operator_allows(&allowed, "d:1", "python:3.13"));
        assert!(!operator_allows(&allowed, "d:1", "busybox"));
        assert_eq!(internal("sandbar-fork:abc"), Some(Owner::Sandbox("abc".into())));
        assert_eq!(internal("sandbar-archive:abc.rootfs"), Some(Owner::Sandbox("abc.rootfs".into())));
        assert_eq!(internal("sandbar-build:ab"), Some(Owner::Build("ab".into())));
        assert_eq!(internal("sandbar-sandbox:default"), None);
        assert_eq!(internal("sandbar-test-busybox:1"), None);
    }

    #[test]
    fn registries() {
        let star = vec!["*".to_owned()];
        assert!(registry_allowed(&star, "docker.io"));
        assert!(registry_allowed(&star, "ghcr.io"));
        for local in
            ["127.0.0.1:5000", "localhost:5000", "10.1.2.3", "169.254.169.254", "[::1]:5000", "metadata.internal"]
        {
            assert!(!registry_allowed(&star, local), "{local}");
        }
        let listed = vec!["*".to_owned(), "127.0.0.1:5000".to_owned(), "10.0.0.*".to_owned()];
        assert!(registry_allowed(&listed, "127.0.0.1:5000"));
        assert!(registry_allowed(&listed, "10.0.0.7:443"));
        assert!(!registry_allowed(&listed, "127.0.0.1:5001"));
        assert!(!registry_allowed(&[], "docker.io"));
    }
}
