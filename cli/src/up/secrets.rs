//! The secrets of `sandbar up`, and which service holds which. They are made on first run and kept in
//! `<data-dir>/secrets.env` (mode 0600): the runners' join token, the proxy's service token, the token of the API's
//! `/metrics` (`SANDBAR_API_METRICS_TOKEN`, for a scraper) and the operator's admin token (`SANDBAR_API_ADMIN_TOKEN`,
//! which `sandbar runner` reads).
//!
//! Each service gets in its environment only what it presents or checks ([`HELD`]), never on its command line
//! (which `ps` shows every user):
//!
//! - `sandbar-api`: the join token and the proxy token (it checks them), the metrics and admin tokens, `DATABASE_URL`;
//! - `sandbar-runner`: the join token (it registers with it, then uses its own credential), its archive store and
//!   the store's keys;
//! - `sandbar-proxy`: its service token.
//!
//! A secret `sandbar up` itself was started with (`DATABASE_URL`, `SANDBAR_ARCHIVE_STORE`, `AWS_SECRET_ACCESS_KEY`,
//! the CLI's `SANDBAR_ADMIN_TOKEN`, the user's `DAYTONA_API_KEY`, another copy of a service token) is removed from the
//! environment of every service that does not need it, so a service, and every process it starts, reads only its
//! own. The three run as the same user, so this separates what each one holds and hands on (its children, a crash
//! dump, a bug that prints its environment), not what a compromised service could read from another's `/proc`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use sandbar_support::fs::write_private;

/// The service tokens, as read from `secrets.env`.
pub struct Secrets {
    pub runner_token: String,
    pub proxy_token: String,
    pub metrics_token: String,
    pub admin_token: String,
}

/// The keys of `secrets.env`, each the environment variable the services read it from.
pub const SECRET_KEYS: [&str; 4] =
    ["SANDBAR_RUNNER_TOKEN", "SANDBAR_PROXY_TOKEN", "SANDBAR_API_METRICS_TOKEN", "SANDBAR_API_ADMIN_TOKEN"];

/// Every secret variable `sandbar up` knows, with the services that may hold it; the others never see it.
pub const HELD: &[(&str, &[&str])] = &[
    ("SANDBAR_RUNNER_TOKEN", &["api", "runner"]),
    ("SANDBAR_PROXY_TOKEN", &["api", "proxy"]),
    ("SANDBAR_API_METRICS_TOKEN", &["api"]),
    ("SANDBAR_API_ADMIN_TOKEN", &["api"]),
    // The CLI's name of the admin token (`sandbar runner`), and a user's API key: no service reads them.
    ("SANDBAR_ADMIN_TOKEN", &[]),
    ("DAYTONA_API_KEY", &[]),
    // The database's password may be in its URL.
    ("DATABASE_URL", &["api"]),
    // The archive store (its URL may carry its keys) and its credentials, which only the runner uses.
    ("SANDBAR_ARCHIVE_STORE", &["runner"]),
    ("AWS_SECRET_ACCESS_KEY", &["runner"]),
    ("AWS_SESSION_TOKEN", &["runner"]),
];

impl Secrets {
    /// The secrets of `secrets.env` that service `name` holds, as its environment variables.
    pub fn env_of(&self, name: &str) -> Vec<(String, String)> {
        let values = [&self.runner_token, &self.proxy_token, &self.metrics_token, &self.admin_token];
        SECRET_KEYS
            .iter()
            .zip(values)
            .filter(|(key, _)| holds(name, key))
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect()
    }
}

/// Whether service `name` may hold variable `key`; a variable that is no secret of [`HELD`] it may.
pub fn holds(name: &str, key: &str) -> bool {
    HELD.iter().find(|(k, _)| *k == key).is_none_or(|(_, holders)| holders.contains(&name))
}

/// The secret variables service `name` must not inherit from `sandbar up`'s own environment.
pub fn foreign_to(name: &str) -> Vec<String> {
    HELD.iter().filter(|(key, _)| !holds(name, key)).map(|(key, _)| (*key).to_owned()).collect()
}

/// A service token: 48 lowercase hex digits.
pub fn random_token() -> anyhow::Result<String> {
    sandbar_support::token::hex(24).map_err(|e| anyhow::anyhow!("no randomness: {e}"))
}

/// The secrets of `<dir>/secrets.env`, those missing made and written first.
pub fn load(dir: &Path) -> anyhow::Result<Secrets> {
    let path = dir.join("secrets.env");
    let mut map = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(&path) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                map.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    let mut changed = false;
    for k in SECRET_KEYS {
        if !map.contains_key(k) {
            map.insert(k.to_owned(), random_token()?);
            changed = true;
        }
    }
    if changed {
        let text: String = map.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        write_private(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    let get = |k: &str| map.get(k).cloned().unwrap_or_default();
    Ok(Secrets {
        runner_token: get("SANDBAR_RUNNER_TOKEN"),
        proxy_token: get("SANDBAR_PROXY_TOKEN"),
        metrics_token: get("SANDBAR_API_METRICS_TOKEN"),
        admin_token: get("SANDBAR_API_ADMIN_TOKEN"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_tokens_are_48_lowercase_hex() {
        let t = random_token().unwrap();
        assert_eq!(t.len(), 48);
        assert!(t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{t}");
    }

    #[test]
    fn secrets_are_made_once() {
        let d = tempfile::tempdir().unwrap();
        let a = load(d.path()).unwrap();
        let b = load(d.path()).unwrap();
        assert_eq!(a.runner_token, b.runner_token);
        assert_eq!(a.metrics_token, b.metrics_token);
        assert_ne!(a.runner_token, a.proxy_token);
        assert_ne!(a.metrics_token, a.proxy_token);
        assert_eq!(a.metrics_token.len(), 48);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("secrets.env")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn each_service_gets_only_the_tokens_it_presents_or_checks() {
        let s = Secrets {
            runner_token: "join".into(),
            proxy_token: "proxy".into(),
            metrics_token: "metrics".into(),
            admin_token: "admin".into(),
        };
        let names = |name| s.env_of(name).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        assert_eq!(
            names("api"),
            [
                "SANDBAR_RUNNER_TOKEN=join",
                "SANDBAR_PROXY_TOKEN=proxy",
                "SANDBAR_API_METRICS_TOKEN=metrics",
                "SANDBAR_API_ADMIN_TOKEN=admin"
            ]
        );
        assert_eq!(names("runner"), ["SANDBAR_RUNNER_TOKEN=join"]);
        assert_eq!(names("proxy"), ["SANDBAR_PROXY_TOKEN=proxy"]);
        // What they must not inherit either: every other service's secret.
        let proxy = foreign_to("proxy");
        for k in ["SANDBAR_RUNNER_TOKEN", "SANDBAR_API_ADMIN_TOKEN", "DATABASE_URL", "SANDBAR_ARCHIVE_STORE"] {
            assert!(proxy.iter().any(|f| f == k), "{k} not removed from the proxy's environment");
        }
        assert!(!proxy.iter().any(|f| f == "SANDBAR_PROXY_TOKEN"));
        let runner = foreign_to("runner");
        assert!(runner.iter().any(|f| f == "SANDBAR_PROXY_TOKEN") && runner.iter().any(|f| f == "DATABASE_URL"));
        for k in ["AWS_SECRET_ACCESS_KEY", "SANDBAR_ARCHIVE_STORE", "SANDBAR_RUNNER_TOKEN"] {
            assert!(!runner.iter().any(|f| f == k), "{k} removed from the runner's environment");
        }
        assert!(!foreign_to("api").iter().any(|f| f.starts_with("SANDBAR_API_") || f == "DATABASE_URL"));
        // Settings that are no secret pass to every service.
        assert!(holds("proxy", "RUST_LOG") && holds("runner", "SANDBAR_ADVERTISE_ADDR"));
    }
}
