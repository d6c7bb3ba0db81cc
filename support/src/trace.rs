//! W3C Trace Context (`traceparent`), carried without an exporter: the edge proxy continues a client's trace or
//! starts one, and sends its own span as the parent to the API and the daemon, which write the trace id in their
//! request spans and access lines. An OTLP exporter added later finds the ids already flowing.
//!
//! Only version `00` is understood; anything else that does not parse starts a new trace (the spec's rule for a
//! parent it cannot read). `tracestate` is left as the client sent it.

/// The header.
pub const HEADER: &str = "traceparent";

/// One `traceparent`: a trace id (32 lowercase hex digits), the parent span id (16) and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// `00-{trace id}-{parent id}-{flags}`; all-zero ids and upper case are invalid, as the spec says.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() || !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) {
            return None;
        }
        if flags.len() != 2 || !flags.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self { trace_id: trace_id.to_owned(), span_id: span_id.to_owned(), sampled: flags & 1 == 1 })
    }

    /// A new trace, sampled (`None` only without randomness).
    pub fn fresh() -> Option<Self> {
        Some(Self { trace_id: crate::token::hex(16).ok()?, span_id: crate::token::hex(8).ok()?, sampled: true })
    }

    /// A span of this trace whose parent is this one (what a hop sends on: its own span as the next parent).
    pub fn child(&self) -> Option<Self> {
        Some(Self { trace_id: self.trace_id.clone(), span_id: crate::token::hex(8).ok()?, sampled: self.sampled })
    }

    /// The header's value.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_00_only_and_round_trips() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(v).unwrap();
        assert_eq!((t.trace_id.as_str(), t.span_id.as_str(), t.sampled), (&v[3..35], &v[36..52], true));
        assert_eq!(t.header(), v);
        let c = t.child().unwrap();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let f = TraceParent::fresh().unwrap();
        assert_eq!(TraceParent::parse(&f.header()), Some(f));
    }
}
