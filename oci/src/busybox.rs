//! A tiny image built from Debian's static busybox, for test containers and
//! test clusters (where it is also the pod sandbox image).
//!
//! No registry is reachable from test machines, so the image is assembled
//! here: one uncompressed layer with [`BINARY`] and its applet links, the
//! usual mount points and a root account. [`cached_tar`] writes it once per
//! busybox binary; [`crate::ctr::import`] names it [`IMAGE`] in a containerd.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use crate::{Config, Entry, Error, Image};

/// The busybox binary the image is made from (Debian `busybox-static`).
pub const BINARY: &str = "/bin/busybox";

/// The image's name as CRI reports and resolves it.
pub const IMAGE: &str = "docker.io/local/busybox:1";

/// The image's `org.opencontainers.image.ref.name`: the tag of [`IMAGE`].
const REF_NAME: &str = "1";

/// Bump when the built tarball changes, so that stale caches are not reused.
const FORMAT_VERSION: u32 = 2;

/// Where [`cached_tar`] keeps its tarballs, under the system temp dir.
const CACHE_DIR: &str = "collector-tests-cache";

/// Applets linked to busybox in `/bin`: enough for shells, sleeps, OOM and signal tests.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "sleep", "dd", "kill", "true", "false", "cat", "echo", "ls", "ps", "head", "tail", "yes", "env", "id",
    "touch", "mkdir", "rm", "grep", "wc", "date", "printf", "test", "[", "exec", "trap", "usleep", "timeout", "nproc",
    "pidof", "killall", "seq", "tr",
];

/// The image of `binary` (busybox's content): busybox, its applet links, the
/// accounts and the usual mount points. Its ref name is [`IMAGE`]'s tag.
pub fn image(binary: &[u8]) -> Image {
    let mut image = Image::new(REF_NAME);
    for (dir, mode) in [
        ("/bin", 0o755),
        ("/dev", 0o755),
        ("/etc", 0o755),
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/tmp", 0o1777),
        ("/root", 0o700),
    ] {
        image.entries.push(Entry::dir(dir, mode));
    }
    image.entries.push(Entry::file(BINARY, 0o755, binary));
    image.entries.extend(APPLETS.iter().map(|applet| Entry::symlink(format!("/bin/{applet}"), "busybox")));
    for (name, content) in [("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("/etc/group", "root:x:0:\n")] {
        image.entries.push(Entry::file(name, 0o644, content));
    }
    // The image's own command keeps the pod sandbox alive: the same image serves as the
    // "pause" image, and CRI refuses containers in a sandbox whose process has exited.
    image.config = Config {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()],
        cmd: vec!["/bin/sleep".to_owned(), "2147483647".to_owned()],
        working_dir: Some("/".to_owned()),
        ..Config::default()
    };
    image
}

/// Path of the image-layout tarball of [`image`] of [`BINARY`], built on first use and cached.
///
/// The cache lives in the system temp dir and is keyed by the binary's size,
/// mtime and inode, so a busybox upgrade rebuilds it.
pub fn cached_tar() -> Result<PathBuf, Error> {
    let busybox_error = |source| Error::Busybox { path: BINARY.into(), source };
    let meta = fs::metadata(BINARY).map_err(busybox_error)?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(CACHE_DIR);
    fs::create_dir_all(&dir).map_err(|source| Error::File { action: "create", path: dir.clone(), source })?;
    let path = dir.join(format!("busybox-oci-v{FORMAT_VERSION}-{}-{mtime}-{}.tar", meta.len(), meta.ino()));
    if path.is_file() {
        return Ok(path);
    }
    let tarball = image(&fs::read(BINARY).map_err(busybox_error)?).tar()?;
    // Parallel tests may build at once: each writes privately, then renames atomically.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".busybox-{}-{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let written = write_file(&tmp, &tarball).and_then(|()| {
        fs::rename(&tmp, &path).map_err(|source| Error::File { action: "rename to", path: path.clone(), source })
    });
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// Writes `data` to a new file at `path` and syncs it.
fn write_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    let mut file =
        fs::File::create(path).map_err(|source| Error::File { action: "create", path: path.to_owned(), source })?;
    file.write_all(data).and_then(|()| file.sync_all()).map_err(|source| Error::File {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read as _;

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::ref_names;

    fn sha256_hex(data: &[u8]) -> String {
        Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn layer_holds_busybox_and_applet_links() {
        let layer = image(b"fake busybox").layer().unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut links = Vec::new();
        let mut busybox_len = None;
        let mut modes = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            assert_eq!((entry.header().uid().unwrap(), entry.header().mtime().unwrap()), (0, 0), "{path}");
            modes.insert(path.clone(), entry.header().mode().unwrap());
            if path == "bin/busybox" {
                busybox_len = Some(entry.header().size().unwrap());
            }
            if entry.header().entry_type() == tar::EntryType::Symlink {
                let target = entry.link_name().unwrap().unwrap().into_owned();
                assert_eq!(target, PathBuf::from("busybox"), "{path}");
                links.push(path);
            }
        }
        assert_eq!(busybox_len, Some(12));
        assert_eq!(modes.get("tmp/"), Some(&0o1777));
        assert_eq!(modes.get("etc/passwd"), Some(&0o644));
        assert_eq!(modes.get("bin/busybox"), Some(&0o755));
        assert_eq!(links.len(), APPLETS.len());
        for applet in ["bin/sh", "bin/sleep", "bin/dd", "bin/kill", "bin/true"] {
            assert!(links.iter().any(|l| l == applet), "{applet} missing");
        }
    }

    #[test]
    fn layout_blobs_match_their_digests() {
        let tarball = image(b"fake busybox").tar().unwrap();
        let mut archive = tar::Archive::new(tarball.as_slice());
        let mut names = Vec::new();
        let mut blobs = 0;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256_hex(&data), hex, "{path}");
                blobs += 1;
            }
            names.push(path);
        }
        assert_eq!(names[..2], ["oci-layout", "index.json"]);
        assert_eq!(blobs, 3, "layer, config, manifest: {names:?}");
        // `ctr::import` tags `<base name>:<ref name>` as IMAGE: the ref name is IMAGE's tag.
        assert_eq!(ref_names(tarball.as_slice()).unwrap(), [REF_NAME]);
        assert_eq!(IMAGE.rsplit_once(':').map(|(_, tag)| tag), Some(REF_NAME));
    }

    #[test]
    fn the_command_keeps_a_sandbox_alive() {
        let config = image(b"").config;
        assert_eq!(config.cmd, ["/bin/sleep", "2147483647"]);
        assert!(config.entrypoint.is_empty());
    }

    #[test]
    fn cached_tar_is_the_image_of_the_binary() {
        match fs::read(BINARY) {
            Ok(binary) => {
                let path = cached_tar().unwrap();
                assert_eq!(cached_tar().unwrap(), path, "the second call finds the cache");
                assert_eq!(fs::read(&path).unwrap(), image(&binary).tar().unwrap());
            }
            // Without busybox there is nothing to cache, and the error says what to install.
            Err(_) => {
                let err = cached_tar().unwrap_err();
                assert!(matches!(err, Error::Busybox { .. }), "{err}");
                assert!(err.to_string().contains("busybox-static"), "{err}");
            }
        }
    }
}
