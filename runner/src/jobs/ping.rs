//! `PING_SANDBOX`: check that a started sandbox's daemon answers an authenticated call, by running `true` through
//! its `POST /process/execute`. Changes nothing; answers with the sandbox's picture.

use sandbar_proto::runner::JobErrorCode;
use sandbar_proto::toolbox::ExecuteRequest;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, sandbox_id: &str) -> Result<Done, Failed> {
    let req = ExecuteRequest { command: "true".into(), timeout: Some(10), ..Default::default() };
    let out = ctx.runner.exec(sandbox_id, &req).await?;
    if out.exit_code != 0 {
        return Err(Failed {
            code: JobErrorCode::DaemonNotReady,
            message: format!("the daemon ran `true` with exit code {}: {}", out.exit_code, out.result),
        });
    }
    let info = ctx.runner.get(sandbox_id).ok_or_else(|| Failed {
        code: JobErrorCode::SandboxNotFound,
        message: format!("sandbox {sandbox_id} went away while it was pinged"),
    })?;
    Ok(Done::sandbox(info))
}
