//! `POST /sandbox/{id}/network-settings`: Daytona's `networkBlockAll` / `networkAllowList` / `domainAllowList`.
//! The rules (and the wait for a running sandbox's runner to apply them) are `crate::domain::network`.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Json, Path};
use super::sandbox::ok;
use crate::App;
use crate::domain::network::{self, Change};

/// Daytona's `UpdateSandboxNetworkSettings`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettingsBody {
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
}

/// Answers the sandbox once a started sandbox's runner applied the settings (or after a while, when it is slow).
pub(crate) async fn update(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<NetworkSettingsBody>,
) -> ApiResult<Response> {
    if body.network_block_all.is_none() && body.network_allow_list.is_none() && body.domain_allow_list.is_none() {
        return Err(ApiError::bad_request(
            "at least one of networkBlockAll, networkAllowList or domainAllowList must be set",
        ));
    }
    network::refuse_domains(body.domain_allow_list.as_deref())?;
    let allow_list = body.network_allow_list.as_deref().map(network::normalise_allow_list).transpose()?;
    let change = Change { block_all: body.network_block_all, allow_list };
    let row = network::update(&app, &caller.organization_id, &id, change).await?;
    Ok(ok(&app, &row))
}
