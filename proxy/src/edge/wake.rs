//! Whether the sandbox can take the request now: its route (cached, [`crate::control::cache::RouteCache`]), waking
//! it when it was auto-stopped, and the answer for every state that cannot take traffic.
//!
//! Who may wake a sandbox: a request that carries a credential for it (an API key of its organization, a preview
//! token, a signed preview URL), when the API says the sandbox was stopped by its auto-stop timer
//! (`Route::wake_on_request`). A sandbox a user stopped stays stopped, and anonymous traffic to a public sandbox
//! does not start it (crawlers would keep it running). Archived and deleted sandboxes are never started here. A
//! woken sandbox is started once for all the requests that want it, and they wait (up to the wake timeout) for the
//! route-changes feed to show it started.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sandbar_proto::api::Route;
use sandbar_proto::runner::SandboxState;

use super::EdgeProxy;
use super::reject::Reject;
use crate::control::api::Wake;

/// Stopped and on the way back: a request may wait for these.
fn on_the_way(r: &Route) -> bool {
    matches!(r.state, SandboxState::Stopped | SandboxState::Starting | SandboxState::Restoring)
}

impl EdgeProxy {
    /// The route of `id` (404 when the API does not know it).
    pub(super) async fn route(&self, id: &str) -> Result<Arc<Route>, Reject> {
        match self.shared.routes.get(id).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Reject::not_found(id)),
            Err(e) => Err(Reject::api_unavailable(&self.shared.metrics, &e, &format!("looking up sandbox {id}"))),
        }
    }

    /// The route and daemon address of a started sandbox, after waking it when `credentialed` may and it was
    /// auto-stopped (or waiting when it is already starting: a restarted sandbox has a new address and daemon
    /// token); otherwise the answer for its state.
    pub(super) async fn ready(
        &self,
        id: &str,
        mut route: Arc<Route>,
        credentialed: bool,
    ) -> Result<(Arc<Route>, String), Reject> {
        let may_wake = credentialed && !self.shared.wake_timeout.is_zero();
        let wakeable = (route.state == SandboxState::Stopped && route.wake_on_request)
            || matches!(route.state, SandboxState::Starting | SandboxState::Restoring);
        if may_wake && wakeable {
            route = self.wake_and_wait(id, route).await?;
        }
        let state = route.state.as_str();
        if let Some(addr) = route.serves() {
            // Started, or `unknown` with the address it had: its runner's silence does not stop its daemon.
            return Ok((route.clone(), addr.to_owned()));
        }
        match (route.state, route.daemon_addr.as_deref()) {
            (SandboxState::Stopped, _) if route.wake_on_request && !credentialed => Err(Reject::new(
                409,
                "sandbox-stopped",
                format!("sandbox {id} is stopped (auto-stop): a request with an API key or preview token starts it"),
            )),
            (SandboxState::Stopped | SandboxState::Stopping | SandboxState::Paused | SandboxState::Pausing, _) => {
                Err(Reject::new(409, "sandbox-stopped", format!("sandbox {id} is {state}: start it first")))
            }
            (SandboxState::Archived | SandboxState::Archiving, _) => {
                Err(Reject::new(410, "sandbox-archived", format!("sandbox {id} is {state}: start it to restore it")))
            }
            (SandboxState::Destroyed | SandboxState::Destroying, _) => {
                Err(Reject::new(410, "sandbox-deleted", format!("sandbox {id} was deleted")))
            }
            (SandboxState::Error | SandboxState::BuildFailed, _) => {
                Err(Reject::new(409, "sandbox-error", format!("sandbox {id} is in state {state}")))
            }
            (_, _) => {
                Err(Reject::new(503, "sandbox-not-ready", format!("sandbox {id} is not started yet (state {state})")))
            }
        }
    }

    /// Starts an auto-stopped sandbox (once for all the requests that want it) and waits, up to the wake timeout,
    /// for the route-changes feed to show it started. A sandbox already starting is only waited for.
    async fn wake_and_wait(&self, id: &str, route: Arc<Route>) -> Result<Arc<Route>, Reject> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.wake_timeout;
        if route.state == SandboxState::Stopped {
            match shared.waker.wake(id).await {
                Ok(None | Some(Wake::Started(_))) => {}
                Ok(Some(Wake::Refused(message))) => return Err(Reject::new(409, "sandbox-stopped", message)),
                Ok(Some(Wake::NotFound)) => return Err(Reject::not_found(id)),
                Err(e) => return Err(Reject::api_unavailable(&shared.metrics, &e, &format!("starting sandbox {id}"))),
            }
        }
        let last = match shared.routes.wait_for(id, deadline, |r| !on_the_way(r)).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Reject::not_found(id)),
            Err(e) => {
                return Err(Reject::api_unavailable(&shared.metrics, &e, &format!("waiting for sandbox {id}")));
            }
        };
        if on_the_way(last.as_ref()) {
            shared.metrics.wake_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(Reject::new(
                409,
                "sandbox-starting",
                format!(
                    "sandbox {id} was stopped and is being started, but it is still {} after {} s: retry shortly",
                    last.state.as_str(),
                    shared.wake_timeout.as_secs()
                ),
            ));
        }
        Ok(last)
    }
}
