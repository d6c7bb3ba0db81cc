//! The sandbox's machinery, free of HTTP: the process table that reaps and signals every child, one-shot command
//! execution, shell sessions with logged commands, PTYs, language servers, git and the file system. The toolbox,
//! the web terminal and the SSH server all call in here; nothing here knows about axum, status codes or sockets of
//! clients. Failures are `engine::Error` (a kind the toolbox maps to a status, a code for the SDK, a message) or,
//! for PTYs and language servers, their own enums.

pub mod daemon;
pub mod error;
pub mod exec;
pub mod fs;
pub mod git;
pub mod interpreter;
pub mod lsp;
pub mod ports;
pub mod procs;
pub mod pty;
pub mod session;

pub use daemon::{AppState, Daemon};
pub use error::{Error, ErrorKind, Result};
