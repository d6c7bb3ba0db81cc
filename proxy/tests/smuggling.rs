//! Request smuggling: the proxy in-process in front of a "daemon" that logs every request it receives with its
//! framing, driven by a raw TCP client. For every ambiguous framing (CL.TE, TE.CL, duplicate Content-Length,
//! obs-fold header lines, `Transfer-Encoding: chunked, identity`, an absolute-form target whose host differs from
//! Host...) the proxy either refuses the request with a 4xx or sends exactly one well-framed request: the daemon
//! never sees a request the client hid in a body, nor a framing it would have to guess at. (With both
//! Content-Length and chunked, pingora follows RFC 9112: chunked wins and Content-Length is dropped, so what the
//! client hid is body bytes of the one request, never a request of its own.)

// Setup helpers outside #[test] functions panic on a broken test setup, as the tests do.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_testkit::api_standin::{self, start_with_sandbox};
use sandbar_testkit::proxy::{Proxy, raw};

const KEY: &str = "sbk_smuggling0123456789";

/// One request as the logging daemon parsed it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    /// `length N`, `chunked`, `none`, or why the framing is ambiguous.
    framing: String,
    ambiguous: bool,
    body: Vec<u8>,
}

/// A daemon stand-in that logs every request it receives and answers `200 ok`. It parses strictly: any framing a
/// server could read two ways is logged as ambiguous and the connection closed.
fn logging_daemon() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let l = l.clone();
            std::thread::spawn(move || serve(s, &l));
        }
    });
    (addr, log)
}

fn serve(s: TcpStream, log: &Mutex<Vec<Seen>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut problems = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if h.starts_with(' ') || h.starts_with('\t') {
                problems.push("obs-fold".to_owned());
                continue;
            }
            match h.trim_end().split_once(':') {
                Some((k, v)) if !k.ends_with(' ') => headers.push((k.to_ascii_lowercase(), v.trim().to_owned())),
                _ => problems.push(format!("bad header line {h:?}")),
            }
        }
        let cl: Vec<&String> = headers.iter().filter(|(k, _)| k == "content-length").map(|(_, v)| v).collect();
        let te: Vec<&String> = headers.iter().filter(|(k, _)| k == "transfer-encoding").map(|(_, v)| v).collect();
        if cl.len() > 1 {
            problems.push("duplicate content-length".into());
        }
        if cl.iter().any(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit())) {
            problems.push(format!("content-length {cl:?}"));
        }
        if !cl.is_empty() && !te.is_empty() {
            problems.push("content-length and transfer-encoding".into());
        }
        if te.len() > 1 || te.first().is_some_and(|t| !t.eq_ignore_ascii_case("chunked")) {
            problems.push(format!("transfer-encoding {te:?}"));
        }
        if !problems.is_empty() {
            log.lock().unwrap().push(Seen {
                method,
                target,
                framing: problems.join(", "),
                ambiguous: true,
                body: Vec::new(),
            });
            return;
        }
        let (framing, body) = if !te.is_empty() {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16) else { return };
                if n == 0 {
                    let mut end = String::new();
                    while r.read_line(&mut end).unwrap_or(0) > 0 && end != "\r\n" {
                        end.clear();
                    }
                    break;
                }
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            ("chunked".to_owned(), body)
        } else if let Some(n) = cl.first() {
            let Ok(n) = n.parse::<usize>() else { return };
            let mut body = vec![0; n];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            (format!("length {n}"), body)
        } else {
            ("none".to_owned(), Vec::new())
        };
        log.lock().unwrap().push(Seen { method, target, framing, ambiguous: false, body });
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

struct Setup {
    _api: api_standin::Api,
    _daemon: sandbar_testkit::daemon::TestDaemon,
    proxy: Proxy,
    log: Arc<Mutex<Vec<Seen>>>,
}

async fn setup() -> Setup {
    let (api, api_url, daemon) = start_with_sandbox(KEY).await;
    let (addr, log) = logging_daemon();
    let mut r = api_standin::route("sbx2", "org-a", &daemon);
    r.daemon_addr = Some(addr);
    api.add_route(r);
    let proxy = Proxy::start(&api_url).await;
    Setup { _api: api, _daemon: daemon, proxy, log }
}

/// The matrix: each case is one client request (plus what it tries to hide), sent on its own connection.
fn cases() -> Vec<(&'static str, String)> {
    let head = format!("Host: localhost\r\nAuthorization: Bearer {KEY}");
    let hidden = "GET /toolbox/sbx2/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    vec![
        (
            "CL.TE",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX{hidden}"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
                hidden.len()
            ),
        ),
        (
            "duplicate Content-Length",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{hidden}",
                5 + hidden.len()
            ),
        ),
        (
            "Content-Length list",
            format!("POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ),
        (
            "obs-fold Transfer-Encoding",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\nhello{hidden}"
            ),
        ),
        ("obs-fold header", format!("GET /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nX-Folded: a\r\n b\r\n\r\n")),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{hidden}"
            ),
        ),
        (
            "Transfer-Encoding: identity, chunked",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!("POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{hidden}"),
        ),
        (
            "space before colon",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{hidden}"
            ),
        ),
        (
            "absolute-form with another Host",
            format!(
                "GET http://localhost/toolbox/sbx2/a HTTP/1.1\r\nHost: 3000-sbx1.localhost\r\nAuthorization: Bearer {KEY}\r\n\r\n"
            ),
        ),
        (
            "absolute-form to another sandbox than Host",
            format!(
                "GET http://3000-sbx1.localhost/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\r\n"
            ),
        ),
        (
            "bare LF line endings",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\n{}\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n{hidden}",
                head.replace("\r\n", "\n")
            ),
        ),
        (
            "well-formed chunked (control)",
            format!(
                "POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "well-formed length (control)",
            format!("POST /toolbox/sbx2/a HTTP/1.1\r\n{head}\r\nContent-Length: 5\r\n\r\nhello"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_sees_one_well_framed_request_per_client_request() {
    let s = setup().await;
    let mut table = Vec::new();
    for (name, req) in cases() {
        let before = s.log.lock().unwrap().len();
        let answer = raw(s.proxy.http, &req).await;
        let status = answer.split(' ').nth(1).unwrap_or("closed").to_owned();
        // A follow-up on another connection may take the pooled daemon connection: anything the case left in it
        // would show as an extra request now.
        let follow = raw(
            s.proxy.http,
            &format!("GET /toolbox/sbx2/follow HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(follow.starts_with("HTTP/1.1 200"), "{name}: the follow-up failed: {follow}");
        let seen: Vec<Seen> = s.log.lock().unwrap()[before..].to_vec();
        let (follow_ups, of_case): (Vec<&Seen>, Vec<&Seen>) = seen.iter().partition(|r| r.target == "/follow");
        table.push(format!(
            "{name:40} client got {status:6} daemon saw {:?}",
            of_case.iter().map(|r| (&r.method, &r.target, &r.framing, r.body.len())).collect::<Vec<_>>()
        ));
        assert_eq!(follow_ups.len(), 1, "{name}: {seen:?}");
        assert!(seen.iter().all(|r| !r.ambiguous), "{name}: the daemon got an ambiguous request: {seen:?}");
        assert!(seen.iter().all(|r| !r.target.contains("smuggled")), "{name}: a hidden request got through: {seen:?}");
        if status.starts_with('2') {
            assert_eq!(of_case.len(), 1, "{name}: {seen:?}");
            assert_eq!(of_case[0].target, "/a", "{name}: {seen:?}");
        } else {
            assert!(status.starts_with('4') || status == "closed", "{name}: {answer}");
            assert!(of_case.is_empty(), "{name}: refused, but the daemon saw {seen:?}");
        }
    }
    println!("{}", table.join("\n"));
}
