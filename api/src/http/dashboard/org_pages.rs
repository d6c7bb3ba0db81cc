//! The dashboard's organization pages: volumes, registry credentials, and the organization's quotas and usage.
//! Rendered here as HTML strings (every value through [`esc`]) from the same rows and decisions the REST endpoints
//! use; the script (`api/assets/dashboard/org.js`, only on these pages) sends the creates and deletes to
//! `/api/volumes` and `/api/docker-registry` with the session's CSRF token, through `dashboard.js`'s `api()`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::pages::{ago, esc, layout};
use super::{PageSession, html};
use crate::App;
use crate::domain::image_quota::human;
use crate::domain::quota::{self, Overview};
use crate::error::ApiError;
use crate::store::{registries, volumes};

/// The script of these pages (served as `/dashboard/assets/org.js`).
pub const SCRIPT: &str = include_str!("../../../assets/dashboard/org.js");

const SCRIPT_TAG: &str = r#"<script src="/dashboard/assets/org.js" defer></script>"#;

/// `GET /dashboard/volumes`: the organization's volumes, with the sandboxes that mount them.
pub async fn volumes(State(app): State<App>, PageSession(s): PageSession) -> Response {
    let org = &s.organization_id;
    let (list, mounts) = match async {
        Ok::<_, sqlx::Error>((
            volumes::list(&app.db.pool, org).await?,
            volumes::mounts_of_org(&app.db.pool, org).await?,
        ))
    }
    .await
    {
        Ok(v) => v,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (volume, sandbox, name) in &mounts {
        users.entry(volume.as_str()).or_default().push(format!(
            r#"<a href="/dashboard/sandboxes/{}">{}</a>"#,
            esc(sandbox),
            esc(name)
        ));
    }
    let now = app.now();
    let mut rows = String::new();
    for v in &list {
        let (id, name, state) = (esc(&v.id), esc(&v.name), esc(&v.state));
        let size = if v.runner_id.is_none() && v.size_bytes == 0 {
            "empty (on no runner yet)".to_owned()
        } else {
            human(v.size_bytes)
        };
        let mounted = users.get(v.id.as_str()).map(|u| u.join(", ")).unwrap_or_else(|| "–".to_owned());
        let reason = v.error_reason.as_deref().map(|r| format!(" — {}", esc(r))).unwrap_or_default();
        let delete = if v.state == "deleting" {
            String::new()
        } else {
            format!(
                r#"<button type="button" data-action="delete" data-id="{id}" data-name="{name}" aria-label="Delete volume {name}">Delete</button>"#
            )
        };
        let _ = write!(
            rows,
            r#"<tr data-id="{id}"><th scope="row">{name}<div class="sub">{id}</div></th><td><span class="state state-{state}">{state}</span>{reason}</td><td>{size}</td><td>{mounted}</td><td>{created} ago</td><td class="actions">{delete}</td></tr>"#,
            created = ago(now, v.created_at),
        );
    }
    if list.is_empty() {
        rows.push_str(r#"<tr class="none"><td colspan="6" class="empty">No volumes yet.</td></tr>"#);
    }
    let main = format!(
        r#"<h1>Volumes</h1>
<div class="table-wrap"><table id="volumes"><thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Size</th><th scope="col">Mounted by</th><th scope="col">Created</th><th scope="col">Actions</th></tr></thead>
<tbody id="volume-rows">{rows}</tbody></table></div>
<p class="hint">A volume's data lives on the runner of the first sandbox that mounts it; sizes are as that runner last measured them. A volume a sandbox still mounts (a stopped or archived one too) cannot be deleted.</p>
<section aria-labelledby="new-volume-h"><h2 id="new-volume-h">New volume</h2>
<form id="create-volume"><label>Name <input name="name" required maxlength="63" autocomplete="off" spellcheck="false"></label>
<button type="submit">Create volume</button></form></section>{SCRIPT_TAG}"#
    );
    html(StatusCode::OK, layout("Volumes", Some(&s), "volumes", &main))
}

/// `GET /dashboard/registries`: the organization's registry credentials (never a password).
pub async fn registries(State(app): State<App>, PageSession(s): PageSession) -> Response {
    let list = match registries::list(&app.db.pool, &s.organization_id).await {
        Ok(l) => l,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let now = app.now();
    let mut rows = String::new();
    for r in &list {
        let (id, name) = (esc(&r.id), esc(&r.name));
        let project = if r.project.is_empty() { "–".to_owned() } else { esc(&r.project) };
        let _ = write!(
            rows,
            r#"<tr data-id="{id}"><th scope="row">{name}</th><td><code>{url}</code></td><td>{user}</td><td>{project}</td><td>{created} ago</td><td class="actions"><button type="button" data-action="delete" data-id="{id}" data-name="{name}" aria-label="Delete registry {name}">Delete</button></td></tr>"#,
            url = esc(&r.url),
            user = esc(&r.username),
            created = ago(now, r.created_at),
        );
    }
    if list.is_empty() {
        rows.push_str(r#"<tr class="none"><td colspan="6" class="empty">No registry credentials yet.</td></tr>"#);
    }
    let main = format!(
        r#"<h1>Registries</h1>
<div class="table-wrap"><table id="registries"><thead><tr><th scope="col">Name</th><th scope="col">URL</th><th scope="col">Username</th><th scope="col">Project</th><th scope="col">Created</th><th scope="col">Actions</th></tr></thead>
<tbody id="registry-rows">{rows}</tbody></table></div>
<p class="hint">Runners pull images from a registry with these credentials, for this organization's sandboxes only. Passwords are never shown again.</p>
<section aria-labelledby="new-registry-h"><h2 id="new-registry-h">New registry credentials</h2>
<form id="create-registry"><div class="grid">
<label>Name <input name="name" required maxlength="1024" autocomplete="off"></label>
<label>URL <input name="url" required maxlength="1024" placeholder="registry.example.com" autocomplete="off" spellcheck="false"></label>
<label>Username <input name="username" required maxlength="1024" autocomplete="off" spellcheck="false"></label>
<label>Password <input name="password" type="password" required maxlength="1024" autocomplete="new-password"></label>
<label>Project <input name="project" maxlength="1024" placeholder="optional" autocomplete="off"></label>
</div><button type="submit">Add registry</button></form></section>{SCRIPT_TAG}"#
    );
    html(StatusCode::OK, layout("Registries", Some(&s), "registries", &main))
}

/// One row of the quotas table: `key` names it for scripts and tests, `used` and `limit` in `unit`s (`None`: no
/// limit), shown by `show`.
fn quota_row(out: &mut String, key: &str, label: &str, used: i64, limit: Option<i64>, show: &dyn Fn(i64) -> String) {
    let limit_attr = limit.map(|l| l.to_string()).unwrap_or_default();
    let (limit_text, share) = match limit {
        Some(l) if l > 0 => {
            let pct = used.saturating_mul(100) / l;
            let high = l - l / 5;
            (
                show(l),
                format!(
                    r#"<meter id="m-{key}" min="0" max="{l}" low="{high}" high="{high}" optimum="0" value="{v}" aria-labelledby="q-{key}">{pct}%</meter> {pct}%"#,
                    v = used.clamp(0, l),
                ),
            )
        }
        Some(l) => (show(l), "–".to_owned()),
        None => ("no limit".to_owned(), "–".to_owned()),
    };
    let _ = write!(
        out,
        r#"<tr data-quota="{key}" data-used="{used}" data-limit="{limit_attr}"><th scope="row" id="q-{key}">{label}</th><td>{used_text}</td><td>{limit_text}</td><td>{share}</td></tr>"#,
        used_text = show(used),
    );
}

fn quota_rows(o: &Overview) -> String {
    let mut out = String::new();
    let count = |n: i64| n.to_string();
    let vcpu = |n: i64| format!("{n} vCPU");
    let gib = |n: i64| format!("{n} GiB");
    quota_row(&mut out, "sandboxes", "Sandboxes", o.sandboxes, Some(o.quota.sandboxes), &count);
    quota_row(&mut out, "cpu", "CPU (running sandboxes)", o.used.cpu, Some(o.quota.cpu), &vcpu);
    quota_row(&mut out, "memory", "Memory (running sandboxes)", o.used.memory, Some(o.quota.memory), &gib);
    quota_row(&mut out, "disk", "Disk (all sandboxes)", o.used.disk, Some(o.quota.disk), &gib);
    quota_row(
        &mut out,
        "image-bytes",
        "Image storage (snapshots, builds, forks)",
        o.image_bytes,
        o.image_limit,
        &human,
    );
    quota_row(&mut out, "volumes", "Volumes", o.volumes, Some(o.volume_quota), &count);
    quota_row(&mut out, "volume-bytes", "Volume storage", o.volume_bytes, Some(o.volume_byte_limit), &human);
    out
}

/// `GET /dashboard/organization`: the organization's id, quotas and current usage.
pub async fn organization(State(app): State<App>, PageSession(s): PageSession) -> Response {
    let o = match quota::overview(&app, &s.organization_id, &s.organization_id).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let id = esc(&o.organization_id);
    let main = format!(
        r#"<h1>Organization</h1>
<dl class="facts"><dt>Name</dt><dd>{name}</dd><dt>ID</dt><dd><code id="organization-id">{id}</code></dd>
<dt>Usage API</dt><dd><a href="/api/organizations/{id}/usage"><code>GET /api/organizations/{id}/usage</code></a></dd></dl>
<div class="table-wrap"><table id="quotas"><caption>Quotas and current usage</caption>
<thead><tr><th scope="col">Resource</th><th scope="col">In use</th><th scope="col">Limit</th><th scope="col">Share</th></tr></thead>
<tbody>{rows}</tbody></table></div>
<p class="hint">CPU and memory count the sandboxes that hold them (not stopped, archived or failed ones); disk counts every sandbox that is not deleted. Volume and image sizes are as the runners last measured them.</p>"#,
        name = esc(&o.name),
        rows = quota_rows(&o),
    );
    html(StatusCode::OK, layout("Organization", Some(&s), "organization", &main))
}
