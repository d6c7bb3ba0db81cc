//! How the client commands print: `--output text` (the default, for people) or `--output json` (`-o json`, for
//! scripts). JSON is one document on stdout, or one object per line for a stream (`logs -f`); its field names are
//! stable: a sandbox is the API's object as the REST API names its fields (`id`, `name`, `state`, `cpu`, ...,
//! Daytona's names), and the CLI's own objects are described at the command that prints them. Messages and errors
//! always go to stderr, so stdout stays parseable.

use std::io::Write;

use serde_json::Value;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// For people: ids, tables, URLs.
    #[default]
    Text,
    /// For scripts: JSON with stable field names.
    Json,
}

impl Output {
    pub fn is_json(self) -> bool {
        self == Self::Json
    }
}

/// Prints `v` as pretty JSON and a newline on stdout.
pub fn json(v: &Value) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut o, v)?;
    writeln!(o)?;
    o.flush()?;
    Ok(())
}

/// A [`crate::demux::Sink`] that prints each chunk of a stream as one JSON line,
/// `{"stream": "stdout"|"stderr", "data": "..."}`. A UTF-8 character split between chunks is held back until it is
/// whole; bytes that are not UTF-8 become U+FFFD.
#[derive(Debug, Default)]
pub struct JsonLines {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl JsonLines {
    /// The JSON lines for `bytes` appended to `pending`, keeping an incomplete trailing character in `pending`.
    fn take(stream: &str, pending: &mut Vec<u8>, bytes: &[u8]) -> Option<String> {
        pending.extend_from_slice(bytes);
        let whole = match std::str::from_utf8(pending) {
            Ok(_) => pending.len(),
            // An incomplete character at the end (`error_len() == None`) waits for the next chunk.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => pending.len(),
        };
        if whole == 0 {
            return None;
        }
        let rest = pending.split_off(whole);
        let data = std::mem::replace(pending, rest);
        Some(serde_json::json!({"stream": stream, "data": String::from_utf8_lossy(&data)}).to_string())
    }

    fn print(line: Option<String>) {
        if let Some(line) = line {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }
}

impl crate::demux::Sink for JsonLines {
    fn out(&mut self, bytes: &[u8]) {
        Self::print(Self::take("stdout", &mut self.out, bytes));
    }
    fn err(&mut self, bytes: &[u8]) {
        Self::print(Self::take("stderr", &mut self.err, bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: Option<String>) -> Value {
        serde_json::from_str(&line.unwrap()).unwrap()
    }

    #[test]
    fn json_lines_keep_split_characters_whole() {
        let mut pending = Vec::new();
        let e = "é".as_bytes();
        let first = parsed(JsonLines::take("stdout", &mut pending, &[b'a', e[0]]));
        assert_eq!(first, serde_json::json!({"stream": "stdout", "data": "a"}));
        assert_eq!(parsed(JsonLines::take("stdout", &mut pending, &[e[1], b'\n']))["data"], "é\n");
        assert!(pending.is_empty());
        assert_eq!(JsonLines::take("stdout", &mut pending, &e[..1]), None);
        pending.clear();
        assert_eq!(parsed(JsonLines::take("stderr", &mut pending, &[0xff, b'x']))["data"], "\u{fffd}x");
    }
}
