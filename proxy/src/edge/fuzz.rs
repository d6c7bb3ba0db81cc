//! A fuzz target that runs in `cargo test` (and so in `.ci/run`): the edge's parsers of untrusted input (target
//! and host parsing, credential extraction and stripping, query and cookie helpers, the `Origin` rule) fed many
//! structured and random inputs from a fixed seed. Each must answer without panicking, and what it promises must
//! hold: a parsed sandbox id is valid, a stripped request carries none of the proxy's credentials, a stripped
//! query has no token left. `SANDBAR_FUZZ_ITERS` runs it longer (default 20 000 inputs per target, a few seconds);
//! the cargo-fuzz crate `fuzz/` (target `proxy_target`, run by `scripts/fuzz`) covers [`super::target::parse`]
//! with coverage guidance.

use pingora::http::RequestHeader;
use sandbar_proto::api::{PREVIEW_TOKEN_HEADER, PREVIEW_TOKEN_QUERY};

use super::credentials::{self, API_KEY_PREFIX, PREVIEW_COOKIE};
use super::origin;
use super::rewrite::strip_query_param;
use super::target::{self, Destination, Target, valid_sandbox_id};

/// splitmix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items.get(self.below(items.len())).copied().unwrap_or("")
    }

    /// A string of 0..max pieces, each a fragment that means something to the parsers or a random byte.
    fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            "3000",
            "2280",
            "22222",
            "0",
            "65535",
            "65536",
            "99999999",
            "-",
            "_",
            ".",
            "..",
            ":",
            "::",
            "[",
            "]",
            "/",
            "//",
            "?",
            "&",
            "=",
            ";",
            " ",
            "\t",
            "%",
            "%2F",
            "%2e",
            "%zz",
            "+",
            "@",
            "#",
            "sbx",
            "sbx-1",
            "localhost",
            "example.com",
            "toolbox",
            "/toolbox/",
            "http://",
            "https://",
            "null",
            "Bearer ",
            "bearer ",
            "sbk_",
            "Basic ",
            "sandbar_preview_token",
            "DAYTONA_SANDBOX_AUTH_KEY",
            "ä",
            "\u{0}",
            "\r\n",
            "A",
            "z",
            "9",
        ];
        let n = self.below(max + 1);
        let mut s = String::new();
        for _ in 0..n {
            if self.below(5) == 0 {
                s.push(char::from_u32(self.below(0x250) as u32).unwrap_or('x'));
            } else {
                s.push_str(self.pick(PIECES));
            }
        }
        s
    }
}

fn iterations() -> usize {
    std::env::var("SANDBAR_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

#[test]
fn target_and_host_parsing() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..iterations() {
        let host = match rng.below(3) {
            0 => rng.text(8),
            1 => format!(
                "{}-{}.{}",
                rng.pick(&["3000", "2280", "0", "x", ""]),
                rng.text(3),
                rng.pick(&["localhost", "example.com", "LOCALHOST"])
            ),
            _ => format!("{}:{}", rng.text(3), rng.pick(&["4000", "", "x", "99999999"])),
        };
        let path = match rng.below(4) {
            0 => rng.text(8),
            1 => format!("/toolbox/{}{}", rng.text(3), rng.text(4)),
            2 => format!("/{}{}", rng.pick(&["api", "dashboard", "api/internal"]), rng.text(4)),
            _ => format!("/{}", rng.text(6)),
        };
        for domain in ["localhost", "example.com"] {
            match target::parse(&host, &path, domain) {
                Ok(t @ (Target::Toolbox { .. } | Target::Preview { .. })) => {
                    let (id, port) = match t {
                        Target::Toolbox { sandbox_id, .. } => (sandbox_id, 2280),
                        Target::Preview { sandbox_id, port, .. } => (sandbox_id, port),
                        Target::Api { .. } | Target::Other => ("", 0),
                    };
                    assert!(valid_sandbox_id(id) && port > 0, "{host:?} {path:?}");
                    let d = Destination::of(&t).unwrap_or_else(|| panic!("no destination for {t:?}"));
                    assert!(d.path.starts_with('/'), "{host:?} {path:?} -> {d:?}");
                    assert_eq!(d.sandbox_id, id);
                }
                Ok(Target::Api { path: p }) => {
                    assert!(p.starts_with("/api") || p.starts_with("/dashboard"), "{host:?} {path:?}");
                    assert!(Destination::of(&Target::Api { path: p }).is_none());
                }
                Ok(Target::Other) | Err(_) => {}
            }
        }
        if let Ok(name) = target::host_name(&host) {
            assert!(name.len() <= host.len() && !name.is_empty(), "{host:?} -> {name:?}");
        }
    }
}

#[test]
fn credential_helpers_and_stripping() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..iterations() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap_or_else(|e| panic!("{e}"));
        let mut appended = 0;
        for _ in 0..rng.below(6) {
            let name = rng.pick(&["authorization", "cookie", PREVIEW_TOKEN_HEADER, "x-other"]);
            let value = match rng.below(4) {
                0 => format!("Bearer {API_KEY_PREFIX}{}", rng.text(2)),
                1 => format!("{}; {PREVIEW_COOKIE}={}; {}", rng.text(2), rng.text(2), rng.text(2)),
                _ => rng.text(5),
            };
            // Values with bytes a header may not carry are refused by the builder, as pingora refuses them.
            if req.append_header(name, value.as_str()).is_ok() {
                appended += 1;
            }
        }
        let drop_all = rng.below(2) == 0;
        // What the edge does: the scan of the request says which headers are there to strip.
        let present = super::headers::Scan::of(&req.headers).strip;
        credentials::strip(&mut req, drop_all, present);
        for v in req.headers.get_all("authorization") {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(!drop_all, "authorization kept: {v}");
            let lower = v.trim().to_ascii_lowercase();
            assert!(
                !(lower.starts_with("bearer ") && v.trim()[7..].trim().starts_with(API_KEY_PREFIX)),
                "API key kept: {v:?}"
            );
        }
        assert!(req.headers.get(PREVIEW_TOKEN_HEADER).is_none());
        for v in req.headers.get_all("cookie") {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(
                v.split(';').all(|c| c.split_once('=').map_or(c, |(k, _)| k).trim() != PREVIEW_COOKIE),
                "our cookie kept: {v:?}"
            );
        }
        let _ = appended;

        let q = rng.text(10);
        let path = format!("/p?{q}");
        let stripped = strip_query_param(&path, PREVIEW_TOKEN_QUERY);
        if let Some((_, query)) = stripped.split_once('?') {
            assert!(
                query.split('&').all(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) != PREVIEW_TOKEN_QUERY),
                "{path:?} -> {stripped:?}"
            );
        }
        credentials::fuzz_helpers(&q, &rng.text(6));
    }
}

#[test]
fn origin_rule() {
    let mut rng = Rng(0x5eed_0003);
    let methods =
        [http::Method::GET, http::Method::POST, http::Method::PUT, http::Method::OPTIONS, http::Method::DELETE];
    for _ in 0..iterations() {
        let host = match rng.below(2) {
            0 => rng.text(5),
            _ => format!("{}-sbx.localhost:{}", rng.pick(&["2280", "22222"]), rng.pick(&["4000", "443", "80"])),
        };
        let https = rng.below(2) == 0;
        let method = methods.get(rng.below(methods.len())).cloned().unwrap_or_default();
        let origin = match rng.below(3) {
            0 => rng.text(6),
            1 => format!("{}{}", rng.pick(&["http://", "https://", "HTTP://", ""]), host),
            _ => format!("http://{}", rng.text(4)),
        };
        let upgrade = rng.below(2) == 0;
        let verdict = origin::check(&method, upgrade, Some(origin.as_bytes()), https, &host);
        // A foreign scheme is never the request's own origin.
        let scheme = if https { "https://" } else { "http://" };
        if !origin.to_ascii_lowercase().starts_with(scheme)
            && (upgrade || !matches!(method, http::Method::GET | http::Method::OPTIONS))
        {
            assert!(!verdict, "{origin:?} allowed for {host:?} https={https}");
        }
        assert!(origin::check(&method, upgrade, None, https, &host), "no Origin always passes");
        // The request's own origin passes whenever its host is a real authority.
        if target::host_name(&host).is_ok() {
            assert!(
                origin::check(&method, upgrade, Some(format!("{scheme}{host}").as_bytes()), https, &host),
                "{host:?}"
            );
        }
    }
}
