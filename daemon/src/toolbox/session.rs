//! Sessions: being written.

use std::path::PathBuf;

use axum::Router;

use crate::AppState;

#[derive(Debug)]
pub struct Sessions {
    #[allow(dead_code)]
    dir: PathBuf,
}

impl Sessions {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn start_entrypoint(&self, _d: &AppState, _argv: &[String]) -> Result<(), crate::error::ApiError> {
        Ok(())
    }

    pub fn signal_entrypoint(&self, _s: nix::sys::signal::Signal) {}

    pub fn cleanup(&self) {}
}

pub fn routes() -> Router<AppState> {
    Router::new()
}
