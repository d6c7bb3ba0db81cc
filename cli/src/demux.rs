//! Splits a session log stream into stdout and stderr: the daemon marks each switch with `\x01\x01\x01` (stdout)
//! or `\x02\x02\x02` (stderr), anywhere in the byte stream and possibly split across frames.

use std::io::Write;

const STDOUT: &[u8] = b"\x01\x01\x01";
const STDERR: &[u8] = b"\x02\x02\x02";

/// Where demultiplexed bytes go.
pub trait Sink {
    fn out(&mut self, bytes: &[u8]);
    fn err(&mut self, bytes: &[u8]);
}

/// This process's stdout and stderr, flushed after every chunk.
#[derive(Debug)]
pub struct Stdio;

pub fn stdio() -> Stdio {
    Stdio
}

/// Copies a followed session-log WebSocket to this process's stdout and stderr until it closes.
pub async fn follow(socket: &mut crate::ws::Ws) -> anyhow::Result<()> {
    follow_into(socket, &mut stdio()).await
}

/// Copies a followed session-log WebSocket into `sink` until it closes.
pub async fn follow_into(socket: &mut crate::ws::Ws, sink: &mut impl Sink) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut d = Demux::default();
    while let Some(msg) = socket.next().await {
        match msg? {
            Message::Binary(b) => d.feed(&b, sink),
            Message::Text(t) => d.feed(t.as_bytes(), sink),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

impl Sink for Stdio {
    fn out(&mut self, bytes: &[u8]) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
    fn err(&mut self, bytes: &[u8]) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(bytes);
        let _ = e.flush();
    }
}

#[derive(Debug, Default)]
pub struct Demux {
    /// `None` before the first marker (bytes there are dropped, as the SDK does), then which stream is current.
    stderr: Option<bool>,
    /// A possible marker prefix held back from the end of the previous chunk.
    pending: Vec<u8>,
}

impl Demux {
    pub fn feed(&mut self, chunk: &[u8], sink: &mut impl Sink) {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            let marker = if rest.starts_with(STDOUT) {
                Some(false)
            } else if rest.starts_with(STDERR) {
                Some(true)
            } else {
                None
            };
            if let Some(to_err) = marker {
                self.emit(&buf[start..i], sink);
                self.stderr = Some(to_err);
                i += 3;
                start = i;
                continue;
            }
            // Hold back a tail that could be the start of a marker split across chunks.
            if rest.len() < 3 && (STDOUT.starts_with(rest) || STDERR.starts_with(rest)) {
                break;
            }
            i += 1;
        }
        self.emit(&buf[start..i], sink);
        self.pending = buf[i..].to_vec();
    }

    fn emit(&self, bytes: &[u8], sink: &mut impl Sink) {
        if bytes.is_empty() {
            return;
        }
        match self.stderr {
            Some(false) => sink.out(bytes),
            Some(true) => sink.err(bytes),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        out: Vec<u8>,
        err: Vec<u8>,
    }
    impl Sink for Collect {
        fn out(&mut self, b: &[u8]) {
            self.out.extend_from_slice(b);
        }
        fn err(&mut self, b: &[u8]) {
            self.err.extend_from_slice(b);
        }
    }

    #[test]
    fn splits_streams_across_chunk_boundaries() {
        let stream = b"junk\x01\x01\x01hello \x02\x02\x02oops\x01\x01\x01world\n";
        for split in 0..stream.len() {
            let mut d = Demux::default();
            let mut c = Collect::default();
            d.feed(&stream[..split], &mut c);
            d.feed(&stream[split..], &mut c);
            assert_eq!(c.out, b"hello world\n", "split at {split}");
            assert_eq!(c.err, b"oops", "split at {split}");
        }
    }
}
