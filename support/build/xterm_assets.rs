// The build script of the crates that serve xterm.js (the daemon's web terminal, the API's dashboard), included by
// their `build.rs`: it embeds xterm.js when `scripts/fetch-xterm` has fetched it (it comes from a package registry
// at set-up time and is never committed) as `OUT_DIR/xterm_assets.rs`, three `Option<&[u8]>` constants that are
// `None` without it (the pages then say how to get it).

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=SANDBAR_XTERM_DIR");
    let dir = std::env::var_os("SANDBAR_XTERM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../target/xterm-assets")
    });
    let files = ["xterm.js", "xterm.css", "xterm-addon-fit.js"];
    for f in files {
        println!("cargo::rerun-if-changed={}", dir.join(f).display());
    }
    let present = files.iter().all(|f| dir.join(f).is_file());
    let mut code = String::new();
    for (name, file) in [("XTERM_JS", "xterm.js"), ("XTERM_CSS", "xterm.css"), ("XTERM_FIT_JS", "xterm-addon-fit.js")] {
        if present {
            let path = dir.join(file).canonicalize().unwrap_or_else(|_| dir.join(file));
            code.push_str(&format!("pub const {name}: Option<&[u8]> = Some(include_bytes!({:?}));\n", path));
        } else {
            code.push_str(&format!("pub const {name}: Option<&[u8]> = None;\n"));
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("xterm_assets.rs");
    if let Err(e) = std::fs::write(&out, code) {
        println!("cargo::warning=cannot write {}: {e}", out.display());
    }
}
