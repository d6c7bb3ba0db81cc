//! The configuration model through the real `sandbar-api` binary: defaults < TOML file < environment < flags, as
//! `--print-config` shows them with every secret masked; a bad value in the file exits 2 naming the file and the
//! key; `--version`.

use sandbar_testkit::cli::{print_config, refuses, run, text, version, write};

const BIN: &str = env!("CARGO_BIN_EXE_sandbar-api");

#[test]
fn print_config_layers_file_under_env_under_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "api.toml",
        r#"
target = "from-file"
default_snapshot = "file-snapshot"
ssh_gateway = "file.example:2200"
proxy_url = "https://file.example"
runner_token = "file-runner-secret-4711"
create_wait = "2s"
shutdown_grace = "1m 30s"

[job_deadlines]
short = "5m"
create = "45m"

[limits]
quota_cpu = 10
max_cpu = 6
"#,
    );
    let env = [
        ("SANDBAR_API_CONFIG", file.as_str()),
        ("SANDBAR_DEFAULT_SNAPSHOT", "env-snapshot"),
        ("SANDBAR_PROXY_URL", "https://env.example"),
        ("SANDBAR_QUOTA_CPU", "20"),
        ("SANDBAR_PROXY_TOKEN", "env-proxy-secret-0815"),
        ("DATABASE_URL", "postgres://sandbar:db-password-1234@db.example:5432/sandbar?sslmode=require"),
        ("SANDBAR_CREATE_JOB_DEADLINE_SECS", "1200"),
        ("SANDBAR_API_METRICS_TOKEN", "env-metrics-secret-2718"),
        ("SANDBAR_API_ADMIN_TOKEN", "env-admin-secret-3141"),
    ];
    // The old millisecond flag beats the file; a flag beats the environment.
    let args = ["--proxy-url", "https://flag.example", "--create-wait-ms", "1500"];
    let lines = [
        // file only
        r#"target = "from-file""#,
        r#"ssh_gateway = "file.example:2200""#,
        r#"shutdown_grace = "1m 30s""#,
        r#"short = "5m""#,
        "max_cpu = 6",
        // file, then environment
        r#"default_snapshot = "env-snapshot""#,
        "quota_cpu = 20",
        r#"create = "20m""#,
        // file, environment, then a flag
        r#"proxy_url = "https://flag.example""#,
        r#"create_wait = "1s 500ms""#,
        // nowhere: the default
        r#"long = "1h""#,
        "quota_memory = 128",
        r#"listen = "127.0.0.1:3000""#,
        // secrets, masked (a URL keeps what is not secret)
        r#"runner_token = "********""#,
        r#"proxy_token = "********""#,
        r#"metrics_token = "********""#,
        r#"admin_token = "********""#,
        r#"database_url = "postgres://sandbar:********@db.example:5432/sandbar?sslmode=require""#,
    ];
    let secrets = [
        "file-runner-secret-4711",
        "env-proxy-secret-0815",
        "env-metrics-secret-2718",
        "env-admin-secret-3141",
        "db-password-1234",
    ];
    let printed = print_config(BIN, &args, &env, &lines, &secrets);

    // What it prints is a configuration file that gives the same configuration.
    let again = write(dir.path(), "printed.toml", &printed);
    assert_eq!(print_config(BIN, &["--config", &again], &[], &[], &[]), printed);
}

#[test]
fn a_bad_value_in_the_file_exits_2_naming_the_file_and_the_key() {
    for (body, key, why) in [
        ("bogus_key = 1\n", "bogus_key", "unknown field"),
        ("[limits]\nquota_cpu = \"many\"\n", "limits.quota_cpu", "invalid type"),
        ("[limits]\nquota_gpu = 1\n", "limits.quota_gpu", "unknown field"),
        ("create_wait = \"soon\"\n", "create_wait", "not a duration"),
        ("shutdown_grace = 10\n", "shutdown_grace", "has no unit"),
        ("[job_deadlines]\nshort = \"ten minutes\"\n", "job_deadlines.short", "not a duration"),
        ("listen = \"localhost\"\n", "listen", "invalid"),
    ] {
        refuses(BIN, &[], &[], body, key, why);
    }
    let dir = tempfile::tempdir().unwrap();
    // Not TOML: the file, the line and the column.
    let file = write(dir.path(), "bad.toml", "target = \n");
    let out = run(BIN, &["--print-config", "--config", &file], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&file) && err.contains("line 1"), "{err}");
    // A value of the right type that is out of range names its key too; a missing file is an error.
    let file = write(dir.path(), "bad.toml", "runner_unreachable = \"2s\"\n");
    let out = run(BIN, &["--print-config", "--config", &file], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("runner_unreachable") && err.contains(&file), "{err}");
    let out = run(BIN, &["--print-config"], &[("SANDBAR_CONFIG", "/nonexistent/api.toml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/api.toml"), "{}", text(&out.stderr));
    // A bad duration in a flag is clap's usage error, also 2.
    let out = run(BIN, &["--print-config", "--create-wait", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--create-wait"), "{}", text(&out.stderr));
}

#[test]
fn version_is_the_crate_version() {
    version(BIN, "sandbar-api", env!("CARGO_PKG_VERSION"));
}
