//! `sandbar ssh` and `sandbar ssh-config`: the `ssh` argv, and an OpenSSH `Host` block, made from an SSH access the
//! API granted: its `token` (the user), and the gateway's `sshHost` and `sshPort`. Nothing the API sends is run, or
//! handed to a shell or to `ssh` as words: each part is checked to be a plain token, host name or address and port,
//! so a hostile answer cannot put options (`-oProxyCommand=...`) or a command on the local `ssh` command line, nor a
//! line into a config file. An API with only Daytona's `sshCommand` string (`ssh -p PORT TOKEN@HOST`) has it parsed
//! to exactly that shape, with the token as its user, and anything else refused.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// A user or host that `ssh` could take for an option, or that holds anything but the characters of a token,
/// a host name or an IP address.
fn plain(word: &str, extra: &[u8]) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && word.len() <= 255
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
}

/// Where to connect for one SSH access: the gateway's host and port, and the access token as the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The access token (the gateway reads the sandbox from it).
    pub user: String,
    /// `sandboxId` of the access, when the API gave a plain one.
    pub sandbox_id: Option<String>,
    /// `expiresAt` of the access, as the API wrote it.
    pub expires_at: Option<String>,
}

impl Target {
    /// The parts of an SSH access answer (`POST /sandbox/{id}/ssh-access`), checked: sandbar's API gives the
    /// gateway as `sshHost` and `sshPort`; an API with only Daytona's `sshCommand` has it parsed instead.
    pub fn from_access(access: &Value) -> anyhow::Result<Self> {
        let token = access["token"].as_str().context("ssh-access answered without token")?;
        let (host, port) = match (&access["sshHost"], &access["sshPort"]) {
            (Value::String(host), port) if !port.is_null() => {
                let bad = || format!("bad sshPort {port} in the ssh-access answer");
                let port = port.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
                (host.as_str(), port.with_context(bad)?)
            }
            _ => Self::parse_command(access, token)?,
        };
        if !plain(token, b"") {
            bail!("the ssh access token {token:?} is not a plain token");
        }
        if !plain(host, b":[]") {
            bail!("bad SSH gateway host {host:?} in the ssh-access answer");
        }
        let sandbox_id = access["sandboxId"].as_str().filter(|s| plain(s, b"")).map(str::to_owned);
        // Only used in a comment line, but a newline there would still start a new config line.
        let expires_at = access["expiresAt"].as_str().filter(|s| plain(s, b":+")).map(str::to_owned);
        Ok(Self { host: host.to_owned(), port, user: token.to_owned(), sandbox_id, expires_at })
    }

    /// Host and port from Daytona's `sshCommand`, which must be exactly `ssh -p PORT TOKEN@HOST` with this token.
    fn parse_command<'a>(access: &'a Value, token: &str) -> anyhow::Result<(&'a str, u16)> {
        let cmd = access["sshCommand"].as_str().context("ssh-access answered without sshHost or sshCommand")?;
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let (port, target) = match words.as_slice() {
            ["ssh", "-p", port, target] => (*port, *target),
            _ => bail!("unexpected sshCommand {cmd:?}: expected `ssh -p PORT TOKEN@HOST`"),
        };
        let port: u16 =
            port.parse().ok().filter(|p| *p != 0).with_context(|| format!("bad port in sshCommand {cmd:?}"))?;
        let (user, host) = target.split_once('@').with_context(|| format!("no user@host in sshCommand {cmd:?}"))?;
        if user != token {
            bail!("the user in sshCommand {cmd:?} is not the access token");
        }
        if !plain(host, b":[]") {
            bail!("bad host in sshCommand {cmd:?}");
        }
        Ok((host, port))
    }

    /// The arguments for `ssh` (without the program name): our options, `-p PORT -l USER HOST`, then `extra` (the
    /// caller's own, after `--` on our command line).
    pub fn argv(&self, extra: &[String]) -> Vec<String> {
        let port = self.port.to_string();
        let mut out: Vec<String> =
            ["-o", "StrictHostKeyChecking=accept-new", "-p", &port, "-l", &self.user, &self.host]
                .map(String::from)
                .into();
        out.extend(extra.iter().cloned());
        out
    }

    /// An OpenSSH `Host` block for this access under the name `alias` (for `~/.ssh/config`, `ssh -F`, or VS Code
    /// Remote-SSH's config file). `known_hosts` names the file that records the gateway's host key (default: the
    /// user's own).
    pub fn config(&self, alias: &str, known_hosts: Option<&Path>) -> anyhow::Result<String> {
        if !plain(alias, b"") {
            bail!("bad host alias {alias:?}: use letters, digits, '-', '_' and '.'");
        }
        let mut out = String::new();
        let sandbox = self.sandbox_id.as_deref().unwrap_or(alias);
        let expires = self.expires_at.as_deref().unwrap_or("its expiry");
        writeln!(out, "# sandbar sandbox {sandbox}: the user below is an access token valid until {expires};")?;
        writeln!(out, "# `sandbar ssh-config {sandbox}` prints a fresh one.")?;
        writeln!(out, "Host {alias}")?;
        writeln!(out, "    HostName {}", self.host.trim_start_matches('[').trim_end_matches(']'))?;
        writeln!(out, "    Port {}", self.port)?;
        writeln!(out, "    User {}", self.user)?;
        // The gateway takes the token as the user and asks for nothing else (no key, no password prompt); its host
        // key is the gateway's own, the same for every sandbox behind it.
        writeln!(out, "    StrictHostKeyChecking accept-new")?;
        if let Some(path) = known_hosts {
            let path = path.to_str().filter(|p| !p.contains(['"', '\n', '\r'])).context("bad known-hosts path")?;
            writeln!(out, "    UserKnownHostsFile \"{path}\"")?;
        }
        // Keeps an idle IDE connection open through NATs and notices a dead one.
        writeln!(out, "    ServerAliveInterval 30")?;
        writeln!(out, "    ServerAliveCountMax 4")?;
        Ok(out)
    }

    /// The `-o json` form of `ssh-config`: the same facts with stable names.
    pub fn json(&self, alias: &str) -> Value {
        serde_json::json!({
            "host": alias,
            "hostName": self.host.trim_start_matches('[').trim_end_matches(']'),
            "port": self.port,
            "user": self.user,
            "sandboxId": self.sandbox_id,
            "expiresAt": self.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn argv(a: &Value, extra: &[String]) -> anyhow::Result<Vec<String>> {
        Ok(Target::from_access(a)?.argv(extra))
    }

    #[test]
    fn argv_from_the_parts() {
        let a = json!({"token": "tok_1", "sshCommand": "ssh -p 2222 tok_1@sb.example.com"});
        assert_eq!(
            argv(&a, &["-v".into()]).unwrap(),
            ["-o", "StrictHostKeyChecking=accept-new", "-p", "2222", "-l", "tok_1", "sb.example.com", "-v"]
        );
        let v6 = json!({"token": "t", "sshCommand": "ssh -p 22 t@::1"});
        assert_eq!(argv(&v6, &[]).unwrap().last().map(String::as_str), Some("::1"));
    }

    #[test]
    fn hostile_ssh_commands_are_refused() {
        for cmd in [
            "ssh -o ProxyCommand=touch${IFS}/tmp/pwned -p 2222 t@h",
            "ssh -p 2222 t@h -oProxyCommand=sh",
            "ssh -p 2222 -oProxyCommand=sh@h",
            "ssh -p 2222 t@-oProxyCommand=sh",
            "ssh -p 2222 -oLocalCommand=x@h",
            "ssh -p 2222 t@h;rm",
            "ssh -p 2222 t@h\nProxyCommand sh",
            "ssh -p 2222x t@h",
            "sh -c x",
            "ssh -p 2222 other@h",
        ] {
            let a = json!({"token": "t", "sshCommand": cmd});
            assert!(argv(&a, &[]).is_err(), "{cmd}");
        }
        let a = json!({"token": "-oProxyCommand=sh", "sshCommand": "ssh -p 2222 -oProxyCommand=sh@h"});
        assert!(argv(&a, &[]).is_err());
        for (host, port) in [
            (json!("-oProxyCommand=sh"), json!(22)),
            (json!("h;sh"), json!(22)),
            (json!("h\nProxyCommand sh"), json!(22)),
            (json!("h"), json!("22 -oProxyCommand=sh")),
            (json!("h"), json!(70000)),
            (json!("h"), json!(0)),
        ] {
            let a = json!({"token": "t", "sshHost": host, "sshPort": port, "sshCommand": "ssh -p 22 t@h"});
            assert!(argv(&a, &[]).is_err(), "{a}");
        }
        let a = json!({"token": "-oProxyCommand=sh", "sshHost": "h", "sshPort": 22});
        assert!(argv(&a, &[]).is_err());
    }

    #[test]
    fn the_fields_come_before_the_command() {
        let a = json!({"token": "t", "sshHost": "gw.example.com", "sshPort": 2022, "sshCommand": "anything at all"});
        assert_eq!(argv(&a, &[]).unwrap()[2..], ["-p", "2022", "-l", "t", "gw.example.com"]);
    }

    #[test]
    fn config_block_from_the_parts() {
        let a = json!({"token": "tok_1", "sandboxId": "sb1", "expiresAt": "2026-01-01T00:00:00.000Z",
                       "sshCommand": "ssh -p 2222 tok_1@127.0.0.1"});
        let t = Target::from_access(&a).unwrap();
        let c = t.config("sandbar-sb1", Some(Path::new("/tmp/kh"))).unwrap();
        assert!(c.contains("\nHost sandbar-sb1\n    HostName 127.0.0.1\n    Port 2222\n    User tok_1\n"), "{c}");
        assert!(c.contains("    UserKnownHostsFile \"/tmp/kh\"\n"), "{c}");
        assert!(c.contains("valid until 2026-01-01T00:00:00.000Z;"), "{c}");
        assert!(t.config("a b", None).is_err());
        assert!(t.config("x\nProxyCommand sh", None).is_err());
        // A sandbox id or expiry that could start a config line of its own is left out, not printed.
        let hostile = json!({"token": "t", "sandboxId": "x\nProxyCommand sh", "expiresAt": "1\nProxyCommand sh",
                             "sshCommand": "ssh -p 2222 t@h"});
        let c = Target::from_access(&hostile).unwrap().config("sb", None).unwrap();
        assert!(!c.contains("ProxyCommand"), "{c}");
        assert_eq!(t.json("sandbar-sb1")["port"], 2222);
    }
}
