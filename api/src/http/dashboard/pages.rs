//! The dashboard's pages, rendered here as HTML strings (every value escaped by [`esc`]); the embedded script
//! (`api/assets/dashboard/dashboard.js`) only sends the REST calls buttons and forms ask for and applies the live
//! updates of [`super::events`].

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandbar_proto::runner::SandboxState;

use super::{PageSession, html};
use crate::App;
use crate::domain::sessions::Session;
use crate::domain::state;
use crate::error::{ApiError, ApiResult};
use crate::http::error::{Path, QueryPairs};
use crate::store::orgs;
use crate::store::sandboxes::{self as rows, ListFilter, Row};

/// Most sandboxes one page lists.
pub const PAGE_ROWS: i64 = 200;

/// States the filter offers.
const FILTER_STATES: &[&str] =
    &["started", "starting", "creating", "stopped", "stopping", "archived", "paused", "error", "build_failed"];

/// Text as HTML (element content and quoted attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn layout(title: &str, session: Option<&Session>, active: &str, main: &str) -> String {
    layout_with(title, session, active, main, "")
}

/// [`layout`] with more in the page's head (the sandbox page's terminal scripts).
fn layout_with(title: &str, session: Option<&Session>, active: &str, main: &str, head: &str) -> String {
    let mut nav = String::new();
    if let Some(s) = session {
        nav.push_str(r#"<nav aria-label="Main"><ul>"#);
        for (href, label) in [
            ("sandboxes", "Sandboxes"),
            ("snapshots", "Snapshots"),
            ("keys", "API keys"),
            ("volumes", "Volumes"),
            ("registries", "Registries"),
            ("organization", "Organization"),
        ] {
            let current = if href == active { r#" aria-current="page""# } else { "" };
            let _ = write!(nav, r#"<li><a href="/dashboard/{href}"{current}>{label}</a></li>"#);
        }
        let _ = write!(
            nav,
            r#"</ul><form method="post" action="/dashboard/logout"><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form></nav>"#,
            esc(&s.csrf_token)
        );
    }
    let csrf = session.map(|s| esc(&s.csrf_token)).unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}"><title>{title} · sandbar</title>
<link rel="stylesheet" href="/dashboard/assets/dashboard.css"><script src="/dashboard/assets/dashboard.js" defer></script>{head}</head>
<body><header><a class="brand" href="/dashboard/sandboxes">sandbar</a>{nav}</header>
<main id="main">{main}</main><div id="toast" role="status" aria-live="polite"></div></body></html>"#,
        title = esc(title),
    )
}

/// The sign-in page (with an error, after a refused attempt).
pub fn login(error: Option<&str>) -> String {
    let error = error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, esc(e))).unwrap_or_default();
    let main = format!(
        r#"<section class="signin"><h1>Sign in</h1>{error}
<form method="post" action="/dashboard/login" autocomplete="off">
<label for="key">API key</label>
<input id="key" name="key" type="password" required autocomplete="off" spellcheck="false" placeholder="sbk_…">
<button type="submit">Sign in</button></form>
<p class="hint">Use a key from <code>sandbar up</code> (<code>DAYTONA_API_KEY</code>) or one made on the API keys page.
The key is exchanged for a session; it is not kept in this browser.</p></section>"#
    );
    layout("Sign in", None, "", &main)
}

/// `3m`, `2h`, `5d` since `then`.
pub fn ago(now: i64, then: i64) -> String {
    let s = ((now - then) / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The list's filter, from `?state=started&label=team=me`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<String>,
    pub label: Option<(String, String)>,
}

impl Filter {
    pub fn parse(q: &QueryPairs) -> ApiResult<Self> {
        let state = match q.get("state").filter(|s| !s.is_empty()) {
            Some(s) if state::parse(s) == SandboxState::Unknown && s != "unknown" => {
                return Err(ApiError::bad_request(format!("unknown sandbox state {s:?}")));
            }
            s => s.map(str::to_owned),
        };
        let label = match q.get("label").map(str::trim).filter(|s| !s.is_empty()) {
            Some(l) => {
                let (k, v) = l.split_once('=').ok_or_else(|| ApiError::bad_request("label filter is key=value"))?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            }
            None => None,
        };
        Ok(Self { state, label })
    }

    /// This filter as a query string (for the events URL).
    pub fn query(&self) -> String {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut q = Vec::new();
        if let Some(s) = &self.state {
            q.push(format!("state={}", enc(s)));
        }
        if let Some((k, v)) = &self.label {
            q.push(format!("label={}", enc(&format!("{k}={v}"))));
        }
        q.join("&")
    }

    pub fn list_filter(&self, org: &str) -> ListFilter {
        ListFilter {
            org: org.to_owned(),
            states: self.state.iter().cloned().collect(),
            labels: self.label.iter().cloned().collect(),
            limit: PAGE_ROWS,
            ..ListFilter::default()
        }
    }
}

fn gib(n: i64) -> String {
    format!("{n} GiB")
}

/// The rows of the sandboxes table (what the live updates replace).
pub fn sandbox_rows(app: &App, list: &[Row]) -> String {
    let now = app.now();
    if list.is_empty() {
        return r#"<tr><td colspan="8" class="empty">No sandboxes here yet.</td></tr>"#.to_owned();
    }
    let mut out = String::new();
    for r in list {
        let st = r.effective_state(app, now);
        let labels: String = r
            .labels_map()
            .iter()
            .map(|(k, v)| format!(r#"<span class="label">{}={}</span> "#, esc(k), esc(v)))
            .collect();
        let id = esc(&r.id);
        let name = esc(&r.name);
        let runner = esc(r.runner_id.as_deref().unwrap_or("–"));
        let can = |a: &str| match a {
            "start" => matches!(st, SandboxState::Stopped | SandboxState::Archived | SandboxState::Paused),
            "stop" => matches!(st, SandboxState::Started),
            "archive" => matches!(st, SandboxState::Stopped),
            "fork" => matches!(st, SandboxState::Started | SandboxState::Stopped),
            _ => true,
        };
        let mut actions = String::new();
        let all =
            [("start", "Start"), ("stop", "Stop"), ("fork", "Fork"), ("archive", "Archive"), ("delete", "Delete")];
        for (a, label) in all {
            if can(a) {
                let _ = write!(
                    actions,
                    r#"<button type="button" data-action="{a}" data-id="{id}" aria-label="{label} {name}">{label}</button>"#
                );
            }
        }
        let _ = write!(
            out,
            r#"<tr data-id="{id}" data-state="{state}"><th scope="row"><a href="/dashboard/sandboxes/{id}">{name}</a><div class="sub">{id}</div></th><td><span class="state state-{state}">{state}</span></td><td>{labels}</td><td>{cpu} CPU · {mem} · {disk}</td><td>{runner}</td><td>{age}</td><td>{active}</td><td class="actions">{actions}</td></tr>"#,
            state = st.as_str(),
            cpu = r.cpu,
            mem = gib(r.memory),
            disk = gib(r.disk),
            age = ago(now, r.created_at),
            active = ago(now, r.last_activity_at),
        );
    }
    out
}

/// `GET /dashboard/sandboxes`.
pub async fn sandboxes(State(app): State<App>, PageSession(s): PageSession, q: QueryPairs) -> Response {
    let filter = match Filter::parse(&q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let list = match rows::list(&app.db.pool, filter.list_filter(&s.organization_id)).await {
        Ok(l) => l,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut options = String::from(r#"<option value="">any state</option>"#);
    for st in FILTER_STATES {
        let sel = if filter.state.as_deref() == Some(st) { " selected" } else { "" };
        let _ = write!(options, r#"<option value="{st}"{sel}>{st}</option>"#);
    }
    let label = filter.label.as_ref().map(|(k, v)| esc(&format!("{k}={v}"))).unwrap_or_default();
    let main = format!(
        r#"<h1>Sandboxes</h1>
<form class="filters" method="get" action="/dashboard/sandboxes" role="search">
<label>State <select name="state">{options}</select></label>
<label>Label <input name="label" value="{label}" placeholder="key=value"></label>
<button type="submit">Filter</button></form>
<div class="table-wrap"><table id="sandboxes" data-events="/dashboard/sandboxes/events?{events}">
<caption class="live"><span id="live-status">live</span></caption>
<thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Labels</th><th scope="col">Resources</th><th scope="col">Runner</th><th scope="col">Age</th><th scope="col">Last activity</th><th scope="col">Actions</th></tr></thead>
<tbody id="sandbox-rows">{rows}</tbody></table></div>
{create}"#,
        events = esc(&filter.query()),
        rows = sandbox_rows(&app, &list),
        create = CREATE_FORM,
    );
    html(StatusCode::OK, layout("Sandboxes", Some(&s), "sandboxes", &main))
}

const CREATE_FORM: &str = r#"<details class="create"><summary>Create a sandbox</summary>
<form id="create-sandbox">
<div class="grid">
<label>Name <input name="name" placeholder="optional"></label>
<label>Snapshot <input name="snapshot" placeholder="default image"></label>
<label>Image <input name="image" placeholder="or an allowed image"></label>
<label>CPU <input name="cpu" type="number" min="1" placeholder="default"></label>
<label>Memory (GiB) <input name="memory" type="number" min="1" placeholder="default"></label>
<label>Disk (GiB) <input name="disk" type="number" min="1" placeholder="default"></label>
<label>Auto-stop (min, 0 = never) <input name="autoStopInterval" type="number" min="0" placeholder="15"></label>
<label>Auto-archive (min) <input name="autoArchiveInterval" type="number" min="0" placeholder="default"></label>
<label>Auto-delete (min, -1 = never) <input name="autoDeleteInterval" type="number" min="-1" placeholder="never"></label>
<label>Labels (key=value, one a line) <textarea name="labels" rows="2"></textarea></label>
<label>Environment (KEY=value, one a line) <textarea name="env" rows="2"></textarea></label>
<label>Allowed networks (CIDRs, comma-separated) <input name="networkAllowList" placeholder="all"></label>
<label class="check"><input name="networkBlockAll" type="checkbox"> Block all network</label>
</div>
<button type="submit">Create</button></form></details>"#;

/// `GET /dashboard/sandboxes/{id}`: details, SSH command and preview links, and the workbench (terminal, files,
/// logs, ports, usage: [`super::workbench`]).
pub async fn sandbox(
    State(app): State<App>,
    PageSession(s): PageSession,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let row = async {
        let mut conn = app.db.pool.acquire().await?;
        crate::domain::sandboxes::find(&app, &mut conn, &s.organization_id, &id, false).await
    }
    .await;
    let row = match row {
        Ok(r) => r,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            let main = format!("<h1>Not found</h1><p>No sandbox {} in this organization.</p>", esc(&id));
            return html(StatusCode::NOT_FOUND, layout("Not found", Some(&s), "sandboxes", &main));
        }
        Err(e) => return e.into_response(),
    };
    let now = app.now();
    let st = row.effective_state(&app, now);
    let labels: String =
        row.labels_map().iter().map(|(k, v)| format!(r#"<span class="label">{}={}</span> "#, esc(k), esc(v))).collect();
    let env: String = row.env_map().keys().map(|k| format!("<code>{}</code> ", esc(k))).collect();
    let id = esc(&row.id);
    let main = format!(
        r#"<h1>{name}</h1>
<dl class="facts"><dt>ID</dt><dd><code>{id}</code></dd><dt>State</dt><dd><span class="state state-{state}">{state}</span>{reason}</dd>
<dt>Resources</dt><dd>{cpu} CPU · {mem} GiB memory · {disk} GiB disk</dd><dt>Image</dt><dd><code>{image}</code></dd>
<dt>Labels</dt><dd>{labels}</dd><dt>Environment</dt><dd>{env}</dd><dt>Runner</dt><dd>{runner}</dd>
<dt>Created</dt><dd>{age} ago</dd><dt>Last activity</dt><dd>{active} ago</dd>
<dt>Timers</dt><dd>auto-stop {stop} min · auto-archive {archive} min · auto-delete {delete}</dd></dl>
<section aria-labelledby="ssh-h"><h2 id="ssh-h">SSH</h2>
<button type="button" data-ssh="{id}">Make an SSH command</button>
<p><label for="ssh-out">Command (valid for an hour)</label><input id="ssh-out" readonly></p></section>
<section aria-labelledby="preview-h"><h2 id="preview-h">Preview links</h2>
<form id="preview-form" data-id="{id}"><label>Port <input name="port" type="number" min="1" max="65535" required value="8080"></label>
<button type="submit">Make a link</button></form><ul id="preview-links"></ul></section>"#,
        name = esc(&row.name),
        state = st.as_str(),
        reason = row.error_reason.as_deref().map(|r| format!(" — {}", esc(r))).unwrap_or_default(),
        cpu = row.cpu,
        mem = row.memory,
        disk = row.disk,
        image = esc(&row.snapshot),
        runner = esc(row.runner_id.as_deref().unwrap_or("–")),
        age = ago(now, row.created_at),
        active = ago(now, row.last_activity_at),
        stop = row.auto_stop,
        archive = row.auto_archive,
        delete = if row.auto_delete < 0 { "never".to_owned() } else { format!("{} min", row.auto_delete) },
    );
    let main = main
        + &super::workbench::sections(
            &row.id,
            st == SandboxState::Started,
            super::workbench::via_proxy(&headers),
            &app.config.proxy_url,
        );
    let page = layout_with(&row.name, Some(&s), "sandboxes", &main, SANDBOX_HEAD);
    super::html_relaxed_styles(StatusCode::OK, page)
}

/// The sandbox page's terminal (xterm.js and its fit add-on) and its script.
const SANDBOX_HEAD: &str = r#"<link rel="stylesheet" href="/dashboard/assets/xterm.css">
<script src="/dashboard/assets/xterm.js" defer></script><script src="/dashboard/assets/xterm-addon-fit.js" defer></script>
<script src="/dashboard/assets/sandbox.js" defer></script>"#;

/// `GET /dashboard/keys`.
pub async fn keys(State(app): State<App>, PageSession(s): PageSession) -> Response {
    let keys = match orgs::list_keys(&app.db, &s.organization_id).await {
        Ok(k) => k,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let now = app.now();
    let mut rows = String::new();
    for k in &keys {
        let expires = match k.expires_at {
            Some(t) if t <= now => "expired".to_owned(),
            Some(t) => format!("in {}", ago(t, now)),
            None => "never".to_owned(),
        };
        let this = if k.id == s.api_key_id { r#" <span class="label">this session</span>"# } else { "" };
        let name = esc(&k.name);
        let _ = write!(
            rows,
            r#"<tr><th scope="row">{name}{this}</th><td><code>{masked}</code></td><td>{created} ago</td><td>{expires}</td><td><button type="button" data-revoke="{name}" aria-label="Revoke {name}">Revoke</button></td></tr>"#,
            masked = esc(&crate::http::api_keys::masked(k)),
            created = ago(now, k.created_at),
        );
    }
    let main = format!(
        r#"<h1>API keys</h1>
<div class="table-wrap"><table id="keys"><thead><tr><th scope="col">Name</th><th scope="col">Key</th><th scope="col">Created</th><th scope="col">Expires</th><th scope="col">Actions</th></tr></thead>
<tbody>{rows}</tbody></table></div>
<section aria-labelledby="new-key-h"><h2 id="new-key-h">New key</h2>
<form id="create-key"><label>Name <input name="name" required maxlength="100"></label>
<label>Expires <input name="expiresAt" type="datetime-local"></label>
<button type="submit">Create key</button></form>
<div id="new-key" hidden><p role="alert">Copy this key now: it is shown only once.</p>
<label for="new-key-value">New key</label><input id="new-key-value" readonly></div></section>"#
    );
    html(StatusCode::OK, layout("API keys", Some(&s), "keys", &main))
}

/// `GET /dashboard/snapshots`: the script fills it from `GET /api/snapshots` and follows a build's log.
pub async fn snapshots(PageSession(s): PageSession) -> Response {
    let main = r#"<h1>Snapshots and builds</h1>
<div class="table-wrap"><table id="snapshots"><thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Image</th><th scope="col">Resources</th><th scope="col">Created</th><th scope="col">Actions</th></tr></thead>
<tbody id="snapshot-rows"><tr><td colspan="6">Loading…</td></tr></tbody></table></div>
<section aria-labelledby="build-h"><h2 id="build-h">Build a snapshot</h2>
<form id="create-snapshot"><label>Name <input name="name" required></label>
<label>Dockerfile <textarea name="dockerfile" rows="4" required>FROM sandbar-sandbox:default
RUN echo built</textarea></label><button type="submit">Build</button></form></section>
<section aria-labelledby="log-h"><h2 id="log-h">Build log</h2><pre id="build-log" tabindex="0" aria-live="polite"></pre></section>"#;
    html(StatusCode::OK, layout("Snapshots", Some(&s), "snapshots", main))
}
