//! The line protocol between the daemon and a context's Python worker (`driver.py`): one JSON request a line on
//! the worker's stdin, one JSON frame a line on its stdout. Lines are bounded; anything else is a protocol error,
//! after which the worker is killed rather than trusted.

use std::collections::BTreeMap;

use sandbar_proto::toolbox::InterpreterFrame;
use serde::{Deserialize, Serialize};

/// Longest frame line accepted from a worker. The driver sends output in chunks of at most 64 KiB (at most six
/// bytes each once escaped) and truncates error fields to 256 KiB each.
pub const MAX_LINE: usize = 2 << 20;

/// A request to the worker.
#[derive(Debug, Serialize)]
struct Request<'a> {
    code: &'a str,
    envs: &'a BTreeMap<String, String>,
}

/// What a worker says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WorkerFrame {
    /// Once, when the worker is set up.
    Ready,
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    /// The request is over (after its output and its error, if any).
    Done,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// the interpreter sent a line over the size limit
    #[error("the interpreter sent a line over {MAX_LINE} bytes")]
    TooLong,
    /// the interpreter sent a frame that is not valid JSON of a known type
    #[error("the interpreter sent an invalid frame: {0}")]
    Invalid(String),
}

/// The request line for `code`, newline included.
pub fn request_line(code: &str, envs: &BTreeMap<String, String>) -> Vec<u8> {
    // Serializing strings and a string map cannot fail; an empty object is never sent in practice.
    let mut line = serde_json::to_vec(&Request { code, envs }).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Parses one line from the worker (with or without its newline).
pub fn parse_line(line: &[u8]) -> Result<WorkerFrame, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| ProtocolError::Invalid(e.to_string()))
}

impl WorkerFrame {
    /// The frame as the client sees it; `None` for the protocol's own frames.
    pub fn into_client(self) -> Option<InterpreterFrame> {
        match self {
            WorkerFrame::Stdout { text } => Some(InterpreterFrame::Stdout { text }),
            WorkerFrame::Stderr { text } => Some(InterpreterFrame::Stderr { text }),
            WorkerFrame::Error { name, value, traceback } => Some(InterpreterFrame::Error { name, value, traceback }),
            WorkerFrame::Ready | WorkerFrame::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_frame_kind() {
        assert_eq!(parse_line(b"{\"type\":\"ready\"}\n"), Ok(WorkerFrame::Ready));
        assert_eq!(parse_line(b"{\"type\":\"done\"}"), Ok(WorkerFrame::Done));
        assert_eq!(
            parse_line(br#"{"type": "stdout", "text": "hi\n\u00e9"}"#),
            Ok(WorkerFrame::Stdout { text: "hi\né".into() })
        );
        assert_eq!(parse_line(br#"{"type":"stderr","text":""}"#), Ok(WorkerFrame::Stderr { text: String::new() }));
        assert_eq!(
            parse_line(br#"{"type":"error","name":"NameError","value":"x","traceback":"tb"}"#),
            Ok(WorkerFrame::Error { name: "NameError".into(), value: "x".into(), traceback: "tb".into() })
        );
    }

    #[test]
    fn refuses_unknown_malformed_and_oversized_lines() {
        assert!(matches!(parse_line(br#"{"type":"result","text":"1"}"#), Err(ProtocolError::Invalid(_))));
        assert!(matches!(parse_line(br#"{"type":"stdout"}"#), Err(ProtocolError::Invalid(_))));
        assert!(matches!(parse_line(b"hello\n"), Err(ProtocolError::Invalid(_))));
        assert!(matches!(parse_line(b""), Err(ProtocolError::Invalid(_))));
        assert!(matches!(parse_line(br#"{"text":"no type"}"#), Err(ProtocolError::Invalid(_))));
        let long = vec![b' '; MAX_LINE + 1];
        assert_eq!(parse_line(&long), Err(ProtocolError::TooLong));
    }

    #[test]
    fn request_lines_are_one_json_line() {
        let envs = BTreeMap::from([("A".to_owned(), "1\n2".to_owned())]);
        let line = request_line("print('a')\nprint(\"b\")", &envs);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["code"], "print('a')\nprint(\"b\")");
        assert_eq!(v["envs"]["A"], "1\n2");
    }

    #[test]
    fn client_frames_drop_the_protocol_frames() {
        assert_eq!(WorkerFrame::Ready.into_client(), None);
        assert_eq!(WorkerFrame::Done.into_client(), None);
        assert_eq!(
            WorkerFrame::Stdout { text: "a".into() }.into_client(),
            Some(InterpreterFrame::Stdout { text: "a".into() })
        );
    }
}
