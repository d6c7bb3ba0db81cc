//! A service binary run as an operator runs it, for the configuration tests of every service (`--print-config`,
//! `--config`, `--version`): a clean environment of `SANDBAR_*` variables (the test's own may hold some), the
//! output collected.

use std::path::Path;
use std::process::{Command, Output};

/// `bin ARGS` with only `env` of the `SANDBAR_*`, `DATABASE_URL` and `AWS_*` variables.
pub fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SANDBAR_") || k.starts_with("AWS_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

/// Standard output or error as text.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Writes `body` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// `bin ARGS --print-config`: exits 0; returns what it printed, after checking that it holds each of `lines` as a
/// whole line and none of `secrets` (nor does its standard error).
pub fn print_config(bin: &str, args: &[&str], env: &[(&str, &str)], lines: &[&str], secrets: &[&str]) -> String {
    let out = run(bin, &[&["--print-config"], args].concat(), env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for line in lines {
        assert!(printed.lines().any(|l| l == *line), "no line {line:?} in:\n{printed}");
    }
    for secret in secrets {
        assert!(!printed.contains(secret) && !text(&out.stderr).contains(secret), "{secret} printed:\n{printed}");
    }
    printed
}

/// `bin --print-config --config FILE` with `body` in FILE exits 2 with a message naming the file, the key (as
/// `` `key` ``) and `why`.
pub fn refuses(bin: &str, args: &[&str], env: &[(&str, &str)], body: &str, key: &str, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", body);
    let out = run(bin, &[&["--print-config", "--config", &file], args].concat(), env);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{body}: {err}");
    assert!(err.contains(&file) && err.contains(&format!("`{key}`")) && err.contains(why), "{body}: {err}");
    assert!(out.stdout.is_empty(), "{body}: printed {}", text(&out.stdout));
}

/// `bin --version` prints `NAME VERSION`.
pub fn version(bin: &str, name: &str, version: &str) {
    let out = run(bin, &["--version"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("{name} {version}"));
}
