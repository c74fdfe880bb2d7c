//! Escaping of attacker-controlled bytes (process names, cgroup paths).
//!
//! Anyone can name a process `\x1b[2J` or put a newline in a cgroup name.
//! Every output escapes the same way, losslessly: printable UTF-8 stays as it
//! is; a backslash becomes `\\`; control characters and bytes that are not
//! UTF-8 become `\xNN` (one per byte).

use std::fmt::Write as _;

/// The escaped form of `bytes`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The bytes of a NUL-padded C string, up to the first NUL.
pub fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|&b| b == 0).map_or(bytes, |end| &bytes[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
