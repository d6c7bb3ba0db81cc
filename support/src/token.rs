//! Random tokens from the operating system's generator (`getrandom`). Every credential sandbar makes comes from
//! here: daemon tokens, service tokens, API keys, preview and SSH-access tokens, signed preview URLs.

/// `n` random bytes. `getrandom` fails only when the OS has no entropy source at all; sandbar then refuses to make
/// a credential rather than make a weak one.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, getrandom::Error> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)?;
    Ok(buf)
}

/// `bytes` random bytes as lowercase hex (`2 * bytes` digits).
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    Ok(to_hex(&random_bytes(bytes)?))
}

/// `bytes` random bytes as unpadded URL-safe base64.
pub fn url_safe(bytes: usize) -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(bytes)?))
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends the lowercase hex of `bytes` to `out` (request paths sign and trace with it: no per-digit `push`).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(buf.len() / 2) {
        let mut n = 0;
        for (b, pair) in chunk.iter().zip(buf.chunks_exact_mut(2)) {
            if let [hi, lo] = pair {
                *hi = DIGITS[usize::from(b >> 4)];
                *lo = DIGITS[usize::from(b & 0xf)];
                n += 2;
            }
        }
        // Every byte written is an ASCII hex digit.
        out.push_str(std::str::from_utf8(buf.get(..n).unwrap_or_default()).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_tokens_are_long_random_lowercase_hex() {
        let a = hex(32).unwrap();
        let b = hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn url_safe_tokens_need_no_escaping() {
        let t = url_safe(32).unwrap();
        assert_eq!(t.len(), 43);
        assert!(t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn to_hex_matches_format() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let long: Vec<u8> = (0..=255).collect();
        let expected: String = long.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(to_hex(&long), expected);
    }
}
