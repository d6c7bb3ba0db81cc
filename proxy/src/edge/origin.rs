//! Cross-origin requests to the daemon's own ports. Every `{port}-{id}.{domain}` host is same-site with every
//! other, so a page one sandbox serves can make a victim's browser send requests to another sandbox's toolbox
//! (2280), SSH (22220) or terminal (22222) port, with whatever the browser attaches on its own.
//!
//! The rule ([`check`]), on a daemon port (a `/toolbox/{id}/...` path, or a `2280-`, `22220-` or `22222-` preview
//! host): a WebSocket upgrade, or a request whose method is not `GET`, `HEAD` or `OPTIONS`, that carries an
//! `Origin` header is refused with `403 cross-origin` unless that `Origin` is the request's own origin: the scheme
//! of the listener it came in on (`http` or `https`), and the request's host (`Host`, or the `:authority` of
//! HTTP/2) with its port, a missing port meaning the scheme's default. `Origin: null` (sandboxed frames, some
//! redirects) is never the request's own. A request without `Origin` passes: SDKs, the CLI and curl do not send
//! one, and browsers always do on the requests this rule is about (WebSockets and non-`GET` fetches and forms).
//! App ports are not checked: an app decides its own cross-origin policy.

use sandbar_proto::ports;

/// The daemon's own ports: toolbox, SSH and web terminal.
pub fn daemon_port(port: u16) -> bool {
    matches!(port, ports::TOOLBOX | ports::SSH | ports::TERMINAL)
}

/// Whether a request with this method, upgrade flag and `Origin` to `host` (on a listener of scheme `https` or
/// not) may reach a daemon port.
pub fn check(method: &http::Method, upgrade: bool, origin: Option<&[u8]>, https: bool, host: &str) -> bool {
    let safe = matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
    if safe && !upgrade {
        return true;
    }
    match origin {
        None => true,
        Some(origin) => std::str::from_utf8(origin).is_ok_and(|o| same_origin(o, https, host)),
    }
}

/// `origin` (`scheme://host[:port]`) is the origin of a request to `host` on a listener of this scheme.
fn same_origin(origin: &str, https: bool, host: &str) -> bool {
    let scheme = if https { "https" } else { "http" };
    let Some((o_scheme, o_authority)) = origin.trim().split_once("://") else { return false };
    if !o_scheme.eq_ignore_ascii_case(scheme) {
        return false;
    }
    let default_port = if https { 443 } else { 80 };
    match (authority(o_authority, default_port), authority(host, default_port)) {
        (Some((oh, op)), Some((hh, hp))) => op == hp && oh.eq_ignore_ascii_case(hh),
        _ => false,
    }
}

/// `(host, port)` of an authority (`host`, `host:port`, `[v6]` or `[v6]:port`), without userinfo or path.
fn authority(a: &str, default_port: u16) -> Option<(&str, u16)> {
    if a.is_empty() || a.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = a.get(..end + 2)?;
        match rest.get(end + 1..)? {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => default_port,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn the_rule() {
        let h = "2280-sbx.localhost:4000";
        let post = |origin: Option<&str>| check(&Method::POST, false, origin.map(str::as_bytes), false, h);
        assert!(post(None), "SDKs send no Origin");
        assert!(post(Some("http://2280-sbx.localhost:4000")));
        assert!(post(Some("HTTP://2280-SBX.localhost:4000")));
        assert!(!post(Some("http://3000-evil.localhost:4000")));
        assert!(!post(Some("https://2280-sbx.localhost:4000")), "another scheme is another origin");
        assert!(!post(Some("http://2280-sbx.localhost")), "another port");
        assert!(!post(Some("null")));
        assert!(!post(Some("http://2280-sbx.localhost:4000@evil")));
        assert!(!post(Some("")));
        assert!(check(&Method::GET, false, Some(b"http://evil"), false, h), "plain GET is not state-changing");
        assert!(!check(&Method::GET, true, Some(b"http://evil"), false, h), "WebSocket upgrades are checked");
        assert!(check(&Method::GET, true, Some(b"https://22222-x.example.com"), true, "22222-x.example.com:443"));
        assert!(check(&Method::PUT, false, Some(b"http://[::1]:80"), false, "[::1]"));
        assert!(!check(&Method::DELETE, false, Some(&[0xff]), false, h));
    }

    #[test]
    fn daemon_ports() {
        assert!(daemon_port(2280) && daemon_port(22220) && daemon_port(22222) && !daemon_port(3000));
    }
}
