//! The terminal page: xterm.js and its fit add-on, embedded at build time when `scripts/fetch-xterm` fetched
//! them (see `build.rs`), and the page that opens `/ws`. Without the assets the page says how to get them.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::toolbox::error::ApiError;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/xterm_assets.rs"));
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/xterm.js", get(|| asset(assets::XTERM_JS, "text/javascript")))
        .route("/xterm.css", get(|| asset(assets::XTERM_CSS, "text/css")))
        .route("/xterm-addon-fit.js", get(|| asset(assets::XTERM_FIT_JS, "text/javascript")))
}

async fn asset(body: Option<&'static [u8]>, content_type: &'static str) -> Response {
    match body {
        Some(b) => {
            ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=86400")], b).into_response()
        }
        None => {
            ApiError::not_found("xterm.js is not in this build: run scripts/fetch-xterm, then rebuild sandbar-daemon")
                .into_response()
        }
    }
}

async fn page() -> Html<&'static str> {
    if assets::XTERM_JS.is_none() {
        return Html(MISSING_PAGE);
    }
    Html(PAGE)
}

const MISSING_PAGE: &str = "<!doctype html><meta charset=utf-8><title>sandbar terminal</title>\
<p>This sandbar-daemon was built without xterm.js. Run <code>scripts/fetch-xterm</code> (it takes xterm.js from \
a package registry), then rebuild the daemon with <code>scripts/build-daemon</code>.</p>";

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>sandbar terminal</title>
<link rel="stylesheet" href="xterm.css">
<style>html,body{margin:0;height:100%;background:#000}#term{position:absolute;inset:0}#status{position:absolute;right:8px;top:4px;color:#aaa;font:12px sans-serif;z-index:10}</style>
</head><body><div id="status">connecting</div><div id="term"></div>
<script src="xterm.js"></script><script src="xterm-addon-fit.js"></script>
<script>
"use strict";
const term = new Terminal({cursorBlink: true, convertEol: false, scrollback: 5000});
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
term.open(document.getElementById("term"));
window.term = term;
const status = document.getElementById("status");
const url = new URL("ws" + location.search, location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(url);
function resize() { fit.fit(); if (ws.readyState === 1) ws.send(JSON.stringify({rows: term.rows, cols: term.cols})); }
ws.onopen = () => { status.textContent = ""; resize(); term.focus(); };
ws.onmessage = (e) => { if (typeof e.data === "string") term.write(e.data); };
ws.onclose = (e) => { status.textContent = "disconnected (" + e.code + (e.reason ? ": " + e.reason : "") + ")"; window.sandbarClosed = e.code; };
term.onData((d) => { if (ws.readyState === 1) ws.send(d); });
window.addEventListener("resize", resize);
</script></body></html>
"#;
