//! The Daytona sandbox endpoints (`/api/sandbox...`), exactly as the Daytona Python SDK 0.226.1 calls them: status
//! codes, camelCase names and strict JSON types. Handlers parse and check the request, call `crate::domain`
//! (every lifecycle action goes through the state machine) and answer the sandbox as [`SandboxDto`].

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};

use super::auth::Caller;
use super::dto::{CreateSandboxBody, LabelsBody, ResizeBody};
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::domain::apply::act;
use crate::domain::sandboxes::{
    self, Change, DEFAULT_AUTO_ARCHIVE, DEFAULT_AUTO_DELETE, DEFAULT_AUTO_STOP, ImageAsk, NewSandbox, check_interval,
    check_resources,
};
use crate::domain::state::Action;
use crate::domain::{lifecycle, network, volumes};
use crate::jobs::resize;
use crate::store::b;
use crate::store::sandboxes::{self as rows, Row, Setting};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/sandbox", post(create).get(super::sandbox_list::list))
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
    refuse_unsupported(body)?;
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

/// Refuses, naming the field, what sandbar accepts from the SDK but cannot honour (a secret asked for and not
/// given would be worse than an error).
fn refuse_unsupported(body: &CreateSandboxBody) -> ApiResult<()> {
    let refuse =
        |field: &str, why: &str| Err(ApiError::bad_request(format!("{field} is not supported by sandbar: {why}")));
    if body.secrets.as_ref().is_some_and(|s| s.iter().any(|m| !m.is_empty())) {
        return refuse("secrets", "sandbar has no secret store; pass the values in env instead");
    }
    if body.auto_pause_interval.is_some_and(|n| n != 0) {
        return refuse("autoPauseInterval", "use autoStopInterval (a stopped sandbox keeps its files) or pause it");
    }
    if body.ttl_minutes.is_some_and(|n| n != 0) {
        return refuse("ttlMinutes", "use autoDeleteInterval, or delete the sandbox when it is done");
    }
    if body.otel_endpoint_override.as_deref().is_some_and(|e| !e.trim().is_empty()) {
        return refuse("otelEndpointOverride", "sandbar sends no OpenTelemetry data from sandboxes");
    }
    if body.spot.unwrap_or(false) {
        return refuse("spot", "spot sandboxes are for GPUs, which sandbar does not offer");
    }
    if body.gpu_type.as_ref().is_some_and(|g| !g.is_empty()) {
        return refuse("gpuType", "GPUs are not available on sandbar");
    }
    if let Some(n) = body.queue_timeout
        && n < 1
    {
        return Err(ApiError::bad_request(format!("queueTimeout must be a positive number of minutes, got {n}")));
    }
    Ok(())
}

/// The environment that routes a sandbox's HTTP(S) through `outboundProxyUrl` (as Daytona does: the standard
/// proxy variables, both spellings; a variable the caller set wins).
fn proxy_env(url: &str, env: &mut std::collections::BTreeMap<String, String>) -> ApiResult<()> {
    let url = url.trim();
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
        && url.split_once("://").is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "outboundProxyUrl must be an http:// or https:// URL with a host, got {url:?}"
        )));
    }
    for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.entry(key.to_owned()).or_insert_with(|| url.to_owned());
    }
    Ok(())
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
    let mut env = body.env.unwrap_or_default();
    if let Some(url) = body.outbound_proxy_url.as_deref().filter(|u| !u.trim().is_empty()) {
        proxy_env(url, &mut env)?;
    }
    let mounts = body.volumes.unwrap_or_default().into_iter();
    let new = NewSandbox {
        name: body.name,
        image,
        user: body.user,
        env,
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
        volumes: mounts
            .map(|m| volumes::MountAsk { volume: m.volume_id, mount_path: m.mount_path, subpath: m.subpath })
            .collect(),
    };
    let row = sandboxes::create(&app, &caller.organization_id, new).await?;
    let row = sandboxes::wait_while_creating(&app, row).await?;
    Ok(ok(&app, &row))
}

async fn get_one(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let mut conn = app.db.read.acquire().await?;
    let row = sandboxes::find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(ok(&app, &row))
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
