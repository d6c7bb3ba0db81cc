//! Images: inspecting local images and building the default sandbox image with `scripts/build-sandbox-image`
//! (debootstrap + `docker import`, cached by a content tag). Pulls from registries are `super::pull`.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;

use bollard::Docker;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::{ImageError, docker_status};

/// What the runner needs to know about a local image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The reference it was looked up by.
    pub reference: String,
    /// `sha256:...`.
    pub id: String,
    /// Bytes.
    pub size: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// The image's default user; `None` when it runs as root by default.
    pub user: Option<String>,
}

impl ImageInfo {
    /// What the daemon runs as the sandbox's entrypoint: the image's entrypoint followed by its cmd, as Docker
    /// would have run them.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(self.cmd.iter()).cloned().collect()
    }
}

/// True for references Docker would resolve as an image ID, an ID prefix or a digest (`sha256:...`, `x@sha256:...`,
/// bare hex): the control plane names images only by reference, so such a name is refused (it could reach another
/// organization's image).
pub fn looks_like_id(reference: &str) -> bool {
    let r = reference.trim();
    r.contains('@')
        || r.to_ascii_lowercase().starts_with("sha256:")
        || (!r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Inspects a local image; `Ok(None)` when it is not there.
pub async fn inspect(docker: &Docker, reference: &str) -> Result<Option<ImageInfo>, bollard::errors::Error> {
    match docker.inspect_image(reference).await {
        Ok(img) => {
            let config = img.config.unwrap_or_default();
            Ok(Some(ImageInfo {
                reference: reference.to_owned(),
                id: img.id.unwrap_or_default(),
                size: img.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                entrypoint: config.entrypoint.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
                user: config.user.filter(|u| !u.is_empty()),
            }))
        }
        Err(e) if docker_status(&e) == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes sure the default image `reference` exists. With a build script, runs it (it returns in well under a
/// second when its content tag is already built, and repoints `sandbar-sandbox:default` at the current recipe);
/// without one, only checks. The script's progress is logged line by line.
pub async fn ensure_default(docker: &Docker, reference: &str, script: Option<&Path>) -> Result<ImageInfo, ImageError> {
    let Some(script) = script else {
        return inspect(docker, reference).await?.ok_or_else(|| ImageError::NotFound(reference.to_owned()));
    };
    let built = run_script(script).await?;
    tracing::info!(image = %built, "default image ready");
    inspect(docker, reference).await?.ok_or_else(|| ImageError::Script {
        path: script.to_owned(),
        reason: format!("it built {built} but {reference} is still missing"),
    })
}

/// Runs the build script; returns the tag it printed last on stdout.
async fn run_script(script: &Path) -> Result<String, ImageError> {
    let fail = |reason: String| ImageError::Script { path: script.to_owned(), reason };
    // The operator's script needs no credential of the runner's.
    let mut child = tokio::process::Command::new(script)
        .env_remove("SANDBAR_RUNNER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("no pipes to the script".into()));
    };
    // Progress goes to the log as it happens; the tail is kept for the error message.
    let log = tokio::spawn(async move {
        let mut tail = VecDeque::with_capacity(20);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "sandbar_runner::image_build", "{line}");
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    });
    let mut last = String::new();
    let mut out = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = out.next_line().await {
        if !line.trim().is_empty() {
            last = line.trim().to_owned();
        }
    }
    let status = child.wait().await.map_err(|e| fail(format!("waiting for it: {e}")))?;
    let tail = log.await.unwrap_or_default();
    if !status.success() {
        return Err(fail(format!("{status}; last output:\n{}", Vec::from(tail).join("\n"))));
    }
    if last.is_empty() {
        return Err(fail("it printed no image tag".into()));
    }
    Ok(last)
}
