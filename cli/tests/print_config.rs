//! `sandbar --print-config`: the effective client configuration as TOML, exit 0, the API key masked: the URL and
//! key from the environment or from `<data-dir>/env` (each saying which), the data directory, the output format;
//! nothing configured still prints (the sources say `unset`). Without a command and without it: exit 2. `sandbar up
//! --print-config`: the settings of `sandbar up` (its flags' names as keys), the advertise address among them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

const SANDBAR: &str = env!("CARGO_BIN_EXE_sandbar");

/// `sandbar ARGS` with only `env` of the variables the client reads.
fn sandbar(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(SANDBAR);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SANDBAR_") || k.starts_with("DAYTONA_") || k.starts_with("XDG_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

/// The printed TOML, after checking exit 0 and that `secret` is nowhere in the output.
fn printed(args: &[&str], env: &[(&str, &str)], secret: &str) -> toml::Table {
    let out = sandbar(args, env);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains(secret) && !stderr.contains(secret), "the key was printed:\n{stdout}{stderr}");
    stdout.parse().unwrap_or_else(|e| panic!("not TOML ({e}):\n{stdout}"))
}

fn s<'a>(t: &'a toml::Table, k: &str) -> &'a str {
    t.get(k).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("no string {k} in {t:?}"))
}

#[test]
fn prints_the_client_configuration_with_sources_and_the_key_masked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let key = "sb_key_0123456789abcdef0123456789abcdef";
    std::fs::write(
        dir.path().join("env"),
        format!("DAYTONA_API_URL=http://127.0.0.1:3999/api\nDAYTONA_API_KEY={key}\n"),
    )
    .unwrap();
    let env_file = dir.path().join("env").display().to_string();

    // Both from `<data-dir>/env`, the data directory from the flag.
    let t = printed(&["--print-config", "--data-dir", &data], &[], key);
    assert_eq!(s(&t, "api_url"), "http://127.0.0.1:3999/api");
    assert_eq!(s(&t, "api_url_source"), env_file);
    assert_eq!(s(&t, "api_key"), "********");
    assert_eq!(s(&t, "api_key_source"), env_file);
    assert_eq!(s(&t, "data_dir"), data);
    assert_eq!(s(&t, "output"), "text");

    // The environment wins over the file, each setting on its own; the data directory from SANDBAR_DATA_DIR.
    let env = [("DAYTONA_API_URL", "https://api.example.com/api"), ("SANDBAR_DATA_DIR", data.as_str())];
    let t = printed(&["-o", "json", "--print-config"], &env, key);
    assert_eq!(s(&t, "api_url"), "https://api.example.com/api");
    assert_eq!(s(&t, "api_url_source"), "env DAYTONA_API_URL");
    assert_eq!(s(&t, "api_key_source"), env_file);
    assert_eq!(s(&t, "output"), "json");
    let other = "sb_key_from_the_environment_42";
    let t = printed(&["--print-config", "--data-dir", &data], &[("DAYTONA_API_KEY", other)], other);
    assert_eq!((s(&t, "api_key"), s(&t, "api_key_source")), ("********", "env DAYTONA_API_KEY"));

    // Nothing configured: still exit 0, the sources say so, no key or URL line.
    let empty = tempfile::tempdir().unwrap();
    let t = printed(&["--print-config", "--data-dir", &empty.path().display().to_string()], &[], key);
    assert_eq!((s(&t, "api_url_source"), s(&t, "api_key_source")), ("unset", "unset"));
    assert!(!t.contains_key("api_key") && !t.contains_key("api_url"), "{t:?}");

    // The XDG default for the data directory.
    let t = printed(&["--print-config"], &[("XDG_DATA_HOME", &data)], key);
    assert_eq!(s(&t, "data_dir"), dir.path().join("sandbar").display().to_string());
}

#[test]
fn no_command_is_still_bad_usage() {
    let out = sandbar(&[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn up_prints_its_settings_with_the_advertise_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    // The services' tokens are no setting of `sandbar up`'s and never printed.
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("secrets.env"), format!("SANDBAR_PROXY_TOKEN={token}\n")).unwrap();
    let t = printed(&["up", "--print-config", "--data-dir", &data, "--advertise-addr", "10.0.0.5"], &[], token);
    assert_eq!(s(&t, "advertise_addr"), "10.0.0.5");
    assert_eq!(s(&t, "data_dir"), data);
    assert_eq!(s(&t, "runner_id"), "local");
    assert_eq!(t.get("api_port").and_then(|v| v.as_integer()), Some(3000));
    assert!(!t.contains_key("print_config"), "{t:?}");
    // From the environment, as the runner's own variable; unset, the key is left out (bridge addresses).
    let t = printed(&["up", "--print-config", "--data-dir", &data], &[("SANDBAR_ADVERTISE_ADDR", "192.0.2.7")], token);
    assert_eq!(s(&t, "advertise_addr"), "192.0.2.7");
    let t = printed(&["up", "--print-config", "--data-dir", &data], &[], token);
    assert!(!t.contains_key("advertise_addr"), "{t:?}");
    // Not an IPv4 address: bad usage, named.
    let out = sandbar(&["up", "--print-config", "--advertise-addr", "host.example"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise-addr"));
}
