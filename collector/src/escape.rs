//! Escaping of attacker-controlled bytes (process names, cgroup paths).
//!
//! Anyone can name a process `\x1b[2J` or put a newline in a cgroup name.
//! Every output escapes the same way, losslessly: printable UTF-8 stays as it
//! is; a backslash becomes `\\`; control characters, the invisible characters
//! that reorder or break lines (bidirectional overrides such as U+202E, U+2028),
//! and bytes that are not UTF-8 become `\xNN` (one per byte).

use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` is escaped: a control character, or one that changes how the
/// text around it is laid out (so a name could disguise what follows it).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The escaped form of `bytes`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    // Nearly every name: printable ASCII without a backslash is its own escaped form, and
    // this runs for every record's name and path.
    if bytes.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
        && let Ok(text) = std::str::from_utf8(bytes)
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if needs_escape(c) => push_hex(&mut out, c),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Text that [`escape_bytes`] already escaped, made safe again in case a
/// character that needs escaping slipped in since; backslashes are left alone
/// so the escaping is not doubled (`\x1b` stays four characters).
pub fn scrub(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            push_hex(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Appends `c` as `\xNN` per UTF-8 byte.
fn push_hex(out: &mut String, c: char) {
    let mut buf = [0; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        let _ = write!(out, "\\x{b:02x}");
    }
}

/// The bytes of a NUL-padded C string, up to the first NUL.
pub fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |end| &bytes[..end])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The inverse of `escape_bytes`, from its documented form: `\\` is a backslash, `\xNN`
    /// one byte, anything else itself. `None` for text `escape_bytes` cannot produce.
    pub(crate) fn unescape(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('\\') {
            out.extend_from_slice(&rest.as_bytes()[..at]);
            let escape = &rest[at..];
            if let Some(after) = escape.strip_prefix("\\\\") {
                out.push(b'\\');
                rest = after;
            } else {
                let hex = escape.strip_prefix("\\x")?.get(..2)?;
                if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &escape[4..];
            }
        }
        out.extend_from_slice(rest.as_bytes());
        Some(out)
    }

    /// Bytes rich in what needs escaping: backslashes, `x`, hex digits, C0 and C1 controls,
    /// DEL, multi-byte UTF-8, truncated and invalid sequences.
    pub(crate) fn nasty_bytes(
        len: impl Into<proptest::collection::SizeRange>,
    ) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        let byte = proptest::prop_oneof![
            2 => proptest::prelude::any::<u8>(),
            1 => proptest::sample::select(b"\\x0aAfF\n\x1b\x7f\0 ".to_vec()),
            1 => proptest::sample::select(vec![0xc2, 0x85, 0x9b, 0xe2, 0x80, 0xa8, 0xf0, 0x9f, 0xa6, 0x80, 0xff]),
        ];
        proptest::collection::vec(byte, len)
    }

    #[test]
    fn escapes_characters_that_reorder_or_break_lines() {
        // U+202E would show `exe.txt` for `txt.exe`; U+2028 starts a new line in some viewers.
        assert_eq!(escape_bytes("a\u{202e}txt.exe".as_bytes()), "a\\xe2\\x80\\xaetxt.exe");
        assert_eq!(escape_bytes("x\u{2028}y\u{2066}".as_bytes()), "x\\xe2\\x80\\xa8y\\xe2\\x81\\xa6");
        assert_eq!(scrub("\\x1b ok \u{200f}"), "\\x1b ok \\xe2\\x80\\x8f");
        assert_eq!(escape_bytes("é🦀".as_bytes()), "é🦀");
    }

    #[test]
    fn keeps_printable_text() {
        assert_eq!(escape_bytes(b"sh"), "sh");
        assert_eq!(escape_bytes("kworker/0:1-évènement".as_bytes()), "kworker/0:1-évènement");
        assert_eq!(escape_bytes(b"a \"quoted\" name"), "a \"quoted\" name");
    }

    #[test]
    fn escapes_controls_backslashes_and_invalid_utf8() {
        assert_eq!(escape_bytes(b"a\nb"), "a\\x0ab");
        assert_eq!(escape_bytes(b"\x1b[2Jx"), "\\x1b[2Jx");
        assert_eq!(escape_bytes(b"a\\x41"), "a\\\\x41");
        assert_eq!(escape_bytes(b"\xff\xfe"), "\\xff\\xfe");
        assert_eq!(escape_bytes("\u{85}".as_bytes()), "\\xc2\\x85");
        assert_eq!(escape_bytes(b"\x7f"), "\\x7f");
    }

    #[test]
    fn cuts_c_strings_at_the_first_nul() {
        assert_eq!(c_str(b"sh\0\0junk"), b"sh");
        assert_eq!(c_str(b"0123456789abcdef"), b"0123456789abcdef");
        assert_eq!(c_str(b"\0"), b"");
    }

    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::{super::*, nasty_bytes, unescape};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Lossless: the escaped form reads back to exactly the original bytes.
            #[test]
            fn escaping_round_trips(bytes in nasty_bytes(0..48)) {
                let escaped = escape_bytes(&bytes);
                prop_assert_eq!(unescape(&escaped), Some(bytes));
            }

            /// Also for arbitrary Unicode text, the common case.
            #[test]
            fn escaping_text_round_trips(text in any::<String>()) {
                let escaped = escape_bytes(text.as_bytes());
                prop_assert_eq!(unescape(&escaped), Some(text.into_bytes()));
            }

            /// The output holds no control character (newline, ESC, C1 controls, DEL) or layout
            /// character (bidirectional overrides, line separators), and text
            /// that needs no escaping is returned unchanged.
            #[test]
            fn output_is_printable_and_clean_text_is_unchanged(bytes in nasty_bytes(0..48)) {
                let escaped = escape_bytes(&bytes);
                prop_assert!(!escaped.chars().any(needs_escape), "{:?}", escaped);
                let clean = std::str::from_utf8(&bytes)
                    .is_ok_and(|text| !text.chars().any(|c| needs_escape(c) || c == '\\'));
                prop_assert_eq!(escaped.as_bytes() == &bytes[..], clean);
            }

            /// `c_str` is the longest NUL-free prefix.
            #[test]
            fn c_str_stops_at_the_first_nul(bytes in vec(prop_oneof![3 => any::<u8>(), 1 => Just(0_u8)], 0..=16)) {
                let cut = c_str(&bytes);
                prop_assert!(!cut.contains(&0));
                prop_assert_eq!(cut, &bytes[..cut.len()]);
                prop_assert!(cut.len() == bytes.len() || bytes[cut.len()] == 0);
            }
        }
    }
}
