//! `sandbar`: starts the whole stack on one host as child processes (`sandbar up`) and drives it (create, list,
//! exec, term, ssh, ...). Exit status: 125 for sandbar's own failures (as `docker run`), 2 for bad usage (clap's),
//! the remote command's status for `exec`, `term` and `ssh`; see [`EXIT_HELP`]. `sandbar --print-config` prints the
//! effective client configuration as TOML (the API URL and key and where each came from, the key masked, the data
//! directory, the output format, the extra CA certificate) and exits 0, as the services' `--print-config` does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use reqwest::Method;
use sandbar_cli::client::{self, Client, enc};
use sandbar_cli::output::{self, Output};
use sandbar_cli::{FAILURE, demux, runners, ssh, term, tls, up};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "sandbar", version, about = "Sandboxes for AI agents and the people beside them", after_help = EXIT_HELP)]
struct Cli {
    /// Output of the commands that print data (create, list, info, preview, start, stop, snapshot, logs,
    /// ssh-config): `text` for people, `json` for scripts (stable field names: a sandbox is the API's object).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Data directory of `sandbar up` (where the client finds the API URL and key when the environment has none).
    #[arg(long, global = true, env = "SANDBAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate to trust for an https API or proxy, besides the system's roots and the certificate
    /// `sandbar up` generated in the data directory.
    #[arg(long, global = true, env = "SANDBAR_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print the effective client configuration (API URL and key, each with where it came from, the key masked;
    /// data directory; output format) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// What `sandbar --print-config` prints.
#[derive(serde::Serialize)]
struct ClientConfig {
    /// `DAYTONA_API_URL` (unset: left out).
    api_url: Option<String>,
    /// `env DAYTONA_API_URL`, the `<data-dir>/env` file it was read from, or `unset`.
    api_url_source: String,
    /// `DAYTONA_API_KEY`, masked.
    api_key: Option<String>,
    api_key_source: String,
    data_dir: PathBuf,
    output: String,
    ca_cert: Option<PathBuf>,
}

/// `sandbar --print-config`.
fn print_config(cli: &Cli) -> anyhow::Result<ExitCode> {
    use clap::ValueEnum;
    let data_dir = up::data_dir(cli.data_dir.as_deref());
    let (url, key) = client::find_credentials(&data_dir);
    let source = |s: &Option<client::Setting>| s.as_ref().map_or_else(|| "unset".to_owned(), |s| s.source.clone());
    let config = ClientConfig {
        api_url_source: source(&url),
        api_key_source: source(&key),
        api_url: url.map(|s| s.value),
        api_key: key.map(|s| s.value),
        data_dir,
        output: cli.output.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default(),
        ca_cert: cli.ca_cert.clone(),
    };
    write_stdout(sandbar_support::config::to_toml(&config, &["api_key"])?.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The exit statuses, shown after `--help`.
const EXIT_HELP: &str = "\
Exit status:
  0    success
  2    bad usage: an unknown command, flag or value (nothing was sent)
  125  sandbar itself failed: the API or proxy unreachable or answering with an error (4xx/5xx), a sandbox that
       does not exist or failed to start, a bad answer
  exec, term and ssh exit with the remote command's status (0-255) once it ran (ssh's own failures are 255, as
  ssh's); a remote command that exits 125 is told apart only by what it printed, as with `docker run`.";

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the API, a runner and the proxy on this host (builds what is missing on first run).
    Up(up::UpArgs),
    /// Create a sandbox and wait until it is started; prints its id (-o json: the sandbox).
    Create {
        /// Image (a local image or snapshot name); default: the stack's default image.
        #[arg(long)]
        image: Option<String>,
        /// Snapshot name (same as --image).
        #[arg(long, conflicts_with = "image")]
        snapshot: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Cores.
        #[arg(long)]
        cpu: Option<u32>,
        /// GiB.
        #[arg(long)]
        memory: Option<u32>,
        /// GiB.
        #[arg(long)]
        disk: Option<u32>,
        /// Environment variable, KEY=VALUE (repeatable).
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// Label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Preview URLs need no token.
        #[arg(long)]
        public: bool,
        /// Return at once instead of waiting for `started`.
        #[arg(long)]
        no_wait: bool,
    },
    /// List sandboxes.
    List {
        /// Only sandboxes with this label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Print JSON instead of a table (the same as `-o json`): an array of sandboxes.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox as JSON (the API's object, with either --output).
    Info { id: String },
    /// Run a command in a sandbox, streaming its output; exits with its exit code (0-255), or 125 when sandbar
    /// cannot run it (see "Exit status" in `sandbar --help`).
    Exec {
        id: String,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach this terminal to a shell in the sandbox (detach with Ctrl-], the shell keeps running).
    Term {
        id: String,
        /// Reattach to this PTY session instead of starting a new one.
        #[arg(long)]
        session: Option<String>,
    },
    /// Open an SSH session through the gateway with a fresh access token.
    Ssh {
        id: String,
        /// Minutes the token stays valid.
        #[arg(long, default_value_t = 60)]
        expires: u32,
        /// Extra arguments for ssh (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print an OpenSSH `Host` block for a sandbox with a fresh access token (for ~/.ssh/config, `ssh -F`, VS Code
    /// Remote-SSH); -o json: {host, hostName, port, user, sandboxId, expiresAt}.
    SshConfig {
        id: String,
        /// Minutes the token (the block's `User`) stays valid, up to 10080 (a week).
        #[arg(long, default_value_t = 60)]
        expires: u32,
        /// The block's `Host` name; default: sandbar-<sandbox id>.
        #[arg(long)]
        alias: Option<String>,
        /// A `UserKnownHostsFile` for the gateway's host key (default: ssh's own).
        #[arg(long)]
        known_hosts: Option<PathBuf>,
    },
    /// Print the preview URL (and token) of a port of the sandbox (-o json: {sandboxId, url, token}).
    Preview { id: String, port: u16 },
    /// Stop a sandbox and wait until it is stopped (-o json: the sandbox).
    Stop {
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Start a stopped sandbox and wait until it is started (-o json: the sandbox).
    Start { id: String },
    /// Delete a sandbox.
    Rm { id: String },
    /// Snapshot a sandbox's filesystem under a name; prints the name (-o json: {name, sandboxId}).
    Snapshot { id: String, name: String },
    /// Print the output of the sandbox's entrypoint (-o json: {stdout, stderr}; with --follow one
    /// {stream, data} object per line).
    Logs {
        id: String,
        /// Keep following the output.
        #[arg(short, long)]
        follow: bool,
    },
    /// The operator's runner commands (ls, cordon, uncordon, drain [--move]), with the admin token
    /// (SANDBAR_ADMIN_TOKEN, or `sandbar up`'s secrets.env).
    Runner {
        #[command(subcommand)]
        cmd: runners::RunnerCmd,
    },
    /// Print a completion script for a shell: `source <(sandbar completions bash)`, or write it where the shell
    /// looks (e.g. ~/.local/share/bash-completion/completions/sandbar, a directory of $fpath as _sandbar,
    /// ~/.config/fish/completions/sandbar.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of sandbar: `sandbar man | man -l -`; with --dir, write one page per command
    /// there (sandbar.1, sandbar-create.1, ...).
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandbar: {e:#}");
            ExitCode::from(FAILURE)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.print_config {
        return print_config(&cli);
    }
    let out = cli.output;
    let Some(command) = cli.command else {
        Cli::command().error(clap::error::ErrorKind::MissingSubcommand, "a command is needed (see --help)").exit()
    };
    match &command {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "sandbar", &mut script);
            write_stdout(&script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Man { dir } => {
            man(dir.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let dir = up::data_dir(cli.data_dir.as_deref());
    if let Cmd::Up(mut args) = command {
        args.data_dir = Some(dir);
        if args.print_config {
            write_stdout(up::print_config(&args)?.as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        up::up(args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let trust = tls::Trust { ca_cert: cli.ca_cert.clone(), data_dir: Some(dir.clone()), system_roots: true };
    if let Cmd::Runner { cmd } = command {
        runners::run(cmd, &dir, trust.client_config()?, out).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let (url, key) = client::credentials(&dir)?;
    let c = Client::new(url, key, trust.client_config()?)?;
    let wait = Duration::from_secs(120);
    match command {
        // Handled above.
        Cmd::Up(_) | Cmd::Completions { .. } | Cmd::Man { .. } | Cmd::Runner { .. } => {}
        Cmd::Create { image, snapshot, name, cpu, memory, disk, env, labels, public, no_wait } => {
            let body = client::create_body(
                image.as_deref(),
                snapshot.as_deref(),
                name.as_deref(),
                cpu,
                memory,
                disk,
                &env,
                &labels,
                public,
            );
            let mut sb = c.api(Method::POST, "/sandbox", Some(body)).await?;
            let id = sb["id"].as_str().context("create answered without an id")?.to_owned();
            if !no_wait {
                sb = c.wait_for(&id, &["started"], wait).await?;
            }
            if out.is_json() {
                output::json(&sb)?;
            } else {
                println!("{id}");
            }
        }
        Cmd::List { labels, json } => {
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec![("limit".to_owned(), "100".to_owned())];
                if !labels.is_empty() {
                    let m: serde_json::Map<_, _> = labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                    q.push(("labels".into(), Value::Object(m).to_string()));
                }
                if let Some(cur) = &cursor {
                    q.push(("cursor".into(), cur.clone()));
                }
                let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
                let page = c.api(Method::GET, &format!("/sandbox?{}", qs.join("&")), None).await?;
                if let Some(items) = page["items"].as_array() {
                    all.extend(items.iter().cloned());
                }
                match page["nextCursor"].as_str() {
                    Some(n) if !n.is_empty() => cursor = Some(n.to_owned()),
                    _ => break,
                }
            }
            if json || out.is_json() {
                output::json(&Value::Array(all))?;
            } else {
                println!(
                    "{:<38} {:<20} {:<10} {:>4} {:>7} {:>5}  IMAGE",
                    "ID", "NAME", "STATE", "CPU", "MEM GiB", "DISK"
                );
                for s in &all {
                    println!(
                        "{:<38} {:<20} {:<10} {:>4} {:>7} {:>5}  {}",
                        s["id"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or(""),
                        s["state"].as_str().unwrap_or(""),
                        s["cpu"],
                        s["memory"],
                        s["disk"],
                        s["snapshot"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Cmd::Info { id } => output::json(&c.sandbox(&id).await?)?,
        Cmd::Exec { id, cwd, command } => return exec(&c, &id, cwd.as_deref(), &command).await,
        Cmd::Term { id, session } => {
            let sb = c.sandbox(&id).await?;
            let base = c.toolbox_base(&sb).await?;
            return term::attach(&c, &base, session).await;
        }
        Cmd::Ssh { id, expires, args } => {
            let v = c
                .api(Method::POST, &format!("/sandbox/{}/ssh-access?expiresInMinutes={expires}", enc(&id)), None)
                .await?;
            // Built from the access's parts, never the API's words (see `sandbar_cli::ssh`).
            let argv = ssh::Target::from_access(&v)?.argv(&args);
            let status = std::process::Command::new("ssh")
                .args(&argv)
                .status()
                .context("running ssh (install openssh-client)")?;
            return Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(255)).unwrap_or(255)));
        }
        Cmd::SshConfig { id, expires, alias, known_hosts } => {
            let v = c
                .api(Method::POST, &format!("/sandbox/{}/ssh-access?expiresInMinutes={expires}", enc(&id)), None)
                .await?;
            let target = ssh::Target::from_access(&v)?;
            let alias = alias.unwrap_or_else(|| format!("sandbar-{}", target.sandbox_id.as_deref().unwrap_or(&id)));
            if out.is_json() {
                output::json(&target.json(&alias))?;
            } else {
                print!("{}", target.config(&alias, known_hosts.as_deref())?);
            }
        }
        Cmd::Preview { id, port } => {
            let v = c.api(Method::GET, &format!("/sandbox/{}/ports/{port}/preview-url", enc(&id)), None).await?;
            if out.is_json() {
                output::json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", v["url"].as_str().unwrap_or(""));
            if let Some(t) = v["token"].as_str().filter(|t| !t.is_empty()) {
                println!("token: {t}  (header X-Daytona-Preview-Token, or ?DAYTONA_SANDBOX_AUTH_KEY={t})");
            }
        }
        Cmd::Stop { id, force } => {
            c.api(Method::POST, &format!("/sandbox/{}/stop?force={force}", enc(&id)), None).await?;
            let sb = c.wait_for(&id, &["stopped", "destroyed", "archived"], wait).await?;
            if out.is_json() {
                output::json(&sb)?;
            }
        }
        Cmd::Start { id } => {
            c.api(Method::POST, &format!("/sandbox/{}/start", enc(&id)), None).await?;
            let sb = c.wait_for(&id, &["started"], wait).await?;
            if out.is_json() {
                output::json(&sb)?;
            }
        }
        Cmd::Rm { id } => {
            c.api(Method::DELETE, &format!("/sandbox/{}", enc(&id)), None).await?;
        }
        Cmd::Snapshot { id, name } => {
            let sb =
                c.api(Method::POST, &format!("/sandbox/{}/snapshot", enc(&id)), Some(json!({"name": name}))).await?;
            if out.is_json() {
                output::json(&json!({"name": name, "sandboxId": sb["id"].as_str().unwrap_or(&id)}))?;
            } else {
                println!("{name}");
            }
        }
        Cmd::Logs { id, follow } => {
            let sb = c.sandbox(&id).await?;
            let base = c.toolbox_base(&sb).await?;
            if follow {
                let mut socket = c.ws(&format!("{base}/process/session/entrypoint/logs?follow=true"), &[]).await?;
                if out.is_json() {
                    demux::follow_into(&mut socket, &mut output::JsonLines::default()).await?;
                } else {
                    demux::follow(&mut socket).await?;
                }
            } else {
                let v = c.toolbox(&base, Method::GET, "/process/session/entrypoint/logs", None).await?;
                if out.is_json() {
                    let stream = |k: &str| v[k].as_str().unwrap_or("").to_owned();
                    output::json(&json!({"stdout": stream("stdout"), "stderr": stream("stderr")}))?;
                    return Ok(ExitCode::SUCCESS);
                }
                print!("{}", v["stdout"].as_str().unwrap_or(""));
                eprint!("{}", v["stderr"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the manual: the top page (which lists every command) on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing the pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            write_stdout(&page)?;
        }
    }
    Ok(())
}

/// Writes generated text to stdout; a reader that stopped early (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Runs `argv` in a session of its own and streams its stdout and stderr as they come.
async fn exec(c: &Client, id: &str, cwd: Option<&str>, argv: &[String]) -> anyhow::Result<ExitCode> {
    let sb = c.sandbox(id).await?;
    let base = c.toolbox_base(&sb).await?;
    let session = format!("sandbar-exec-{}", std::process::id());
    c.toolbox(&base, Method::POST, "/process/session", Some(json!({"sessionId": session}))).await?;
    let result = async {
        let mut command = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
        if let Some(dir) = cwd {
            command = format!("cd {} && {command}", shell_quote(dir));
        }
        let started = c
            .toolbox(
                &base,
                Method::POST,
                &format!("/process/session/{session}/exec"),
                Some(json!({"command": command, "runAsync": true})),
            )
            .await?;
        let cmd_id = started["cmdId"].as_str().context("exec answered without cmdId")?.to_owned();
        let logs = format!("{base}/process/session/{session}/command/{cmd_id}/logs?follow=true");
        let mut socket = c.ws(&logs, &[]).await?;
        demux::follow(&mut socket).await?;
        // The log stream ends when the command does; its exit code is then recorded.
        let mut code = None;
        for _ in 0..50 {
            let v =
                c.toolbox(&base, Method::GET, &format!("/process/session/{session}/command/{cmd_id}"), None).await?;
            if let Some(n) = v["exitCode"].as_i64() {
                code = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(code.context("the command's exit code never arrived")?)
    }
    .await;
    let _ = c.toolbox(&base, Method::DELETE, &format!("/process/session/{session}"), None).await;
    let code = result?;
    Ok(ExitCode::from(u8::try_from(code.rem_euclid(256)).unwrap_or(1)))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
