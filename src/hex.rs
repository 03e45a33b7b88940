//! Lowercase hex, written straight into one buffer: Redis keys are built on every token request,
//! and a `format!` per byte would allocate sixteen strings for each.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` to `out` as lowercase hex.
pub(crate) fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    // Sixteen bytes at a time through a stack buffer: a `push` per digit checks the capacity
    // and encodes a `char` each time.
    let mut buf = [0u8; 32];
    for chunk in bytes.chunks(16) {
        for (pair, b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        let digits = &buf[..chunk.len() * 2];
        // Only ASCII digits were written.
        out.push_str(std::str::from_utf8(digits).unwrap_or_default());
    }
}

/// `bytes` as lowercase hex.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_value_is_two_lowercase_digits() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&all), expected);
        let mut out = String::from("k:");
        super::push(&mut out, &[0x0f, 0xa0]);
        assert_eq!(out, "k:0fa0");
    }
}
