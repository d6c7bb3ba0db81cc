//! `sandbar ssh`: the `ssh` argv made from an SSH access the API granted. The API's `sshCommand` is parsed, never
//! passed on: only its port, user (the access token) and host are taken, each checked, so an answer such as
//! `ssh -o ProxyCommand=... x@y` cannot put options or a command on the local `ssh` command line.

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

/// The arguments for `ssh` (without the program name): our options, `-p PORT -l USER HOST`, then `extra` (the
/// caller's own, after `--` on our command line).
pub fn argv(access: &Value, extra: &[String]) -> anyhow::Result<Vec<String>> {
    let cmd = access["sshCommand"].as_str().context("ssh-access answered without sshCommand")?;
    let token = access["token"].as_str().context("ssh-access answered without token")?;
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let (port, target) = match words.as_slice() {
        ["ssh", "-p", port, target] => (*port, *target),
        _ => bail!("unexpected sshCommand {cmd:?}: expected `ssh -p PORT TOKEN@HOST`"),
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).with_context(|| format!("bad port in sshCommand {cmd:?}"))?;
    let (user, host) = target.split_once('@').with_context(|| format!("no user@host in sshCommand {cmd:?}"))?;
    if user != token || !plain(user, b"") {
        bail!("the user in sshCommand {cmd:?} is not the access token");
    }
    if !plain(host, b":[]") {
        bail!("bad host in sshCommand {cmd:?}");
    }
    let mut out: Vec<String> =
        ["-o", "StrictHostKeyChecking=accept-new", "-p", &port.to_string(), "-l", user, host].map(String::from).into();
    out.extend(extra.iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            "ssh -p 2222x t@h",
            "sh -c x",
            "ssh -p 2222 other@h",
        ] {
            let a = json!({"token": "t", "sshCommand": cmd});
            assert!(argv(&a, &[]).is_err(), "{cmd}");
        }
        let a = json!({"token": "-oProxyCommand=sh", "sshCommand": "ssh -p 2222 -oProxyCommand=sh@h"});
        assert!(argv(&a, &[]).is_err());
    }
}
