//! Request and response bodies of the daemon's toolbox API, one file per area. Field names and JSON types follow
//! Daytona's daemon: the official SDK parses these with strict pydantic models. Everything is re-exported here,
//! so `sandbar_proto::toolbox::X` names any of them.

mod fs;
mod git;
mod info;
mod interpreter;
mod lsp;
mod port;
mod process;
mod pty;
mod session;

pub use fs::*;
pub use git::*;
pub use info::*;
pub use interpreter::*;
pub use lsp::*;
pub use port::*;
pub use process::*;
pub use pty::*;
pub use session::*;
