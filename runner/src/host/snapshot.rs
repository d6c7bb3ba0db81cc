//! Snapshots: images made from a Dockerfile through Docker's build API (`FROM` a local image; the build log is
//! streamed line by line as it runs) or by committing a sandbox's filesystem. Snapshots carry the label
//! `sandbar.snapshot` and can be listed, inspected and removed. Docker pulls nothing here: every `FROM` image must
//! already be on the host (registry images were pulled first by the job, `super::pull`), which is checked before
//! Docker sees the Dockerfile.
//!
//! Dockerfiles for sandboxes are written for root (the SDK's `run_commands`, `apt-get install`), while the default
//! image runs as the unprivileged `sandbar`: after each `FROM` of a base with a non-root `USER` the build switches
//! to root, and the image gets the base's user back at the end unless the Dockerfile names a user itself.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::ContainerConfig;
use bollard::query_parameters::{CommitContainerOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::{SandboxInfo, SandboxState, labels};

use super::image::{self, ImageInfo};
use super::{RESERVED_ENV, Runner, strip_daemon};
use crate::error::{SandboxError, SnapshotError, docker_status};

/// Label every snapshot image carries; its value is the snapshot's name.
pub const SNAPSHOT_LABEL: &str = "sandbar.snapshot";
/// Label naming the sandbox a committed snapshot came from.
pub const SNAPSHOT_SOURCE_LABEL: &str = "sandbar.snapshot.source";

/// What every build's `RUN` steps run under: no network (dockerd would otherwise fetch and connect from the
/// host's network namespace's view of the bridge) unless the job gives an egress policy (`super::build_net`), a
/// memory cap without swap, one core, and a process cap
/// (`RLIMIT_NPROC`, counted per user in the build container's user namespace; Docker's build API has no pids
/// limit, and bollard's build options have no `ulimits`, hence [`Runner::post_build`]).
#[derive(Debug, Clone, Copy)]
pub struct BuildLimits {
    pub memory_bytes: i64,
    pub cpu_period_us: i64,
    pub cpu_quota_us: i64,
    pub nproc: i64,
}

pub const BUILD_LIMITS: BuildLimits =
    BuildLimits { memory_bytes: 2 << 30, cpu_period_us: 100_000, cpu_quota_us: 100_000, nproc: 512 };

/// The query of Docker's `POST /build` for image `name` under `limits`.
fn build_query(name: &str, labels_json: &str, limits: &BuildLimits, network: &str) -> Vec<(&'static str, String)> {
    let ulimits = serde_json::json!([{ "Name": "nproc", "Soft": limits.nproc, "Hard": limits.nproc }]).to_string();
    vec![
        ("dockerfile", "Dockerfile".into()),
        ("t", name.to_owned()),
        ("rm", "1".into()),
        ("forcerm", "1".into()),
        // Docker's layer cache is shared by every build on the host: a cached `RUN` step would hand one
        // organization what another's build made (a generated key, what its network reached). Identical
        // Dockerfiles of one organization reuse the whole image instead (the control plane's build reuse).
        ("nocache", "1".into()),
        ("labels", labels_json.to_owned()),
        ("networkmode", network.to_owned()),
        ("memory", limits.memory_bytes.to_string()),
        ("memswap", limits.memory_bytes.to_string()),
        ("cpuperiod", limits.cpu_period_us.to_string()),
        ("cpuquota", limits.cpu_quota_us.to_string()),
        ("ulimits", ulimits),
    ]
}

/// One line of Docker's build stream.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildMessage {
    stream: Option<String>,
    status: Option<String>,
    error: Option<String>,
    error_detail: Option<ErrorDetail>,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorDetail {
    message: Option<String>,
}

/// `name` or `name:tag`, lowercase, as Docker accepts for local references.
pub fn valid_reference(name: &str) -> bool {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let repo_ok = !repo.is_empty()
        && repo.len() <= 200
        && repo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        && repo.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && !repo.contains("//");
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    repo_ok && tag_ok
}

/// The images a Dockerfile's `FROM` lines name, leaving out earlier stages referred to by name and `scratch`.
pub fn base_images(dockerfile: &str) -> Result<Vec<String>, SnapshotError> {
    let mut stages: Vec<String> = Vec::new();
    let mut bases = Vec::new();
    // Line continuations do not matter for FROM lines in practice; join them anyway.
    let joined = dockerfile.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !first.eq_ignore_ascii_case("FROM") {
            continue;
        }
        let mut rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        if rest.is_empty() {
            return Err(SnapshotError::InvalidDockerfile(format!("FROM without an image: {line:?}")));
        }
        if let (Some(as_), Some(stage)) = (rest.get(1), rest.get(2))
            && as_.eq_ignore_ascii_case("AS")
        {
            stages.push(stage.to_ascii_lowercase());
        }
        let image = rest.swap_remove(0);
        if image.contains('$') {
            return Err(SnapshotError::InvalidDockerfile(format!(
                "FROM with a build argument is not supported: {line:?}"
            )));
        }
        if image::looks_like_id(image) {
            return Err(SnapshotError::InvalidDockerfile(format!(
                "FROM an image ID or digest is not allowed: {line:?}"
            )));
        }
        if image != "scratch" && !stages.iter().any(|s| s.eq_ignore_ascii_case(image)) {
            bases.push(image.to_owned());
        }
    }
    if bases.is_empty() && !joined.lines().any(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM")) {
        return Err(SnapshotError::InvalidDockerfile("no FROM line".into()));
    }
    Ok(bases)
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

/// The environment a committed image gets: `image_env` (what the container's image gave it), with every other
/// variable of the container (`container_env`: the caller's and the runner's) set empty, because Docker's commit
/// merges the container's variables back in for keys the new config does not name.
pub(crate) fn commit_env(image_env: Vec<String>, container_env: Vec<String>) -> Vec<String> {
    let mut env = image_env;
    let mut keys: std::collections::HashSet<String> = env.iter().map(|kv| env_key(kv).to_owned()).collect();
    for kv in container_env.iter().map(String::as_str).chain(RESERVED_ENV.iter().copied()) {
        let key = env_key(kv);
        if keys.insert(key.to_owned()) {
            env.push(format!("{key}="));
        }
    }
    env
}

fn is_root(user: &str) -> bool {
    matches!(user.split(':').next(), Some("root" | "0"))
}

/// The Dockerfile with `USER root` after each `FROM` of an image in `base_users` (bases with a non-root user), and
/// that base's user restored at the end when the last stage sets none.
pub fn root_steps(dockerfile: &str, base_users: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(dockerfile.len() + 64);
    let mut restore: Option<&str> = None;
    for line in dockerfile.split_inclusive('\n') {
        let trimmed = line.trim();
        let mut words = trimmed.split_whitespace();
        let first = words.next().unwrap_or_default();
        out.push_str(line);
        if first.eq_ignore_ascii_case("USER") {
            restore = None;
        } else if first.eq_ignore_ascii_case("FROM") && !trimmed.ends_with('\\') {
            restore = words.find(|w| !w.starts_with("--")).and_then(|image| base_users.get(image)).map(String::as_str);
            if restore.is_some() {
                if !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("USER root\n");
            }
        }
    }
    if let Some(user) = restore {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("USER {user}\n"));
    }
    out
}

/// Splits build output into lines for `on_log`, keeping the last ten for an error message.
fn emit(text: &str, pending: &mut String, tail: &mut Vec<String>, on_log: &mut dyn FnMut(&str)) {
    pending.push_str(text);
    while let Some(nl) = pending.find('\n') {
        let line: String = pending.drain(..=nl).collect();
        let line = line.trim_end_matches(['\n', '\r']);
        on_log(line);
        if tail.len() == 10 {
            tail.remove(0);
        }
        tail.push(line.to_owned());
    }
}

/// A build context holding only the Dockerfile.
fn context_tar(dockerfile: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())?;
    builder.into_inner()
}

/// How long a commit waits for Docker to thaw a sandbox an interrupted commit left frozen.
const THAW_WAIT: Duration = Duration::from_secs(120);

impl Runner {
    /// Builds snapshot `name` from a Dockerfile whose `FROM` images are local, with no network, or with `network`'s
    /// egress rules (`super::build_net`). `on_log` receives the build output line by line while it runs.
    pub async fn build_snapshot(
        &self,
        name: &str,
        dockerfile: &str,
        network: Option<(&str, &NetworkPolicy)>,
        on_log: impl FnMut(&str) + Send,
    ) -> Result<ImageInfo, SnapshotError> {
        let Some((build_id, policy)) = network else { return self.build_in(name, dockerfile, "none", on_log).await };
        let net = self.build_network(build_id, policy).await?;
        let built = self.build_in(name, dockerfile, &net.network_mode(), on_log).await;
        self.release_build_network(net).await;
        built
    }

    /// The build, its `RUN` steps in network mode `network`.
    async fn build_in(
        &self,
        name: &str,
        dockerfile: &str,
        network: &str,
        mut on_log: impl FnMut(&str) + Send,
    ) -> Result<ImageInfo, SnapshotError> {
        if !valid_reference(name) {
            return Err(SnapshotError::InvalidName(name.into()));
        }
        let mut base_users = HashMap::new();
        for base in base_images(dockerfile)? {
            match image::inspect(self.docker(), &base).await? {
                None => return Err(SnapshotError::BaseImageNotFound(base)),
                Some(info) => {
                    if let Some(user) = info.user.filter(|u| !is_root(u)) {
                        base_users.insert(base, user);
                    }
                }
            }
        }
        let dockerfile = root_steps(dockerfile, &base_users);
        let context = context_tar(&dockerfile).map_err(|e| SnapshotError::Internal(e.to_string()))?;
        let mut response = self.post_build(name, context, network).await?;
        let mut pending = String::new();
        let mut tail: Vec<String> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = response.chunk().await.map_err(|e| SnapshotError::Internal(format!("build stream: {e}")))?;
            let end = chunk.is_none();
            if let Some(bytes) = chunk {
                buf.extend_from_slice(&bytes);
            }
            // Docker sends one JSON object per line.
            let mut lines: Vec<Vec<u8>> = Vec::new();
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = buf.drain(..=nl).collect();
                line.pop();
                lines.push(line);
            }
            if end && !buf.is_empty() {
                lines.push(std::mem::take(&mut buf));
            }
            for line in lines {
                let Ok(msg) = serde_json::from_slice::<BuildMessage>(&line) else { continue };
                if let Some(text) = msg.stream.as_deref() {
                    emit(text, &mut pending, &mut tail, &mut on_log);
                }
                if let Some(status) = msg.status.as_deref() {
                    emit(&format!("{status}\n"), &mut pending, &mut tail, &mut on_log);
                }
                if let Some(message) = msg.error_detail.and_then(|d| d.message).or(msg.error) {
                    // The reason first, then the output that led to it.
                    let earlier = tail.join("\n");
                    emit(&format!("{message}\n"), &mut pending, &mut tail, &mut on_log);
                    return Err(SnapshotError::BuildFailed(format!("{message}\n{earlier}")));
                }
            }
            if end {
                break;
            }
        }
        if !pending.is_empty() {
            on_log(pending.trim_end());
        }
        image::inspect(self.docker(), name)
            .await?
            .ok_or_else(|| SnapshotError::BuildFailed(format!("the build ended but {name} is missing")))
    }

    /// Starts Docker's build of `context` into `name` under [`BUILD_LIMITS`] and answers its streamed response.
    /// bollard's build options have no `ulimits`, so the request is made here, on the same Docker endpoint.
    async fn post_build(
        &self,
        name: &str,
        context: Vec<u8>,
        network: &str,
    ) -> Result<reqwest::Response, SnapshotError> {
        let internal = |e: String| SnapshotError::Internal(e);
        let host = self.inner.config.docker_host.clone().or_else(|| std::env::var("DOCKER_HOST").ok());
        let host = host.filter(|h| !h.is_empty()).unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let (client, base) = if let Some(path) = host.strip_prefix("unix://") {
            (reqwest::Client::builder().unix_socket(path.to_owned()), "http://docker".to_owned())
        } else if let Some(addr) = host.strip_prefix("tcp://") {
            (reqwest::Client::builder(), format!("http://{addr}"))
        } else {
            return Err(internal(format!("builds need a unix:// or tcp:// Docker host, got {host:?}")));
        };
        let client = client.build().map_err(|e| internal(format!("Docker client: {e}")))?;
        let labels = serde_json::json!({ SNAPSHOT_LABEL: name }).to_string();
        let query = build_query(name, &labels, &BUILD_LIMITS, network);
        let url = format!("{base}/v{}/build", self.docker().client_version());
        let response = client
            .post(url)
            .query(&query)
            .header("content-type", "application/x-tar")
            .body(context)
            .send()
            .await
            .map_err(|e| internal(format!("build request: {e}")))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            return Err(SnapshotError::BuildFailed(format!("Docker refused the build ({status}): {message}")));
        }
        Ok(response)
    }

    /// Commits a sandbox's filesystem (memory is not part of it) as snapshot `name`. The snapshot keeps the
    /// sandbox's image entrypoint and environment but none of the runner's identity: no daemon token, no sandbox
    /// labels.
    pub async fn commit_snapshot(&self, sandbox_id: &str, name: &str) -> Result<ImageInfo, SnapshotError> {
        let comment = format!("sandbar snapshot of sandbox {sandbox_id}");
        self.commit_image(sandbox_id, name, &comment, &[(SNAPSHOT_LABEL, name), (SNAPSHOT_SOURCE_LABEL, sandbox_id)])
            .await
    }

    /// Commits a started or stopped sandbox's filesystem as image `name` (a started one is paused meanwhile), with
    /// the runner's identity blanked out and `extra_labels` set. Snapshots and forks are both made this way.
    /// A sandbox the runner's table shows `paused` when a commit of it is asked for: the API never forks or
    /// snapshots a paused sandbox, so this is Docker's own pause of an earlier commit (a runner killed during a fork
    /// or snapshot rebuilt its table while the container was frozen, and the job came again). Waits, bounded, for
    /// Docker to thaw it; then it is the started sandbox it was. Called under the sandbox's operation lock, which
    /// keeps the event handler from doing the same.
    async fn thawed_after_commit(&self, info: &SandboxInfo) -> Result<SandboxInfo, SnapshotError> {
        let deadline = tokio::time::Instant::now() + THAW_WAIT;
        loop {
            let inspect = self.docker().inspect_container(&info.container_id, None).await?;
            let st = inspect.state.clone().unwrap_or_default();
            if st.running == Some(true) && st.paused != Some(true) {
                let addr = super::events::daemon_addrs(&inspect, self.inner.config.advertise_addr);
                tracing::info!(sandbox_id = %info.id, "paused by an interrupted commit; thawed, started again");
                return Ok(self.report_state(&info.id, SandboxState::Started, addr, None)?);
            }
            if st.running != Some(true) || tokio::time::Instant::now() >= deadline {
                return Err(
                    SandboxError::InvalidState { id: info.id.clone(), state: info.state, action: "commit" }.into()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn commit_image(
        &self,
        sandbox_id: &str,
        name: &str,
        comment: &str,
        extra_labels: &[(&str, &str)],
    ) -> Result<ImageInfo, SnapshotError> {
        if !valid_reference(name) {
            return Err(SnapshotError::InvalidName(name.into()));
        }
        let mut info = self.get(sandbox_id).ok_or_else(|| SandboxError::NotFound(sandbox_id.into()))?;
        if info.state == SandboxState::Paused {
            info = self.thawed_after_commit(&info).await?;
        }
        if !matches!(info.state, SandboxState::Started | SandboxState::Stopped) {
            return Err(
                SandboxError::InvalidState { id: sandbox_id.into(), state: info.state, action: "commit" }.into()
            );
        }
        let container = self.docker().inspect_container(&info.container_id, None).await?;
        let config = container.config.unwrap_or_default();
        // The container runs [daemon, --, argv...]: the snapshot's entrypoint is argv.
        let argv = strip_daemon(config.entrypoint.unwrap_or_default());
        // The image gets the environment its own image gave the container, never the caller's values (secrets)
        // nor ours (the daemon token).
        let image_env = match container.image.as_deref() {
            Some(id) => self.docker().inspect_image(id).await?.config.and_then(|c| c.env).unwrap_or_default(),
            None => Vec::new(),
        };
        let env = commit_env(image_env, config.env.unwrap_or_default());
        let mut image_labels: HashMap<String, String> = config
            .labels
            .unwrap_or_default()
            .into_keys()
            .filter(|k| k.starts_with("sandbar."))
            .map(|k| (k, String::new()))
            .collect();
        for k in [labels::SANDBOX_ID, labels::ORG, labels::RUNNER, labels::NAME, labels::SPEC, labels::POOL] {
            image_labels.insert(k.into(), String::new());
        }
        for (k, v) in extra_labels {
            image_labels.insert((*k).into(), (*v).into());
        }
        let (repo, tag) = match name.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (name, "latest"),
        };
        let opts = CommitContainerOptionsBuilder::default()
            .container(&info.container_id)
            .repo(repo)
            .tag(tag)
            .comment(comment)
            .pause(true)
            .build();
        let commit_config = ContainerConfig {
            entrypoint: Some(argv),
            cmd: Some(Vec::new()),
            env: Some(env),
            labels: Some(image_labels),
            ..Default::default()
        };
        self.docker().commit_container(opts, commit_config).await?;
        image::inspect(self.docker(), name)
            .await?
            .ok_or_else(|| SnapshotError::Internal(format!("committed {name} but cannot find it")))
    }

    /// Snapshots on this host (images labelled `sandbar.snapshot`), by name.
    pub async fn list_snapshots(&self) -> Result<Vec<ImageInfo>, SnapshotError> {
        let filters = HashMap::from([("label", vec![SNAPSHOT_LABEL])]);
        let opts = ListImagesOptionsBuilder::default().filters(&filters).build();
        let mut out = Vec::new();
        for img in self.docker().list_images(Some(opts)).await? {
            let Some(name) = img.labels.get(SNAPSHOT_LABEL).filter(|n| !n.is_empty()) else { continue };
            if let Some(info) = image::inspect(self.docker(), name).await? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// A snapshot by name; `None` if there is none (or the image is not a snapshot).
    pub async fn inspect_snapshot(&self, name: &str) -> Result<Option<ImageInfo>, SnapshotError> {
        if !valid_reference(name) {
            return Err(SnapshotError::InvalidName(name.into()));
        }
        match self.docker().inspect_image(name).await {
            Ok(img) => {
                let is_snapshot =
                    img.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(SNAPSHOT_LABEL))
                        == Some(&name.to_owned());
                if !is_snapshot {
                    return Ok(None);
                }
                Ok(image::inspect(self.docker(), name).await?)
            }
            Err(e) if docker_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a snapshot; refuses while a container uses it.
    pub async fn remove_snapshot(&self, name: &str) -> Result<(), SnapshotError> {
        if self.inspect_snapshot(name).await?.is_none() {
            return Err(SnapshotError::NotFound(name.into()));
        }
        let opts = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
        match self.docker().remove_image(name, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) if docker_status(&e) == Some(409) => Err(SnapshotError::InUse(name.into())),
            Err(e) if docker_status(&e) == Some(404) => Err(SnapshotError::NotFound(name.into())),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for ok in ["snap", "team/snap:1.0", "a.b-c_d:latest", "x:Tag_1"] {
            assert!(valid_reference(ok), "{ok}");
        }
        for bad in ["", "Snap", "snap:", "-x", "a//b", "snap:a/b", "sp ace", "x:é"] {
            assert!(!valid_reference(bad), "{bad}");
        }
    }

    #[test]
    fn commits_keep_only_the_images_env() {
        let image = vec!["PATH=/bin".to_owned(), "LANG=C".to_owned()];
        let container = ["PATH=/evil", "LANG=C", "SECRET=hunter2", "SANDBAR_DAEMON_TOKEN=t"].map(String::from);
        let env = commit_env(image, container.to_vec());
        // The image's own values, then every other key blanked: the caller's, and each reserved one once.
        let mut want: Vec<String> = ["PATH=/bin", "LANG=C", "SECRET="].map(String::from).to_vec();
        want.extend(RESERVED_ENV.iter().map(|k| format!("{k}=")));
        assert_eq!(env[..3], want[..3]);
        let (mut got_rest, mut want_rest) = (env[3..].to_vec(), want[3..].to_vec());
        got_rest.sort();
        want_rest.sort();
        assert_eq!(got_rest, want_rest);
        assert!(env.iter().all(|kv| !kv.contains("hunter2") && !kv.ends_with("=t")), "{env:?}");
    }

    #[test]
    fn from_lines() {
        let df = "# c\nFROM --platform=linux/amd64 base:1 AS build\nRUN x\nfrom build\nFROM scratch\nFROM other\n";
        assert_eq!(base_images(df).unwrap(), ["base:1", "other"]);
        assert!(matches!(base_images("RUN x"), Err(SnapshotError::InvalidDockerfile(_))));
        assert!(matches!(base_images("FROM $BASE"), Err(SnapshotError::InvalidDockerfile(_))));
        assert!(base_images("FROM scratch\nCOPY a /").unwrap().is_empty());
    }

    #[test]
    fn steps_run_as_root_on_a_non_root_base() {
        let users = HashMap::from([("sandbar-sandbox:default".to_owned(), "sandbar".to_owned())]);
        let df = "FROM sandbar-sandbox:default\nRUN echo hi > /built\nENV A=b";
        assert_eq!(
            root_steps(df, &users),
            "FROM sandbar-sandbox:default\nUSER root\nRUN echo hi > /built\nENV A=b\nUSER sandbar\n"
        );
        // A USER of the Dockerfile's own is kept; other bases are left alone.
        let df = "FROM sandbar-sandbox:default\nUSER nobody\nRUN id\n";
        assert_eq!(root_steps(df, &users), "FROM sandbar-sandbox:default\nUSER root\nUSER nobody\nRUN id\n");
        let df = "FROM busybox\nRUN id\n";
        assert_eq!(root_steps(df, &users), df);
        // Only the last stage's user is restored.
        let df = "FROM sandbar-sandbox:default AS a\nRUN x\nFROM busybox\nCOPY --from=a /x /x\n";
        assert_eq!(
            root_steps(df, &users),
            "FROM sandbar-sandbox:default AS a\nUSER root\nRUN x\nFROM busybox\nCOPY --from=a /x /x\n"
        );
        assert!(is_root("root") && is_root("0:0") && !is_root("sandbar") && !is_root("1000"));
    }

    #[test]
    fn context_holds_the_dockerfile() {
        let tar = context_tar("FROM x\n").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("Dockerfile"));
        let mut s = String::new();
        std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
        assert_eq!(s, "FROM x\n");
        assert!(entries.next().is_none());
    }
}
