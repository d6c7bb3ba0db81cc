//! One configuration model for every service (`sandbar-api`, `-runner`, `-proxy`, `-daemon`), in four layers, each
//! over the one before: **defaults < a TOML file < `SANDBAR_*` environment < flags**.
//!
//! A service's settings are one serde struct that is also a `clap::Args` (each field's flag, environment variable
//! and default are on the field; the struct's doc says what each one means). clap already layers defaults <
//! environment < flags, and records where each value came from; [`load`] slides the file in under the environment:
//! every key of the file replaces the value clap took from a default, never one it took from the environment or a
//! flag. The keys of the file are the struct's field names (nested structs are tables: the API's `[limits]`), which
//! is exactly what `--print-config` prints ([`to_toml`]), so the way to start a file is to print the configuration
//! and keep the lines to change.
//!
//! Durations are written as durations everywhere: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"` (humantime; [`duration`]).
//! The flags and environment variables that took a bare number before (`--create-wait-ms 3000`,
//! `SANDBAR_JOB_DEADLINE_SECS=20`) still do, in their old unit ([`secs_or_duration`], [`millis_or_duration`]); in
//! the file a duration needs its unit.
//!
//! Every bad value in the file (an unknown key, a wrong type, a bad duration) is refused with the file and the key
//! ([`ConfigError`]); the services exit 2 on it, as clap does on a bad flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The two arguments every service takes besides its settings. The file may also come from the environment: the
/// service's own `SANDBAR_<SERVICE>_CONFIG`, else `SANDBAR_CONFIG` ([`ConfigArgs::path`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML file of settings under the environment and the flags (keys as `--print-config` prints them; durations
    /// like "30s"). Default: `SANDBAR_<SERVICE>_CONFIG`, else `SANDBAR_CONFIG`, else none.
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// The file to read: `--config`, else the first of `env_names` set (and not empty).
    pub fn path(&self, env_names: &[&str]) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| env_names.iter().find_map(|n| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from)))
    }
}

/// A configuration that cannot be used; every variant names the file, and the key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    /// The file is not TOML (toml's message says the line and column).
    #[error("config file {file}: {message}")]
    Syntax { file: PathBuf, message: String },
    /// A key of the file is unknown or its value is of the wrong type or shape.
    #[error("config file {file}: key `{key}`: {message}")]
    Value { file: PathBuf, key: String, message: String },
    /// The settings cannot be written as TOML (a number past what TOML holds).
    #[error("configuration: {0}")]
    Encode(String),
}

/// Lays the file at `file` (if any) under what clap parsed into `parsed` from the environment and the flags:
/// a key of the file replaces a value clap took from a default (or had none for), and nothing else. `matches` are
/// the matches `parsed` came from (clap's ids are the field names, as are the file's keys).
pub fn load<C: Serialize + DeserializeOwned>(
    parsed: C,
    matches: &ArgMatches,
    file: Option<&Path>,
) -> Result<C, ConfigError> {
    let Some(file) = file else { return Ok(parsed) };
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_owned(), source })?;
    let layer: toml::Table = toml::from_str(&text)
        .map_err(|e| ConfigError::Syntax { file: file.to_owned(), message: e.to_string().trim_end().to_owned() })?;
    let mut merged = toml::Table::try_from(&parsed).map_err(|e| ConfigError::Encode(e.to_string()))?;
    overlay(&mut merged, layer, matches);
    // Only the file's values can fail here: clap's went through the field types already.
    serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
        let mut key = e.path().to_string();
        // toml's message may add the key again on a line of its own: the path says it.
        let message = e.inner().to_string().lines().next().unwrap_or_default().to_owned();
        if key == "." {
            // Raised at the top table (an unknown field there): name the key itself.
            key = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()).unwrap_or(".").to_owned();
        }
        ConfigError::Value { file: file.to_owned(), key, message }
    })
}

/// Puts every key of `layer` into `into` unless the environment or a flag set it; tables that are sections of
/// the configuration (both sides tables) merge key by key.
fn overlay(into: &mut toml::Table, layer: toml::Table, matches: &ArgMatches) {
    for (key, value) in layer {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(section)), toml::Value::Table(values)) => overlay(section, values, matches),
            (_, value) if !explicit(matches, &key) => {
                into.insert(key, value);
            }
            _ => {}
        }
    }
}

/// Whether clap took `id`'s value from the environment or the command line (not from a default).
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    // `value_source` panics (in debug builds) on an id clap does not know, such as a misspelt key of the file.
    matches.ids().any(|i| i.as_str() == id)
        && matches!(matches.value_source(id), Some(ValueSource::EnvVariable | ValueSource::CommandLine))
}

/// A value of the right type that `validate` refused (out of range, inconsistent): its message, with the file the
/// settings came from when there was one (the message names the key).
pub fn invalid(e: impl std::fmt::Display, file: Option<&Path>) -> String {
    match file {
        Some(f) => format!("{e} (settings from config file {}, the environment and flags)", f.display()),
        None => e.to_string(),
    }
}

/// What `--print-config` prints: `config` as TOML, with the values of the keys named in `secrets` masked (a URL
/// keeps its scheme, user, host and path; its password and its secret-looking query values go). Unset optional
/// keys are left out.
pub fn to_toml<C: Serialize>(config: &C, secrets: &[&str]) -> Result<String, ConfigError> {
    let mut table = toml::Table::try_from(config).map_err(|e| ConfigError::Encode(e.to_string()))?;
    mask(&mut table, secrets);
    toml::to_string(&table).map_err(|e| ConfigError::Encode(e.to_string()))
}

/// What a masked secret reads as.
pub const MASK: &str = "********";

fn mask(table: &mut toml::Table, secrets: &[&str]) {
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::Table(t) => mask(t, secrets),
            toml::Value::String(s) if secrets.contains(&key.as_str()) && !s.is_empty() => {
                *s = if s.contains("://") { mask_url(s) } else { MASK.to_owned() };
            }
            _ => {}
        }
    }
}

/// `scheme://user:password@host/path?k=v` with the password and the values of query keys that look secret
/// (`password`, `secret`, `token`, `key`, `credential`) replaced by [`MASK`].
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return MASK.to_owned() };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if secret_name(k) => format!("{k}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential"].iter().any(|s| key.contains(s))
}

/// A clap value parser for a duration whose flag took whole seconds before: `30s`, `5m`, or a bare `30`.
pub fn secs_or_duration(s: &str) -> Result<Duration, String> {
    bare_or_duration(s, Duration::from_secs)
}

/// A clap value parser for a duration whose flag took milliseconds before: `250ms`, `5s`, or a bare `250`.
pub fn millis_or_duration(s: &str) -> Result<Duration, String> {
    bare_or_duration(s, Duration::from_millis)
}

fn bare_or_duration(s: &str, unit: fn(u64) -> Duration) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(unit).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration ({e}); write one like 30s or 5m"))
}

/// `#[serde(with = "sandbar_support::config::duration")]`: a `Duration` as a humantime string (`"30s"`, `"5m"`).
/// A bare number is refused: a file says its unit.
pub mod duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\" or \"5m\"")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v.trim())
                .map_err(|e| E::custom(format!("{v:?} is not a duration ({e}); write one like \"30s\" or \"5m\"")))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write a duration like \"{v}s\" or \"{v}ms\"")))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write a duration like \"{v}s\" or \"{v}ms\"")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use serde::Deserialize;

    #[derive(Debug, Parser, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[arg(long, env = "SANDBAR_TEST_CONFIG_NAME", default_value = "default")]
        name: String,
        #[arg(long, env = "SANDBAR_TEST_CONFIG_COUNT", default_value_t = 1)]
        count: u32,
        #[arg(long = "wait", alias = "wait-ms", value_parser = millis_or_duration, default_value = "1s")]
        #[serde(with = "duration")]
        wait: Duration,
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        section: Section,
    }

    #[derive(Debug, clap::Args, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[arg(long, default_value_t = 7)]
        depth: u32,
    }

    fn layered(args: &[&str], file: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, file).unwrap();
        let matches = Settings::command().try_get_matches_from(args).unwrap();
        let parsed = Settings::from_arg_matches(&matches).unwrap();
        load(parsed, &matches, Some(&path))
    }

    #[test]
    fn file_fills_defaults_and_flags_win() {
        let s = layered(&["t", "--count", "5"], "name = \"file\"\ncount = 3\nwait = \"2m\"\n[section]\ndepth = 9\n")
            .unwrap();
        assert_eq!((s.name.as_str(), s.count, s.wait, s.section.depth), ("file", 5, Duration::from_secs(120), 9));
        // The old millisecond flag, a bare number in its own unit, beats the file too.
        let s = layered(&["t", "--wait-ms", "250"], "wait = \"2m\"\n").unwrap();
        assert_eq!(s.wait, Duration::from_millis(250));
        let s = layered(&["t", "--wait", "3s"], "").unwrap();
        assert_eq!((s.wait, s.name.as_str()), (Duration::from_secs(3), "default"));
    }

    #[test]
    fn bad_values_name_the_file_and_the_key() {
        let cases = [
            ("bogus = 1\n", "bogus", "unknown field"),
            ("count = \"three\"\n", "count", "invalid type"),
            ("wait = \"soon\"\n", "wait", "not a duration"),
            ("wait = 30\n", "wait", "has no unit"),
            ("[section]\ndepth = -1\n", "section.depth", "invalid value"),
            ("[section]\nwidth = 1\n", "section.width", "unknown field"),
        ];
        for (file, key, what) in cases {
            let err = layered(&["t"], file).unwrap_err();
            let text = err.to_string();
            assert!(matches!(&err, ConfigError::Value { key: k, .. } if k == key), "{file}: {text}");
            assert!(text.contains("s.toml") && text.contains(&format!("`{key}`")) && text.contains(what), "{text}");
        }
        let err = layered(&["t"], "name = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }) && err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn printing_masks_secrets() {
        let s = layered(&["t", "--token", "hunter2"], "").unwrap();
        let out = to_toml(&s, &["token"]).unwrap();
        assert!(!out.contains("hunter2") && out.contains(MASK) && out.contains("wait = \"1s\""), "{out}");
        assert!(out.contains("[section]\ndepth = 7"), "{out}");
        assert_eq!(
            mask_url("postgres://app:pw@db:5432/sb?sslmode=require&password=pw2"),
            format!("postgres://app:{MASK}@db:5432/sb?sslmode=require&password={MASK}")
        );
        assert_eq!(
            mask_url("s3://bucket/p?region=x&secret_access_key=s&access_key_id=a"),
            format!("s3://bucket/p?region=x&secret_access_key={MASK}&access_key_id={MASK}")
        );
        assert_eq!(mask_url("file:///var/lib/x"), "file:///var/lib/x");
    }

    #[test]
    fn legacy_numbers_keep_their_unit() {
        assert_eq!(secs_or_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(secs_or_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(millis_or_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(millis_or_duration("1h 2s").unwrap(), Duration::from_secs(3602));
        assert!(secs_or_duration("-1").is_err() && secs_or_duration("").is_err());
    }
}
