//! Splitting a byte stream into valid UTF-8 text without cutting a character in two: what a terminal text frame
//! and an asciicast event need, and what a command's log read back in pieces needs. Pieces concatenated are
//! exactly `String::from_utf8_lossy` of the whole stream, wherever it was cut (tested below).

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

    /// Decodes `data` cut at `cuts` through a stream.
    fn streamed(data: &[u8], cuts: &[usize]) -> String {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            out.push_str(&s.push(&data[from..cut]));
            from = cut;
        }
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn any_split_decodes_like_from_utf8_lossy_of_the_whole() {
        // Valid characters of every length, truncated ones, overlong forms, surrogates, values past U+10FFFF,
        // stray continuation bytes and bytes that never start a character.
        let samples: &[&[u8]] = &[
            "aé€𝄞z".as_bytes(),
            b"\xe2\x82x\xf0\x9f\x98y\xc3",
            b"\xc0\xaf\xe0\x80\xaf\xf0\x80\x80\xaf\xed\xa0\x80\xed\xbf\xbf",
            b"\xf4\x90\x80\x80\xf5\x80\xff\xfe\x80\x80\x80\x80\x80",
            b"\xe2\x82\xe2\x82\xac\xf0\x9f\xf0\x9f\x98\x80\xc3\xc3\xa9",
            b"\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\xe0\x9f\xbf",
        ];
        for data in samples {
            let want = String::from_utf8_lossy(data);
            for a in 0..=data.len() {
                assert_eq!(streamed(data, &[a]), want, "{data:x?} cut at {a}");
                for b in a..=data.len() {
                    assert_eq!(streamed(data, &[a, b]), want, "{data:x?} cut at {a}, {b}");
                }
            }
            let every: Vec<usize> = (1..data.len()).collect();
            assert_eq!(streamed(data, &every), want, "{data:x?} byte by byte");
        }
    }

    #[test]
    fn random_bytes_decode_like_from_utf8_lossy() {
        // A fixed xorshift sequence biased towards the bytes UTF-8 cares about.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const BYTES: &[u8] =
            &[b'a', 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff];
        for _ in 0..2000 {
            let len = (next() % 24) as usize;
            let data: Vec<u8> = (0..len).map(|_| BYTES[(next() % BYTES.len() as u64) as usize]).collect();
            let mut cuts: Vec<usize> = (0..(next() % 4)).map(|_| (next() % (len as u64 + 1)) as usize).collect();
            cuts.sort_unstable();
            assert_eq!(streamed(&data, &cuts), String::from_utf8_lossy(&data), "{data:x?} cut at {cuts:?}");
        }
    }
}
