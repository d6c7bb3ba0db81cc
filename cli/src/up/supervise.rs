//! The supervisor of `sandbar up`: watches every service, starts a crashed one again after the delay the `restart`
//! policy answers (the others keep serving meanwhile), and stops them all on SIGTERM or Ctrl-C, or when the policy
//! gives up on one. Signals reach only the children it owns, through their handles.

use std::time::Duration;

use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::launch::{Launcher, Spawned, Spec};
use super::restart::{Decision, Policy, Restarts, Run};

/// How often the supervisor looks at its children.
const TICK: Duration = Duration::from_millis(200);

/// One supervised service: its child while one runs, and what it is doing.
pub struct Service {
    spec: Spec,
    child: Option<Child>,
    state: State,
    restarts: Restarts,
}

enum State {
    /// Serving since `since`.
    Up { since: Instant },
    /// Started again at `since`, waiting for its ready line; down since `down`.
    Starting { ready: oneshot::Receiver<String>, since: Instant, down: Instant, attempt: u32 },
    /// Waiting for `until` before restart number `attempt`, with no child; down since `down`.
    Waiting { until: Instant, down: Instant, attempt: u32 },
}

/// A run that just ended: how, and its exit status for the log.
struct Ended {
    run: Run,
    status: String,
    down: Instant,
}

impl Service {
    /// A service whose first start printed `ready`: its restarts bind the addresses of that line.
    pub fn started(mut spec: Spec, child: Child, ready: &str) -> Self {
        spec.pin(ready);
        Self { spec, child: Some(child), state: State::Up { since: Instant::now() }, restarts: Restarts::default() }
    }

    /// The exit status of the child, if it has exited.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status.to_string())
    }

    /// Looks at the service once; an error is the policy giving up on it.
    async fn poll(&mut self, launcher: &Launcher, policy: &Policy) -> anyhow::Result<()> {
        let now = Instant::now();
        let ended = match &mut self.state {
            State::Up { since } => {
                let run = Run::Ran(now.saturating_duration_since(*since));
                self.exited().map(|status| Ended { run, status, down: now })
            }
            State::Starting { .. } => self.poll_start(now).await,
            State::Waiting { until, down, attempt } if now >= *until => {
                let (down, attempt) = (*down, *attempt);
                self.restart(launcher, now, down, attempt)
            }
            State::Waiting { .. } => None,
        };
        match ended {
            Some(ended) => self.on_exit(ended, launcher, policy, now),
            None => Ok(()),
        }
    }

    /// A restarting service: ready (then it is up), exited, or late (then it is killed).
    async fn poll_start(&mut self, now: Instant) -> Option<Ended> {
        let State::Starting { ready, since, down, attempt } = &mut self.state else { return None };
        let (down, attempt, late) = (*down, *attempt, now.saturating_duration_since(*since) >= self.spec.ready_within);
        match ready.try_recv() {
            Ok(_) => {
                let secs = now.saturating_duration_since(down).as_secs_f64();
                eprintln!(
                    "sandbar: {} restarted (restart {attempt}): ready {secs:.1}s after it went down",
                    self.spec.name
                );
                self.state = State::Up { since: now };
                None
            }
            // Exited; or late, whether silent or hanging after closing its stdout without the line.
            Err(_) => match self.exited() {
                Some(status) => Some(Ended { run: Run::FailedStart, status, down }),
                None if late => {
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill().await;
                    }
                    let status = format!("not ready within {}s", self.spec.ready_within.as_secs());
                    Some(Ended { run: Run::FailedStart, status, down })
                }
                None => None,
            },
        }
    }

    /// Starts the service again; a failure to even spawn it is a failed start.
    fn restart(&mut self, launcher: &Launcher, now: Instant, down: Instant, attempt: u32) -> Option<Ended> {
        match launcher.spawn(&self.spec) {
            Ok(Spawned { child, ready }) => {
                self.child = Some(child);
                self.state = State::Starting { ready, since: now, down, attempt };
                None
            }
            Err(e) => Some(Ended { run: Run::FailedStart, status: format!("{e:#}"), down }),
        }
    }

    /// Logs the exit and waits for the restart, or gives up.
    fn on_exit(&mut self, ended: Ended, launcher: &Launcher, policy: &Policy, now: Instant) -> anyhow::Result<()> {
        let name = self.spec.name;
        let log = launcher.log_path(name);
        let Ended { run, status, down } = ended;
        let (attempt, failed_starts) = match self.restarts.on_exit(policy, run) {
            Decision::Restart { attempt, failed_starts } => (attempt, failed_starts),
            Decision::GiveUp { failed_starts } => anyhow::bail!(
                "{name} failed to start {failed_starts} times in a row (last: {status}), so the stack stopped; see {}",
                log.display()
            ),
        };
        let delay = policy.delay(attempt);
        let how = match run {
            Run::Ran(up) => format!("exited ({status}) after {:.1}s up", up.as_secs_f64()),
            Run::FailedStart => format!("failed to start ({status}; {failed_starts} in a row, see {})", log.display()),
        };
        eprintln!("sandbar: {name} {how}; restart {attempt} in {:.1}s", delay.as_secs_f64());
        self.state = State::Waiting { until: now + delay, down, attempt };
        Ok(())
    }
}

/// Keeps the services running until SIGTERM or Ctrl-C (then `Ok`) or until the restart policy gives up on one (then
/// the error naming it); either way stops every service within `grace`.
pub async fn supervise(
    mut services: Vec<Service>,
    launcher: Launcher,
    policy: Policy,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let outcome = loop {
        tokio::select! {
            // A Ctrl-C reaches the children too: a signal comes before looking at them, lest their exits look like
            // crashes.
            biased;
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            () = tokio::time::sleep(TICK) => {}
        }
        if let Err(e) = poll_all(&mut services, &launcher, &policy).await {
            break Err(e);
        }
    };
    eprintln!("sandbar: stopping");
    stop_all(&mut services, grace).await;
    eprintln!("sandbar: stopped");
    outcome
}

async fn poll_all(services: &mut [Service], launcher: &Launcher, policy: &Policy) -> anyhow::Result<()> {
    for s in services.iter_mut() {
        s.poll(launcher, policy).await?;
    }
    Ok(())
}

/// SIGTERM to every running service (proxy first, so no new traffic arrives), then SIGKILL after `grace`.
pub async fn stop_all(services: &mut [Service], grace: Duration) {
    for s in services.iter_mut().rev() {
        // The pid of a child we own and have not reaped yet (`id()` is `None` once it is reaped).
        if let Some(pid) = s.child.as_ref().and_then(|c| c.id()).and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for s in services.iter_mut().rev() {
        let name = s.spec.name;
        let Some(child) = s.child.as_mut() else { continue };
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            eprintln!("sandbar: {name} did not stop within {}s; killing it", grace.as_secs());
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `sandbar-flaky`: its first run is ready and exits at once, every later run hangs without a ready line.
    fn flaky_service(dir: &std::path::Path) -> Launcher {
        let script = "#!/bin/sh\n\
            n=$(cat \"$0.runs\" 2>/dev/null || echo 0); echo $((n + 1)) > \"$0.runs\"\n\
            if [ \"$n\" = 0 ]; then echo 'sandbar-flaky ready addr=127.0.0.1:1'; exit 0; fi\n\
            exec sleep 30\n";
        let path = dir.join("sandbar-flaky");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Launcher { bins: dir.to_owned(), env: Vec::new(), logs: dir.to_owned() }
    }

    #[tokio::test]
    async fn a_service_that_hangs_at_start_is_killed_until_the_policy_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = flaky_service(dir.path());
        let spec = Spec::new("flaky", Vec::new(), Duration::from_millis(1500));
        let (child, ready) = launcher.start(&spec).await.unwrap();
        let services = vec![Service::started(spec, child, &ready)];
        let policy = Policy {
            backoff: sandbar_support::backoff::Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
            max_failed_starts: 2,
            stable_after: Duration::from_secs(60),
        };
        let err = supervise(services, launcher, policy, Duration::from_secs(1)).await.unwrap_err().to_string();
        assert!(err.starts_with("flaky failed to start 2 times in a row (last: not ready within 1s)"), "{err}");
        // The first run and two restarts, each hanging one killed.
        assert_eq!(std::fs::read_to_string(dir.path().join("sandbar-flaky.runs")).unwrap().trim(), "3");
    }
}
