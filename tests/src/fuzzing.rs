//! The fuzz target of the Dockerfile parsers, shared by the cargo-fuzz crate (`fuzz/`, target `dockerfile`) and
//! the seeded loop in `tests/tests/parsers.rs`: the API's checks (`sandbar_api::domain::dockerfile::check`) and the
//! runner's reading of `FROM` lines, its reference check and its `USER root` rewrite
//! (`sandbar_runner::host::snapshot`). Any text must give an answer or a clear error, never a panic.

use std::collections::HashMap;

use sandbar_runner::host::snapshot::{base_images, root_steps, valid_reference};

pub fn dockerfile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(named) = sandbar_api::domain::dockerfile::check(text) {
        for n in named {
            let _ = valid_reference(&n.image);
        }
    }
    if let Ok(bases) = base_images(text) {
        let users: HashMap<String, String> = bases.iter().map(|b| (b.clone(), "app".to_owned())).collect();
        let rewritten = root_steps(text, &users);
        assert!(rewritten.len() >= text.len(), "the rewrite only adds lines");
    }
}
