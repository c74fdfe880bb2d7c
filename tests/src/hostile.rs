//! Hostile process and cgroup names, as set and as every output of the collector must show
//! them: escaped the one documented way (`collector::escape`), printable UTF-8 as it is, `\`
//! as `\\`, control characters, layout characters (U+202E and the like) and bytes that are not
//! UTF-8 as `\xNN` per byte.

/// A process name as set (`namer` sets it with `PR_SET_NAME`), and as outputs show it.
#[derive(Debug)]
pub struct Name {
    /// The bytes set.
    pub raw: &'static [u8],
    /// The kernel's 15 bytes of it, escaped.
    pub shown: &'static str,
}

/// The names under test.
pub const NAMES: [Name; 9] = [
    Name { raw: b"new\nline", shown: "new\\x0aline" },
    Name { raw: b"q\"uo\\te", shown: "q\"uo\\\\te" },
    Name { raw: b"\x1b[31mred\x1b[0m", shown: "\\x1b[31mred\\x1b[0m" },
    Name { raw: b"bad\xff\xfeutf8", shown: "bad\\xff\\xfeutf8" },
    // Exactly TASK_COMM_LEN - 1 bytes.
    Name { raw: b"fifteen-bytes-x", shown: "fifteen-bytes-x" },
    // 15 bytes of everything at once: tab, quote, backslash, ESC, an invalid byte, é, the C1
    // control NEL (a control character two bytes long), %, braces, CR, DEL.
    Name { raw: b"\t\"\\\x1b\xff\xc3\xa9\xc2\x85%{}\r\x7fz", shown: "\\x09\"\\\\\\x1b\\xffé\\xc2\\x85%{}\\x0d\\x7fz" },
    // The kernel cuts at 15 bytes ...
    Name { raw: b"longer-than-fifteen", shown: "longer-than-fif" },
    // ... even in the middle of a UTF-8 character: its first byte is left, not UTF-8.
    Name { raw: b"fourteen-bytes\xc3\xa9", shown: "fourteen-bytes\\xc3" },
    // A right-to-left override would show `gpj.exe` as `exe.jpg`.
    Name { raw: "rtl\u{202e}gpj.exe".as_bytes(), shown: "rtl\\xe2\\x80\\xaegpj.exe" },
];

/// The mix of everything: [`NAMES`]`[5]`.
pub const MIX: &Name = &NAMES[5];

/// cgroup name parts (valid UTF-8, as `CgroupDir` takes them) and how paths show them. The
/// kernel refuses a newline in a cgroup name.
pub const CGROUP_NAMES: [(&str, &str); 7] = [
    ("sp ace", "sp ace"),
    ("quo\"te", "quo\"te"),
    ("uni-ü-☃", "uni-ü-☃"),
    ("per%cent", "per%cent"),
    ("back\\slash", "back\\\\slash"),
    ("esc\x1b[0m", "esc\\x1b[0m"),
    ("tab\t", "tab\\x09"),
];

/// `bytes` as the hex `namer` takes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
