//! The proxy's configuration through the real `sandbar-proxy` binary, in the model every service shares: defaults <
//! TOML file < environment < flags, as `--print-config` shows them (the token masked); a bad value in the file exits
//! 2 naming the file and the key; `--version`. Nothing is bound.

use sandbar_testkit::cli::{print_config, refuses, version, write};

const BIN: &str = env!("CARGO_BIN_EXE_sandbar-proxy");

#[test]
fn print_config_layers_file_under_env_under_flags_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "proxy.toml",
        "api_url = \"http://api.internal:3000\"\ndomain = \"file.example\"\nheader_timeout = \"20s\"\n\
         route_ttl = \"2s\"\nthreads = 3\ntoken = \"file-proxy-secret-31337\"\n",
    );
    let env = [
        ("SANDBAR_PROXY_CONFIG", file.as_str()),
        ("SANDBAR_DOMAIN", "env.example"),
        ("SANDBAR_PROXY_THREADS", "2"),
        ("SANDBAR_PROXY_ROUTE_TTL_MS", "1500"),
    ];
    let lines = [
        r#"api_url = "http://api.internal:3000""#,
        r#"header_timeout = "20s""#,
        r#"domain = "env.example""#,
        "threads = 1",
        r#"route_ttl = "750ms""#,
        r#"wake_timeout = "1m""#,
        r#"token = "********""#,
    ];
    let args = ["--threads", "1", "--route-ttl-ms", "750"];
    print_config(BIN, &args, &env, &lines, &["file-proxy-secret-31337"]);
}

#[test]
fn a_bad_value_in_the_file_exits_2_naming_the_file_and_the_key() {
    let env = [("SANDBAR_PROXY_TOKEN", "t")];
    for (body, key, why) in [
        ("domian = \"x\"\n", "domian", "unknown field"),
        ("http_port = 70000\n", "http_port", "invalid value"),
        ("header_timeout = \"fast\"\n", "header_timeout", "not a duration"),
        ("wake_timeout = 60000\n", "wake_timeout", "has no unit"),
    ] {
        refuses(BIN, &[], &env, body, key, why);
    }
}

#[test]
fn version_is_the_crate_version() {
    version(BIN, "sandbar-proxy", env!("CARGO_PKG_VERSION"));
}
