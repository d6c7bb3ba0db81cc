//! Splitting a byte stream into valid UTF-8 text without cutting a character in two: what a terminal text frame
//! and an asciicast event need.

/// Holds back an incomplete trailing sequence until the next chunk completes it; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let keep = incomplete_tail(&self.pending);
        let cut = self.pending.len() - keep;
        let text = String::from_utf8_lossy(self.pending.get(..cut).unwrap_or_default()).into_owned();
        self.pending.drain(..cut);
        text
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of a trailing UTF-8 sequence that is a valid but incomplete prefix of a character.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3usize.min(b.len()) {
        let Some(&byte) = b.get(b.len() - back) else { return 0 };
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let need = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if back < need { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character() {
        let text = "héllo €uro 𝄞 end";
        let bytes = text.as_bytes();
        for size in 1..8 {
            let mut s = Utf8Stream::default();
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                out.push_str(&s.push(chunk));
            }
            out.push_str(&s.finish());
            assert_eq!(out, text, "chunk size {size}");
        }
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.push(b"\xe2\x82"), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
