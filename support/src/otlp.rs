//! OpenTelemetry spans over OTLP/HTTP (protobuf), written by hand: a span is a handful of fields, and the
//! `opentelemetry` + `tonic` stack would add minutes to every cold build for them.
//!
//! A process installs one sink at start, or none: with none (no `otlp_endpoint` configured), [`Span::start`] still
//! makes the W3C ids a hop sends on, and records nothing. The sinks:
//! - [`install_exporter`]: finished spans go to a bounded queue (4096; a span that finds it full is dropped and
//!   counted, [`dropped`], never waited for) that one background thread drains, up to 512 spans a request or every
//!   second, as `POST {endpoint}/v1/traces` with `Content-Type: application/x-protobuf` (an
//!   `ExportTraceServiceRequest` whose resource carries `service.name`). A failed POST is logged and its spans are
//!   lost (tracing must never hold a request up). [`flush`] sends what is queued; services call it when they stop.
//! - [`install_buffer`]: finished spans wait in memory (the newest [`BUFFER_SPANS`] at most) until
//!   [`take_buffered`] hands them over, already encoded. The daemon uses it: a sandbox cannot reach the host, so
//!   its runner collects the daemon's spans (`POST /trace/spans`) and passes them on with [`forward`].
//!
//! Only `http://` endpoints: the collector is the operator's, on the host or its network (TLS would need a
//! client this crate, which the static daemon links, does not carry).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::trace::TraceParent;

/// The instrumentation scope every sandbar span is recorded under.
pub const SCOPE: &str = "sandbar";
/// Spans the export queue holds before new ones are dropped.
pub const QUEUE_SPANS: usize = 4096;
/// Spans a buffer ([`install_buffer`]) keeps; older ones are dropped first.
pub const BUFFER_SPANS: usize = 256;
/// Spans in one export request.
const BATCH_SPANS: usize = 512;
/// How long a span waits in the exporter for others to share its request.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// The largest encoded request [`forward`] passes on (another process's spans).
pub const MAX_FORWARD_BYTES: usize = 1 << 20;

/// OTLP's span kinds (the ones sandbar uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Consumer = 5,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(String, String)>,
    /// Set: the span's status is ERROR with this message.
    pub error: Option<String>,
}

/// An `http://host[:port][/prefix]` OTLP/HTTP endpoint; spans go to `{prefix}/v1/traces` (port 4318 if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = value
            .strip_prefix("http://")
            .ok_or_else(|| format!("{value:?} is not an http:// URL (OTLP/HTTP without TLS: http://host:port)"))?;
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("{value:?}: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ', '?', '#']) {
            return Err(format!("{value:?} has no usable host"));
        }
        let port = match port {
            None => 4318,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{value:?}: bad port"))?,
        };
        let prefix = prefix.trim_end_matches('/');
        if prefix.contains(['?', '#', ' ']) {
            return Err(format!("{value:?}: no query or fragment, please"));
        }
        let path = if prefix.is_empty() { "/v1/traces".to_owned() } else { format!("/{prefix}/v1/traces") };
        Ok(Self { host: host.to_owned(), port, path })
    }
}

enum Sink {
    Export { tx: mpsc::SyncSender<Msg> },
    Buffer { spans: Mutex<VecDeque<SpanData>> },
}

enum Msg {
    Span(SpanData),
    /// A whole request another process encoded.
    Raw(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

static SINK: OnceLock<(Sink, String)> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether spans are recorded in this process.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Spans dropped because the queue or buffer was full, or an export failed.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Spans (of this process or forwarded) the collector accepted.
pub fn exported() -> u64 {
    EXPORTED.load(Ordering::Relaxed)
}

/// Exports this process's spans, as `service` (`service.name`), to `endpoint` from a background thread. Once per
/// process; a second call is an error.
pub fn install_exporter(endpoint: Endpoint, service: &str) -> Result<(), String> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_SPANS);
    SINK.set((Sink::Export { tx }, service.to_owned())).map_err(|_| "a span sink is installed already".to_owned())?;
    let service = service.to_owned();
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || export_loop(&endpoint, &service, &rx))
        .map(drop)
        .map_err(|e| format!("cannot start the span export thread: {e}"))
}

/// [`install_exporter`] for a service's `otlp_endpoint` setting; nothing without one.
pub fn install_configured(endpoint: Option<&str>, service: &str) -> Result<(), String> {
    match endpoint {
        Some(e) => install_exporter(Endpoint::parse(e)?, service),
        None => Ok(()),
    }
}

/// Keeps this process's spans, as `service`, for [`take_buffered`]. Once per process.
pub fn install_buffer(service: &str) -> Result<(), String> {
    SINK.set((Sink::Buffer { spans: Mutex::new(VecDeque::new()) }, service.to_owned()))
        .map_err(|_| "a span sink is installed already".to_owned())
}

/// The buffered spans as one encoded `ExportTraceServiceRequest`, and the buffer emptied; `None` without a buffer
/// or spans.
pub fn take_buffered() -> Option<Vec<u8>> {
    let (Sink::Buffer { spans }, service) = SINK.get()? else { return None };
    let taken: Vec<SpanData> = crate::sync::lock(spans).drain(..).collect();
    (!taken.is_empty()).then(|| encode(service, &taken))
}

/// Passes on a request another process encoded (a daemon's spans), through the exporter; `false` (and nothing
/// sent) without one, or when it is empty, too large or the queue is full.
pub fn forward(encoded: Vec<u8>) -> bool {
    let Some((Sink::Export { tx }, _)) = SINK.get() else { return false };
    if encoded.is_empty() || encoded.len() > MAX_FORWARD_BYTES {
        return false;
    }
    tx.try_send(Msg::Raw(encoded)).is_ok()
}

/// Sends what the exporter holds, waiting at most `timeout`.
pub fn flush(timeout: Duration) {
    let Some((Sink::Export { tx }, _)) = SINK.get() else { return };
    let (done, wait) = mpsc::channel();
    if tx.send_timeout_compat(Msg::Flush(done), timeout) {
        let _ = wait.recv_timeout(timeout);
    }
}

trait SendTimeout {
    fn send_timeout_compat(&self, msg: Msg, timeout: Duration) -> bool;
}

impl SendTimeout for mpsc::SyncSender<Msg> {
    /// `SyncSender` has no send with a deadline: retry a full queue until `timeout`.
    fn send_timeout_compat(&self, mut msg: Msg, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_send(msg) {
                Ok(()) => return true,
                Err(mpsc::TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
    }
}

fn record(span: SpanData) {
    let Some((sink, _)) = SINK.get() else { return };
    match sink {
        Sink::Export { tx } => {
            if tx.try_send(Msg::Span(span)).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Sink::Buffer { spans } => {
            let mut spans = crate::sync::lock(spans);
            if spans.len() >= BUFFER_SPANS {
                spans.pop_front();
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            spans.push_back(span);
        }
    }
}

/// What one export round sends.
#[derive(Default)]
struct Batch {
    spans: Vec<SpanData>,
    raws: Vec<Vec<u8>>,
    flushes: Vec<mpsc::Sender<()>>,
}

impl Batch {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Span(s) => self.spans.push(s),
            Msg::Raw(r) => self.raws.push(r),
            Msg::Flush(done) => self.flushes.push(done),
        }
    }
}

fn export_loop(endpoint: &Endpoint, service: &str, rx: &mpsc::Receiver<Msg>) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::default();
        batch.take(first);
        let deadline = Instant::now() + BATCH_WAIT;
        while batch.flushes.is_empty() && batch.spans.len() < BATCH_SPANS {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => batch.take(m),
                Err(_) => break,
            }
        }
        if !batch.flushes.is_empty() {
            // Whatever is queued already goes with the flush.
            while let Ok(m) = rx.try_recv() {
                batch.take(m);
            }
        }
        let Batch { spans, raws, flushes } = batch;
        let mut bodies: Vec<(Vec<u8>, u64)> = Vec::new();
        for chunk in spans.chunks(BATCH_SPANS) {
            bodies.push((encode(service, chunk), chunk.len() as u64));
        }
        bodies.extend(raws.into_iter().map(|r| (r, 0)));
        for (body, count) in bodies {
            match post(endpoint, &body) {
                Ok(()) => {
                    EXPORTED.fetch_add(count, Ordering::Relaxed);
                    failing = false;
                }
                Err(e) => {
                    DROPPED.fetch_add(count, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(error = %e, host = %endpoint.host, port = endpoint.port, "cannot export spans");
                    }
                    failing = true;
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// One `POST` over a fresh connection (a request a second at most: no pool needed), within a few seconds.
fn post(endpoint: &Endpoint, body: &[u8]) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let timeout = Duration::from_secs(5);
    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the host has no address".to_owned())?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let host = if endpoint.host.contains(':') { format!("[{}]", endpoint.host) } else { endpoint.host.clone() };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        endpoint.path,
        endpoint.port,
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 4096 {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line.split(' ').nth(1).unwrap_or("");
    if status.starts_with('2') && status.len() == 3 {
        Ok(())
    } else {
        Err(format!("the collector answered {:?}", line.lines().next().unwrap_or("nothing")))
    }
}

/// A span being timed; recorded when it ends (dropped), if a sink is installed and its trace is sampled.
pub struct Span {
    context: TraceParent,
    /// Only while recording: boxed, so a span that records nothing (no exporter) stays small where it is kept.
    data: Option<Box<SpanData>>,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Span {
    /// A span named `name`, the child of `parent` (a new trace without one); `None` only without randomness.
    pub fn start(name: impl Into<String>, kind: Kind, parent: Option<&TraceParent>) -> Option<Self> {
        let context = match parent {
            Some(p) => p.child()?,
            None => TraceParent::fresh()?,
        };
        let record = enabled() && context.sampled;
        let data = record
            .then(|| {
                Some(Box::new(SpanData {
                    trace_id: unhex(&context.trace_id)?,
                    span_id: unhex(&context.span_id)?,
                    parent_span_id: parent.and_then(|p| unhex(&p.span_id)),
                    name: name.into(),
                    kind,
                    start_unix_nanos: now_nanos(),
                    end_unix_nanos: 0,
                    attributes: Vec::new(),
                    error: None,
                }))
            })
            .flatten();
        Some(Self { context, data })
    }

    /// What this span's children name as their parent (and what a hop sends on in `traceparent`).
    pub fn context(&self) -> &TraceParent {
        &self.context
    }

    /// Whether the span will be recorded (a sink is installed and the trace sampled).
    pub fn recording(&self) -> bool {
        self.data.is_some()
    }

    /// Adds an attribute (a string value).
    pub fn attr(&mut self, key: &str, value: impl ToString) {
        if let Some(d) = &mut self.data {
            d.attributes.push((key.to_owned(), value.to_string()));
        }
    }

    /// Marks the span failed.
    pub fn fail(&mut self, message: impl ToString) {
        if let Some(d) = &mut self.data {
            d.error = Some(message.to_string());
        }
    }

    /// Ends the span now (as dropping it does).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut d) = self.data.take() {
            d.end_unix_nanos = now_nanos().max(d.start_unix_nanos);
            record(*d);
        }
    }
}

// --- protobuf (opentelemetry/proto/collector/trace/v1, trace/v1, common/v1, resource/v1) ---

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 { string_value = 1 } }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    message(out, field, |kv| {
        bytes(kv, 1, key.as_bytes());
        message(kv, 2, |any| bytes(any, 1, value.as_bytes()));
    });
}

fn span(out: &mut Vec<u8>, s: &SpanData) {
    bytes(out, 1, &s.trace_id);
    bytes(out, 2, &s.span_id);
    if let Some(p) = &s.parent_span_id {
        bytes(out, 4, p);
    }
    bytes(out, 5, s.name.as_bytes());
    tag(out, 6, 0);
    varint(out, s.kind as u64);
    tag(out, 7, 1);
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    tag(out, 8, 1);
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    for (k, v) in &s.attributes {
        key_value(out, 9, k, v);
    }
    if let Some(e) = &s.error {
        // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }
        message(out, 15, |st| {
            bytes(st, 2, e.as_bytes());
            tag(st, 3, 0);
            varint(st, 2);
        });
    }
}

/// An `ExportTraceServiceRequest` of `spans`, all of one resource named `service`, under scope [`SCOPE`].
pub fn encode(service: &str, spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, 1, |rs| {
        message(rs, 1, |res| key_value(res, 1, "service.name", service));
        message(rs, 2, |ss| {
            message(ss, 1, |scope| bytes(scope, 1, SCOPE.as_bytes()));
            for s in spans {
                message(ss, 2, |sp| span(sp, s));
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf field as the tiny decoder below reads it.
    #[derive(Debug, Clone, PartialEq)]
    enum Val {
        Int(u64),
        Fixed(u64),
        Bytes(Vec<u8>),
    }

    fn read_varint(b: &[u8], i: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*i];
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    fn decode(b: &[u8]) -> Vec<(u32, Val)> {
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            let key = read_varint(b, &mut i);
            let field = (key >> 3) as u32;
            let val = match key & 7 {
                0 => Val::Int(read_varint(b, &mut i)),
                1 => {
                    let v = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
                    i += 8;
                    Val::Fixed(v)
                }
                2 => {
                    let n = read_varint(b, &mut i) as usize;
                    i += n;
                    Val::Bytes(b[i - n..i].to_vec())
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, val));
        }
        out
    }

    fn field(m: &[(u32, Val)], f: u32) -> Vec<Val> {
        m.iter().filter(|(n, _)| *n == f).map(|(_, v)| v.clone()).collect()
    }

    fn sub(m: &[(u32, Val)], f: u32) -> Vec<Vec<(u32, Val)>> {
        field(m, f)
            .into_iter()
            .map(|v| match v {
                Val::Bytes(b) => decode(&b),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn text(m: &[(u32, Val)], f: u32) -> String {
        match field(m, f).first() {
            Some(Val::Bytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// `KeyValue` list as pairs.
    fn attrs(m: &[(u32, Val)], f: u32) -> Vec<(String, String)> {
        sub(m, f).iter().map(|kv| (text(kv, 1), text(&sub(kv, 2)[0], 1))).collect()
    }

    #[test]
    fn encodes_what_the_otlp_schema_says() {
        let spans = vec![
            SpanData {
                trace_id: [0xab; 16],
                span_id: [1, 2, 3, 4, 5, 6, 7, 8],
                parent_span_id: None,
                name: "POST /api/sandbox".into(),
                kind: Kind::Server,
                start_unix_nanos: 1_700_000_000_000_000_000,
                end_unix_nanos: 1_700_000_000_500_000_000,
                attributes: vec![("http.method".into(), "POST".into())],
                error: None,
            },
            SpanData {
                trace_id: [0xab; 16],
                span_id: [9; 8],
                parent_span_id: Some([1, 2, 3, 4, 5, 6, 7, 8]),
                name: "authorize".into(),
                kind: Kind::Internal,
                start_unix_nanos: 300, // a varint-sized value encoded fixed: checks the wire type
                end_unix_nanos: 400,
                attributes: Vec::new(),
                error: Some("no key".into()),
            },
        ];
        let req = decode(&encode("sandbar-api", &spans));
        let resource_spans = sub(&req, 1);
        assert_eq!(resource_spans.len(), 1);
        let rs = &resource_spans[0];
        assert_eq!(attrs(&sub(rs, 1)[0], 1), vec![("service.name".to_owned(), "sandbar-api".to_owned())]);
        let ss = &sub(rs, 2)[0];
        assert_eq!(text(&sub(ss, 1)[0], 1), "sandbar");
        let decoded = sub(ss, 2);
        assert_eq!(decoded.len(), 2);
        let (a, b) = (&decoded[0], &decoded[1]);
        assert_eq!(field(a, 1), vec![Val::Bytes(vec![0xab; 16])]);
        assert_eq!(field(a, 2), vec![Val::Bytes(vec![1, 2, 3, 4, 5, 6, 7, 8])]);
        assert_eq!(field(a, 4), vec![], "a root has no parent");
        assert_eq!(text(a, 5), "POST /api/sandbox");
        assert_eq!(field(a, 6), vec![Val::Int(2)]);
        assert_eq!(field(a, 7), vec![Val::Fixed(1_700_000_000_000_000_000)]);
        assert_eq!(field(a, 8), vec![Val::Fixed(1_700_000_000_500_000_000)]);
        assert_eq!(attrs(a, 9), vec![("http.method".to_owned(), "POST".to_owned())]);
        assert_eq!(field(a, 15), vec![]);
        assert_eq!(field(b, 4), vec![Val::Bytes(vec![1, 2, 3, 4, 5, 6, 7, 8])]);
        assert_eq!(field(b, 6), vec![Val::Int(1)]);
        assert_eq!(field(b, 7), vec![Val::Fixed(300)]);
        let status = &sub(b, 15)[0];
        assert_eq!((text(status, 2), field(status, 3)), ("no key".to_owned(), vec![Val::Int(2)]));
    }

    #[test]
    fn known_bytes_of_a_tiny_request() {
        // ExportTraceServiceRequest{resource_spans{resource{attributes{key:"service.name" value{string_value:"s"}}}
        // scope_spans{scope{name:"sandbar"}}}}, as protoc encodes it.
        let expected: Vec<u8> = [
            &[0x0a, 0x24, 0x0a, 0x15, 0x0a, 0x13, 0x0a, 0x0c][..],
            b"service.name",
            &[0x12, 0x03, 0x0a, 0x01, b's', 0x12, 0x0b, 0x0a, 0x09, 0x0a, 0x07],
            b"sandbar",
        ]
        .concat();
        assert_eq!(encode("s", &[]), expected);
    }

    #[test]
    fn endpoints_parse_or_say_why() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 4318, "/v1/traces"));
        let e = Endpoint::parse("http://collector/otel/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("collector", 4318, "/otel/v1/traces"));
        let e = Endpoint::parse("http://[::1]:9999").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9999));
        for bad in
            ["https://x:4318", "x:4318", "http://:4318", "http://x:0", "http://x:port", "http://u@x", "http://x/a?b"]
        {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spans_without_a_sink_carry_ids_and_record_nothing() {
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let span = Span::start("x", Kind::Internal, Some(&parent)).unwrap();
        assert_eq!(span.context().trace_id, parent.trace_id);
        assert_ne!(span.context().span_id, parent.span_id);
        assert!(!span.recording());
        assert_eq!(take_buffered(), None);
        let root = Span::start("y", Kind::Server, None).unwrap();
        assert_ne!(root.context().trace_id, parent.trace_id);
        assert!(!forward(vec![1, 2, 3]));
    }

    #[test]
    fn hex_ids_decode() {
        assert_eq!(unhex::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(unhex::<2>("0af"), None);
        assert_eq!(unhex::<2>("0afz"), None);
    }
}
