//! Language servers inside the sandbox: the real ones (pylsp, typescript-language-server, clangd,
//! rust-analyzer, gopls, or whatever the configuration names), run over stdio as children of the process table.
//!
//! Two kinds of users:
//! - Daytona's HTTP endpoints (`/lsp/start`, `/lsp/did-open`, `/lsp/completions`, ...) share one server per
//!   (language, project root). `start` adds a user and `stop` removes one; the server stops with its last user.
//!   The daemon is that server's LSP client: it sends `initialize`, keeps the documents opened through the API
//!   in sync with the files on disk (the SDK never sends contents), and restarts the server on the next request
//!   if it died, re-opening those documents.
//! - An IDE's WebSocket (`/lsp/ws`) gets a server process of its own, so its `initialize`, capabilities,
//!   document versions and request ids are exactly what the real server sees (see `toolbox::lsp` for why).

pub mod codec;
pub mod queries;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_support::sync::lock;
use serde_json::{Value, json};
use tower_lsp_server::ls_types::{
    ClientCapabilities, ClientInfo, CompletionClientCapabilities, CompletionItemCapability,
    DocumentSymbolClientCapabilities, HoverClientCapabilities, InitializeParams, InitializeResult, MarkupKind, OneOf,
    PublishDiagnosticsClientCapabilities, TextDocumentClientCapabilities, TextDocumentSyncClientCapabilities, Uri,
    WorkspaceClientCapabilities, WorkspaceFolder, WorkspaceSymbolClientCapabilities,
};

pub use server::Server;

use super::{Daemon, Error, ErrorKind};

/// Largest file the daemon reads from disk to open it in a language server.
pub const MAX_DOCUMENT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LspError {
    /// No language server is configured for the language.
    #[error("no language server is configured for language {0:?} (known: {1})")]
    UnknownLanguage(String, String),
    /// The configured program is not on PATH.
    #[error("the {language} language server `{program}` is not installed in this sandbox (not found on PATH)")]
    NotInstalled { language: String, program: String },
    #[error("cannot start the language server `{program}`: {error}")]
    Spawn { program: String, error: String },
    /// A request for a server nobody started through `/lsp/start`.
    #[error("no {language} language server is running for {root}: call /lsp/start first")]
    NotStarted { language: String, root: String },
    /// `detail` is empty or `": "` and the last line the server wrote to stderr.
    #[error("the {language} language server `{program}` exited ({status}){detail}")]
    Exited { language: String, program: String, status: String, detail: String },
    #[error("the language server did not answer {method} within {secs} s")]
    Timeout { method: String, secs: u64 },
    #[error("the language server answered {method} with error {code}: {message}")]
    Rpc { method: String, code: i64, message: String },
    #[error("the language server sent an answer to {0} that is not valid LSP")]
    BadAnswer(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{path}: {error}")]
    File { path: String, error: std::io::Error },
}

/// The kind (and so the status) each failure is answered with.
impl From<LspError> for Error {
    fn from(e: LspError) -> Self {
        let msg = e.to_string();
        match e {
            LspError::UnknownLanguage(..) | LspError::NotInstalled { .. } | LspError::BadRequest(_) => {
                Error::bad_request(msg)
            }
            LspError::NotStarted { .. } => Error::bad_request(msg).with_code("LSP_SERVER_NOT_INITIALIZED"),
            LspError::File { path, error } => Error::io(&path, &error),
            LspError::Timeout { .. } => Error::new(ErrorKind::GatewayTimeout, msg),
            LspError::Rpc { code, .. } if code == tower_lsp_server::jsonrpc::ErrorCode::InvalidParams.code() => {
                Error::bad_request(msg)
            }
            LspError::Exited { .. } => {
                Error::new(ErrorKind::BadGateway, format!("{msg}; the next request starts it again"))
            }
            LspError::Spawn { .. } | LspError::Rpc { .. } | LspError::BadAnswer(_) => {
                Error::new(ErrorKind::BadGateway, msg)
            }
        }
    }
}

/// Which program serves which language: the defaults, overridden by `SANDBAR_LSP_SERVERS`.
#[derive(Debug, Clone)]
pub struct LspConfig {
    servers: BTreeMap<String, Vec<String>>,
    pub timeout: Duration,
}

impl LspConfig {
    /// `overrides` is `lang=program args;lang2=program` (a program may be empty to disable a language).
    pub fn new(overrides: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let mut servers = BTreeMap::new();
        let ts = "typescript-language-server --stdio";
        for (lang, cmd) in [
            ("python", "pylsp"),
            ("typescript", ts),
            ("javascript", ts),
            ("typescriptreact", ts),
            ("javascriptreact", ts),
            ("c", "clangd"),
            ("cpp", "clangd"),
            ("rust", "rust-analyzer"),
            ("go", "gopls"),
        ] {
            servers.insert(lang.to_owned(), cmd.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
        }
        for entry in overrides.unwrap_or_default().split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((lang, cmd)) = entry.split_once('=') else {
                return Err(format!("SANDBAR_LSP_SERVERS: {entry:?} is not language=command"));
            };
            let lang = lang.trim().to_ascii_lowercase();
            if lang.is_empty() {
                return Err(format!("SANDBAR_LSP_SERVERS: {entry:?} has no language"));
            }
            let argv: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                servers.remove(&lang);
            } else {
                servers.insert(lang, argv);
            }
        }
        Ok(Self { servers, timeout })
    }

    pub fn command(&self, language: &str) -> Result<&[String], LspError> {
        self.servers.get(&language.to_ascii_lowercase()).map(Vec::as_slice).ok_or_else(|| {
            LspError::UnknownLanguage(language.to_owned(), self.servers.keys().cloned().collect::<Vec<_>>().join(", "))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    language: String,
    root: PathBuf,
}

/// The servers of the HTTP API.
#[derive(Debug)]
pub struct Lsp {
    pub config: LspConfig,
    shared: Mutex<HashMap<Key, Arc<Shared>>>,
}

/// One (language, root) server of the HTTP API, restarted on demand.
#[derive(Debug)]
pub struct Shared {
    key: Key,
    users: Mutex<usize>,
    /// Set when the last user left: a request still holding this must not start the server again.
    stopped: std::sync::atomic::AtomicBool,
    state: tokio::sync::Mutex<SharedState>,
}

#[derive(Debug, Default)]
struct SharedState {
    server: Option<Arc<Server>>,
    /// Documents opened through the API, by the URI sent to the server.
    docs: HashMap<String, Doc>,
    capabilities: Value,
}

#[derive(Debug, Clone)]
struct Doc {
    path: PathBuf,
    version: i32,
    hash: u64,
}

impl Lsp {
    pub fn new(config: LspConfig) -> Self {
        Self { config, shared: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Shared>>> {
        lock(&self.shared)
    }

    /// Checks the language and the project directory; returns the normalized key.
    fn key(&self, d: &Daemon, language: &str, root: &str) -> Result<Key, LspError> {
        let language = language.trim().to_ascii_lowercase();
        self.config.command(&language)?;
        if root.trim().is_empty() {
            return Err(LspError::BadRequest("pathToProject must not be empty".into()));
        }
        let root = d.resolve(root);
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(LspError::BadRequest(format!("pathToProject {} is not a directory", root.display()))),
            Err(error) => return Err(LspError::File { path: root.display().to_string(), error }),
        }
        let root = root.canonicalize().unwrap_or(root);
        Ok(Key { language, root })
    }

    /// The normalized language and the canonical project directory of a request, both checked.
    pub fn project(&self, d: &Daemon, language: &str, root: &str) -> Result<(String, PathBuf), LspError> {
        let k = self.key(d, language, root)?;
        Ok((k.language, k.root))
    }

    /// `/lsp/start`: adds a user to the (language, root) server, starting it if needed.
    pub async fn start(&self, d: &Daemon, language: &str, root: &str) -> Result<(), LspError> {
        let key = self.key(d, language, root)?;
        let shared = {
            let mut map = self.map();
            let s = map
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Shared {
                        key: key.clone(),
                        users: Mutex::new(0),
                        stopped: Default::default(),
                        state: Default::default(),
                    })
                })
                .clone();
            *lock(&s.users) += 1;
            s
        };
        match shared.server(d, &self.config).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.leave(&key).await;
                Err(e)
            }
        }
    }

    /// `/lsp/stop`: removes a user; the last one stops the server. Stopping what is not running is not an error.
    pub async fn stop(&self, d: &Daemon, language: &str, root: &str) -> Result<(), LspError> {
        let key = self.key(d, language, root)?;
        self.leave(&key).await;
        Ok(())
    }

    async fn leave(&self, key: &Key) {
        let last = {
            let mut map = self.map();
            let Some(s) = map.get(key).cloned() else { return };
            let mut users = lock(&s.users);
            *users = users.saturating_sub(1);
            if *users == 0 {
                drop(users);
                map.remove(key);
                Some(s)
            } else {
                None
            }
        };
        if let Some(s) = last {
            s.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
            let server = s.state.lock().await.server.take();
            if let Some(server) = server {
                server.shutdown().await;
            }
        }
    }

    /// The running server for a request of the HTTP API; `LSP_SERVER_NOT_INITIALIZED` if nobody started it.
    pub fn get(&self, d: &Daemon, language: &str, root: &str) -> Result<Arc<Shared>, LspError> {
        let key = self.key(d, language, root)?;
        self.map().get(&key).cloned().ok_or_else(|| LspError::NotStarted {
            language: key.language.clone(),
            root: key.root.display().to_string(),
        })
    }
}

impl Shared {
    pub fn language(&self) -> &str {
        &self.key.language
    }

    pub fn root(&self) -> &Path {
        &self.key.root
    }

    /// The live server, started (or restarted after a crash, documents re-opened) if needed.
    async fn server(&self, d: &Daemon, config: &LspConfig) -> Result<Arc<Server>, LspError> {
        let mut st = self.state.lock().await;
        self.ensure(&mut st, d, config).await
    }

    async fn ensure(&self, st: &mut SharedState, d: &Daemon, config: &LspConfig) -> Result<Arc<Server>, LspError> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LspError::NotStarted {
                language: self.key.language.clone(),
                root: self.key.root.display().to_string(),
            });
        }
        if let Some(s) = st.server.as_ref().filter(|s| s.is_alive()) {
            return Ok(s.clone());
        }
        if let Some(old) = st.server.take() {
            tracing::warn!(language = %self.key.language, pid = old.pid, "language server died; restarting it");
        }
        let argv = config.command(&self.key.language)?;
        let server = Server::spawn(d, &self.key.language, self.key.root.clone(), argv, config.timeout, None)?;
        let init = match server.request("initialize", initialize_params(&self.key.root)).await {
            Ok(v) => v,
            Err(e) => {
                server.shutdown().await;
                return Err(match e {
                    LspError::Timeout { .. } | LspError::Exited { .. } => e,
                    other => LspError::Spawn { program: server.program.clone(), error: other.to_string() },
                });
            }
        };
        if serde_json::from_value::<InitializeResult>(init.clone()).is_err() {
            server.shutdown().await;
            return Err(LspError::BadAnswer("initialize".into()));
        }
        st.capabilities = init.get("capabilities").cloned().unwrap_or(Value::Null);
        server.notify("initialized", json!({})).await?;
        // A restarted server knows nothing: open again what the API had open, from disk.
        let docs: Vec<(String, Doc)> = st.docs.drain().collect();
        for (uri, mut doc) in docs {
            let Ok(text) = read_document(&doc.path) else { continue };
            doc.version += 1;
            doc.hash = hash(&text);
            server
                .notify(
                    "textDocument/didOpen",
                    json!({"textDocument": {"uri": uri, "languageId": self.key.language, "version": doc.version, "text": text}}),
                )
                .await?;
            st.docs.insert(uri, doc);
        }
        st.server = Some(server.clone());
        Ok(server)
    }

    /// Makes the server see the file at `uri` as it is on disk now (opens it, or sends its new content).
    /// Returns the server and the URI as sent to it.
    pub async fn sync(&self, d: &Daemon, config: &LspConfig, uri: &str) -> Result<(Arc<Server>, String), LspError> {
        let path = uri_to_path(uri, &self.key.root)?;
        let text = read_document(&path).map_err(|error| LspError::File { path: path.display().to_string(), error })?;
        let h = hash(&text);
        let uri = path_to_uri(&path);
        let mut st = self.state.lock().await;
        let server = self.ensure(&mut st, d, config).await?;
        match st.docs.get_mut(&uri) {
            Some(doc) if doc.hash == h => {}
            Some(doc) => {
                doc.version += 1;
                doc.hash = h;
                server
                    .notify(
                        "textDocument/didChange",
                        json!({"textDocument": {"uri": uri, "version": doc.version}, "contentChanges": [{"text": text}]}),
                    )
                    .await?;
            }
            None => {
                server
                    .notify(
                        "textDocument/didOpen",
                        json!({"textDocument": {"uri": uri, "languageId": self.key.language, "version": 1, "text": text}}),
                    )
                    .await?;
                st.docs.insert(uri.clone(), Doc { path, version: 1, hash: h });
            }
        }
        Ok((server, uri))
    }

    pub async fn close(&self, d: &Daemon, config: &LspConfig, uri: &str) -> Result<(), LspError> {
        let path = uri_to_path(uri, &self.key.root)?;
        let uri = path_to_uri(&path);
        let mut st = self.state.lock().await;
        if st.docs.remove(&uri).is_some() {
            let server = self.ensure(&mut st, d, config).await?;
            server.notify("textDocument/didClose", json!({"textDocument": {"uri": uri}})).await?;
        }
        Ok(())
    }

    /// A request that needs no document (workspace symbols), on the live server.
    pub async fn live(&self, d: &Daemon, config: &LspConfig) -> Result<(Arc<Server>, Value, Vec<String>), LspError> {
        let mut st = self.state.lock().await;
        let server = self.ensure(&mut st, d, config).await?;
        Ok((server, st.capabilities.clone(), st.docs.keys().cloned().collect()))
    }
}

/// The daemon's `initialize`: a plain client that takes markdown, flat or nested symbols, and folders.
#[allow(deprecated)] // root_uri: older servers (pylsp 1.7) read it instead of workspaceFolders
fn initialize_params(root: &Path) -> Value {
    let uri = path_to_uri(root);
    let parsed: Option<Uri> = uri.parse().ok();
    let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    let params = InitializeParams {
        process_id: Some(std::process::id()),
        root_uri: parsed.clone(),
        workspace_folders: parsed.map(|uri| vec![WorkspaceFolder { uri, name }]),
        client_info: Some(ClientInfo {
            name: "sandbar-daemon".into(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
        }),
        capabilities: ClientCapabilities {
            workspace: Some(WorkspaceClientCapabilities {
                workspace_folders: Some(true),
                configuration: Some(true),
                symbol: Some(WorkspaceSymbolClientCapabilities::default()),
                ..Default::default()
            }),
            text_document: Some(TextDocumentClientCapabilities {
                synchronization: Some(TextDocumentSyncClientCapabilities::default()),
                completion: Some(CompletionClientCapabilities {
                    completion_item: Some(CompletionItemCapability {
                        documentation_format: Some(vec![MarkupKind::Markdown, MarkupKind::PlainText]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                hover: Some(HoverClientCapabilities {
                    content_format: Some(vec![MarkupKind::Markdown, MarkupKind::PlainText]),
                    ..Default::default()
                }),
                document_symbol: Some(DocumentSymbolClientCapabilities {
                    hierarchical_document_symbol_support: Some(true),
                    ..Default::default()
                }),
                publish_diagnostics: Some(PublishDiagnosticsClientCapabilities::default()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    serde_json::to_value(params).unwrap_or(Value::Null)
}

/// Whether the server's capabilities offer `workspace/symbol`.
pub fn has_workspace_symbols(capabilities: &Value) -> bool {
    match capabilities.get("workspaceSymbolProvider") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(v) => serde_json::from_value::<OneOf<bool, Value>>(v.clone()).is_ok(),
    }
}

fn read_document(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"));
    }
    let mut buf = Vec::new();
    f.take(MAX_DOCUMENT + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_DOCUMENT {
        return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("larger than {MAX_DOCUMENT} bytes")));
    }
    String::from_utf8(buf).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Characters that stay as they are in the path of a `file://` URI.
const PATH_SET: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `file://` URI of an absolute path inside the sandbox.
pub fn path_to_uri(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("file://{}", percent_encoding::utf8_percent_encode(&s, PATH_SET))
}

/// The sandbox path a request's `uri` names. The SDK sends `"file://" + path` without escaping, with a relative
/// path for a file of the project; IDEs send escaped absolute URIs. Both work.
pub fn uri_to_path(uri: &str, root: &Path) -> Result<PathBuf, LspError> {
    let rest =
        uri.strip_prefix("file://").ok_or_else(|| LspError::BadRequest(format!("uri {uri:?} is not a file:// URI")))?;
    let rest = rest.strip_prefix("localhost/").map(|r| format!("/{r}")).unwrap_or_else(|| rest.to_owned());
    let decoded = percent_encoding::percent_decode_str(&rest).decode_utf8().map(|c| c.into_owned()).unwrap_or(rest);
    if decoded.is_empty() || decoded.contains('\0') {
        return Err(LspError::BadRequest(format!("uri {uri:?} names no file")));
    }
    let p = Path::new(&decoded);
    Ok(if p.is_absolute() { p.to_path_buf() } else { root.join(p) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_relative_paths_join_the_root() {
        let root = Path::new("/work/proj");
        assert_eq!(uri_to_path("file:///a/b c.py", root).unwrap(), Path::new("/a/b c.py"));
        assert_eq!(uri_to_path("file:///a/b%20c.py", root).unwrap(), Path::new("/a/b c.py"));
        assert_eq!(uri_to_path("file://src/m.py", root).unwrap(), Path::new("/work/proj/src/m.py"));
        assert_eq!(path_to_uri(Path::new("/a/b c.py")), "file:///a/b%20c.py");
        assert!(uri_to_path("http://x/y", root).is_err());
        assert!(uri_to_path("file://", root).is_err());
    }

    #[test]
    fn config_overrides_and_removes_languages() {
        let c = LspConfig::new(Some("python = my-pyls --x ; go="), Duration::from_secs(1)).unwrap();
        assert_eq!(c.command("Python").unwrap(), ["my-pyls", "--x"]);
        assert!(c.command("go").is_err());
        assert_eq!(c.command("typescript").unwrap(), ["typescript-language-server", "--stdio"]);
        assert!(LspConfig::new(Some("nonsense"), Duration::from_secs(1)).is_err());
    }
}
