//! Starting one service: its child process, its log (`<logs>/<name>.log`: stderr, and stdout line by line) and its
//! ready line, the first stdout line starting with `sandbar-<name> ready`. A restart reuses the first start's
//! [`Spec`], with the addresses of its first ready line pinned in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

/// How to start one service: `sandbar-<name> <args>`, ready within `ready_within`. Its environment is
/// `sandbar up`'s without `env_remove`, with the launcher's shared variables and its own `env` (its secrets, which
/// never go on the command line: `ps` shows that to every user). The `Debug` form names the variables only.
#[derive(Clone)]
pub struct Spec {
    pub name: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub ready_within: Duration,
}

impl Spec {
    /// A service started with `args` and nothing but the shared environment added.
    pub fn new(name: &'static str, args: Vec<String>, ready_within: Duration) -> Self {
        Self { name, args, env: Vec::new(), env_remove: Vec::new(), ready_within }
    }
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("env_remove", &self.env_remove)
            .field("ready_within", &self.ready_within)
            .finish()
    }
}

/// How the services are started: their binaries' directory, the environment they share (no secret), the logs
/// directory.
pub struct Launcher {
    pub bins: PathBuf,
    pub env: Vec<(String, String)>,
    pub logs: PathBuf,
}

/// A child just started: `ready` receives its ready line, and is closed if its stdout ends first.
pub struct Spawned {
    pub child: Child,
    pub ready: oneshot::Receiver<String>,
}

impl Launcher {
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Starts the service without waiting for it.
    pub fn spawn(&self, spec: &Spec) -> anyhow::Result<Spawned> {
        let bin = self.bins.join(format!("sandbar-{}", spec.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(spec.name))?;
        let mut cmd = Command::new(&bin);
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args(&spec.args)
            .envs(self.env.iter().chain(&spec.env).map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it with `cargo build --workspace --bins`)", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, ready) = oneshot::channel();
        tokio::spawn(relay(stdout, format!("sandbar-{} ready", spec.name), tx, tokio::fs::File::from_std(log)));
        Ok(Spawned { child, ready })
    }

    /// Starts the service and waits for its ready line (returned).
    pub async fn start(&self, spec: &Spec) -> anyhow::Result<(Child, String)> {
        let Spawned { mut child, ready } = self.spawn(spec)?;
        let log_path = self.log_path(spec.name);
        match tokio::time::timeout(spec.ready_within, ready).await {
            Ok(Ok(line)) => Ok((child, line)),
            Ok(Err(_)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "{} exited before it was ready ({status}); last lines of {}:\n{}",
                    spec.name,
                    log_path.display(),
                    tail(&log_path, 15)
                )
            }
            Err(_) => {
                bail!("{} was not ready within {}s; see {}", spec.name, spec.ready_within.as_secs(), log_path.display())
            }
        }
    }
}

/// Copies the child's stdout into its log and hands the ready line to `ready`; draining to the end keeps the child
/// from blocking on a full pipe.
async fn relay(stdout: ChildStdout, prefix: String, ready: oneshot::Sender<String>, mut log: tokio::fs::File) {
    let mut ready = Some(ready);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = log.write_all(format!("{line}\n").as_bytes()).await;
        if line.starts_with(&prefix)
            && let Some(tx) = ready.take()
        {
            let _ = tx.send(line);
        }
    }
    let _ = log.flush().await;
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `key=value` fields of a ready line.
pub fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// `--flag value` pairs as command-line arguments.
pub fn flags<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Vec<String> {
    pairs.into_iter().flat_map(|(flag, value)| [flag.to_owned(), value]).collect()
}

/// Which part of a ready line's address a flag takes.
#[derive(Clone, Copy)]
enum Part {
    Addr,
    Port,
}

/// `(service, ready-line field, flag, part)`: where each address a service bound goes on its restart. Tests start
/// the stack on port 0; a restart on port 0 would bind a new port and every client would lose the service.
const PINS: &[(&str, &str, &str, Part)] = &[
    ("api", "addr", "--listen", Part::Addr),
    ("runner", "addr", "--runner-listen", Part::Addr),
    ("proxy", "http", "--http-port", Part::Port),
    ("proxy", "https", "--https-port", Part::Port),
    ("proxy", "ssh", "--ssh-port", Part::Port),
    ("proxy", "metrics", "--metrics-addr", Part::Addr),
];

impl Spec {
    /// Sets the flags that name a listening address to the addresses of `ready`, the service's ready line.
    pub fn pin(&mut self, ready: &str) {
        let fields = fields(ready);
        for (_, field, flag, part) in PINS.iter().filter(|(name, ..)| *name == self.name) {
            let Some(addr) = fields.get(*field) else { continue };
            let value = match part {
                Part::Addr => addr.as_str(),
                Part::Port => addr.rsplit_once(':').map_or(addr.as_str(), |(_, port)| port),
            };
            set_flag(&mut self.args, flag, value);
        }
    }
}

fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag).and_then(|i| args.get_mut(i + 1)) {
        Some(v) => *v = value.to_owned(),
        None => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_fields() {
        let f = fields("sandbar-proxy ready http=127.0.0.1:1 https=127.0.0.1:2 ssh=127.0.0.1:3");
        assert_eq!(f["http"], "127.0.0.1:1");
        assert_eq!(f["ssh"], "127.0.0.1:3");
    }

    #[test]
    fn flags_come_in_pairs() {
        assert_eq!(flags([("--a", "1".into()), ("--b", "x y".into())]), ["--a", "1", "--b", "x y"]);
    }

    #[test]
    fn a_restart_binds_the_addresses_of_the_first_ready_line() {
        let args = flags([
            ("--api-url", "http://127.0.0.1:9/api".into()),
            ("--http-port", "0".into()),
            ("--https-port", "0".into()),
            ("--metrics-addr", "127.0.0.1:0".into()),
        ]);
        let mut spec = Spec::new("proxy", args, Duration::from_secs(1));
        spec.pin("sandbar-proxy ready http=0.0.0.0:4100 https=0.0.0.0:4101 metrics=127.0.0.1:9500 ssh=[::]:2300");
        let want = [
            "--api-url",
            "http://127.0.0.1:9/api",
            "--http-port",
            "4100",
            "--https-port",
            "4101",
            "--metrics-addr",
            "127.0.0.1:9500",
            "--ssh-port",
            "2300",
        ];
        assert_eq!(spec.args, want);

        let mut runner = Spec { name: "runner", args: flags([("--runner-listen", "127.0.0.1:0".into())]), ..spec };
        runner.pin("sandbar-runner ready addr=127.0.0.1:45001");
        assert_eq!(runner.args, ["--runner-listen", "127.0.0.1:45001"]);
    }

    #[tokio::test]
    async fn a_service_gets_its_own_environment_and_never_on_its_command_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = "#!/bin/sh\nenv > \"$0.env\"; echo \"$@\" > \"$0.args\"\n\
            echo 'sandbar-envdump ready addr=127.0.0.1:1'; exec sleep 30\n";
        let path = dir.path().join("sandbar-envdump");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A variable of this process's own environment stands for a secret `sandbar up` was started with.
        let (inherited, _) = std::env::vars().find(|(k, v)| !v.is_empty() && k != "PATH").unwrap();
        let launcher = Launcher {
            bins: dir.path().to_owned(),
            env: vec![("RUST_LOG".into(), "info".into())],
            logs: dir.path().to_owned(),
        };
        let mut spec = Spec::new("envdump", flags([("--listen", "127.0.0.1:0".into())]), Duration::from_secs(10));
        spec.env = vec![("SANDBAR_PROXY_TOKEN".into(), "s3cr3t".into())];
        spec.env_remove = vec![inherited.clone()];
        assert!(!format!("{spec:?}").contains("s3cr3t"));
        let (mut child, _) = launcher.start(&spec).await.unwrap();
        child.kill().await.unwrap();
        let env = std::fs::read_to_string(dir.path().join("sandbar-envdump.env")).unwrap();
        let env: Vec<_> = env.lines().collect();
        assert!(env.contains(&"SANDBAR_PROXY_TOKEN=s3cr3t") && env.contains(&"RUST_LOG=info"), "{env:?}");
        assert!(!env.iter().any(|l| l.starts_with(&format!("{inherited}="))), "{inherited} inherited: {env:?}");
        let args = std::fs::read_to_string(dir.path().join("sandbar-envdump.args")).unwrap();
        assert_eq!(args.trim(), "--listen 127.0.0.1:0");
    }
}
