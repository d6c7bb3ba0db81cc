//! The OpenAPI 3.1 document, served at `/api/openapi.json`: component schemas are derived from the handler types
//! with utoipa; the operations come from [`OPERATIONS`], which tests check against the router both ways: every entry
//! is routed (the document lists no endpoint that does not exist), and every `.route(` under `/api` is an entry (no
//! endpoint, internal ones included, is missing from it).

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, Required, ResponseBuilder,
};

use super::api_keys::{ApiKeyList, ApiKeyResponse, CreateApiKeyBody};
use super::builds::BuildLogsUrl;
use super::dto::{
    CreateSandboxBody, LabelsBody, ListSandboxesResponse, PortPreviewUrl, ResizeBody, SandboxDto, SignedPortPreviewUrl,
    SshAccessDto, SshAccessValidationDto, ToolboxProxyUrl,
};
use super::fork::{CreateSandboxSnapshotBody, ForkSandboxBody};
use super::network::NetworkSettingsBody;
use super::organizations::OrganizationUsageOverview;
use super::registries::{CreateDockerRegistryBody, DockerRegistryDto, UpdateDockerRegistryBody};
use super::snapshots::{CreateSnapshotBody, PaginatedSnapshots, SnapshotDto};
use super::usage::{SandboxUsageDto, UsagePointDto};
use super::volumes::{CreateVolumeBody, VolumeDto};
use crate::App;

/// `(method, path under /api, operation id, request schema, success status, response schema, audience)`.
pub type Operation =
    (&'static str, &'static str, &'static str, Option<&'static str>, u16, Option<&'static str>, &'static str);

pub const OPERATIONS: &[Operation] = &[
    ("POST", "/sandbox", "createSandbox", Some("CreateSandboxBody"), 200, Some("SandboxDto"), "sandbox"),
    ("GET", "/sandbox", "listSandboxes", None, 200, Some("ListSandboxesResponse"), "sandbox"),
    ("GET", "/sandbox/{sandboxIdOrName}", "getSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    ("DELETE", "/sandbox/{sandboxIdOrName}", "deleteSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    ("POST", "/sandbox/{sandboxIdOrName}/start", "startSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    ("POST", "/sandbox/{sandboxIdOrName}/stop", "stopSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    ("POST", "/sandbox/{sandboxIdOrName}/archive", "archiveSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    ("POST", "/sandbox/{sandboxIdOrName}/recover", "recoverSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/resize",
        "resizeSandbox",
        Some("ResizeBody"),
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    (
        "PUT",
        "/sandbox/{sandboxIdOrName}/labels",
        "replaceLabels",
        Some("LabelsBody"),
        200,
        Some("LabelsBody"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/public/{isPublic}",
        "updatePublicStatus",
        None,
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/autostop/{interval}",
        "setAutostopInterval",
        None,
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/autoarchive/{interval}",
        "setAutoArchiveInterval",
        None,
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/autodelete/{interval}",
        "setAutoDeleteInterval",
        None,
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    ("POST", "/sandbox/{sandboxIdOrName}/last-activity", "updateLastActivity", None, 201, None, "sandbox"),
    (
        "GET",
        "/sandbox/{sandboxIdOrName}/ports/{port}/preview-url",
        "getPortPreviewUrl",
        None,
        200,
        Some("PortPreviewUrl"),
        "sandbox",
    ),
    (
        "GET",
        "/sandbox/{sandboxIdOrName}/ports/{port}/signed-preview-url",
        "getSignedPortPreviewUrl",
        None,
        200,
        Some("SignedPortPreviewUrl"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/ports/{port}/signed-preview-url/{token}/expire",
        "expireSignedPortPreviewUrl",
        None,
        200,
        None,
        "sandbox",
    ),
    ("POST", "/sandbox/{sandboxIdOrName}/ssh-access", "createSshAccess", None, 200, Some("SshAccessDto"), "sandbox"),
    ("DELETE", "/sandbox/{sandboxIdOrName}/ssh-access", "revokeSshAccess", None, 200, Some("SandboxDto"), "sandbox"),
    ("GET", "/sandbox/ssh-access/validate", "validateSshAccess", None, 200, Some("SshAccessValidationDto"), "sandbox"),
    (
        "GET",
        "/sandbox/{sandboxIdOrName}/toolbox-proxy-url",
        "getToolboxProxyUrl",
        None,
        200,
        Some("ToolboxProxyUrl"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/network-settings",
        "updateNetworkSettings",
        Some("NetworkSettingsBody"),
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/fork",
        "forkSandbox",
        Some("ForkSandboxBody"),
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    ("GET", "/sandbox/{sandboxIdOrName}/build-logs-url", "getBuildLogsUrl", None, 200, Some("BuildLogsUrl"), "sandbox"),
    ("GET", "/sandbox/{sandboxIdOrName}/build-logs", "getBuildLogs", None, 200, None, "sandbox"),
    ("GET", "/sandbox/{sandboxIdOrName}/usage", "getSandboxUsage", None, 200, Some("SandboxUsageDto"), "sandbox"),
    (
        "GET",
        "/snapshots/{snapshotIdOrName}/build-logs-url",
        "getSnapshotBuildLogsUrl",
        None,
        200,
        Some("BuildLogsUrl"),
        "snapshots",
    ),
    ("GET", "/snapshots/{snapshotIdOrName}/build-logs", "getSnapshotBuildLogs", None, 200, None, "snapshots"),
    (
        "POST",
        "/sandbox/{sandboxIdOrName}/snapshot",
        "createSandboxSnapshot",
        Some("CreateSandboxSnapshotBody"),
        200,
        Some("SandboxDto"),
        "sandbox",
    ),
    ("POST", "/sandbox/{sandboxIdOrName}/pause", "pauseSandbox", None, 200, Some("SandboxDto"), "sandbox"),
    ("GET", "/snapshots", "getAllSnapshots", None, 200, Some("PaginatedSnapshots"), "snapshots"),
    ("POST", "/snapshots", "createSnapshot", Some("CreateSnapshotBody"), 200, Some("SnapshotDto"), "snapshots"),
    ("GET", "/snapshots/{snapshotIdOrName}", "getSnapshot", None, 200, Some("SnapshotDto"), "snapshots"),
    ("DELETE", "/snapshots/{snapshotIdOrName}", "removeSnapshot", None, 200, None, "snapshots"),
    ("POST", "/snapshots/{snapshotIdOrName}/activate", "activateSnapshot", None, 200, Some("SnapshotDto"), "snapshots"),
    ("GET", "/volumes", "listVolumes", None, 200, Some("VolumeDto"), "volumes"),
    ("POST", "/volumes", "createVolume", Some("CreateVolumeBody"), 200, Some("VolumeDto"), "volumes"),
    ("GET", "/volumes/{volumeId}", "getVolume", None, 200, Some("VolumeDto"), "volumes"),
    ("GET", "/volumes/by-name/{name}", "getVolumeByName", None, 200, Some("VolumeDto"), "volumes"),
    ("DELETE", "/volumes/{volumeId}", "deleteVolume", None, 200, None, "volumes"),
    ("GET", "/docker-registry", "listRegistries", None, 200, Some("DockerRegistryDto"), "docker-registry"),
    (
        "POST",
        "/docker-registry",
        "createRegistry",
        Some("CreateDockerRegistryBody"),
        201,
        Some("DockerRegistryDto"),
        "docker-registry",
    ),
    ("GET", "/docker-registry/{id}", "getRegistry", None, 200, Some("DockerRegistryDto"), "docker-registry"),
    (
        "PATCH",
        "/docker-registry/{id}",
        "updateRegistry",
        Some("UpdateDockerRegistryBody"),
        200,
        Some("DockerRegistryDto"),
        "docker-registry",
    ),
    ("DELETE", "/docker-registry/{id}", "deleteRegistry", None, 204, None, "docker-registry"),
    ("GET", "/runners/{runnerId}/jobs/{jobId}/registry-auth", "runnerRegistryAuth", None, 200, None, "runner"),
    ("POST", "/runners/{runnerId}/register", "runnerRegister", None, 200, None, "runner"),
    ("POST", "/runners/{runnerId}/heartbeat", "runnerHeartbeat", None, 200, None, "runner"),
    ("GET", "/runners/{runnerId}/jobs", "runnerPollJobs", None, 200, None, "runner"),
    ("POST", "/runners/{runnerId}/jobs/{jobId}/result", "runnerJobResult", None, 204, None, "runner"),
    ("POST", "/runners/{runnerId}/jobs/{jobId}/log", "runnerBuildLog", None, 204, None, "runner"),
    ("POST", "/runners/{runnerId}/states", "runnerStateChanges", None, 204, None, "runner"),
    ("POST", "/runners/{runnerId}/sandboxes", "runnerSandboxes", None, 204, None, "runner"),
    ("GET", "/internal/routes/{sandboxId}", "proxyRoute", None, 200, None, "proxy"),
    ("GET", "/internal/routes/changes", "proxyRouteChanges", None, 200, None, "proxy"),
    ("POST", "/internal/authorize", "proxyAuthorize", None, 200, None, "proxy"),
    ("POST", "/internal/ssh/resolve", "sshResolve", None, 200, None, "proxy"),
    ("POST", "/internal/activity", "proxyActivity", None, 204, None, "proxy"),
    ("POST", "/internal/sandboxes/{sandboxId}/wake", "proxyWakeSandbox", None, 200, None, "proxy"),
    ("POST", "/internal/preview/resolve", "proxyResolveSignedPreview", None, 200, None, "proxy"),
    // The SDK asks before uploading a build context; sandbar has no object storage, so the answer is always a 400
    // that says how to build instead.
    ("GET", "/object-storage/push-access", "getPushAccess", None, 400, None, "object-storage"),
    ("GET", "/openapi.json", "openapi", None, 200, None, "meta"),
    ("POST", "/api-keys", "createApiKey", Some("CreateApiKeyBody"), 201, Some("ApiKeyResponse"), "api-keys"),
    ("GET", "/api-keys", "getApiKeys", None, 200, None, "api-keys"),
    ("GET", "/api-keys/current", "getCurrentApiKey", None, 200, Some("ApiKeyList"), "api-keys"),
    ("GET", "/api-keys/{name}", "getApiKey", None, 200, Some("ApiKeyList"), "api-keys"),
    ("DELETE", "/api-keys/{name}", "deleteApiKey", None, 204, None, "api-keys"),
    (
        "GET",
        "/organizations/{organizationId}/usage",
        "getOrganizationUsageOverview",
        None,
        200,
        Some("OrganizationUsageOverview"),
        "organizations",
    ),
    ("GET", "/admin/runners", "adminListRunners", None, 200, None, "admin"),
    ("POST", "/admin/runners/{runnerId}/cordon", "adminCordonRunner", None, 200, Some("RunnerView"), "admin"),
    ("POST", "/admin/runners/{runnerId}/uncordon", "adminUncordonRunner", None, 200, Some("RunnerView"), "admin"),
    ("POST", "/admin/runners/{runnerId}/drain", "adminDrainRunner", None, 200, Some("RunnerView"), "admin"),
];

fn json_ref(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build()
}

/// Builds the document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, op_id, req, status, resp, audience) in OPERATIONS {
        let method = match *method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            "PATCH" => HttpMethod::Patch,
            _ => HttpMethod::Delete,
        };
        let mut op = OperationBuilder::new().operation_id(Some(*op_id)).tag(*audience);
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_start_matches('{').trim_end_matches('}');
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some(req) = req {
            op = op.request_body(Some(RequestBodyBuilder::new().content("application/json", json_ref(req)).build()));
        }
        let mut ok = ResponseBuilder::new().description(if *status < 400 {
            "success"
        } else {
            "always this error (Daytona error body): sandbar does not offer it"
        });
        if let Some(resp) = resp {
            ok = ok.content("application/json", json_ref(resp));
        }
        op = op.response(status.to_string(), ok.build());
        if *status != 400 {
            op = op.response("400", ResponseBuilder::new().description("bad input (Daytona error body)").build());
        }
        op = op
            .response("401", ResponseBuilder::new().description("missing or invalid credential").build())
            .response("404", ResponseBuilder::new().description("unknown id (or another organization's)").build());
        paths = paths.path(format!("/api{path}"), PathItem::new(method, op.build()));
    }
    let components = ComponentsBuilder::new()
        .schema_from::<SandboxDto>()
        .schema_from::<CreateSandboxBody>()
        .schema_from::<ListSandboxesResponse>()
        .schema_from::<ResizeBody>()
        .schema_from::<LabelsBody>()
        .schema_from::<PortPreviewUrl>()
        .schema_from::<SignedPortPreviewUrl>()
        .schema_from::<SshAccessDto>()
        .schema_from::<SshAccessValidationDto>()
        .schema_from::<ToolboxProxyUrl>()
        .schema_from::<SnapshotDto>()
        .schema_from::<PaginatedSnapshots>()
        .schema_from::<CreateSnapshotBody>()
        .schema_from::<NetworkSettingsBody>()
        .schema_from::<BuildLogsUrl>()
        .schema_from::<ForkSandboxBody>()
        .schema_from::<CreateSandboxSnapshotBody>()
        .schema_from::<VolumeDto>()
        .schema_from::<CreateVolumeBody>()
        .schema_from::<DockerRegistryDto>()
        .schema_from::<CreateDockerRegistryBody>()
        .schema_from::<UpdateDockerRegistryBody>()
        .schema_from::<SandboxUsageDto>()
        .schema_from::<UsagePointDto>()
        .schema_from::<CreateApiKeyBody>()
        .schema_from::<ApiKeyResponse>()
        .schema_from::<ApiKeyList>()
        .schema_from::<OrganizationUsageOverview>()
        .schema_from::<crate::domain::drain::RunnerView>()
        .build();
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("sandbar API").version(env!("CARGO_PKG_VERSION")).build())
        .paths(paths.build())
        .components(Some(components))
        .build()
}

pub fn routes() -> Router<App> {
    Router::new().route("/openapi.json", get(|| async { axum::Json(document()).into_response() }))
}
