//! The VM's whole root file system: one uncompressed cpio (newc) archive that
//! the kernel unpacks into RAM. There is no disk: the 6.1 cloud kernel has no
//! virtio or 9p built in, and everything the tests need fits in memory.
//!
//! Files keep their host paths, so what the test binaries baked in at compile
//! time (`env!("CARGO_BIN_EXE_victim")`, the collector next to `deps/`) and
//! what the dynamic loader looks for are where they expect them.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

#[derive(Debug)]
enum Entry {
    Dir {
        mode: u32,
    },
    /// Copied from a host file (or from a stripped copy of one).
    File {
        source: PathBuf,
        mode: u32,
    },
    Text {
        text: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// What goes into the archive, keyed by absolute path inside the VM.
///
/// The map is ordered by path components, so every directory is written
/// before what it contains, as the kernel's unpacker needs.
#[derive(Debug, Default)]
pub(crate) struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Archive {
    /// The directories and device node every boot needs before `/init` runs.
    pub(crate) fn new() -> Self {
        let mut archive = Self::default();
        for dir in ["/dev", "/proc", "/sys", "/root", "/etc", "/run"] {
            archive.dir(dir, 0o755);
        }
        archive.dir("/tmp", 0o1777);
        // The kernel opens /dev/console for init's stdio before devtmpfs exists.
        archive.insert("/dev/console", Entry::CharDev { major: 5, minor: 1 });
        archive
    }

    /// A directory (and its parents).
    pub(crate) fn dir(&mut self, path: impl AsRef<Path>, mode: u32) {
        self.insert(path, Entry::Dir { mode });
    }

    /// A host file at `path` in the VM, with the host file's permission bits.
    pub(crate) fn file(&mut self, path: impl AsRef<Path>, source: &Path) -> Result<()> {
        let mode = std::fs::metadata(source)
            .with_context(|| format!("cannot read {}", source.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.insert(path, Entry::File { source: source.to_owned(), mode });
        Ok(())
    }

    /// A file made of `text`.
    pub(crate) fn text(&mut self, path: impl AsRef<Path>, text: impl Into<Vec<u8>>, mode: u32) {
        let text = text.into();
        self.insert(path, Entry::Text { text, mode });
    }

    /// A symbolic link at `path` pointing to `target`.
    pub(crate) fn symlink(&mut self, path: impl AsRef<Path>, target: &str) {
        let target = target.to_owned();
        self.insert(path, Entry::Symlink { target });
    }

    /// Whether something already sits at `path`.
    pub(crate) fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.entries.contains_key(path.as_ref())
    }

    fn insert(&mut self, path: impl AsRef<Path>, entry: Entry) {
        let path = path.as_ref();
        let mut parent = PathBuf::from("/");
        if let Some(dirs) = path.parent() {
            for part in dirs.components().filter(|c| matches!(c, Component::Normal(_))) {
                parent.push(part);
                self.entries.entry(parent.clone()).or_insert(Entry::Dir { mode: 0o755 });
            }
        }
        self.entries.insert(path.to_owned(), entry);
    }

    /// Writes the archive to `out`; returns its size in bytes.
    pub(crate) fn write(&self, out: &Path) -> Result<u64> {
        let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut writer = CpioWriter { out: BufWriter::new(file), written: 0, next_ino: 1 };
        for (path, entry) in &self.entries {
            // The newc names are relative: "bin/sh", not "/bin/sh".
            let name = path.to_string_lossy();
            let name = name.trim_start_matches('/');
            if name.is_empty() {
                continue;
            }
            match entry {
                Entry::Dir { mode } => writer.entry(name, S_IFDIR | mode, 0, &[])?,
                Entry::Text { text, mode } => writer.entry(name, S_IFREG | mode, 0, text)?,
                Entry::Symlink { target } => {
                    writer.entry(name, S_IFLNK | 0o777, 0, target.as_bytes())?;
                }
                Entry::CharDev { major, minor } => {
                    writer.entry(name, S_IFCHR | 0o600, rdev(*major, *minor), &[])?;
                }
                Entry::File { source, mode } => {
                    let data = std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
                    writer.entry(name, S_IFREG | mode, 0, &data)?;
                }
            }
        }
        writer.entry("TRAILER!!!", 0, 0, &[])?;
        writer.out.flush().context("cannot write the initramfs")?;
        Ok(writer.written)
    }
}

/// (major, minor) packed for the writer; split again in the header.
const fn rdev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 32) | minor as u64
}

struct CpioWriter {
    out: BufWriter<File>,
    written: u64,
    next_ino: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, rdev: u64, data: &[u8]) -> Result<()> {
        let size = u32::try_from(data.len()).context("a file over 4 GiB cannot go in a cpio")?;
        let name_size = u32::try_from(name.len() + 1).context("name too long")?;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let (rmajor, rminor) = ((rdev >> 32) as u32, (rdev & 0xffff_ffff) as u32);
        let ino = self.next_ino;
        self.next_ino += 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check.
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{rmajor:08x}{rminor:08x}{name_size:08x}{:08x}",
            0, 0, 0, 0, 0, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("cannot write the initramfs")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// newc aligns every header and every file's data to 4 bytes.
    fn pad(&mut self) -> Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..usize::try_from(pad).unwrap_or(0)])
    }
}

/// A copy of `binary` without debug info in `stage`, or the binary itself if
/// `strip` is missing: debug info only makes the archive (in guest RAM) bigger.
pub(crate) fn stripped(binary: &Path, stage: &Path, index: usize) -> PathBuf {
    let out =
        stage.join(format!("{index}-{}", binary.file_name().map_or_else(|| "bin".into(), |n| n.to_string_lossy())));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok { out } else { binary.to_owned() }
}

/// Quotes `s` for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn archive_is_newc_with_parents_first_and_a_trailer() {
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("a.cpio");
        let mut archive = Archive::default();
        archive.text("/a/b/c", "hello", 0o644);
        archive.symlink("/a/l", "/a/b/c");
        let size = archive.write(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(size % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let names: Vec<&str> =
            ["a\0", "a/b\0", "a/b/c\0", "a/l\0", "TRAILER!!!\0"].into_iter().filter(|n| text.contains(n)).collect();
        assert_eq!(names.len(), 5, "{text:?}");
        assert!(text.find("a/b\0") < text.find("a/b/c\0"));
        assert!(text.starts_with("070701"));
        // The file's header: mode 0100644, size 5, name size 6.
        assert!(text.contains("000081a4"), "{text:?}");
        assert!(text.contains("hello"));
    }
}
