//! Headless Chromium (Debian's `chromium`) opens the web terminal page, types into xterm.js the way a person
//! does (DevTools key events into the focused terminal), and the test reads the result
//! from the page's terminal buffer; then the viewport shrinks and `stty size` shows the size the page fitted.
//!
//! The browser reaches the terminal through a signing front ([`signing_front`]): a reverse proxy that signs every
//! request (page, assets, WebSocket) with the daemon token, as the edge proxy does. The terminal takes no token
//! from a browser.
#![cfg(test)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sandbar_testkit::daemon::TestDaemon;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A reverse proxy on 127.0.0.1:0 to `target` that adds a fresh request credential to every request and splices
/// upgraded connections; returns its base URL.
async fn signing_front(target: String, token: String) -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (target, token) = (target.clone(), token.clone());
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let (target, token) = (target.clone(), token.clone());
                async move {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                    let auth = sandbar_support::daemon_auth::sign(&token, req.method().as_str(), &path);
                    req.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
                    let down = hyper::upgrade::on(&mut req);
                    let up = tokio::net::TcpStream::connect(&target).await?;
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
                    tokio::spawn(conn.with_upgrades());
                    let mut resp = sender.send_request(req).await?;
                    if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(async move {
                            if let (Ok(down), Ok(up)) = (down.await, up.await) {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
                            }
                        });
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    format!("http://{addr}")
}

/// Chromium and its whole process group go when the test ends, even on panic.
struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium runs in a process group of its own (its pid). Signal it with killpg: `/usr/bin/kill -KILL -PID`
        // parses a short negative pid such as `-11` as options and ends in kill(-1, SIGKILL), which kills every
        // process the user may signal.
        if let Ok(pgid) = i32::try_from(self.child.id())
            && pgid > 1
        {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launch(url: &str) -> (Browser, String) {
    use std::os::unix::process::CommandExt;
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1000,700",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("headless Chromium is needed: apt-get install chromium (scripts/setup installs it)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("ws://") {
                let _ = tx.send(line[at..].trim().to_owned());
            }
        }
    });
    let browser = Browser { child, _profile: profile };
    let ws = rx.recv_timeout(Duration::from_secs(30)).expect("Chromium did not print its DevTools address");
    (browser, ws)
}

struct Cdp {
    ws: Ws,
    next: u64,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::Text(json!({"id": id, "method": method, "params": params}).to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next()).await.expect("CDP answer");
            if let Some(Ok(Message::Text(t))) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` every 100 ms, `tries` times, until it returns true.
    async fn poll(&mut self, expression: &str, tries: u32) -> bool {
        for _ in 0..tries {
            if self.eval(expression).await == Value::Bool(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Polls `expression` until it returns true (20 s at most).
    async fn wait_for(&mut self, expression: &str, what: &str) {
        if self.poll(expression, 200).await {
            return;
        }
        let screen = self.eval(SCREEN).await;
        panic!("timed out waiting for {what}; terminal shows:\n{}", screen.as_str().unwrap_or_default());
    }

    /// Types `text` key by key, then Enter, into the focused terminal.
    async fn type_line(&mut self, text: &str) {
        self.eval("term.focus()").await;
        for c in text.chars() {
            let key = c.to_string();
            self.call("Input.dispatchKeyEvent", json!({"type": "keyDown", "key": key, "text": key})).await;
            self.call("Input.dispatchKeyEvent", json!({"type": "keyUp", "key": key})).await;
        }
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13});
            if kind == "keyDown" {
                params["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", params).await;
        }
    }
}

/// The terminal's whole buffer as text, one line per row.
const SCREEN: &str = "(() => { const b = term.buffer; const out = []; \
     for (let i = 0; i < b.length; i++) { const l = b.getLine(i); if (l) out.push(l.translateToString(true)); } \
     return out.join('\\n'); })()";

fn screen_has_line(line: &str) -> String {
    format!("{SCREEN}.split('\\n').some(l => l.trim() === {})", json!(line))
}

#[tokio::test]
async fn chromium_types_into_the_web_terminal_and_reads_the_answer() {
    let d = TestDaemon::start();
    let front = signing_front(d.terminal.trim_start_matches("http://").to_owned(), d.token.clone()).await;
    let page = format!("{front}/");
    let (_browser, browser_ws) = launch(&page);
    let port = browser_ws.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_owned();

    // The page target that opened our URL.
    let mut target = None;
    for _ in 0..100 {
        let list: Value =
            reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.unwrap().json().await.unwrap();
        target = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page" && t["url"].as_str().unwrap_or_default().starts_with(&front))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned));
        if target.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ws, _) = tokio_tungstenite::connect_async(target.expect("page target")).await.unwrap();
    let mut cdp = Cdp { ws, next: 0 };

    cdp.wait_for(
        "typeof term === 'object' && document.getElementById('status').textContent === ''",
        "the terminal to connect",
    )
    .await;
    cdp.type_line("echo $((6*7))").await;
    cdp.wait_for(&screen_has_line("42"), "42 on the screen").await;

    // A smaller window: the page refits the terminal and tells the daemon, and the shell sees the new size.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 520, "height": 260, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.eval("window.dispatchEvent(new Event('resize'))").await;
    cdp.wait_for("term.cols < 80", "the terminal to refit").await;
    // What the shell reports must be the size the page shows at that moment. The page may still be refitting
    // when the first `stty size` runs (several resize events arrive), so ask again until the two agree.
    let same = format!("{SCREEN}.split('\\n').some(l => l.trim() === term.rows + ' ' + term.cols)");
    let mut agreed = false;
    for _ in 0..5 {
        cdp.type_line("clear; stty size").await;
        if cdp.poll(&same, 30).await {
            agreed = true;
            break;
        }
    }
    let screen = cdp.eval(SCREEN).await;
    assert!(
        agreed,
        "stty size never matched the page's terminal size; screen:\n{}",
        screen.as_str().unwrap_or_default()
    );
    let size = cdp.eval("term.rows + ' ' + term.cols").await;
    assert_ne!(size, json!("24 80"), "the shell was told about the new size");
}
