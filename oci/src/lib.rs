//! Deterministic OCI image-layout tarballs, built without a container engine.
//!
//! An [`Image`] is one uncompressed layer (directories, regular files and
//! symlinks), an image [`Config`] and the `org.opencontainers.image.ref.name`
//! annotation it is imported under. [`Image::tar`] gives the [image layout]
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) as one tarball, the form
//! `ctr image import` reads.
//!
//! The output depends on nothing but the input: every tar entry is owned by
//! 0:0 with mtime 0, the layer's entries are sorted by path (parents first)
//! whatever order they were given in, and no creation time is recorded.
//!
//! [`ctr::import`] puts such a tarball into a containerd; [`busybox`] is the
//! small image that tests and test clusters run.
//!
//! [image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

pub mod busybox;
pub mod ctr;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// The annotation that names an image in `index.json`; `ctr image import --base-name B` names it `B:<ref name>`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Media type of the layout's `index.json`.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the image manifest blob.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config blob.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the (uncompressed) layer blob.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Mode of a directory that no entry names but that holds one.
const IMPLIED_DIR_MODE: u32 = 0o755;
const LAYOUT_FILE_MODE: u32 = 0o644;
const LAYOUT_DIR_MODE: u32 = 0o755;

/// Why an image could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer path is empty, or has an empty, `.`, `..` or NUL-holding component.
    #[error("layer path {path:?} is not a plain path below the image root")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// Two layer entries have the same path (`/a` and `a` are the same).
    #[error("layer path {path:?} is given twice")]
    DuplicatePath {
        /// The second path as given.
        path: String,
    },
    /// A layer entry lies below a file or symlink.
    #[error("layer path {path} is below {parent}, which is not a directory")]
    NotADirectory {
        /// The entry, absolute.
        path: String,
        /// Its ancestor that is a file or symlink, absolute.
        parent: String,
    },
    /// A mode has bits beyond the permission bits (`0o7777`).
    #[error("mode {mode:#o} of layer path {path:?} has bits beyond 0o7777")]
    InvalidMode {
        /// The path as given.
        path: String,
        /// The mode as given.
        mode: u32,
    },
    /// A symlink's target is empty or holds a NUL.
    #[error("symlink {path:?} has an invalid target {target:?}")]
    InvalidSymlink {
        /// The symlink's path as given.
        path: String,
        /// Its target as given.
        target: String,
    },
    /// The ref name does not follow the OCI grammar (`0.1.0`, `latest`, `local/app:1`).
    #[error("{name:?} is not a valid org.opencontainers.image.ref.name")]
    InvalidRefName {
        /// The ref name as given.
        name: String,
    },
    /// Writing a tar archive failed.
    #[error("cannot write the {what} tar archive")]
    Tar {
        /// `layer` or `image layout`.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Encoding a JSON document failed.
    #[error("cannot encode the image {what} as JSON")]
    Encode {
        /// `config`, `manifest` or `index`.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Reading an image-layout tarball failed.
    #[error("cannot read the image layout tarball")]
    Read(#[source] io::Error),
    /// The tarball's `index.json` is not JSON.
    #[error("the image layout's index.json is not valid JSON")]
    Index(#[source] serde_json::Error),
    /// The tarball has no `index.json`.
    #[error("the tarball has no index.json: it is not an OCI image layout")]
    NoIndex,
    /// A file operation failed.
    #[error("cannot {action} {}", path.display())]
    File {
        /// `open`, `create`, `write`, ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The busybox binary is missing or unreadable.
    #[error("cannot read {}: install Debian's busybox-static (`cargo xtask setup --tests`)", path.display())]
    Busybox {
        /// Where it should be ([`busybox::BINARY`]).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image-layout tarball at `path` could not be read.
    #[error("cannot read the image layout {}", path.display())]
    Layout {
        /// The tarball.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<Self>,
    },
    /// An image-layout tarball to import names no image or several.
    #[error("{} names {} images ({refs:?}); it should name one", path.display(), refs.len())]
    RefCount {
        /// The tarball.
        path: PathBuf,
        /// The ref names in its `index.json`.
        refs: Vec<String>,
    },
    /// `ctr` could not be started.
    #[error("cannot run `{command}` (Debian package containerd)")]
    CtrSpawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `ctr` ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Ctr {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// One entry of the layer. Paths are absolute (`/usr/bin/app`) or relative to
/// the image root (`usr/bin/app`), with no empty, `.` or `..` components.
/// Directories that hold an entry but are not given themselves are added with
/// mode `0o755`. Every entry is owned by 0:0 and has mtime 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Where it is in the image.
        path: String,
        /// Permission bits, at most `0o7777` (`0o1777` for a sticky `/tmp`).
        mode: u32,
    },
    /// A regular file.
    File {
        /// Where it is in the image.
        path: String,
        /// Permission bits, at most `0o7777`.
        mode: u32,
        /// Its content.
        data: Vec<u8>,
    },
    /// A symbolic link (mode `0o777`).
    Symlink {
        /// Where it is in the image.
        path: String,
        /// What it points to, absolute or relative to its directory, as stored.
        target: String,
    },
}

impl Entry {
    /// A directory.
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self::Dir { path: path.into(), mode }
    }

    /// A regular file.
    pub fn file(path: impl Into<String>, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        Self::File { path: path.into(), mode, data: data.into() }
    }

    /// A symbolic link.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self::Symlink { path: path.into(), target: target.into() }
    }

    /// The path as given.
    pub fn path(&self) -> &str {
        match self {
            Self::Dir { path, .. } | Self::File { path, .. } | Self::Symlink { path, .. } => path,
        }
    }
}

/// The runtime part of the image config (OCI `config` object). Empty fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// `Entrypoint`: the command a container runs.
    pub entrypoint: Vec<String>,
    /// `Cmd`: its default arguments (or the command, without an entrypoint).
    pub cmd: Vec<String>,
    /// `Env`: `NAME=value` entries.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`: `uid[:gid]` or names from the image's `/etc/passwd`.
    pub user: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// An image of one layer, for one platform (`linux` and [`Image::architecture`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The layer's entries, in any order.
    pub entries: Vec<Entry>,
    /// The image config.
    pub config: Config,
    /// The `org.opencontainers.image.ref.name` of the image in `index.json`: a tag such as `0.1.0`.
    pub ref_name: String,
    /// Annotations of the manifest, also put on its descriptor in `index.json`.
    pub annotations: BTreeMap<String, String>,
    /// The OCI (Go) architecture name: `amd64`, `arm64`, ...
    pub architecture: String,
}

impl Image {
    /// An empty image named `ref_name` for [`host_architecture`].
    pub fn new(ref_name: impl Into<String>) -> Self {
        Self {
            entries: Vec::new(),
            config: Config::default(),
            ref_name: ref_name.into(),
            annotations: BTreeMap::new(),
            architecture: host_architecture().to_owned(),
        }
    }

    /// The layer: an uncompressed tar of the entries, sorted by path, parents first.
    pub fn layer(&self) -> Result<Vec<u8>, Error> {
        let tar_error = |source| Error::Tar { what: "layer", source };
        let mut builder = tar::Builder::new(Vec::new());
        for (components, node) in self.tree()? {
            let name = components.join("/");
            match node {
                Node::Dir(mode) => {
                    let mut h = header(tar::EntryType::Directory, mode, 0);
                    builder.append_data(&mut h, format!("{name}/"), io::empty())
                }
                Node::File(mode, data) => {
                    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
                    builder.append_data(&mut h, name, data)
                }
                Node::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    builder.append_link(&mut h, name, target)
                }
            }
            .map_err(tar_error)?;
        }
        builder.into_inner().map_err(tar_error)
    }

    /// The image layout as one tarball: `oci-layout`, `index.json`, then the
    /// `blobs/sha256/` directory with the layer, config and manifest blobs.
    pub fn tar(&self) -> Result<Vec<u8>, Error> {
        self.write_to(Vec::new())
    }

    /// Writes [`Image::tar`] to `out`, and gives `out` back.
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, Error> {
        if !valid_ref_name(&self.ref_name) {
            return Err(Error::InvalidRefName { name: self.ref_name.clone() });
        }
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = encode("config", &self.config_json(&layer_digest))?;
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": { "mediaType": MEDIA_TYPE_CONFIG, "digest": digest(&config), "size": config.len() },
            "layers": [{ "mediaType": MEDIA_TYPE_LAYER, "digest": layer_digest, "size": layer.len() }],
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest = encode("manifest", &manifest)?;
        let mut annotations = self.annotations.clone();
        annotations.insert(REF_NAME.to_owned(), self.ref_name.clone());
        let index = encode(
            "index",
            &json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_INDEX,
                "manifests": [{
                    "mediaType": MEDIA_TYPE_MANIFEST,
                    "digest": digest(&manifest),
                    "size": manifest.len(),
                    "platform": { "architecture": self.architecture, "os": "linux" },
                    "annotations": annotations,
                }],
            }),
        )?;

        let tar_error = |source| Error::Tar { what: "image layout", source };
        let mut builder = tar::Builder::new(out);
        let mut file = |name: &str, data: &[u8]| {
            let mut h = header(tar::EntryType::Regular, LAYOUT_FILE_MODE, data.len() as u64);
            builder.append_data(&mut h, name, data).map_err(tar_error)
        };
        file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        file("index.json", &index)?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, LAYOUT_DIR_MODE, 0);
            builder.append_data(&mut h, dir, io::empty()).map_err(tar_error)?;
        }
        for blob in [&layer, &config, &manifest] {
            let mut h = header(tar::EntryType::Regular, LAYOUT_FILE_MODE, blob.len() as u64);
            builder.append_data(&mut h, format!("blobs/sha256/{}", hex(blob)), blob.as_slice()).map_err(tar_error)?;
        }
        builder.into_inner().map_err(tar_error)
    }

    fn config_json(&self, layer_digest: &str) -> Value {
        let c = &self.config;
        let mut config = Map::new();
        if let Some(user) = &c.user {
            config.insert("User".to_owned(), json!(user));
        }
        for (key, list) in [("Env", &c.env), ("Entrypoint", &c.entrypoint), ("Cmd", &c.cmd)] {
            if !list.is_empty() {
                config.insert(key.to_owned(), json!(list));
            }
        }
        if let Some(dir) = &c.working_dir {
            config.insert("WorkingDir".to_owned(), json!(dir));
        }
        if !c.labels.is_empty() {
            config.insert("Labels".to_owned(), json!(c.labels));
        }
        json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        })
    }

    /// The entries by path components (so parents sort first), with the implied parent directories.
    fn tree(&self) -> Result<BTreeMap<Vec<&str>, Node<'_>>, Error> {
        let mut tree = BTreeMap::new();
        for entry in &self.entries {
            let path = entry.path();
            let node = match entry {
                Entry::Dir { mode, .. } => Node::Dir(checked_mode(path, *mode)?),
                Entry::File { mode, data, .. } => Node::File(checked_mode(path, *mode)?, data),
                Entry::Symlink { target, .. } => {
                    if target.is_empty() || target.contains('\0') {
                        return Err(Error::InvalidSymlink { path: path.to_owned(), target: target.clone() });
                    }
                    Node::Symlink(target)
                }
            };
            if tree.insert(components(path)?, node).is_some() {
                return Err(Error::DuplicatePath { path: path.to_owned() });
            }
        }
        let paths: Vec<Vec<&str>> = tree.keys().cloned().collect();
        for path in &paths {
            for depth in 1..path.len() {
                match tree.entry(path[..depth].to_vec()) {
                    MapEntry::Vacant(slot) => {
                        slot.insert(Node::Dir(IMPLIED_DIR_MODE));
                    }
                    MapEntry::Occupied(parent) if !matches!(parent.get(), Node::Dir(_)) => {
                        return Err(Error::NotADirectory {
                            path: format!("/{}", path.join("/")),
                            parent: format!("/{}", parent.key().join("/")),
                        });
                    }
                    MapEntry::Occupied(_) => {}
                }
            }
        }
        Ok(tree)
    }
}

/// A layer entry, checked.
enum Node<'a> {
    Dir(u32),
    File(u32, &'a [u8]),
    Symlink(&'a str),
}

/// The OCI (Go) name of the architecture this crate was compiled for.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The `org.opencontainers.image.ref.name` of every manifest in an image-layout tarball's `index.json`.
pub fn ref_names(layout: impl Read) -> Result<Vec<String>, Error> {
    let mut archive = tar::Archive::new(layout);
    for entry in archive.entries().map_err(Error::Read)? {
        let entry = entry.map_err(Error::Read)?;
        let path = entry.path().map_err(Error::Read)?;
        if path.strip_prefix(".").unwrap_or(&path) != Path::new("index.json") {
            continue;
        }
        let index: Value = serde_json::from_reader(entry).map_err(Error::Index)?;
        let manifests = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
        return Ok(manifests.iter().filter_map(|m| m["annotations"][REF_NAME].as_str()).map(str::to_owned).collect());
    }
    Err(Error::NoIndex)
}

fn components(path: &str) -> Result<Vec<&str>, Error> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    let parts: Vec<&str> = relative.split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0')) {
        return Err(Error::InvalidPath { path: path.to_owned() });
    }
    Ok(parts)
}

fn checked_mode(path: &str, mode: u32) -> Result<u32, Error> {
    if mode & !0o7777 == 0 { Ok(mode) } else { Err(Error::InvalidMode { path: path.to_owned(), mode }) }
}

/// The OCI grammar: `component ("/" component)*`, a component being
/// alphanumeric runs joined by one of `-._:@+` or by `--`.
fn valid_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|component| {
            let bytes = component.as_bytes();
            let mut i = 0;
            loop {
                let start = i;
                while bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                    i += 1;
                }
                if i == start {
                    return false;
                }
                match bytes.get(i..) {
                    Some([]) | None => return true,
                    Some([b'-', b'-', ..]) => i += 2,
                    Some([b'-' | b'.' | b'_' | b':' | b'@' | b'+', ..]) => i += 1,
                    Some(_) => return false,
                }
            }
        })
}

fn encode(what: &'static str, value: &Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|source| Error::Encode { what, source })
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(data))
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

#[cfg(test)]
mod tests;
