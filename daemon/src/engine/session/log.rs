//! A command's log: a file of frames `[stream u8][len u32 le][bytes]` (1 = stdout, 2 = stderr), so stdout, stderr
//! and the interleaved output all come from one file, and the state live followers watch (bytes written, exit).
//!
//! Nothing here holds a whole log in memory, however much the command printed: a live [`Follower`] reads at most
//! `FOLLOW_READ` bytes of the file at a time, and a [`LogSnapshot`] (what the whole-log answers and a synchronous
//! session execute return) is read back as [`LogText`], decoded text in pieces of at most `BLOCK` bytes of the
//! file. Frames are parsed as a byte stream ([`Deframer`]), so a frame's length never decides how much is read
//! at once, and UTF-8 is decoded exactly as `String::from_utf8_lossy` would decode the whole text, characters
//! split across pieces (or frames) included.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sandbar_support::sync::lock;
use tokio::sync::watch;

use crate::utf8::Utf8Stream;

/// Stream byte of a log frame: the command's stdout.
pub const STDOUT: u8 = 1;
/// Stream byte of a log frame: the command's stderr.
pub const STDERR: u8 = 2;
/// Bytes of the file a live follower reads at once.
const FOLLOW_READ: u64 = 256 * 1024;
/// Bytes of the file a [`LogText`] reads at once (larger pieces: fewer trips through hyper and the proxy).
const BLOCK: u64 = 256 * 1024;
const HEADER: usize = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LogState {
    len: u64,
    exit: Option<i32>,
}

/// A command's framed output file and the state live followers watch.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    state: watch::Sender<LogState>,
    file: Mutex<Option<Writer>>,
}

#[derive(Debug)]
struct Writer {
    file: std::fs::File,
    /// Bytes of output that could not be written (the disk full, say), and the first error: said at the end of
    /// the log, so a lost part is never silent.
    lost: u64,
    error: Option<String>,
}

impl Log {
    pub(crate) fn create(path: PathBuf) -> std::io::Result<Arc<Self>> {
        let file = std::fs::File::create(&path)?;
        let writer = Writer { file, lost: 0, error: None };
        Ok(Arc::new(Self { path, state: watch::channel(LogState::default()).0, file: Mutex::new(Some(writer)) }))
    }

    pub(crate) fn append(&self, stream: u8, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut guard = lock(&self.file);
        let Some(w) = guard.as_mut() else { return };
        // Callers hand at most one pipe read (32 KiB); a longer slice is cut into frames rather than lying in the
        // length field.
        for part in data.chunks(u32::MAX as usize) {
            let mut frame = Vec::with_capacity(part.len() + HEADER);
            frame.push(stream);
            frame.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
            frame.extend_from_slice(part);
            if let Err(e) = self.write_frame(&mut w.file, &frame) {
                if w.error.is_none() {
                    tracing::warn!(error = %e, "cannot write command log");
                    w.error = Some(e.to_string());
                }
                w.lost += part.len() as u64;
                continue;
            }
            let n = frame.len() as u64;
            self.state.send_modify(|s| s.len += n);
        }
    }

    /// Writes a whole frame or none: a partial one is cut off again, so the frames after it stay readable.
    fn write_frame(&self, file: &mut std::fs::File, frame: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let Err(e) = file.write_all(frame) else { return Ok(()) };
        let len = self.state.borrow().len;
        file.set_len(len)?;
        file.seek(SeekFrom::Start(len))?;
        Err(e)
    }

    pub(crate) fn finish(&self, exit: i32) {
        let writer = lock(&self.file).take();
        if let Some(Writer { mut file, lost, error: Some(error) }) = writer {
            let note = format!("\n[sandbar: {lost} bytes of output were lost: cannot write the log: {error}]\n");
            let mut frame = vec![STDERR];
            frame.extend_from_slice(&u32::try_from(note.len()).unwrap_or(0).to_le_bytes());
            frame.extend_from_slice(note.as_bytes());
            if self.write_frame(&mut file, &frame).is_ok() {
                self.state.send_modify(|s| s.len += frame.len() as u64);
            }
        }
        self.state.send_modify(|s| {
            if s.exit.is_none() {
                s.exit = Some(exit);
            }
        });
    }

    pub(super) fn exit_code(&self) -> Option<i32> {
        self.state.borrow().exit
    }

    pub(super) async fn wait(&self) -> i32 {
        let mut rx = self.state.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().exit {
                return e;
            }
            if rx.changed().await.is_err() {
                return -1;
            }
        }
    }

    /// What the log holds now, to be read back whole (as many times as needed) without holding it in memory.
    /// Output written later is not part of it, so the passes over one snapshot agree with each other.
    pub fn snapshot(&self) -> std::io::Result<LogSnapshot> {
        // The length first: every byte it counts is already in the file when it is opened.
        let len = self.state.borrow().len;
        let file = std::fs::File::open(&self.path)?;
        Ok(LogSnapshot { file: Arc::new(file), len })
    }
}

/// Which of a log's streams a [`LogText`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// stdout and stderr interleaved as written: Daytona's `output`.
    Both,
    Stdout,
    Stderr,
}

impl Streams {
    fn carries(self, stream: u8) -> bool {
        match self {
            Streams::Both => true,
            Streams::Stdout => stream != STDERR,
            Streams::Stderr => stream == STDERR,
        }
    }
}

/// A log as it was at one moment. The file stays open, so a session deleted meanwhile does not cut a read short.
#[derive(Debug, Clone)]
pub struct LogSnapshot {
    file: Arc<std::fs::File>,
    len: u64,
}

impl LogSnapshot {
    /// The text of `streams`, read from the start.
    pub fn text(&self, streams: Streams) -> LogText {
        LogText {
            file: self.file.clone(),
            len: self.len,
            pos: 0,
            streams,
            deframer: Deframer::default(),
            utf8: Utf8Stream::default(),
            done: false,
        }
    }
}

/// One pass over a [`LogSnapshot`]: its streams' bytes decoded as `String::from_utf8_lossy` would decode them
/// all at once, handed out in pieces.
#[derive(Debug)]
pub struct LogText {
    file: Arc<std::fs::File>,
    len: u64,
    pos: u64,
    streams: Streams,
    deframer: Deframer,
    utf8: Utf8Stream,
    done: bool,
}

impl LogText {
    /// The next piece of text (never empty), decoded from at most `BLOCK` bytes of the file (plus at most 3 bytes
    /// of a character the previous piece ended inside); `None` at the end.
    pub async fn next(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if self.pos >= self.len {
                if self.done {
                    return Ok(None);
                }
                self.done = true;
                let rest = self.utf8.finish();
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let (file, pos) = (self.file.clone(), self.pos);
            let n = (self.len - pos).min(BLOCK);
            let block = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
                file.read_exact_at(&mut buf, pos).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            self.pos += n;
            let mut bytes = Vec::with_capacity(block.len());
            let streams = self.streams;
            self.deframer.feed(&block, |stream, payload| {
                if streams.carries(stream) {
                    bytes.extend_from_slice(payload);
                }
            });
            let text = self.utf8.push(&bytes);
            if !text.is_empty() {
                return Ok(Some(text));
            }
        }
    }
}

/// Parses frames from a log read in arbitrary pieces, handing out each frame's payload as it arrives (a frame
/// split across pieces comes out in parts).
#[derive(Debug, Default)]
pub(crate) struct Deframer {
    head: [u8; HEADER],
    have: usize,
    stream: u8,
    left: usize,
}

impl Deframer {
    pub(crate) fn feed(&mut self, mut data: &[u8], mut payload: impl FnMut(u8, &[u8])) {
        while !data.is_empty() {
            if self.left > 0 {
                let (part, rest) = data.split_at(self.left.min(data.len()));
                payload(self.stream, part);
                self.left -= part.len();
                data = rest;
                continue;
            }
            let (part, rest) = data.split_at((HEADER - self.have).min(data.len()));
            if let Some(dst) = self.head.get_mut(self.have..self.have + part.len()) {
                dst.copy_from_slice(part);
            }
            self.have += part.len();
            data = rest;
            if self.have == HEADER {
                let [stream, a, b, c, d] = self.head;
                self.stream = stream;
                self.left = u32::from_le_bytes([a, b, c, d]) as usize;
                self.have = 0;
            }
        }
    }
}

/// Reads a command's log as it grows: what a live follower sends.
#[derive(Debug)]
pub struct Follower {
    log: Arc<Log>,
    rx: watch::Receiver<LogState>,
    offset: u64,
    seen: LogState,
    deframer: Deframer,
}

impl Follower {
    pub fn new(log: Arc<Log>) -> Self {
        let rx = log.state.subscribe();
        Self { log, rx, offset: 0, seen: LogState::default(), deframer: Deframer::default() }
    }

    /// The output written since the last call, as (stream, bytes) in the order written, from at most
    /// `FOLLOW_READ` bytes of the file (a frame longer than that comes out in parts over several calls); empty
    /// when caught up.
    pub async fn read(&mut self) -> std::io::Result<Vec<(u8, Vec<u8>)>> {
        self.seen = *self.rx.borrow_and_update();
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        // A read that ends inside a frame's header yields nothing yet: read on, or the caller would wait for
        // output that is already there.
        while out.is_empty() && self.offset < self.seen.len {
            let (from, to) = (self.offset, self.seen.len.min(self.offset + FOLLOW_READ));
            let path = self.log.path.clone();
            let data = tokio::task::spawn_blocking(move || read_range(&path, from, to))
                .await
                .map_err(std::io::Error::other)??;
            if data.is_empty() {
                return Err(std::io::Error::other("the command log is shorter than what was written to it"));
            }
            self.offset += data.len() as u64;
            self.deframer.feed(&data, |stream, payload| match out.last_mut() {
                Some((s, bytes)) if *s == stream => bytes.extend_from_slice(payload),
                _ => out.push((stream, payload.to_vec())),
            });
        }
        Ok(out)
    }

    /// Whether the command has exited and everything it wrote was read.
    pub fn finished(&self) -> bool {
        self.seen.exit.is_some() && self.offset >= self.seen.len
    }

    /// Waits for more output or the exit; false when the log is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

fn read_range(path: &Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log with frames of both streams, invalid UTF-8 and characters split across frames.
    fn sample(dir: &Path) -> (Arc<Log>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let log = Log::create(dir.join("log")).unwrap();
        let writes: &[(u8, &[u8])] = &[
            (STDOUT, b"plain \"quoted\" \\ back\n\t"),
            (STDERR, b"err \xe2\x82"), // a euro sign cut in two...
            (STDERR, b"\xac done\n"),  // ...and finished in the next frame of its stream
            (STDOUT, b"\xf0\x9f"),     // an emoji cut by a stderr frame: invalid in `output`, valid in `stdout`
            (STDERR, b"\xff\x00\x1f"),
            (STDOUT, b"\x98\x80 \xed\xa0\x80 \xc0\xaf \xe0\x80"),
            (STDOUT, &[b'x'; 70_000]),
            (STDOUT, b"\xf4\x90\x80\x80 end \xe2\x82"),
        ];
        let (mut all, mut out, mut err) = (Vec::new(), Vec::new(), Vec::new());
        for (stream, data) in writes {
            log.append(*stream, data);
            all.extend_from_slice(data);
            if *stream == STDERR { err.extend_from_slice(data) } else { out.extend_from_slice(data) }
        }
        (log, all, out, err)
    }

    async fn collect(mut text: LogText) -> String {
        let mut s = String::new();
        while let Some(piece) = text.next().await.unwrap() {
            assert!(!piece.is_empty());
            s.push_str(&piece);
        }
        s
    }

    #[tokio::test]
    async fn text_passes_decode_like_from_utf8_lossy() {
        let dir = tempfile::tempdir().unwrap();
        let (log, all, out, err) = sample(dir.path());
        let snap = log.snapshot().unwrap();
        assert_eq!(collect(snap.text(Streams::Both)).await, String::from_utf8_lossy(&all));
        assert_eq!(collect(snap.text(Streams::Stdout)).await, String::from_utf8_lossy(&out));
        assert_eq!(collect(snap.text(Streams::Stderr)).await, String::from_utf8_lossy(&err));
        // Written after the snapshot: not part of it.
        log.append(STDOUT, b"later");
        assert_eq!(collect(snap.text(Streams::Stdout)).await, String::from_utf8_lossy(&out));
    }

    #[tokio::test]
    async fn a_snapshot_outlives_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, out, _) = sample(dir.path());
        let snap = log.snapshot().unwrap();
        std::fs::remove_file(dir.path().join("log")).unwrap();
        assert_eq!(collect(snap.text(Streams::Stdout)).await, String::from_utf8_lossy(&out));
    }

    #[test]
    fn deframer_takes_any_split() {
        let mut file = Vec::new();
        for (stream, data) in [(STDOUT, &b"hello"[..]), (STDERR, b"e"), (STDOUT, b"world!")] {
            file.push(stream);
            file.extend_from_slice(&(data.len() as u32).to_le_bytes());
            file.extend_from_slice(data);
        }
        for size in 1..file.len() {
            let mut d = Deframer::default();
            let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
            for piece in file.chunks(size) {
                d.feed(piece, |s, p| match got.last_mut() {
                    Some((last, bytes)) if *last == s => bytes.extend_from_slice(p),
                    _ => got.push((s, p.to_vec())),
                });
            }
            assert_eq!(
                got,
                vec![(STDOUT, b"hello".to_vec()), (STDERR, b"e".to_vec()), (STDOUT, b"world!".to_vec())],
                "piece size {size}"
            );
        }
    }

    #[tokio::test]
    async fn follower_reads_in_bounded_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(dir.path().join("log")).unwrap();
        // Frames as a pipe writes them, far more than one follower read.
        for i in 0..40u8 {
            log.append(if i % 8 == 7 { STDERR } else { STDOUT }, &[b'a' + i % 26; 32 * 1024]);
        }
        log.finish(0);
        let mut f = Follower::new(log);
        let (mut total, mut reads) = (0usize, 0);
        loop {
            let chunks = f.read().await.unwrap();
            if chunks.is_empty() {
                break;
            }
            reads += 1;
            let n: usize = chunks.iter().map(|(_, c)| c.len()).sum();
            assert!(n as u64 <= FOLLOW_READ, "one read returned {n} bytes");
            total += n;
        }
        assert_eq!(total, 40 * 32 * 1024);
        assert!(reads >= 5);
        assert!(f.finished());
    }
}
