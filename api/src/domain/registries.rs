//! Registry credentials (Daytona's `/docker-registry`): per organization, matched to image references by the
//! registry host their `url` names, handed to a runner only for a job of the organization that pulls from that
//! host, and never returned by the API (responses carry no password). See `super::images` for which images are
//! pulled at all.

use sandbar_proto::runner::{JobKind, RegistryAuth, registry_host};

use super::images;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, registries as rows, registries::RegistryRow};

/// Registries an organization may hold.
pub const MAX_PER_ORG: i64 = 100;
/// Longest name, URL, username, project or password accepted.
const MAX_FIELD: usize = 1024;

/// What a create or an update asks for (an update without a password keeps the stored one).
#[derive(Debug, Default)]
pub struct Fields {
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: Option<String>,
    pub project: Option<String>,
}

/// The registry host (`host[:port]`, lowercase) a registry URL names, as image references spell it: scheme and
/// path dropped, Docker Hub's many names as `docker.io`.
pub fn host_of(url: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::bad_request(format!(
            "url {url:?} is not a registry address: give host[:port] (e.g. registry.example.com or \
             127.0.0.1:5000), optionally with https://"
        ))
    };
    let u = url.trim();
    let u = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://")).unwrap_or(u);
    let host = u.split('/').next().unwrap_or_default().to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host.as_str(), None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        && !name.starts_with(['-', '.']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !name_ok || !port_ok || u.contains(['@', '?', '#', ' ']) {
        return Err(bad());
    }
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "hub.docker.com" => "docker.io".into(),
        _ => host,
    })
}

fn checked(field: &str, value: &str, required: bool) -> ApiResult<()> {
    if required && value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{field} is required")));
    }
    if value.len() > MAX_FIELD || value.contains('\0') {
        return Err(ApiError::bad_request(format!("{field} must be at most {MAX_FIELD} bytes, without NUL")));
    }
    Ok(())
}

/// Checks `f` and answers the registry host it names; the host must be one the operator lets images be pulled
/// from, or the credentials could never be used.
fn validate(app: &App, f: &Fields) -> ApiResult<String> {
    checked("name", &f.name, true)?;
    checked("url", &f.url, true)?;
    checked("username", &f.username, true)?;
    if let Some(p) = &f.password {
        checked("password", p, true)?;
    }
    checked("project", f.project.as_deref().unwrap_or_default(), false)?;
    let host = host_of(&f.url)?;
    if !images::registry_allowed(&app.config.allowed_registries, &host) {
        return Err(ApiError::bad_request(format!(
            "registry {host} is not one this installation pulls from (the operator's --allowed-registry list)"
        )));
    }
    Ok(host)
}

pub async fn create(app: &App, org: &str, f: Fields) -> ApiResult<RegistryRow> {
    let host = validate(app, &f)?;
    let password = f.password.ok_or_else(|| ApiError::bad_request("password is required"))?;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    store::orgs::lock_org(app.db.kind, &mut tx, org).await?;
    if rows::count(&mut tx, org).await? >= MAX_PER_ORG {
        return Err(ApiError::forbidden(format!(
            "the organization has {MAX_PER_ORG} registries, the most it may hold; delete one first"
        )));
    }
    let row = RegistryRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.to_owned(),
        name: f.name.trim().to_owned(),
        url: f.url.trim().to_owned(),
        host,
        username: f.username,
        password,
        project: f.project.unwrap_or_default(),
        registry_type: "organization".into(),
        created_at: now,
        updated_at: now,
    };
    rows::insert(&mut tx, &row).await?;
    tx.commit().await?;
    tracing::info!(registry_id = %row.id, org, host = %row.host, "registry credentials saved");
    Ok(row)
}

pub async fn get(app: &App, org: &str, id: &str) -> ApiResult<RegistryRow> {
    let mut conn = app.db.pool.acquire().await?;
    rows::find(&mut conn, org, id).await?.ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Docker registry {id} not found"))
}

pub async fn update(app: &App, org: &str, id: &str, f: Fields) -> ApiResult<RegistryRow> {
    let host = validate(app, &f)?;
    let mut tx = app.db.pool.begin().await?;
    let mut row = rows::find(&mut tx, org, id).await?.ok_or_else(|| not_found(id))?;
    row.name = f.name.trim().to_owned();
    row.url = f.url.trim().to_owned();
    row.host = host;
    row.username = f.username;
    if let Some(p) = f.password {
        row.password = p;
    }
    if let Some(p) = f.project {
        row.project = p;
    }
    row.updated_at = app.now();
    rows::update(&mut tx, &row).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn delete(app: &App, org: &str, id: &str) -> ApiResult<()> {
    let mut conn = app.db.pool.acquire().await?;
    if rows::delete(&mut conn, org, id).await? { Ok(()) } else { Err(not_found(id)) }
}

/// The credentials runner `runner_id` needs for its unfinished job `job_id`: the job's organization's newest entry
/// for the registry of each image the job pulls. 404 for a job of another runner, or one that is finished.
pub async fn for_job(app: &App, runner_id: &str, job_id: &str) -> ApiResult<Vec<RegistryAuth>> {
    let mut conn = app.db.pool.acquire().await?;
    let job = store::jobs::find(&mut conn, job_id, runner_id).await?;
    let Some(job) = job.filter(|j| matches!(j.state.as_str(), "pending" | "claimed")) else {
        return Err(ApiError::not_found(format!("no unfinished job {job_id} for runner {runner_id}")));
    };
    let kind: JobKind = serde_json::from_str(&job.payload).map_err(|e| ApiError::internal("stored job", e))?;
    let (org, images): (String, Vec<String>) = match kind {
        JobKind::CreateSandbox(c) if c.pull => (c.organization_id, vec![c.image]),
        JobKind::PullImage(p) => (p.organization_id, vec![p.image]),
        JobKind::BuildSnapshot(b) if !b.pull.is_empty() => {
            let Some((org, _)) = store::builds::org_and_state(&mut conn, &b.build_id).await? else {
                return Ok(Vec::new());
            };
            (org, b.pull)
        }
        _ => return Ok(Vec::new()),
    };
    let mut out: Vec<RegistryAuth> = Vec::new();
    for image in images {
        let host = registry_host(image.trim());
        if out.iter().any(|a| a.server == host) {
            continue;
        }
        if let Some(r) = rows::for_host(&mut conn, &org, host).await?.into_iter().next() {
            out.push(RegistryAuth { server: r.host, username: r.username, password: r.password });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_urls() {
        assert_eq!(host_of("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(host_of("https://Registry.Example.com/v2/").unwrap(), "registry.example.com");
        assert_eq!(host_of("http://localhost:5000/team").unwrap(), "localhost:5000");
        assert_eq!(host_of("https://index.docker.io/v1/").unwrap(), "docker.io");
        assert_eq!(host_of("docker.io").unwrap(), "docker.io");
        for bad in ["", "https://", "user:pw@host", "host:99999", "host:0", "a b", "-x.com", "host:port"] {
            assert!(host_of(bad).is_err(), "{bad:?}");
        }
    }
}
