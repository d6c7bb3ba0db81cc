//! Fuzzes the proxy's `target::parse`: any Host and path must give a target or an error, never a panic, and a parsed
//! sandbox id is always valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbar_proxy::target::{Target, parse, valid_sandbox_id};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (host, path) = s.split_once('\n').unwrap_or((s, "/"));
    for domain in ["localhost", "example.com"] {
        match parse(host, path, domain) {
            Ok(Target::Toolbox { sandbox_id, rest }) => {
                assert!(valid_sandbox_id(sandbox_id));
                assert!(rest.starts_with('/') || rest.starts_with('?'));
            }
            Ok(Target::Preview { sandbox_id, port, .. }) => {
                assert!(valid_sandbox_id(sandbox_id));
                assert!(port > 0);
            }
            Ok(Target::Api { path: p }) => assert!(p.starts_with("/api") || p.starts_with("/dashboard")),
            Ok(Target::Other) | Err(_) => {}
        }
    }
});
