//! `/proc/self/mountinfo`: where tracefs and the cgroup v2 tree are mounted.

use std::{ffi::OsString, os::unix::ffi::OsStringExt as _, path::PathBuf};

/// The mount point of the first mount of `fstype` in a mountinfo text.
pub fn find_fstype(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let this_type = right.split(' ').next()?;
        let mount_point = left.split(' ').nth(4)?;
        (this_type == fstype).then(|| unescape(mount_point))
    })
}

/// The mount point of the cgroup v1 hierarchy that holds `controller` (e.g. `memory`).
pub fn find_v1_controller(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = right.split(' ');
        let (fstype, _source, options) = (fields.next()?, fields.next()?, fields.next()?);
        let mount_point = left.split(' ').nth(4)?;
        (fstype == "cgroup" && options.split(',').any(|o| o == controller)).then(|| unescape(mount_point))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\012` for a newline).
fn unescape(raw: &str) -> PathBuf {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // At most \377: a larger first digit would not fit in a byte.
        let octal = bytes.get(i + 1..i + 4).filter(|d| d[0] <= b'3' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 23 0:40 / /sys/kernel/my\\040tracing rw - tracefs tracefs rw
";

    #[test]
    fn finds_the_v2_tree_on_a_hybrid_host() {
        assert_eq!(find_fstype(HYBRID, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_fstype(HYBRID, "cgroup"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(find_fstype(HYBRID, "bpf"), None);
    }

    #[test]
    fn finds_a_v1_controller_by_its_super_options() {
        assert_eq!(find_v1_controller(HYBRID, "memory"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(find_v1_controller(HYBRID, "cpu"), None);
    }

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(find_fstype(HYBRID, "tracefs"), Some(PathBuf::from("/sys/kernel/my tracing")));
        assert_eq!(unescape("a\\0"), PathBuf::from("a\\0"));
        assert_eq!(unescape("\\012x"), PathBuf::from("\nx"));
        assert_eq!(unescape("\\777"), PathBuf::from("\\777"));
    }
}
