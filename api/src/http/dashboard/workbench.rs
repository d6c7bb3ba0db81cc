//! The working parts of one sandbox's page: a terminal, a file browser, the entrypoint's logs, the listening ports
//! with their preview links, and usage charts. The page only lays them out; `api/assets/dashboard/sandbox.js` does
//! the work, through the same URLs an SDK uses: the REST API (`/api/sandbox/{id}/usage`, preview URLs) and the
//! sandbox's toolbox through the proxy (`/toolbox/{id}/process/pty`, `/files`, `/port`, the entrypoint's logs).
//!
//! The toolbox calls carry no credential of their own: the dashboard is served by the proxy too (its `/dashboard`
//! and `/api` paths go to the API), so they are same-origin and the proxy takes the session cookie as their
//! credential (`proxy/src/edge/credentials.rs`; the API's rule is `crate::domain::access::authorize`). Reached on
//! the API's own listener instead, the page says where the proxy's dashboard is.

use super::pages::esc;

/// xterm.js and its fit add-on, embedded by `build.rs` when `scripts/fetch-xterm` fetched them.
pub mod xterm {
    include!(concat!(env!("OUT_DIR"), "/xterm_assets.rs"));
}

/// Whether a request came through the proxy (which sets the request id header, in place of any client copy).
pub fn via_proxy(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(sandbar_proto::api::REQUEST_ID_HEADER)
}

/// The sections, for the sandbox `id` (escaped here); `proxy_url` is the proxy's base URL, for the hint shown when
/// the page was not served through it (`via_proxy` false).
pub fn sections(id: &str, started: bool, via_proxy: bool, proxy_url: &str) -> String {
    let id = esc(id);
    let dashboard = esc(&format!("{}/dashboard/sandboxes/", proxy_url.trim_end_matches('/')));
    let stopped = if started { "" } else { r#"<p class="hint">Start the sandbox to use its terminal and files.</p>"# };
    let no_xterm = if xterm::XTERM_JS.is_some() {
        ""
    } else {
        r#"<p class="error">This sandbar-api was built without xterm.js: run <code>scripts/fetch-xterm</code> and rebuild it.</p>"#
    };
    format!(
        r#"<div id="workbench" data-id="{id}" data-started="{started}" data-via-proxy="{via}">
<p id="workbench-elsewhere" class="hint"{hidden}>The terminal and files work in the dashboard served by the proxy:
<a href="{dashboard}{id}">{dashboard}{id}</a>.</p>{stopped}
<section aria-labelledby="term-h"><h2 id="term-h">Terminal</h2>{no_xterm}
<div class="toolbar"><button type="button" id="term-open">Open terminal</button>
<button type="button" id="term-new">New session</button>
<span id="term-status" role="status" aria-live="polite"></span></div>
<div id="terminal" class="terminal" role="application" aria-label="Terminal of this sandbox"></div></section>
<section aria-labelledby="files-h"><h2 id="files-h">Files</h2>
<form id="files-nav" class="toolbar"><label for="files-path">Folder</label>
<input id="files-path" name="path" spellcheck="false"><button type="submit">Open</button>
<button type="button" id="files-up" aria-label="Parent folder">Up</button></form>
<div id="files-drop" class="drop" tabindex="0" aria-describedby="files-drop-hint"><span id="files-drop-hint">Drop files
here to upload them to this folder, or</span> <label class="button" for="files-upload">choose files</label>
<input id="files-upload" type="file" multiple class="visually-hidden"></div>
<div class="table-wrap"><table id="files"><thead><tr><th scope="col">Name</th><th scope="col">Size</th>
<th scope="col">Modified</th><th scope="col">Actions</th></tr></thead><tbody id="file-rows"></tbody></table></div>
<section id="file-view" aria-labelledby="file-view-name" hidden><h3 id="file-view-name"></h3>
<pre id="file-view-body" tabindex="0"></pre></section></section>
<section aria-labelledby="logs-h"><h2 id="logs-h">Entrypoint logs</h2>
<div class="toolbar"><button type="button" id="logs-follow">Follow</button>
<span id="logs-status" role="status" aria-live="polite"></span></div>
<pre id="entry-logs" class="log" tabindex="0"></pre></section>
<section aria-labelledby="ports-h"><h2 id="ports-h">Listening ports</h2>
<div class="toolbar"><button type="button" id="ports-refresh">Refresh</button></div>
<ul id="ports"></ul></section>
<section aria-labelledby="usage-h"><h2 id="usage-h">Usage, last hour</h2>
<div id="usage" class="charts"><p class="hint">No samples yet.</p></div></section></div>"#,
        started = if started { "true" } else { "false" },
        via = if via_proxy { "true" } else { "false" },
        hidden = if via_proxy { " hidden" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_escape_the_id_and_name_the_proxy() {
        let s = sections("a\"<b", true, true, "https://p.example:4443/");
        assert!(s.contains(r#"data-id="a&quot;&lt;b""#), "{s}");
        assert!(!s.contains("a\"<b"));
        assert!(s.contains("https://p.example:4443/dashboard/sandboxes/a&quot;&lt;b"));
        assert!(!sections("x", false, true, "http://p").contains(r#"data-started="true""#));
        assert!(s.contains(r#"id="workbench-elsewhere" class="hint" hidden"#));
        assert!(!sections("x", true, false, "http://p").contains(r#"class="hint" hidden"#));
    }
}
