//! sandbar-cli: the `sandbar` command. `sandbar up` runs the API, a runner and the proxy on one host as a
//! supervised process tree ([`up`]); the client commands (create, list, exec, term, ssh, preview, stop, start, rm,
//! snapshot, logs) drive the Daytona-shaped REST API and the toolbox through the proxy ([`client`]).

pub mod client;
pub mod demux;
pub mod term;
pub mod tls;
pub mod up;
pub mod ws;
