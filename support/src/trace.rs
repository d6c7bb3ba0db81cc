//! W3C Trace Context (`traceparent`): the edge proxy continues a client's trace or starts one, and sends its own
//! span as the parent to the API and the daemon, which write the trace id in their request spans and access lines;
//! the API stores it with the jobs a request queues, so the runner (and through it the daemon) continue the trace.
//! With an OTLP endpoint configured the spans themselves are exported ([`crate::otlp`]).
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
        Some(Self { trace_id: random_id(2)?, span_id: random_id(1)?, sampled: true })
    }

    /// A span of this trace whose parent is this one (what a hop sends on: its own span as the next parent).
    pub fn child(&self) -> Option<Self> {
        Some(Self { trace_id: self.trace_id.clone(), span_id: random_id(1)?, sampled: self.sampled })
    }

    /// The header's value.
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        for part in ["00-", &self.trace_id, "-", &self.span_id, if self.sampled { "-01" } else { "-00" }] {
            out.push_str(part);
        }
        out
    }
}

/// `words` random 64-bit words as lowercase hex, never all zeros (an invalid id). Ids must be unique and random
/// enough for samplers, not secret: they come from a generator per thread (SplitMix64) seeded once from the OS,
/// so the edge, which starts a trace for most requests, makes no system call per id.
fn random_id(words: usize) -> Option<String> {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<Option<u64>> = const { Cell::new(None) };
    }
    STATE.with(|state| {
        let mut x = match state.get() {
            Some(x) => x,
            None => {
                let mut seed = [0u8; 8];
                getrandom::fill(&mut seed).ok()?;
                u64::from_le_bytes(seed)
            }
        };
        let mut out = String::with_capacity(16 * words);
        let mut any = 0;
        for _ in 0..words {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            any |= z;
            crate::token::push_hex(&mut out, &z.to_be_bytes());
        }
        state.set(Some(x));
        if any == 0 {
            // One chance in 2^64 per word: take the next ones.
            return random_id(words);
        }
        Some(out)
    })
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
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let f = TraceParent::fresh().unwrap();
        assert_eq!(TraceParent::parse(&f.header()), Some(f.clone()));
        let g = TraceParent::fresh().unwrap();
        assert!(g.trace_id != f.trace_id && g.span_id != f.span_id, "{f:?} {g:?}");
        let unsampled = TraceParent { sampled: false, ..g };
        assert!(unsampled.header().ends_with("-00"));
    }
}
