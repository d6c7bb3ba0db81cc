//! The Daytona sandbox endpoints (`/api/sandbox...`), exactly as the Daytona Python SDK 0.226.1 calls them: status
//! codes, camelCase names and strict JSON types. Handlers parse and check the request, call `crate::domain`
//! (every lifecycle action goes through the state machine) and answer the sandbox as [`SandboxDto`].

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use sandbar_proto::runner::SandboxState;

use super::auth::Caller;
use super::dto::{CreateSandboxBody, LabelsBody, ListSandboxesResponse, ResizeBody};
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::domain::apply::act;
use crate::domain::sandboxes::{
    self, Change, DEFAULT_AUTO_ARCHIVE, DEFAULT_AUTO_DELETE, DEFAULT_AUTO_STOP, ImageAsk, NewSandbox, check_interval,
    check_resources,
};
use crate::domain::state::{self, Action};
use crate::domain::{lifecycle, network};
use crate::jobs::resize;
use crate::store::b;
use crate::store::sandboxes::{self as rows, ListFilter, Row, Setting};

pub const MAX_LIST_LIMIT: i64 = 1000;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/sandbox", post(create).get(list))
        .route("/sandbox/{id}", axum::routing::get(get_one).delete(delete))
        .route("/sandbox/{id}/start", post(start))
        .route("/sandbox/{id}/stop", post(stop))
        .route("/sandbox/{id}/archive", post(archive))
        .route("/sandbox/{id}/recover", post(recover))
        .route("/sandbox/{id}/resize", post(resize))
        .route("/sandbox/{id}/labels", put(set_labels))
        .route("/sandbox/{id}/public/{public}", post(set_public))
        .route("/sandbox/{id}/autostop/{n}", post(set_autostop))
        .route("/sandbox/{id}/autoarchive/{n}", post(set_autoarchive))
        .route("/sandbox/{id}/autodelete/{n}", post(set_autodelete))
        .route("/sandbox/{id}/last-activity", post(last_activity))
}

/// The sandbox as the SDK reads it.
pub(super) fn ok(app: &App, row: &Row) -> Response {
    Json(row.to_dto(app)).into_response()
}

/// Checks what can be checked without the database, in the order the SDK's users meet the errors.
fn check_create(app: &App, body: &CreateSandboxBody) -> ApiResult<Option<String>> {
    check_resources(app, body.cpu, body.memory, body.disk, body.gpu)?;
    if body.kvm.unwrap_or(false) {
        return Err(ApiError::bad_request("KVM is not available on sandbar; omit kvm or set it to false"));
    }
    if body.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "volumes are not supported by sandbar yet; create the sandbox without volumes",
        ));
    }
    if let Some(n) = body.auto_stop_interval {
        check_interval("autoStopInterval", n, 0)?;
    }
    if let Some(n) = body.auto_archive_interval {
        check_interval("autoArchiveInterval", n, 0)?;
    }
    if let Some(n) = body.auto_delete_interval {
        // Daytona's SDK sends any negative number for "never".
        check_interval("autoDeleteInterval", n.max(-1), -1)?;
    }
    network::refuse_domains(body.domain_allow_list.as_deref())?;
    Ok(body.network_allow_list.as_deref().map(network::normalise_allow_list).transpose()?.flatten())
}

/// `POST /sandbox`: 200 with the new sandbox, once it left `creating` or after the configured wait.
async fn create(State(app): State<App>, caller: Caller, Json(body): Json<CreateSandboxBody>) -> ApiResult<Response> {
    let allow_list = check_create(&app, &body)?;
    let image = match (&body.snapshot, &body.image, body.build_info) {
        (Some(s), _, _) if !s.trim().is_empty() => ImageAsk::Snapshot(s.trim().to_owned()),
        (_, Some(i), _) if !i.trim().is_empty() => ImageAsk::Image(i.trim().to_owned()),
        (_, _, Some(bi)) => {
            ImageAsk::Build { dockerfile: bi.dockerfile_content, context_hashes: bi.context_hashes.unwrap_or_default() }
        }
        _ => ImageAsk::Default,
    };
    let auto_delete = if body.ephemeral.unwrap_or(false) {
        0
    } else {
        body.auto_delete_interval.unwrap_or(DEFAULT_AUTO_DELETE).max(-1)
    };
    let new = NewSandbox {
        name: body.name,
        image,
        user: body.user,
        env: body.env.unwrap_or_default(),
        labels: body.labels.unwrap_or_default(),
        public: body.public.unwrap_or(false),
        target: body.target,
        cpu: body.cpu,
        memory: body.memory,
        disk: body.disk,
        auto_stop: body.auto_stop_interval.unwrap_or(DEFAULT_AUTO_STOP),
        auto_archive: body.auto_archive_interval.unwrap_or(DEFAULT_AUTO_ARCHIVE),
        auto_delete,
        network_block_all: body.network_block_all.unwrap_or(false),
        network_allow_list: allow_list,
        linked_sandbox: body.linked_sandbox,
    };
    let row = sandboxes::create(&app, &caller.organization_id, new).await?;
    let row = sandboxes::wait_while_creating(&app, row).await?;
    Ok(ok(&app, &row))
}

async fn get_one(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let mut conn = app.db.pool.acquire().await?;
    let row = sandboxes::find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(ok(&app, &row))
}

fn encode_cursor(created_at: i64, id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(c: &str) -> ApiResult<(i64, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid cursor: pass the nextCursor of the previous page unchanged");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = s.split_once(':').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_owned()))
}

/// `GET /sandbox`: newest first; `labels` (a JSON object), `states`, `id`, `name`, `cursor`, `limit`.
async fn list(State(app): State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let limit = q.int("limit")?.unwrap_or(100);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")));
    }
    let labels: BTreeMap<String, String> = match q.get("labels").filter(|l| !l.is_empty()) {
        Some(l) => serde_json::from_str(l).map_err(|e| {
            ApiError::bad_request(format!("labels must be a JSON object of strings, like {{\"k\":\"v\"}}: {e}"))
        })?,
        None => BTreeMap::new(),
    };
    let mut states = Vec::new();
    for s in q.all("states").flat_map(|s| s.split(',')).filter(|s| !s.is_empty()) {
        let st = state::parse(s);
        if st == SandboxState::Unknown && s != "unknown" {
            return Err(ApiError::bad_request(format!("unknown sandbox state {s:?} in states")));
        }
        states.push(st.as_str().to_owned());
    }
    let after = q.get("cursor").filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    let filter = ListFilter {
        org: caller.organization_id,
        states,
        id: q.get("id").filter(|v| !v.is_empty()).map(str::to_owned),
        name: q.get("name").filter(|v| !v.is_empty()).map(str::to_owned),
        labels,
        after,
        limit: limit + 1,
    };
    let mut rows = rows::list(&app.db.pool, filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.created_at, &r.id))
    } else {
        None
    };
    let items = rows.iter().map(|r| r.to_dto(&app)).collect();
    Ok(Json(ListSandboxesResponse { items, next_cursor }).into_response())
}

async fn start(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    // A paused sandbox is resumed, not started.
    if let Some(row) = lifecycle::resume_if_paused(&app, &caller.organization_id, &id).await? {
        return Ok(ok(&app, &row));
    }
    let row = act(&app, Some(&caller.organization_id), &id, Action::Start, None).await?;
    Ok(ok(&app, &row))
}

async fn stop(State(app): State<App>, caller: Caller, Path(id): Path<String>, q: QueryPairs) -> ApiResult<Response> {
    let force = q.bool("force")?.unwrap_or(false);
    let row = act(&app, Some(&caller.organization_id), &id, Action::Stop { force }, None).await?;
    Ok(ok(&app, &row))
}

async fn delete(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = act(&app, Some(&caller.organization_id), &id, Action::Delete, None).await?;
    Ok(ok(&app, &row))
}

async fn archive(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = act(&app, Some(&caller.organization_id), &id, Action::Archive, None).await?;
    Ok(ok(&app, &row))
}

async fn recover(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = act(&app, Some(&caller.organization_id), &id, Action::Recover, None).await?;
    Ok(ok(&app, &row))
}

async fn resize(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ResizeBody>,
) -> ApiResult<Response> {
    let ask = resize::Ask { cpu: body.cpu, memory: body.memory, disk: body.disk };
    let action = Action::Resize { disk: body.disk.is_some() };
    let row = act(&app, Some(&caller.organization_id), &id, action, Some(&ask)).await?;
    Ok(ok(&app, &row))
}

async fn set_labels(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<LabelsBody>,
) -> ApiResult<Response> {
    let row = sandboxes::change(&app, &caller.organization_id, &id, Change::Labels(body.labels)).await?;
    Ok(Json(LabelsBody { labels: row.labels_map() }).into_response())
}

async fn set(app: &App, caller: &Caller, id: &str, setting: Setting, value: i64) -> ApiResult<Response> {
    let row = sandboxes::change(app, &caller.organization_id, id, Change::Set(setting, value)).await?;
    Ok(ok(app, &row))
}

async fn set_public(
    State(app): State<App>,
    caller: Caller,
    Path((id, public)): Path<(String, String)>,
) -> ApiResult<Response> {
    let public = match public.as_str() {
        "true" => true,
        "false" => false,
        other => return Err(ApiError::bad_request(format!("public must be true or false, got {other:?}"))),
    };
    set(&app, &caller, &id, Setting::Public, b(public)).await
}

async fn set_autostop(
    State(app): State<App>,
    caller: Caller,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    check_interval("auto-stop interval", n, 0)?;
    set(&app, &caller, &id, Setting::AutoStop, n).await
}

async fn set_autoarchive(
    State(app): State<App>,
    caller: Caller,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    check_interval("auto-archive interval", n, 0)?;
    let n = if n == 0 { DEFAULT_AUTO_ARCHIVE } else { n };
    set(&app, &caller, &id, Setting::AutoArchive, n).await
}

async fn set_autodelete(
    State(app): State<App>,
    caller: Caller,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    check_interval("auto-delete interval", n.max(-1), -1)?;
    set(&app, &caller, &id, Setting::AutoDelete, n.max(-1)).await
}

async fn last_activity(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    if !rows::touch_in_org(&app.db.pool, &caller.organization_id, &id, app.now()).await? {
        return Err(ApiError::sandbox_not_found(&id));
    }
    Ok(StatusCode::CREATED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        let c = encode_cursor(12, "abc");
        assert_eq!(decode_cursor(&c).unwrap(), (12, "abc".into()));
        assert!(decode_cursor("!!").is_err());
    }
}
