//! sandbar-cli: the `sandbar` command. `sandbar up` ([`up`]) starts `sandbar-api`, `sandbar-runner` and
//! `sandbar-proxy` as child processes on one host and supervises them; the client commands (create, list, exec,
//! term, ssh, preview, stop, start, rm, snapshot, logs) drive the Daytona-shaped REST API and the toolbox through the
//! proxy ([`client`]).

pub mod client;
pub mod demux;
pub mod ssh;
pub mod term;
pub mod tls;
pub mod up;
pub mod ws;
