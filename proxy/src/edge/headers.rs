//! One pass over a request's headers ([`Scan::of`]) finds every header the edge reads and notes which of those it
//! strips before the daemon are there at all ([`Strip`]). Looking each one up by name would parse and hash the
//! name again for every lookup (a dozen per request), and most of them are absent from most requests.
//!
//! A field holds the header's first value, as `HeaderMap::get` would give it, and is `None` when that value is not
//! visible ASCII, as `HeaderValue::to_str` would say; later values of the same name are never looked at (but
//! `Content-Length`'s, which are counted).

use http::{HeaderMap, HeaderValue};
use sandbar_proto::api::{PREVIEW_TOKEN_HEADER, REQUEST_ID_HEADER};
use sandbar_proto::{DAEMON_AUTH_HEADER, DAEMON_TOKEN_HEADER};
use sandbar_support::{request_id, trace};

/// What the edge reads of a request's headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan<'a> {
    pub host: Option<&'a str>,
    /// Raw bytes: an `Origin` that is not visible ASCII is still an origin, and not ours.
    pub origin: Option<&'a [u8]>,
    pub request_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub preview_token: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    /// `Content-Length` is absent, or there once as plain decimal digits (a list or a second header is refused).
    pub content_length_ok: bool,
    pub strip: Strip,
}

/// Which headers that never reach a daemon as the client sent them are in the request: the work of removing them
/// is only done when they are (`rewrite::Forward::apply`, `credentials::strip`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Strip {
    /// One of `rewrite::INTERNAL_HEADERS` (the proxy sets its own).
    pub internal: bool,
    pub authorization: bool,
    pub preview_token: bool,
    pub cookie: bool,
}

/// Bits of the names whose first value was taken already.
mod seen {
    pub const HOST: u16 = 1;
    pub const ORIGIN: u16 = 1 << 1;
    pub const REQUEST_ID: u16 = 1 << 2;
    pub const TRACEPARENT: u16 = 1 << 3;
    pub const PREVIEW_TOKEN: u16 = 1 << 4;
    pub const AUTHORIZATION: u16 = 1 << 5;
    pub const COOKIE: u16 = 1 << 6;
    pub const SEC_FETCH_SITE: u16 = 1 << 7;
}

impl<'a> Scan<'a> {
    pub fn of(headers: &'a HeaderMap<HeaderValue>) -> Self {
        let mut scan = Scan { content_length_ok: true, ..Scan::default() };
        let mut taken = 0u16;
        let mut lengths = 0u32;
        for (name, value) in headers {
            // The first value of a name (values of one name come together, the first first).
            let mut first = |bit: u16| {
                let is_first = taken & bit == 0;
                taken |= bit;
                is_first
            };
            let text = || value.to_str().ok();
            match name.as_str() {
                "host" if first(seen::HOST) => scan.host = text(),
                "origin" if first(seen::ORIGIN) => scan.origin = Some(value.as_bytes()),
                request_id::HEADER => {
                    scan.strip.internal = true;
                    if first(seen::REQUEST_ID) {
                        scan.request_id = text();
                    }
                }
                trace::HEADER if first(seen::TRACEPARENT) => scan.traceparent = text(),
                PREVIEW_TOKEN_HEADER => {
                    scan.strip.internal = true;
                    scan.strip.preview_token = true;
                    if first(seen::PREVIEW_TOKEN) {
                        scan.preview_token = text();
                    }
                }
                "authorization" => {
                    scan.strip.authorization = true;
                    if first(seen::AUTHORIZATION) {
                        scan.authorization = text();
                    }
                }
                "cookie" => {
                    scan.strip.cookie = true;
                    if first(seen::COOKIE) {
                        scan.cookie = text();
                    }
                }
                "sec-fetch-site" if first(seen::SEC_FETCH_SITE) => scan.sec_fetch_site = text(),
                "content-length" => {
                    lengths += 1;
                    let digits = value.as_bytes();
                    if lengths > 1 || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                        scan.content_length_ok = false;
                    }
                }
                DAEMON_AUTH_HEADER | DAEMON_TOKEN_HEADER | REQUEST_ID_HEADER | "x-forwarded-for"
                | "x-forwarded-proto" | "x-forwarded-host" | "x-forwarded-port" | "forwarded" | "x-real-ip" => {
                    scan.strip.internal = true
                }
                _ => {}
            }
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(*n, HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    #[test]
    fn first_values_as_get_would_give_them() {
        let m = map(&[
            ("Host", b"a.example"),
            ("host", b"b.example"),
            ("authorization", b"Bearer k"),
            ("authorization", b"Bearer other"),
            ("cookie", b"a=1"),
            ("origin", b"http://\xffx"),
            ("x-request-id", b"\xff"),
            ("x-request-id", b"abc"),
            ("traceparent", b"00-1-2-01"),
            ("sec-fetch-site", b"same-origin"),
        ]);
        let s = Scan::of(&m);
        assert_eq!(s.host, m.get("host").and_then(|v| v.to_str().ok()));
        assert_eq!(s.host, Some("a.example"));
        assert_eq!(s.authorization, Some("Bearer k"));
        assert_eq!(s.cookie, Some("a=1"));
        assert_eq!(s.origin, Some(&b"http://\xffx"[..]));
        assert_eq!(s.request_id, None, "the first value is not text: as get(), the second is not looked at");
        assert_eq!(s.traceparent, Some("00-1-2-01"));
        assert_eq!(s.sec_fetch_site, Some("same-origin"));
        assert!(s.content_length_ok);
        assert_eq!(s.strip, Strip { internal: true, authorization: true, preview_token: false, cookie: true });
    }

    #[test]
    fn strip_flags_name_only_what_is_there() {
        assert_eq!(Scan::of(&map(&[("host", b"h"), ("accept", b"*/*")])).strip, Strip::default());
        // Every header the request to the daemon loses is noticed.
        for internal in super::super::rewrite::INTERNAL_HEADERS {
            let m = map(&[(internal, b"x")]);
            assert!(Scan::of(&m).strip.internal, "{internal}");
        }
        let m = map(&[(PREVIEW_TOKEN_HEADER, b"tok")]);
        let s = Scan::of(&m);
        assert_eq!(s.preview_token, Some("tok"));
        assert!(s.strip.preview_token && s.strip.internal);
    }

    #[test]
    fn content_length_is_one_decimal_number_or_none() {
        let ok = |pairs: &[(&'static str, &[u8])]| Scan::of(&map(pairs)).content_length_ok;
        assert!(ok(&[]));
        assert!(ok(&[("content-length", b"12")]));
        assert!(!ok(&[("content-length", b"5, 5")]));
        assert!(!ok(&[("content-length", b"")]));
        assert!(!ok(&[("content-length", b"+5")]));
        assert!(!ok(&[("content-length", b"5"), ("content-length", b"5")]));
    }
}
