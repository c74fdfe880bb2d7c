//! `cargo xtask image`: the collector's OCI image, built without a container engine.
//!
//! One uncompressed layer holds the release binary at `/usr/bin/collector`
//! and exactly the shared libraries `ldd` says it needs, the dynamic loader
//! included, each at the path `ldd` reports (the loader opens that path; a
//! host symlink such as `/lib64/ld-linux-x86-64.so.2` is followed, and the
//! file it leads to is stored under the symlink's path). Besides those, only
//! `/etc/passwd` and `/etc/group` with root, a sticky `/tmp` and empty mount
//! points. The image layout tarball goes to `target/image/collector.tar`.
//!
//! The repository's `Dockerfile` builds the same image with a container
//! engine, by the same rule: keep the two equivalent.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::BufWriter,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use oci_layout::{Config, Entry, Image};
use serde_json::Value;

/// The image's repository: the image is `docker.io/local/collector:<tag>` (see [`name`]).
pub(crate) const REPOSITORY: &str = "docker.io/local/collector";

/// Where the image layout tarball is written, under the workspace root.
pub(crate) const TARBALL: &str = "target/image/collector.tar";

/// The collector binary's path in the image.
const BINARY: &str = "/usr/bin/collector";

/// Empty directories that the DaemonSet mounts host file systems and state on.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/run/collector", 0o755),
    ("/var/lib/collector", 0o755),
];

const PASSWD: &str = "root:x:0:0:root:/:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\n";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image that [`build`] wrote.
#[derive(Debug)]
pub(crate) struct Built {
    /// The image layout tarball.
    pub(crate) tarball: PathBuf,
    /// The image's name: `docker.io/local/collector:<tag>`.
    pub(crate) name: String,
}

/// The image's name for `tag`: `docker.io/local/collector:<tag>`.
/// The default tag is the collector's version (`collector/Cargo.toml`).
pub(crate) fn name(tag: &str) -> String {
    format!("{REPOSITORY}:{tag}")
}

/// Builds the collector in release mode and writes its image, tagged `tag`
/// (default: the collector's version), to [`TARBALL`].
pub(crate) fn build(root: &Path, tag: Option<&str>) -> Result<Built> {
    let version = collector_version(root)?;
    let tag = tag.unwrap_or(&version);
    check_tag(tag)?;
    let binary = crate::build_release(root)?;
    let mut files = vec![(BINARY.to_owned(), binary.clone())];
    for library in crate::command::shared_libraries(&binary)? {
        let path = library.to_str().with_context(|| format!("{} is not UTF-8", library.display()))?;
        files.push((path.to_owned(), library.clone()));
    }
    let mut entries = Vec::new();
    for (path, source) in &files {
        // fs::read and fs::metadata follow symlinks: the content goes under the path asked for.
        let data = fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
        let mode =
            fs::metadata(source).with_context(|| format!("cannot stat {}", source.display()))?.permissions().mode();
        entries.push(Entry::file(path.clone(), mode & 0o7777, data));
    }
    let image = image(entries, &version, tag);

    let tarball = root.join(TARBALL);
    let size = write(&image, &tarball)?;
    eprintln!(
        "xtask image: wrote {} ({:.1} MiB): {}",
        tarball.display(),
        size as f64 / f64::from(1 << 20),
        files.iter().map(|(path, _)| path.as_str()).collect::<Vec<_>>().join(" "),
    );
    Ok(Built { tarball, name: name(tag) })
}

/// Imports the image layout tarball `tar` into the containerd at `address`
/// (its socket) and names it `name`: [`oci_layout::ctr::import`], reported.
pub(crate) fn import(address: &Path, tar: &Path, name: &str) -> Result<()> {
    oci_layout::ctr::import(address, tar, name)?;
    eprintln!("xtask image: imported {} as {name} into {}", tar.display(), address.display());
    Ok(())
}

/// The image: `files` (the binary and its libraries), the accounts, `/tmp`, the mount points, and the config.
fn image(files: Vec<Entry>, version: &str, tag: &str) -> Image {
    let mut image = Image::new(tag);
    image.entries = files;
    image.entries.push(Entry::file("/etc/passwd", 0o644, PASSWD));
    image.entries.push(Entry::file("/etc/group", 0o644, GROUP));
    image.entries.push(Entry::dir("/tmp", 0o1777));
    image.entries.extend(MOUNT_POINTS.iter().map(|&(path, mode)| Entry::dir(path, mode)));
    let labels = BTreeMap::from([
        ("org.opencontainers.image.title".to_owned(), "collector".to_owned()),
        ("org.opencontainers.image.version".to_owned(), version.to_owned()),
    ]);
    image.config = Config {
        entrypoint: vec![BINARY.to_owned()],
        cmd: vec!["run".to_owned()],
        env: vec![PATH_ENV.to_owned()],
        working_dir: Some("/".to_owned()),
        // The daemon runs as uid 0, with every capability dropped but CAP_BPF and
        // CAP_PERFMON (the DaemonSet's securityContext does that; an image cannot).
        user: Some("0:0".to_owned()),
        labels: labels.clone(),
    };
    image.annotations = labels;
    image
}

/// Writes the image layout tarball to `path` (through a temporary file, so a
/// failed run leaves no half tarball); gives its size.
fn write(image: &Image, path: &Path) -> Result<u64> {
    let dir = path.parent().context("the tarball's path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tar.tmp");
    let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let out = image.write_to(BufWriter::new(file)).with_context(|| format!("writing {}", tmp.display()))?;
    let file = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?.len())
}

/// The collector package's version, as cargo reads it from `collector/Cargo.toml`.
fn collector_version(root: &Path) -> Result<String> {
    let output = crate::cargo_command()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let metadata: Value = serde_json::from_slice(&output.stdout).context("cargo metadata printed no JSON")?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "collector")
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .context("cargo metadata lists no collector package with a version")
}

/// A tag as registries and CRI accept it: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<()> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if first_ok && tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        bail!("{tag:?} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_holds_the_files_accounts_tmp_and_mount_points_only() {
        let files = vec![
            Entry::file(BINARY, 0o755, b"elf".as_slice()),
            Entry::file("/lib64/ld-linux-x86-64.so.2", 0o755, b"loader".as_slice()),
        ];
        let image = image(files, "0.1.0", "rollout");
        let layer = image.layer().unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let mut modes = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            modes.insert(path, entry.header().mode().unwrap());
        }
        let expected = [
            ("dev/", 0o755),
            ("etc/", 0o755),
            ("etc/group", 0o644),
            ("etc/passwd", 0o644),
            ("lib64/", 0o755),
            ("lib64/ld-linux-x86-64.so.2", 0o755),
            ("proc/", 0o555),
            ("run/", 0o755),
            ("run/collector/", 0o755),
            ("sys/", 0o555),
            ("tmp/", 0o1777),
            ("usr/", 0o755),
            ("usr/bin/", 0o755),
            ("usr/bin/collector", 0o755),
            ("var/", 0o755),
            ("var/lib/", 0o755),
            ("var/lib/collector/", 0o755),
        ];
        assert_eq!(modes, expected.iter().map(|&(p, m)| (p.to_owned(), m)).collect());

        assert_eq!(image.ref_name, "rollout");
        assert_eq!(image.config.entrypoint, ["/usr/bin/collector"]);
        assert_eq!(image.config.cmd, ["run"]);
        assert_eq!(image.config.user.as_deref(), Some("0:0"));
        assert_eq!(image.config.labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(image.annotations["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(oci_layout::ref_names(image.tar().unwrap().as_slice()).unwrap(), ["rollout"]);
    }

    #[test]
    fn names_and_tags() {
        assert_eq!(name("0.1.0"), "docker.io/local/collector:0.1.0");
        for good in ["0.1.0", "latest", "0.1.0-rollout", "_x"] {
            check_tag(good).unwrap();
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_collector_version_comes_from_its_manifest() {
        let root = crate::workspace_root();
        let manifest = fs::read_to_string(root.join("collector/Cargo.toml")).unwrap();
        let version = collector_version(&root).unwrap();
        assert!(manifest.contains(&format!("version = \"{version}\"")), "{version}");
    }
}
