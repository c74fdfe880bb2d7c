//! A tiny OCI image built from Debian's static busybox, for containers in tests.
//!
//! No registry is reachable from test machines, so the image is assembled here
//! (one uncompressed rootfs layer with `/bin/busybox` and its applet links) and
//! imported into a private containerd with `ctr`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

/// The busybox binary the image is made from (Debian `busybox-static`).
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// The image name as CRI reports and resolves it.
pub const BUSYBOX_IMAGE: &str = "docker.io/local/busybox:1";

/// Name `ctr` gives the image on import, before it is tagged as [`BUSYBOX_IMAGE`].
const IMPORT_BASE_NAME: &str = "local/busybox";
/// The `org.opencontainers.image.ref.name` the index carries; `ctr` appends it to the base name.
const IMPORT_REF: &str = "1";

/// Bump when the layout of the built tarball changes, so stale caches are not reused.
const FORMAT_VERSION: u32 = 1;

/// Applets linked to busybox in `/bin`; enough for shells, sleeps, OOM and signal tests.
const APPLETS: &[&str] = &[
    "sh", "ash", "sleep", "dd", "kill", "true", "false", "cat", "echo", "ls", "ps", "head", "tail", "yes", "env", "id",
    "touch", "mkdir", "rm", "grep", "wc", "date", "printf", "test", "[", "exec", "trap", "usleep", "timeout", "nproc",
    "pidof", "killall", "seq", "tr",
];

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Path of an OCI image-layout tarball of busybox, built on first use and cached.
///
/// The cache lives in the system temp dir and is keyed by the busybox binary's
/// size and mtime, so a busybox upgrade rebuilds it.
pub fn busybox_oci_tar() -> Result<PathBuf> {
    let meta = fs::metadata(BUSYBOX_BINARY)
        .with_context(|| format!("{BUSYBOX_BINARY} missing: install Debian's busybox-static (cargo xtask setup)"))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join("collector-tests-cache");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("busybox-oci-v{FORMAT_VERSION}-{}-{mtime}-{}.tar", meta.len(), meta.ino()));
    if path.is_file() {
        return Ok(path);
    }
    let busybox = fs::read(BUSYBOX_BINARY).with_context(|| format!("reading {BUSYBOX_BINARY}"))?;
    let tarball = oci_layout_tar(&busybox)?;
    // Parallel tests may build at once: write privately, then rename atomically.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".busybox-{}-{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&tarball).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

/// Imports the busybox image into the `k8s.io` namespace of the containerd at `address`
/// and names it [`BUSYBOX_IMAGE`].
///
/// CRI learns of the image asynchronously; callers wait for `ImageStatus` to find it.
pub fn import_busybox(address: &Path) -> Result<()> {
    let tarball = busybox_oci_tar()?;
    let imported = format!("{IMPORT_BASE_NAME}:{IMPORT_REF}");
    ctr(
        address,
        &["image".as_ref(), "import".as_ref(), "--base-name".as_ref(), IMPORT_BASE_NAME.as_ref(), tarball.as_os_str()],
    )?;
    ctr(address, &["image".as_ref(), "tag".as_ref(), "--force".as_ref(), imported.as_ref(), BUSYBOX_IMAGE.as_ref()])
}

fn ctr(address: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(address)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .context("running ctr (Debian package containerd)")?;
    if !out.status.success() {
        bail!("ctr {:?} failed ({}): {}", args, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The uncompressed rootfs layer: busybox, its applet links and the usual mount points.
fn rootfs_layer(busybox: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox)?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (name, content) in [("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")] {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        b.append_data(&mut h, name, content.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The OCI image layout (oci-layout, index.json, blobs) as one tarball for `ctr image import`.
fn oci_layout_tar(busybox: &[u8]) -> Result<Vec<u8>> {
    let layer = rootfs_layer(busybox)?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    // The image's own command keeps the pod sandbox alive: the same image serves as the
    // "pause" image, and CRI refuses containers in a sandbox whose process has exited.
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sleep", "2147483647"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len() }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": IMPORT_REF },
        }],
    });
    let index = serde_json::to_vec(&index)?;

    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| -> Result<()> {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for blob in [&layer, &config, &manifest] {
        add(&format!("blobs/sha256/{}", sha256_hex(blob)), blob)?;
    }
    Ok(b.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_holds_busybox_and_applet_links() {
        let layer = rootfs_layer(b"fake busybox").unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut links = Vec::new();
        let mut busybox_len = None;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
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
        for applet in ["bin/sh", "bin/sleep", "bin/dd", "bin/kill", "bin/true"] {
            assert!(links.iter().any(|l| l == applet), "{applet} missing");
        }
    }

    #[test]
    fn layout_blobs_match_their_digests() {
        let tarball = oci_layout_tar(b"fake busybox").unwrap();
        let mut archive = tar::Archive::new(tarball.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(&data), hex);
            }
            names.push(path);
        }
        assert_eq!(names[..2], ["oci-layout", "index.json"]);
        assert_eq!(names.len(), 5);
    }
}
