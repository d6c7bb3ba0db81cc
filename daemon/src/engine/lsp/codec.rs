//! The base protocol of LSP over stdio: `Content-Length: N\r\n` headers, a blank line, N bytes of JSON.
//! Bounded on every side, because a misbehaving server must not make the daemon allocate without limit.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Largest message accepted from a language server (a workspace symbol list of a big repository fits easily).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Largest header block; real servers send one or two short lines.
const MAX_HEADER: usize = 8 * 1024;

/// Reads one message body; `Ok(None)` on a clean end of stream between messages.
pub async fn read_message<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut length: Option<usize> = None;
    let mut header_bytes = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *r).take((MAX_HEADER - header_bytes + 1) as u64).read_until(b'\n', &mut line).await?;
        if n == 0 {
            if header_bytes == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a message header"));
        }
        header_bytes += n;
        if header_bytes > MAX_HEADER || !line.ends_with(b"\n") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "message header too long"));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message header is not UTF-8"))?
            .trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("malformed header line {text:?}")));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let v = value
                .trim()
                .parse::<usize>()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "Content-Length is not a number"))?;
            length = Some(v);
        }
    }
    let length = length.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "message without Content-Length"))?;
    if length > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {length} bytes is over the {MAX_MESSAGE}-byte limit"),
        ));
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Frames one JSON body for a server's stdin.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_framed_messages_and_a_clean_end() {
        let mut data = frame(br#"{"a":1}"#);
        data.extend_from_slice(
            b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length: 2\r\n\r\n{}",
        );
        let mut r = tokio::io::BufReader::new(&data[..]);
        assert_eq!(read_message(&mut r).await.unwrap().unwrap(), br#"{"a":1}"#);
        assert_eq!(read_message(&mut r).await.unwrap().unwrap(), b"{}");
        assert!(read_message(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_bad_headers_and_oversized_bodies() {
        for bad in [
            &b"Content-Length: x\r\n\r\n"[..],
            b"garbage\r\n\r\n",
            b"Content-Type: a\r\n\r\n{}",
            b"Content-Length: 999999999999\r\n\r\n",
            b"Content-Length: 10\r\n",
        ] {
            let mut r = tokio::io::BufReader::new(bad);
            assert!(read_message(&mut r).await.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'x'; MAX_HEADER + 10];
        let mut r = tokio::io::BufReader::new(&long[..]);
        assert!(read_message(&mut r).await.is_err());
    }
}
