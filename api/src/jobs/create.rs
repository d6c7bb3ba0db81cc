//! `CREATE_SANDBOX`: make and start a sandbox's container from its row (a create, a recover of a sandbox whose
//! creation failed, or once its image is built). `creating`, then the state the runner reports (`started`).

use sandbar_proto::runner::{
    AutoIntervals, CreateSandbox, JobErrorCode, JobKind, JobOutcome, RUNTIME_LABEL, Resources,
};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::domain::{builds, network};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;
use sandbar_proto::runner::SandboxState;

/// `pull`: the image is a registry image (`crate::domain::images::pulled`), which the runner pulls first.
pub fn plan(row: &Row, pull: bool) -> JobKind {
    JobKind::CreateSandbox(CreateSandbox { pull, ..spec(row) })
}

/// The state a sandbox shows while its create job runs: `pulling_snapshot` when the runner pulls its image first.
pub fn creating_state(pull: bool) -> SandboxState {
    if pull { SandboxState::PullingSnapshot } else { SandboxState::Creating }
}

/// The sandbox as the runner must build it (a create, a fork, or a restore from an archive: the runner's archive
/// keeps no spec, the row is its source of truth).
pub fn spec(row: &Row) -> CreateSandbox {
    CreateSandbox {
        id: row.id.clone(),
        name: Some(row.name.clone()),
        organization_id: row.organization_id.clone(),
        image: row.snapshot.clone(),
        pull: false,
        pull_from: row.image_source.clone(),
        user: Some(row.os_user.clone()).filter(|u| !u.is_empty()),
        env: row.env_map(),
        labels: row.labels_map(),
        resources: Resources { cpu: to_u32(row.cpu), memory: to_u32(row.memory), disk: to_u32(row.disk) },
        entrypoint: None,
        auto: AutoIntervals {
            auto_stop_interval: u32::try_from(row.auto_stop).ok(),
            auto_archive_interval: u32::try_from(row.auto_archive).ok(),
            auto_delete_interval: u32::try_from(row.auto_delete).ok(),
        },
        network: network::policy_of(row),
        linked_sandbox: row.linked_sandbox_id.clone(),
        runtime: row.labels_map().get(RUNTIME_LABEL).cloned(),
        volumes: row.volume_mounts(),
    }
}

pub(crate) fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &CreateSandbox) -> ApiResult<()> {
    if let JobOutcome::Failed { code: JobErrorCode::ImageNotFound, .. } = done.outcome {
        builds::image_missing(done.conn, done.runner_id, &job.image, done.now).await?;
    }
    let Some(step) = done.sandbox(&job.id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Error).await
}
