//! `sandbar up`: the whole stack on one host as one supervised process tree. The API, one runner and the proxy
//! run as child processes of `sandbar` (the proxy's pingora server wants a process of its own; children also keep
//! a crash contained and its log in one file). They start one after the other (`up/launch.rs`); if one cannot start
//! then, `sandbar up` stops with its message. Once the stack is up, a child that exits is started again on the
//! addresses it had while the others keep serving (sandboxes answer through the proxy with the runner down: it is
//! not in the data path), after a delay that grows while it keeps crashing; the stack stops only when a child keeps
//! failing to start (`up/restart.rs`, `up/supervise.rs`). SIGTERM or Ctrl-C drains every child within a deadline, also
//! during a restart's wait; sandboxes keep running in Docker and the next `sandbar up` finds them in the state they
//! were in. Each child gets only the secrets it presents or checks, in its environment (`up/secrets.rs`).
//! `--advertise-addr` goes to the runner, which publishes its sandboxes' daemon ports on that address and registers
//! it as the network of the addresses it reports; the API and the proxy need nothing more.

mod launch;
pub mod paths;
mod restart;
mod secrets;
mod supervise;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sandbar_support::fs::write_private;
use tokio::process::Command;

use launch::{Launcher, Spec, fields, flags};
use restart::Policy;
use secrets::Secrets;
use supervise::{Service, stop_all, supervise};

/// Flags of `sandbar up` (each also a `SANDBAR_*` environment variable). `--print-config` prints them, as TOML
/// with these names as keys.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct UpArgs {
    /// Where the database, keys, certificates, logs and secrets live.
    #[arg(long, env = "SANDBAR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, env = "SANDBAR_API_PORT", default_value_t = sandbar_proto::ports::API)]
    pub api_port: u16,
    /// Proxy HTTP port (0 = pick a free one).
    #[arg(long, env = "SANDBAR_HTTP_PORT", default_value_t = sandbar_proto::ports::PROXY_HTTP)]
    pub http_port: u16,
    /// Proxy HTTPS port (0 = pick a free one).
    #[arg(long, env = "SANDBAR_HTTPS_PORT", default_value_t = sandbar_proto::ports::PROXY_HTTPS)]
    pub https_port: u16,
    /// SSH gateway port (0 = pick a free one).
    #[arg(long, env = "SANDBAR_SSH_PORT", default_value_t = sandbar_proto::ports::SSH_GATEWAY)]
    pub ssh_port: u16,
    /// Address the proxy and the SSH gateway listen on.
    #[arg(long, env = "SANDBAR_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Domain of preview URLs (`{port}-{sandboxId}.{domain}`).
    #[arg(long, env = "SANDBAR_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// Image of sandboxes created without one (built by its recipe, `build-sandbox-image`, when it is the default).
    #[arg(long, env = "SANDBAR_DEFAULT_IMAGE", default_value = "sandbar-sandbox:default")]
    pub image: String,
    /// The static `sandbar-daemon` mounted into every sandbox. Default: beside `sandbar`, its prefix's
    /// `lib/sandbar/`, the checkout's build when run from one, `/usr/lib/sandbar/` (see `up/paths.rs`).
    #[arg(long, env = "SANDBAR_STATIC_DAEMON")]
    pub daemon_binary: Option<PathBuf>,
    /// The default image's recipe. Default: beside `sandbar`, its prefix's `share/sandbar/`, the checkout's
    /// `scripts/` when run from one, `/usr/share/sandbar/`.
    #[arg(long, env = "SANDBAR_IMAGE_RECIPE")]
    pub image_recipe: Option<PathBuf>,
    /// Started sandboxes of the default image kept ready.
    #[arg(long, env = "SANDBAR_WARM_POOL", default_value_t = 0)]
    pub warm_pool: usize,
    /// The runner's id.
    #[arg(long, env = "SANDBAR_RUNNER_ID", default_value = "local")]
    pub runner_id: String,
    /// The API URL the runner calls (with its `/api` path), when it must reach the API another way than the API's
    /// own address (a relay, a load balancer; the network fault tests put a relay they can cut here). Default: the
    /// API's address.
    #[arg(long, env = "SANDBAR_RUNNER_API_URL")]
    pub runner_api_url: Option<String>,
    /// The host address a proxy on another host reaches this host's sandboxes at: the runner publishes each
    /// sandbox's toolbox and SSH ports on it and reports `ADDR:port` to the API (the runner's `--advertise-addr`).
    /// Unset: their Docker bridge addresses, which only this host reaches.
    #[arg(long, env = "SANDBAR_ADVERTISE_ADDR")]
    pub advertise_addr: Option<std::net::Ipv4Addr>,
    /// Extra `key=value` label on every container of this stack (tests mark theirs).
    #[arg(long = "container-label")]
    pub container_labels: Vec<String>,
    /// Hand out the proxy's HTTPS URL (toolboxProxyUrl, preview links) instead of its HTTP one. Clients must trust
    /// `<data-dir>/tls/localhost.crt` (the `sandbar` commands do by themselves).
    #[arg(long, env = "SANDBAR_HTTPS")]
    pub https: bool,
    /// Seconds the services get to drain on shutdown before they are killed.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Print these settings as TOML (the data directory resolved; no secret is among them) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}

/// The data directory: the flag, else `$XDG_DATA_HOME/sandbar`, else `~/.local/share/sandbar`.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    let var = |k| std::env::var(k).ok();
    paths::data_dir(flag, var("XDG_DATA_HOME").as_deref(), var("HOME").as_deref())
}

/// Directory of the service binaries: beside `sandbar` itself (cargo builds them into one directory).
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("SANDBAR_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the sandbar executable")?;
    Ok(exe.parent().context("sandbar executable has no directory")?.to_owned())
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs a set-up script with a spinner; its stderr goes to `log`; returns the last line of its stdout.
async fn run_step(what: &str, script: &Path, env: &[(&str, &str)], log: &Path) -> anyhow::Result<String> {
    let pb = spinner(what);
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let out = Command::new(script)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(log_file)
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    pb.finish_and_clear();
    if !out.status.success() {
        bail!("{what} failed ({}); see {}", out.status, log.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").trim().to_owned();
    eprintln!("  {what}: done");
    Ok(last)
}

/// A free port for a service asked to use port 0 (the services need each other's addresses before they start).
fn resolve_port(host: &str, port: u16) -> anyhow::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    let l = TcpListener::bind((host, 0)).with_context(|| format!("finding a free port on {host}"))?;
    Ok(l.local_addr()?.port())
}

/// `sandbar up --print-config`: what this `sandbar up` would run with.
pub fn print_config(args: &UpArgs) -> anyhow::Result<String> {
    let mut args = args.clone();
    args.data_dir = Some(data_dir(args.data_dir.as_deref()));
    Ok(sandbar_support::config::to_toml(&args, &[])?)
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let dir = data_dir(args.data_dir.as_deref());
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let dir = std::fs::canonicalize(&dir)?;
    let logs = dir.join("logs");
    let bins = bin_dir()?;
    eprintln!("sandbar: data directory {}", dir.display());

    check_docker().await?;

    // What is missing is made, with progress shown; a second run finds everything and starts in seconds.
    let places = paths::Places::current().context("locating the sandbar executable")?;
    let explicit = args.daemon_binary.as_deref().filter(|p| !p.as_os_str().is_empty());
    let daemon = match places.daemon(explicit) {
        Some(paths::Found::File(p)) => p,
        Some(paths::Found::Script(s)) => {
            PathBuf::from(run_step("building the static daemon", &s, &[], &logs.join("build.log")).await?)
        }
        None => bail!(
            "no static {} found beside {} or in {}; install the sandbar package or pass --daemon-binary",
            paths::DAEMON,
            places.exe.display(),
            paths::SYSTEM_DAEMON
        ),
    };
    if args.image == "sandbar-sandbox:default" {
        default_image(&places, &args, &logs).await?;
    }
    let secrets = secrets::load(&dir)?;

    let ports = Ports::resolve(&args)?;
    let api_url = ports.api_url();

    // First organization and API key, once.
    let key = first_key(&bins, &dir, &logs).await?;

    // Each service's secrets go in its own environment (`up/secrets.rs`); only this is shared.
    let env = vec![("RUST_LOG".to_owned(), std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))];
    let launcher = Launcher { bins, env, logs: logs.clone() };
    let grace = Duration::from_secs(args.shutdown_grace);
    let (services, ready_lines) = start_all(&launcher, specs(&args, &dir, &daemon, &ports, &secrets), grace).await?;
    let ready_addr = |name: &str, field: &str| {
        ready_lines.get(name).and_then(|line| fields(line).get(field).cloned()).unwrap_or_default()
    };
    // Ready means a create is placed and reaches its sandbox: the API reaches its database and has the runner's
    // heartbeat, the runner is registered, the proxy follows the API's route changes.
    let within = Duration::from_secs(60);
    let readiness = tokio::join!(
        readyz(format!("http://127.0.0.1:{}/readyz", ports.api), within),
        readyz(format!("http://{}/readyz", ready_addr("runner", "addr")), within),
        readyz(format!("http://{}/readyz", ready_addr("proxy", "metrics")), within),
    );
    for (name, r) in [("API", readiness.0), ("runner", readiness.1), ("proxy", readiness.2)] {
        if let Err(last) = r {
            eprintln!("sandbar up: the {name} is not ready after 60 s ({last}); creates may fail until it is");
        }
    }
    let proxy_fields = fields(ready_lines.get("proxy").map_or("", String::as_str));
    let proxy_http = format!("http://{}:{}", url_host(&args.bind), ports.http);
    let proxy_https = format!("https://{}:{}", url_host(&args.bind), ports.https);
    let ssh_host = display_host(&args.bind);
    let ssh_port = ports.ssh;

    let env_text = format!("DAYTONA_API_URL={api_url}\nDAYTONA_API_KEY={key}\n");
    let env_path = dir.join("env");
    write_private(&env_path, env_text.as_bytes()).with_context(|| format!("writing {}", env_path.display()))?;
    println!("DAYTONA_API_URL={api_url}");
    println!("DAYTONA_API_KEY={key}");
    let http_url = proxy_fields.get("http").map(|a| format!("http://{a}")).unwrap_or(proxy_http);
    let https_url = proxy_fields.get("https").map(|a| format!("https://{a}")).unwrap_or(proxy_https);
    // The dashboard through the proxy: pages, REST calls and the terminal's and file browser's toolbox paths on
    // one origin (the API's own listener serves the pages too, without the terminal and files).
    let dashboard = if args.https { &https_url } else { &http_url };
    println!("dashboard:   {dashboard}/dashboard/   (sign in with the key above)");
    println!("proxy http:  {http_url}");
    println!("proxy https: {https_url}");
    println!("ssh gateway: {}", proxy_fields.get("ssh").cloned().unwrap_or_else(|| format!("{ssh_host}:{ssh_port}")));
    println!("certificate: {}", dir.join("tls").display());
    println!("terminal:    sandbar term <sandbox-id>   (or `sandbar ssh <sandbox-id>`)");
    println!("logs:        {}", logs.display());
    println!("started in {:.1}s", started.elapsed().as_secs_f64());
    println!("sandbar ready");

    supervise(services, launcher, Policy::default(), grace).await
}

/// The services' ports, port 0 resolved to a free one: they need each other's addresses before they start.
struct Ports {
    api: u16,
    http: u16,
    https: u16,
    ssh: u16,
}

impl Ports {
    fn resolve(args: &UpArgs) -> anyhow::Result<Self> {
        Ok(Self {
            api: resolve_port("127.0.0.1", args.api_port)?,
            http: resolve_port(&args.bind, args.http_port)?,
            https: resolve_port(&args.bind, args.https_port)?,
            ssh: resolve_port(&args.bind, args.ssh_port)?,
        })
    }

    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.api)
    }
}

/// Waits until `url` (a service's `/readyz`) answers 200, at most `within`; the last answer or error when it never
/// did.
async fn readyz(url: String, within: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API's, the runner's and the proxy's command lines and secrets, in the order they start (the others call the
/// API).
fn specs(args: &UpArgs, dir: &Path, daemon: &Path, ports: &Ports, secrets: &Secrets) -> [Spec; 3] {
    let api_url = ports.api_url();
    // Each service ends its own drain (requests, follows, jobs) before `sandbar up`'s SIGKILL at the full grace.
    let grace = service_grace(args.shutdown_grace).to_string();
    // `localhost` rather than an IP: preview hosts are `{port}-{id}.localhost`, derived from this URL.
    let proxy_url = match args.https {
        true => format!("https://{}:{}", url_host(&args.bind), ports.https),
        false => format!("http://{}:{}", url_host(&args.bind), ports.http),
    };
    let api = flags([
        ("--listen", format!("127.0.0.1:{}", ports.api)),
        ("--data-dir", dir.display().to_string()),
        ("--proxy-url", proxy_url),
        ("--ssh-gateway", format!("{}:{}", display_host(&args.bind), ports.ssh)),
        ("--default-snapshot", args.image.clone()),
        // A create answers `started` when the runner finishes within this (warm claims, quick starts).
        ("--create-wait-ms", "3000".into()),
        ("--shutdown-grace", grace.clone()),
    ]);
    let runner = flags(
        [
            ("--runner-id", args.runner_id.clone()),
            ("--api-url", args.runner_api_url.clone().unwrap_or_else(|| api_url.clone())),
            ("--daemon-binary", daemon.display().to_string()),
            ("--runner-listen", "127.0.0.1:0".into()),
            ("--default-image", args.image.clone()),
            ("--warm-pool", args.warm_pool.to_string()),
            ("--runner-state-dir", dir.join("runner").display().to_string()),
            ("--shutdown-grace", grace.clone()),
        ]
        .into_iter()
        .chain(args.advertise_addr.map(|a| ("--advertise-addr", a.to_string())))
        .chain(args.container_labels.iter().map(|l| ("--container-label", l.clone()))),
    );
    let proxy = flags([
        ("--api-url", api_url),
        ("--data-dir", dir.display().to_string()),
        ("--domain", args.domain.clone()),
        ("--bind", args.bind.clone()),
        ("--http-port", ports.http.to_string()),
        ("--https-port", ports.https.to_string()),
        ("--ssh-port", ports.ssh.to_string()),
        ("--metrics-addr", "127.0.0.1:0".into()),
        ("--shutdown-grace", grace),
    ]);
    let spec = |name, args, secs| Spec {
        env: secrets.env_of(name),
        env_remove: secrets::foreign_to(name),
        ..Spec::new(name, args, Duration::from_secs(secs))
    };
    [spec("api", api, 60), spec("runner", runner, 120), spec("proxy", proxy, 60)]
}

/// The grace each service gets to drain, in whole seconds, when `sandbar up` kills what is left after `total`:
/// three quarters of it, so a service always ends its own drain first (at least 1 s, and 1 s short of `total`).
fn service_grace(total: u64) -> u64 {
    (total * 3 / 4).clamp(1, total.saturating_sub(1).max(1))
}

/// Starts the services one after the other, each once the one before is ready, and returns them with their ready
/// lines by name. A first start is not retried: what fails then is the set-up, and its message says what to fix;
/// the services started so far are stopped.
async fn start_all(
    launcher: &Launcher,
    specs: [Spec; 3],
    grace: Duration,
) -> anyhow::Result<(Vec<Service>, BTreeMap<&'static str, String>)> {
    let mut services = Vec::new();
    let mut ready = BTreeMap::new();
    for spec in specs {
        match launcher.start(&spec).await {
            Ok((child, line)) => {
                let name = spec.name;
                services.push(Service::started(spec, child, &line));
                ready.insert(name, line);
            }
            Err(e) => {
                stop_all(&mut services, grace).await;
                return Err(e);
            }
        }
    }
    Ok((services, ready))
}

fn url_host(bind: &str) -> String {
    if matches!(bind, "0.0.0.0" | "::" | "127.0.0.1") { "localhost".into() } else { bind.to_owned() }
}

fn display_host(bind: &str) -> String {
    if bind == "0.0.0.0" || bind == "::" { "127.0.0.1".into() } else { bind.to_owned() }
}

/// Builds the default image with its recipe (seconds when its content tag exists already). Without a recipe, an
/// image already in Docker under that name is used as it is.
async fn default_image(places: &paths::Places, args: &UpArgs, logs: &Path) -> anyhow::Result<()> {
    let explicit = args.image_recipe.as_deref().filter(|p| !p.as_os_str().is_empty());
    if let Some(recipe) = places.recipe(explicit) {
        let what = "building the default sandbox image (Debian root, first time about 90 s)";
        run_step(what, &recipe, &[], &logs.join("build.log")).await?;
        return Ok(());
    }
    if bollard_connect()?.inspect_image(&args.image).await.is_ok() {
        return Ok(());
    }
    bail!(
        "{} is not in Docker and no {} was found beside {} or in {}; pass --image-recipe or --image",
        args.image,
        paths::RECIPE,
        places.exe.display(),
        paths::SYSTEM_RECIPE
    )
}

async fn check_docker() -> anyhow::Result<()> {
    let docker = bollard_connect()?;
    docker.ping().await.map_err(|e| {
        anyhow::anyhow!("the Docker engine is not answering ({e}); start it (e.g. `dockerd &` as root) and retry")
    })?;
    Ok(())
}

fn bollard_connect() -> anyhow::Result<bollard::Docker> {
    bollard::Docker::connect_with_defaults().context("connecting to Docker")
}

/// The first organization's API key: made once by `sandbar-api bootstrap`, then read from `<data-dir>/env`.
async fn first_key(bins: &Path, dir: &Path, logs: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("env"))
        && let Some(k) = text.lines().find_map(|l| l.strip_prefix("DAYTONA_API_KEY="))
        && !k.trim().is_empty()
    {
        return Ok(k.trim().to_owned());
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(logs.join("api.log"))?;
    let out = Command::new(bins.join("sandbar-api"))
        .arg("--data-dir")
        .arg(dir)
        .arg("bootstrap")
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .await
        .context("running sandbar-api bootstrap")?;
    if !out.status.success() {
        bail!("creating the first organization failed ({}); see {}", out.status, logs.join("api.log").display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("api_key=").map(|k| k.trim().to_owned()))
        .filter(|k| !k.is_empty())
        .context("sandbar-api bootstrap printed no key")?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_end_their_drain_before_the_stack_kills_them() {
        assert_eq!(service_grace(10), 7);
        assert_eq!(service_grace(2), 1);
        assert_eq!(service_grace(1), 1);
        assert_eq!(service_grace(0), 1);
        assert_eq!(service_grace(60), 45);
    }
}
