//! The daemon's configuration through the real `sandbar-daemon` binary, in the model every service shares:
//! defaults < TOML file < environment < flags, as `--print-config` shows them (the token and the SSH host key
//! masked, though they arrive through the environment and a re-exec); a bad value in the file exits 2 naming the
//! file and the key; `--version`.

use sandbar_testkit::cli::{print_config, refuses, version, write};

const BIN: &str = env!("CARGO_BIN_EXE_sandbar-daemon");

#[test]
fn print_config_layers_file_under_env_under_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "daemon.toml",
        "lsp_timeout = \"45s\"\nshell = \"/bin/sh\"\ntoolbox_addr = \"127.0.0.1:1\"\nssh_addr = \"127.0.0.1:2\"\n\
         token = \"file-token-is-overridden\"\n",
    );
    let env = [
        ("SANDBAR_DAEMON_CONFIG", file.as_str()),
        ("SANDBAR_TOOLBOX_ADDR", "127.0.0.1:11"),
        ("SANDBAR_SHUTDOWN_GRACE", "3"),
        ("SANDBAR_DAEMON_TOKEN", "daemon-secret-8086"),
        ("SANDBAR_SSH_HOST_KEY", "host-key-secret-6502"),
    ];
    let lines = [
        r#"lsp_timeout = "45s""#,
        r#"shell = "/bin/sh""#,
        r#"ssh_addr = "127.0.0.1:2""#,
        r#"shutdown_grace = "3s""#,
        r#"toolbox_addr = "127.0.0.1:21""#,
        r#"terminal_addr = "0.0.0.0:22222""#,
        r#"token = "********""#,
        r#"ssh_host_key = "********""#,
    ];
    let secrets = ["daemon-secret-8086", "host-key-secret-6502", "file-token-is-overridden"];
    print_config(BIN, &["--toolbox-addr", "127.0.0.1:21"], &env, &lines, &secrets);
}

#[test]
fn a_bad_value_in_the_file_exits_2_naming_the_file_and_the_key() {
    let env = [("SANDBAR_DAEMON_TOKEN", "t")];
    for (body, key, why) in [
        ("tokne = \"x\"\n", "tokne", "unknown field"),
        ("max_exec_output = \"lots\"\n", "max_exec_output", "invalid type"),
        ("shutdown_grace = \"a while\"\n", "shutdown_grace", "not a duration"),
        ("entrypoint = [\"sh\"]\n", "entrypoint", "unknown field"),
    ] {
        refuses(BIN, &[], &env, body, key, why);
    }
}

#[test]
fn version_is_the_crate_version() {
    version(BIN, "sandbar-daemon", env!("CARGO_PKG_VERSION"));
}
