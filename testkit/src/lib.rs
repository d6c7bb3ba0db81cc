//! Test harnesses shared by sandbar's test suites. Dev-only: no shipped binary depends on this crate.
//!
//! - [`daemon`]: the real `sandbar-daemon` process on loopback with its own HOME, work and state dirs.
//! - [`api`]: the API in-process on port 0 over SQLite and PostgreSQL, with a hand-moved clock and a fake runner.
//!
//! Harness code may panic freely: a failed set-up is a failed test (clippy's `allow-*-in-tests` cover test code;
//! this crate is test code too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod daemon;
