// xterm.js, embedded when `scripts/fetch-xterm` fetched it: see the included file.
include!("../support/build/xterm_assets.rs");
