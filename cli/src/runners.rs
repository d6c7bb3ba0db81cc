//! `sandbar runner ...`: the operator's commands for the runners (list, cordon, uncordon, drain), through the API's
//! `/api/admin/runners` endpoints with the admin token. The token comes from `SANDBAR_ADMIN_TOKEN`, else from
//! `<data-dir>/secrets.env` (`SANDBAR_API_ADMIN_TOKEN`, which `sandbar up` makes); the API URL as for the other
//! commands. An organization's API key is refused (403).

use std::path::Path;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;

use crate::client::{self, Client, enc};
use crate::output::{self, Output};

/// What `sandbar runner` does.
#[derive(Debug, clap::Subcommand)]
pub enum RunnerCmd {
    /// List the runners: id, schedule (active, cordoned, draining), reachable, sandboxes (-o json: the API's
    /// objects: id, version, schedule, moving, reachable, cpu, memory, disk, sandboxes, registeredAt, lastHeartbeat).
    Ls,
    /// Take no new sandboxes on this runner; what runs there is left alone (-o json: the runner).
    Cordon { id: String },
    /// Let this runner take new sandboxes again; a move in progress stops (-o json: the runner).
    Uncordon { id: String },
    /// Cordon this runner and mark it draining; with --move, its sandboxes are moved to other runners by archive
    /// and restore (started ones end started elsewhere, with their files) (-o json: the runner).
    Drain {
        id: String,
        /// Move its sandboxes away (needs an archive store the runners share).
        #[arg(long = "move")]
        move_out: bool,
    },
}

/// The admin token: `SANDBAR_ADMIN_TOKEN`, else `SANDBAR_API_ADMIN_TOKEN` in `<data-dir>/secrets.env`.
pub fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = std::env::var("SANDBAR_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let path = data_dir.join("secrets.env");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let found = text.lines().find_map(|l| l.strip_prefix("SANDBAR_API_ADMIN_TOKEN=")).map(str::trim);
    match found.filter(|t| !t.is_empty()) {
        Some(t) => Ok(t.to_owned()),
        None => bail!(
            "no admin token: set SANDBAR_ADMIN_TOKEN (the API's --admin-token), or run on the host of `sandbar up` \
             (which keeps it in {})",
            path.display()
        ),
    }
}

/// Runs `cmd` against the API at the client's URL with the admin token.
pub async fn run(
    cmd: RunnerCmd,
    data_dir: &Path,
    tls: std::sync::Arc<rustls::ClientConfig>,
    out: Output,
) -> anyhow::Result<()> {
    let (url, _) = client::find_credentials(data_dir);
    let url =
        url.context("no API to talk to: set DAYTONA_API_URL, or run `sandbar up` (which writes <data-dir>/env)")?.value;
    let c = Client::new(url, admin_token(data_dir)?, tls)?;
    let one = |id: &str, verb: &str| format!("/admin/runners/{}/{verb}", enc(id));
    let runner = match cmd {
        RunnerCmd::Ls => {
            let all = c.api(Method::GET, "/admin/runners", None).await?;
            if out.is_json() {
                return output::json(&all);
            }
            println!("{:<24} {:<9} {:<7} {:<9} {:>9}  VERSION", "ID", "SCHEDULE", "MOVING", "REACHABLE", "SANDBOXES");
            for r in all.as_array().map(Vec::as_slice).unwrap_or_default() {
                println!(
                    "{:<24} {:<9} {:<7} {:<9} {:>9}  {}",
                    r["id"].as_str().unwrap_or(""),
                    r["schedule"].as_str().unwrap_or(""),
                    r["moving"].as_bool().unwrap_or(false),
                    r["reachable"].as_bool().unwrap_or(false),
                    r["sandboxes"],
                    r["version"].as_str().unwrap_or("")
                );
            }
            return Ok(());
        }
        RunnerCmd::Cordon { id } => c.api(Method::POST, &one(&id, "cordon"), None).await?,
        RunnerCmd::Uncordon { id } => c.api(Method::POST, &one(&id, "uncordon"), None).await?,
        RunnerCmd::Drain { id, move_out } => {
            c.api(Method::POST, &format!("{}?move={move_out}", one(&id, "drain")), None).await?
        }
    };
    print_runner(&runner, out)
}

fn print_runner(r: &Value, out: Output) -> anyhow::Result<()> {
    if out.is_json() {
        return output::json(r);
    }
    let moving = if r["moving"].as_bool() == Some(true) { ", moving its sandboxes out" } else { "" };
    println!("{} {}{moving}", r["id"].as_str().unwrap_or(""), r["schedule"].as_str().unwrap_or(""));
    Ok(())
}
