//! `GET /sandbox/{sandboxIdOrName}/usage`: what a sandbox uses, as its runner last sampled it (CPU, memory, OOM
//! kills, processes, network, disk), with the last hour of history. Same auth as the other sandbox routes (an API
//! key or the dashboard's session); another organization's sandbox is a 404 like an unknown one. The decisions
//! and retention are `crate::domain::usage`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::auth::Caller;
use super::error::{ApiResult, Json, Path};
use crate::App;
use crate::clock::iso;
use crate::domain::usage::{self, SandboxUsageView};
use crate::store::usage::UsageRow;

/// A sandbox's usage. Counters (`cpuNanos`, `netRxBytes`, `netTxBytes`, `oomKills`) count from the sandbox's last
/// start. Before its runner's first sample (a sandbox that never ran, or an older runner): `sampledAt` is null,
/// the counts 0, the other figures null and `history` empty.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUsageDto {
    pub sandbox_id: String,
    /// When the latest sample was taken (ISO 8601); null before the first.
    pub sampled_at: Option<String>,
    /// CPU time used, in nanoseconds.
    pub cpu_nanos: i64,
    /// Cores in use between the runner's last two samples (a few seconds); null on the first sample.
    pub cpu_cores: Option<f64>,
    /// Memory in use without reclaimable file cache (what `docker stats` shows), in bytes.
    pub memory_bytes: i64,
    /// The sandbox's memory limit; null when unlimited or not sampled.
    pub memory_limit_bytes: Option<i64>,
    /// The most memory charged at once, file cache included.
    pub memory_peak_bytes: Option<i64>,
    /// Processes the kernel's OOM killer killed in the sandbox (`memory.oom_control`/`memory.events` `oom_kill`).
    pub oom_kills: Option<i64>,
    /// Processes running in the sandbox.
    pub pids: Option<i64>,
    /// Bytes received and sent on the sandbox's network interfaces (not loopback).
    pub net_rx_bytes: Option<i64>,
    pub net_tx_bytes: Option<i64>,
    /// Bytes written to the sandbox's filesystem, where the runner measures them (storage drivers that cannot cap
    /// disk); null elsewhere.
    pub disk_bytes: Option<i64>,
    /// Samples about half a minute apart over the last hour, oldest first.
    pub history: Vec<UsagePointDto>,
}

/// One sample of a sandbox's usage history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsagePointDto {
    /// ISO 8601.
    pub sampled_at: String,
    pub cpu_nanos: i64,
    pub cpu_cores: Option<f64>,
    pub memory_bytes: i64,
    pub oom_kills: Option<i64>,
    pub pids: Option<i64>,
    pub net_rx_bytes: Option<i64>,
    pub net_tx_bytes: Option<i64>,
    pub disk_bytes: Option<i64>,
}

fn cores(millicores: Option<i64>) -> Option<f64> {
    millicores.map(|m| m as f64 / 1000.0)
}

fn point(r: &UsageRow) -> UsagePointDto {
    UsagePointDto {
        sampled_at: iso(r.sampled_at),
        cpu_nanos: r.cpu_nanos,
        cpu_cores: cores(r.cpu_millicores),
        memory_bytes: r.memory_bytes,
        oom_kills: r.oom_kills,
        pids: r.pids,
        net_rx_bytes: r.net_rx_bytes,
        net_tx_bytes: r.net_tx_bytes,
        disk_bytes: r.disk_bytes,
    }
}

fn dto(v: &SandboxUsageView) -> SandboxUsageDto {
    let l = v.latest.as_ref();
    SandboxUsageDto {
        sandbox_id: v.sandbox_id.clone(),
        sampled_at: l.map(|r| iso(r.sampled_at)),
        cpu_nanos: l.map_or(0, |r| r.cpu_nanos),
        cpu_cores: l.and_then(|r| cores(r.cpu_millicores)),
        memory_bytes: l.map_or(0, |r| r.memory_bytes),
        memory_limit_bytes: l.and_then(|r| r.memory_limit_bytes),
        memory_peak_bytes: l.and_then(|r| r.memory_peak_bytes),
        oom_kills: l.and_then(|r| r.oom_kills),
        pids: l.and_then(|r| r.pids),
        net_rx_bytes: l.and_then(|r| r.net_rx_bytes),
        net_tx_bytes: l.and_then(|r| r.net_tx_bytes),
        disk_bytes: l.and_then(|r| r.disk_bytes),
        history: v.history.iter().map(point).collect(),
    }
}

pub fn routes() -> Router<App> {
    Router::new().route("/sandbox/{id}/usage", get(get_usage))
}

async fn get_usage(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let view = usage::get(&app, &caller.organization_id, &id).await?;
    Ok(Json(dto(&view)).into_response())
}
