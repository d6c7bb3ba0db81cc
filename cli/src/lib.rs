//! sandbar-cli: the `sandbar` command. `sandbar up` ([`up`]) starts `sandbar-api`, `sandbar-runner` and
//! `sandbar-proxy` as child processes on one host and supervises them; the client commands (create, list, exec,
//! term, ssh, preview, stop, start, rm, snapshot, logs) drive the Daytona-shaped REST API and the toolbox through the
//! proxy ([`client`]), printing text or JSON ([`output`]); `sandbar ssh` and `sandbar ssh-config` build their argv
//! and config from an SSH access's checked parts ([`ssh`]); `sandbar runner` cordons and drains runners with the
//! operator's admin token ([`runners`]).

/// The exit status of sandbar's own failures (the API or proxy unreachable or answering with an error, a sandbox
/// that does not exist, ...), as `docker run` uses it; `exec`, `term` and `ssh` otherwise exit with the remote
/// command's status.
pub const FAILURE: u8 = 125;

pub mod client;
pub mod demux;
pub mod output;
pub mod runners;
pub mod ssh;
pub mod term;
pub mod tls;
pub mod up;
pub mod ws;
