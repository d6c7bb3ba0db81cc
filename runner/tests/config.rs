//! The runner's options through the real `sandbar-runner` binary, in the model every service shares: defaults <
//! TOML file < environment < flags, as `--print-config` shows them (token and archive store secrets masked); a bad
//! value in the file exits 2 naming the file and the key; `--version`. Nothing here reaches Docker.

use sandbar_testkit::cli::{print_config, refuses, version, write};

const BIN: &str = env!("CARGO_BIN_EXE_sandbar-runner");

#[test]
fn print_config_layers_file_under_env_under_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "runner.toml",
        r#"
runner_id = "file-runner"
daemon_binary = "/opt/sandbar/sandbar-daemon"
default_image = "file-image:1"
pull_stall = "2m"
firewall_recheck = "10s"
archive_store = "s3://bucket/archives?region=eu-west-1&secret_access_key=s3-secret-9911&access_key_id=AKIAFILE"
container_labels = ["team=file"]
"#,
    );
    let env = [
        ("SANDBAR_RUNNER_CONFIG", file.as_str()),
        ("SANDBAR_RUNNER_ID", "env-runner"),
        ("SANDBAR_DEFAULT_IMAGE", "env-image:1"),
        ("SANDBAR_PULL_STALL_SECS", "90"),
        ("SANDBAR_RUNNER_TOKEN", "runner-secret-5150"),
        ("SANDBAR_CONTAINER_LABELS", "a=1,b=2"),
    ];
    let lines = [
        r#"daemon_binary = "/opt/sandbar/sandbar-daemon""#,
        r#"firewall_recheck = "10s""#,
        r#"default_image = "env-image:1""#,
        r#"pull_stall = "1m 30s""#,
        r#"container_labels = ["a=1", "b=2"]"#,
        r#"runner_id = "flag-runner""#,
        r#"disk_watchdog = "7s""#,
        r#"shutdown_grace = "10s""#,
        r#"runner_token = "********""#,
        r#"archive_store = "s3://bucket/archives?region=eu-west-1&secret_access_key=********&access_key_id=********""#,
    ];
    let args = ["--runner-id", "flag-runner", "--disk-watchdog-secs", "7"];
    print_config(BIN, &args, &env, &lines, &["runner-secret-5150", "s3-secret-9911", "AKIAFILE"]);
}

#[test]
fn a_bad_value_in_the_file_exits_2_naming_the_file_and_the_key() {
    let env = [("SANDBAR_RUNNER_TOKEN", "t"), ("SANDBAR_STATIC_DAEMON", "/bin/true")];
    for (body, key, why) in [
        ("runner_idd = \"x\"\n", "runner_idd", "unknown field"),
        ("warm_pool = \"many\"\n", "warm_pool", "invalid type"),
        ("pull_stall = 60\n", "pull_stall", "has no unit"),
        ("disk_watchdog = \"often\"\n", "disk_watchdog", "not a duration"),
        ("no_new_privileges = \"sometimes\"\n", "no_new_privileges", "unknown variant"),
    ] {
        refuses(BIN, &[], &env, body, key, why);
    }
}

#[test]
fn version_is_the_crate_version() {
    version(BIN, "sandbar-runner", env!("CARGO_PKG_VERSION"));
}
