//! Where a request goes, from its Host and path: `/toolbox/{sandboxId}/{path}` on any host, or
//! `{port}-{sandboxId}.{domain}` for preview ports ([`parse`]), and the daemon port and path that serve it
//! ([`Destination`]); on any other host, `/dashboard` and `/api/...` go to the API ([`Target::Api`]), so the
//! dashboard, its REST calls and the toolbox paths its terminal and file browser use share one origin and the
//! proxy's TLS. A new kind of route is a new [`Target`] variant here, the rule for who may reach it in the
//! API (`POST /internal/authorize`), and its wiring in the edge's phases.
//!
//! [`parse`] is a pure function over untrusted bytes: no allocation, no panics, no indexing (fuzzed by
//! `proxy/fuzz`, which reaches this module as `sandbar_proxy::target`).

use sandbar_proto::ports;
use thiserror::Error;

/// The path prefix the API hands out as `toolboxProxyUrl`.
pub const TOOLBOX_PREFIX: &str = "/toolbox";

/// Longest sandbox id accepted (UUIDs are 36; our ids are shorter).
pub const MAX_SANDBOX_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/toolbox/{sandboxId}/{rest}`: `rest` starts with `/` (or is `/` alone) and keeps the query.
    Toolbox { sandbox_id: &'a str, rest: &'a str },
    /// `{port}-{sandboxId}.{domain}`: the whole path and query go to that port.
    Preview { sandbox_id: &'a str, port: u16, path: &'a str },
    /// The dashboard (`/dashboard`, `/dashboard/...`) or the REST API (`/api/...`) on a host that is not a preview
    /// host: forwarded to the API as it is (but [`services_only`] paths, refused).
    Api { path: &'a str },
    /// None of these: the proxy's own host without a toolbox, dashboard or API path.
    Other,
}

/// The path prefixes [`Target::Api`] forwards.
pub const API_PATHS: [&str; 2] = ["/api", "/dashboard"];

/// `path` is `prefix` itself or below it (`prefix/...`, `prefix?...`).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

/// An API path for sandbar's own services (the proxy's and runners' calls), never forwarded from the edge: the
/// API checks their tokens anyway, and the edge does not even offer them. Judged on the path's segments after
/// percent-decoding, without empty and `.` segments, so `/api//internal` or `/api/%69nternal` are the same path.
pub fn services_only(path_and_query: &str) -> bool {
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy().to_ascii_lowercase();
    let mut segs = decoded.split('/').filter(|s| !s.is_empty() && *s != ".");
    segs.next() == Some("api") && segs.next().is_some_and(|s| s == "internal" || s == "runners")
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// the Host header is missing or not a valid host name
    #[error("missing or malformed Host header")]
    BadHost,
    /// a preview host whose port part is not a port number
    #[error("malformed preview host: expected {{port}}-{{sandboxId}}.{{domain}} with a port from 1 to 65535")]
    BadPort,
    /// a sandbox id with characters outside `[A-Za-z0-9_-]`, empty, or too long
    #[error("malformed sandbox id: expected 1 to 64 characters from A-Z a-z 0-9 _ -")]
    BadSandboxId,
    /// the request target is not an absolute path
    #[error("malformed request path")]
    BadPath,
}

pub fn valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SANDBOX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Strips an optional `:port` from a Host value and checks what is left is a plausible host name (or an IP
/// literal). Returns the host in the case it was given.
pub fn host_name(host: &str) -> Result<&str, TargetError> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]` or `[::1]:4000`.
        let end = rest.find(']').ok_or(TargetError::BadHost)?;
        let after = rest.get(end + 1..).ok_or(TargetError::BadHost)?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port_digits)) {
            return Err(TargetError::BadHost);
        }
        let inner = rest.get(..end).ok_or(TargetError::BadHost)?;
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(TargetError::BadHost);
        }
        return host.get(..end + 2).ok_or(TargetError::BadHost);
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port_digits(port) => name,
            Some(_) => return Err(TargetError::BadHost),
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(TargetError::BadHost);
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TargetError::BadHost);
        }
    }
    Ok(name)
}

fn valid_port_digits(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

/// Decides the target of a request. `host` is the Host header (or `:authority`), `path_and_query` the request
/// target, `domain` the proxy's configured domain (lowercase, no trailing dot).
pub fn parse<'a>(host: &'a str, path_and_query: &'a str, domain: &str) -> Result<Target<'a>, TargetError> {
    if !path_and_query.starts_with('/') {
        return Err(TargetError::BadPath);
    }
    let name = host_name(host)?;
    // Preview host: exactly one label in front of `.{domain}`, shaped `{port}-{sandboxId}`. A label that does not
    // start with a digit is another name of ours (`proxy.{domain}`) and takes toolbox paths.
    if let Some(label) = strip_domain(name, domain).filter(|l| l.bytes().next().is_some_and(|b| b.is_ascii_digit())) {
        let (port, id) = label.split_once('-').ok_or(TargetError::BadPort)?;
        if !valid_port_digits(port) {
            return Err(TargetError::BadPort);
        }
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(TargetError::BadPort),
        };
        if !valid_sandbox_id(id) {
            return Err(TargetError::BadSandboxId);
        }
        return Ok(Target::Preview { sandbox_id: id, port, path: path_and_query });
    }
    if let Some(after) = path_and_query.strip_prefix(TOOLBOX_PREFIX) {
        let Some(after) = after.strip_prefix('/') else {
            // `/toolbox`, `/toolbox?x` or `/toolboxes`: not a sandbox path.
            return Ok(Target::Other);
        };
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let id = after.get(..end).ok_or(TargetError::BadPath)?;
        if !valid_sandbox_id(id) {
            return Err(TargetError::BadSandboxId);
        }
        let rest = after.get(end..).ok_or(TargetError::BadPath)?;
        let rest = if rest.is_empty() { "/" } else { rest };
        return Ok(Target::Toolbox { sandbox_id: id, rest });
    }
    if API_PATHS.iter().any(|p| under(path_and_query, p)) {
        return Ok(Target::Api { path: path_and_query });
    }
    Ok(Target::Other)
}

/// Where a parsed request goes on its sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The sandbox id from the URL (for a signed preview URL: the token, which the API resolves to a sandbox).
    pub sandbox_id: String,
    /// The sandbox port asked for (the toolbox's for toolbox paths).
    pub port: u16,
    /// Path and query the daemon serves it at: the toolbox's own path, or `/proxy/{port}{path}` for other ports.
    pub path: String,
    /// A toolbox path (`/toolbox/{id}/...`), not a preview host: a `Location` goes back under `/toolbox/{id}`
    /// ([`toolbox_prefix`], built only for an answer that has one).
    pub toolbox: bool,
}

/// `/toolbox/{id}`: where a toolbox answer's `Location` goes back under.
pub fn toolbox_prefix(sandbox_id: &str) -> String {
    format!("{TOOLBOX_PREFIX}/{sandbox_id}")
}

impl Destination {
    /// The destination of `target`; `None` for [`Target::Api`] and [`Target::Other`].
    pub fn of(target: &Target<'_>) -> Option<Self> {
        match *target {
            Target::Toolbox { sandbox_id, rest } => Some(Self {
                sandbox_id: sandbox_id.to_owned(),
                port: ports::TOOLBOX,
                path: if rest.starts_with('?') { format!("/{rest}") } else { rest.to_owned() },
                toolbox: true,
            }),
            Target::Preview { sandbox_id, port, path } => Some(Self {
                sandbox_id: sandbox_id.to_owned(),
                port,
                path: if port == ports::TOOLBOX { path.to_owned() } else { format!("/proxy/{port}{path}") },
                toolbox: false,
            }),
            Target::Api { .. } | Target::Other => None,
        }
    }

    /// A preview host (`{port}-{id}.{domain}`), not a toolbox path.
    pub fn preview_host(&self) -> bool {
        !self.toolbox
    }
}

/// `label` when `name` is `label.domain` (case-insensitive, one label only).
fn strip_domain<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    if domain.is_empty() || name.len() <= domain.len() + 1 {
        return None;
    }
    let split = name.len() - domain.len();
    let (head, tail) = (name.get(..split)?, name.get(split..)?);
    if !tail.eq_ignore_ascii_case(domain) {
        return None;
    }
    let label = head.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolbox_paths() {
        assert_eq!(
            parse("localhost:4000", "/toolbox/sbx-1/process/execute?x=1", "localhost"),
            Ok(Target::Toolbox { sandbox_id: "sbx-1", rest: "/process/execute?x=1" })
        );
        assert_eq!(
            parse("proxy.example.com", "/toolbox/abc", "example.com"),
            Ok(Target::Toolbox { sandbox_id: "abc", rest: "/" })
        );
        assert_eq!(
            parse("127.0.0.1:4000", "/toolbox/abc?q", "localhost"),
            Ok(Target::Toolbox { sandbox_id: "abc", rest: "?q" })
        );
        assert_eq!(parse("localhost", "/toolbox/a%2e/x", "localhost"), Err(TargetError::BadSandboxId));
        assert_eq!(parse("localhost", "/toolbox//x", "localhost"), Err(TargetError::BadSandboxId));
        assert_eq!(parse("localhost", "/toolboxes", "localhost"), Ok(Target::Other));
        assert_eq!(parse("localhost", "/", "localhost"), Ok(Target::Other));
        let long = format!("/toolbox/{}/x", "a".repeat(65));
        assert_eq!(parse("localhost", &long, "localhost"), Err(TargetError::BadSandboxId));
    }

    #[test]
    fn preview_hosts() {
        assert_eq!(
            parse("3000-sbx-1.localhost:4443", "/a?b", "localhost"),
            Ok(Target::Preview { sandbox_id: "sbx-1", port: 3000, path: "/a?b" })
        );
        assert_eq!(
            parse("8080-ABC.Example.COM", "/", "example.com"),
            Ok(Target::Preview { sandbox_id: "ABC", port: 8080, path: "/" })
        );
        // A preview host wins over a toolbox path: the path belongs to the sandbox's server.
        assert_eq!(
            parse("1-x.localhost", "/toolbox/y/z", "localhost"),
            Ok(Target::Preview { sandbox_id: "x", port: 1, path: "/toolbox/y/z" })
        );
        assert_eq!(parse("0-x.localhost", "/", "localhost"), Err(TargetError::BadPort));
        assert_eq!(parse("65536-x.localhost", "/", "localhost"), Err(TargetError::BadPort));
        assert_eq!(parse("1abc-x.localhost", "/", "localhost"), Err(TargetError::BadPort));
        assert_eq!(parse("abc-x.localhost", "/", "localhost"), Ok(Target::Other));
        assert_eq!(parse("3000.localhost", "/", "localhost"), Err(TargetError::BadPort));
        assert_eq!(parse("3000-.localhost", "/", "localhost"), Err(TargetError::BadSandboxId));
        // Two labels in front of the domain: not a preview host.
        assert_eq!(parse("a.3000-x.localhost", "/", "localhost"), Ok(Target::Other));
        assert_eq!(parse("localhost", "/", "localhost"), Ok(Target::Other));
    }

    #[test]
    fn malformed_hosts() {
        for h in ["", ":80", "a b", "a..b", "x:99999999", "[::1", "[zz]", "a/b", "ä.localhost", "host:"] {
            assert_eq!(parse(h, "/", "localhost"), Err(TargetError::BadHost), "{h:?}");
        }
        assert_eq!(host_name("[::1]:4000"), Ok("[::1]"));
        assert_eq!(host_name("a:65536"), Err(TargetError::BadHost), "found by the fuzz target");
        assert_eq!(host_name("localhost."), Ok("localhost"));
        assert_eq!(parse("localhost", "*", "localhost"), Err(TargetError::BadPath));
        let long = format!("{}.localhost", "a".repeat(64));
        assert_eq!(parse(&long, "/", "localhost"), Err(TargetError::BadHost));
    }

    #[test]
    fn destinations() {
        let d = |host, path| parse(host, path, "localhost").ok().as_ref().and_then(Destination::of);
        let toolbox = d("localhost", "/toolbox/abc?q").unwrap();
        assert_eq!((toolbox.port, toolbox.path.as_str()), (ports::TOOLBOX, "/?q"));
        assert!(toolbox.toolbox && !toolbox.preview_host());
        assert_eq!(toolbox_prefix(&toolbox.sandbox_id), "/toolbox/abc");
        let preview = d("3000-abc.localhost", "/a?b").unwrap();
        assert_eq!((preview.port, preview.path.as_str(), preview.preview_host()), (3000, "/proxy/3000/a?b", true));
        assert_eq!(d("2280-abc.localhost", "/files").unwrap().path, "/files");
        assert_eq!(d("localhost", "/"), None);
        assert_eq!(d("localhost", "/api/sandbox"), None);
    }

    #[test]
    fn api_paths() {
        for p in ["/api/sandbox?x=1", "/api", "/dashboard", "/dashboard/", "/dashboard/sandboxes/x", "/dashboard?a"] {
            assert_eq!(parse("localhost:4000", p, "localhost"), Ok(Target::Api { path: p }), "{p}");
            assert_eq!(parse("proxy.example.com", p, "example.com"), Ok(Target::Api { path: p }), "{p}");
        }
        for p in ["/apix", "/dashboards", "/", "/x/api"] {
            assert_eq!(parse("localhost", p, "localhost"), Ok(Target::Other), "{p}");
        }
        // On a preview host the path is the app's.
        assert_eq!(
            parse("3000-x.localhost", "/api/a", "localhost"),
            Ok(Target::Preview { sandbox_id: "x", port: 3000, path: "/api/a" })
        );
        for p in [
            "/api/internal/authorize",
            "/api//internal/x",
            "/api/./Internal",
            "/api/%69nternal/routes/x",
            "/api/runners",
        ] {
            assert!(services_only(p), "{p}");
        }
        for p in ["/api/sandbox", "/api/internals", "/dashboard/internal", "/api/sandbox/runners", "/api?internal"] {
            assert!(!services_only(p), "{p}");
        }
    }
}
