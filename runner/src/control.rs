//! The control plane, from the runner's side of the job protocol (`sandbar_proto::api`): the API client
//! ([`ControlPlane`]) and the agent loop ([`run`]) that registers and heartbeats with capacity, long-polls for jobs,
//! carries each out once, reports results (retried until the API has them), pushes state changes Docker caused,
//! and sends the full picture on start so the API reconciles after a restart.
//!
//! Jobs are idempotent by sandbox id: the API hands a claimed job out again until its result arrives, so a runner
//! that died mid-job finishes it after restarting (a create whose sandbox already runs answers with it, a destroy of
//! a sandbox that is gone succeeds: see [`crate::jobs`]). What a job does is not decided here.

mod agent;
mod client;

pub use agent::run;
pub use client::{Contact, ControlPlane, ControlPlaneError};
