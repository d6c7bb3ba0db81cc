//! Test harnesses shared by sandbar's test suites. Dev-only: no shipped binary depends on this crate.
//!
//! - [`cli`]: a service binary run as an operator would, for the configuration tests (`--print-config`).
//! - [`fuzz`]: seeded fuzz loops over the cargo-fuzz crate's committed inputs, for `cargo test`.
//! - [`daemon`]: the real `sandbar-daemon` process on loopback with its own HOME, work and state dirs.
//! - [`api`] (feature `api`): the API in-process on port 0 over SQLite and PostgreSQL, with a hand-moved clock and a
//!   fake runner.
//! - [`scale`] (feature `api`): 10,000 sandboxes seeded into the API's database, and GETs that time other requests
//!   meanwhile.
//! - [`api_standin`] (feature `proxy`): the API's internal surface faked from data the test sets.
//! - [`proxy`] (feature `proxy`): the proxy in-process on 127.0.0.1:0, and an app to reach through it.
//! - [`stack`] (feature `stack`): the real API in-process, a runner of daemon processes, and the proxy.
//!
//! Harness code may panic freely: a failed set-up is a failed test (clippy's `allow-*-in-tests` cover test code;
//! this crate is test code too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "proxy")]
pub mod api_standin;
pub mod cli;
pub mod daemon;
pub mod fuzz;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "api")]
pub mod scale;
#[cfg(feature = "stack")]
pub mod stack;
