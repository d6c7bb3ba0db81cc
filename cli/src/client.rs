//! A small client of the control plane's Daytona-shaped REST API and of the toolbox behind the proxy, for the
//! `sandbar` commands. Errors carry the server's message.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Where the API is and the key to use.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `DAYTONA_API_URL`: the API base with its `/api` prefix.
    pub api_url: String,
    key: String,
    /// What `https` (reqwest) and `wss` ([`crate::ws`]) trust.
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("api_url", &self.api_url).finish_non_exhaustive()
    }
}

/// A client setting and where it came from: `env DAYTONA_API_URL` or the path of `<data-dir>/env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub source: String,
}

/// `DAYTONA_API_URL` and `DAYTONA_API_KEY`, each from the environment, else from `<data-dir>/env` (what `sandbar up`
/// wrote), else `None`.
pub fn find_credentials(data_dir: &Path) -> (Option<Setting>, Option<Setting>) {
    let from_env = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).map(|value| Setting { value, source: format!("env {name}") })
    };
    let mut url = from_env("DAYTONA_API_URL");
    let mut key = from_env("DAYTONA_API_KEY");
    if url.is_none() || key.is_none() {
        let path = data_dir.join("env");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let setting = |v: &str| Some(Setting { value: v.trim().to_owned(), source: path.display().to_string() });
            for line in text.lines() {
                match line.split_once('=') {
                    Some(("DAYTONA_API_URL", v)) if url.is_none() => url = setting(v),
                    Some(("DAYTONA_API_KEY", v)) if key.is_none() => key = setting(v),
                    _ => {}
                }
            }
        }
    }
    (url, key)
}

/// Reads `DAYTONA_API_URL` / `DAYTONA_API_KEY` from the environment, else from `<data-dir>/env` (what `sandbar up`
/// wrote).
pub fn credentials(data_dir: &Path) -> anyhow::Result<(String, String)> {
    match find_credentials(data_dir) {
        (Some(u), Some(k)) => Ok((u.value, k.value)),
        _ => bail!(
            "no API to talk to: set DAYTONA_API_URL and DAYTONA_API_KEY, or run `sandbar up` (which writes {})",
            data_dir.join("env").display()
        ),
    }
}

impl Client {
    pub fn new(api_url: String, key: String, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .use_preconfigured_tls((*tls).clone())
            .build()?;
        Ok(Self { http, api_url: api_url.trim_end_matches('/').to_owned(), key, tls })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Opens a WebSocket (`ws` or `wss` after the URL's scheme) to a toolbox URL with this client's key and trust.
    pub async fn ws(&self, http_url: &str, protocols: &[&str]) -> anyhow::Result<crate::ws::Ws> {
        crate::ws::connect(http_url, &self.key, protocols, &self.tls).await
    }

    async fn check(resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str().map(str::to_owned)))
                .unwrap_or(text);
            bail!("{} ({})", message.trim(), status.as_u16());
        }
        if text.trim().is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&text).context("bad JSON from the server")
        }
    }

    /// A control-plane call: `path` is relative to the API base (`/sandbox/...`).
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.api_url)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the API at {}", self.api_url))?;
        Self::check(resp).await
    }

    pub async fn sandbox(&self, id: &str) -> anyhow::Result<Value> {
        self.api(reqwest::Method::GET, &format!("/sandbox/{}", enc(id)), None).await
    }

    /// The toolbox base of a sandbox (`toolboxProxyUrl/{id}`).
    pub async fn toolbox_base(&self, sandbox: &Value) -> anyhow::Result<String> {
        let id = sandbox["id"].as_str().context("sandbox without id")?;
        let mut base = sandbox["toolboxProxyUrl"].as_str().unwrap_or("").to_owned();
        if base.is_empty() {
            let v = self.api(reqwest::Method::GET, &format!("/sandbox/{id}/toolbox-proxy-url"), None).await?;
            base = v["url"].as_str().context("toolbox-proxy-url without url")?.to_owned();
        }
        Ok(format!("{}/{id}", base.trim_end_matches('/')))
    }

    /// A toolbox call through the proxy.
    pub async fn toolbox(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{base}{path}")).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the proxy at {base}"))?;
        Self::check(resp).await
    }

    /// Polls until the sandbox is in one of `states` (or fails on `error`/`build_failed`), up to `timeout`.
    pub async fn wait_for(&self, id: &str, states: &[&str], timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let sb = self.sandbox(id).await?;
            let state = sb["state"].as_str().unwrap_or("");
            if states.contains(&state) {
                return Ok(sb);
            }
            if matches!(state, "error" | "build_failed") {
                bail!("sandbox {id} is {state}: {}", sb["errorReason"].as_str().unwrap_or("no reason given"));
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("sandbox {id} is still {state} after {}s", timeout.as_secs());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(Duration::from_secs(1));
        }
    }
}

/// Percent-encodes one path segment.
pub fn enc(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// The body of `POST /sandbox` from the `create` flags.
#[allow(clippy::too_many_arguments)]
pub fn create_body(
    image: Option<&str>,
    snapshot: Option<&str>,
    name: Option<&str>,
    cpu: Option<u32>,
    memory: Option<u32>,
    disk: Option<u32>,
    env: &[(String, String)],
    labels: &[(String, String)],
    public: bool,
) -> Value {
    let mut body = json!({
        "env": env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "labels": labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "volumes": [],
        "public": public,
    });
    if let Some(n) = name {
        body["name"] = json!(n);
    }
    if let Some(s) = snapshot.or(image) {
        body["snapshot"] = json!(s);
    }
    for (k, v) in [("cpu", cpu), ("memory", memory), ("disk", disk)] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_has_what_the_sdk_sends() {
        let b = create_body(
            Some("img"),
            None,
            None,
            Some(2),
            None,
            None,
            &[("A".into(), "1".into())],
            &[("k".into(), "v".into())],
            true,
        );
        assert_eq!(b["snapshot"], "img");
        assert_eq!(b["cpu"], 2);
        assert_eq!(b["env"]["A"], "1");
        assert_eq!(b["labels"]["k"], "v");
        assert_eq!(b["public"], true);
        assert!(b.get("memory").is_none());
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("sbx-1_x.y"), "sbx-1_x.y");
    }
}
