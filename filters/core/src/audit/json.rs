//! JSON text written by hand, for the one shape on the request path (an
//! audit record). Strings are escaped as `serde_json` escapes them: `"`,
//! `\` and the control characters, nothing else.

/// Appends `s` as a JSON string. Clean runs (most of every string) are
/// skipped eight bytes at a time and copied whole.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let (mut clean, mut i) = (0, 0);
    while let Some(&b) = bytes.get(i) {
        if let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            && !may_need_escape(u64::from_le_bytes(word))
        {
            i += 8;
            continue;
        }
        i += 1;
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(clean..i - 1).unwrap_or_default());
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let digit = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', digit(b >> 4), digit(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        clean = i;
    }
    out.extend_from_slice(bytes.get(clean..).unwrap_or_default());
    out.push(b'"');
}

/// Whether one of the eight bytes in `word` may be `"`, `\` or a control
/// character: never false for one that is (a borrow can flag a clean byte
/// above a flagged one, which only sends it to the byte-wise check).
fn may_need_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (below_space
        | zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// Appends `key` (`,"name":`) and `value` as a string, if there is one.
pub fn push_field(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(value) = value {
        out.extend_from_slice(key);
        push_str(out, value);
    }
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        push_str(&mut out, s);
        out
    }

    #[test]
    fn strings_are_escaped_byte_for_byte_as_serde_json_escapes_them() {
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("é\u{2028}😀/<>'");
        let shifted: Vec<String> = (0..17)
            .flat_map(|n| {
                ["\"", "\\", "\u{1f}", "\u{0}", "\u{7f}", "é"]
                    .map(|c| format!("{}{c}{}", "x".repeat(n), "y".repeat(9)))
            })
            .collect();
        for s in shifted.iter().map(String::as_str).chain([
            "",
            "plain",
            "\"",
            "\\",
            "a\"b\\c\u{0}d\u{1f}e\u{7f}",
            &every_ascii,
        ]) {
            assert_eq!(
                string(s),
                serde_json::to_vec(s).unwrap(),
                "{s:?} as serde_json writes it"
            );
            let back: String = serde_json::from_slice(&string(s)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn numbers_are_plain_decimal() {
        for n in [0, 7, 10, 429, 1_764_500_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
