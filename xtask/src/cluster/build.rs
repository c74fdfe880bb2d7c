//! Builds the cluster's one binary (`tests/cluster/kube`: etcd and the
//! Kubernetes components) with Go, from the Go module proxy, and caches it
//! outside the checkout keyed by the Kubernetes version and the module's
//! files, so that a second `cluster up` and the next CI run on the same
//! machine skip the build. Go's own build cache (`go env GOCACHE`) is kept
//! too, so a changed `main.go` relinks without recompiling Kubernetes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::KUBERNETES_VERSION;

/// The Go module's directory, relative to the workspace root.
const MODULE_DIR: &str = "tests/cluster/kube";

/// The cached binary for the current module files, building it if needed.
pub(super) fn kube_binary(root: &Path) -> Result<PathBuf> {
    let module = root.join(MODULE_DIR);
    let key = cache_key(&module)?;
    let dir = cache_dir().join(format!("kube-{KUBERNETES_VERSION}-{key:016x}"));
    let binary = dir.join("kube");
    if binary.is_file() {
        eprintln!("xtask cluster: using the cached build {}", binary.display());
        return Ok(binary);
    }
    let go = which_go()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "xtask cluster: building Kubernetes {KUBERNETES_VERSION} and etcd from the Go module proxy \
         (one binary; about 6 min on 2 cores when Go's build cache is cold)"
    );
    let (major, minor) = major_minor(KUBERNETES_VERSION)?;
    let version_pkg = "k8s.io/component-base/version";
    let ldflags = format!(
        "-s -w -X {version_pkg}.gitVersion={KUBERNETES_VERSION} -X {version_pkg}.gitMajor={major} \
         -X {version_pkg}.gitMinor={minor} -X {version_pkg}.gitTreeState=clean"
    );
    let partial = dir.join("kube.partial");
    let status = Command::new(go)
        .args(["build", "-buildvcs=false", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&module)
        // The module's go.mod names its toolchain floor; never download another.
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .status()
        .context("cannot run go")?;
    if !status.success() {
        bail!("go build in {} failed ({status})", module.display());
    }
    fs::rename(&partial, &binary).with_context(|| format!("moving the build to {}", binary.display()))?;
    Ok(binary)
}

/// `$XDG_CACHE_HOME/collector-cluster`, else `~/.cache/collector-cluster`.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("collector-cluster")
}

/// Go from `PATH`, or where its installers put it.
pub(crate) fn which_go() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("go")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/local/go/bin/go"), PathBuf::from("/usr/lib/go/bin/go")])
        .find(|p| p.is_file())
        .context("go is missing: install Go 1.24 or newer with the Go module proxy (the test cluster is built from k8s.io/kubernetes)")
}

fn major_minor(version: &str) -> Result<(&str, &str)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => bail!("cannot read major and minor from {version}"),
    }
}

/// FNV-1a over the module's file names and contents: stable across Rust
/// versions and machines, unlike `DefaultHasher`.
fn cache_key(module: &Path) -> Result<u64> {
    let mut names: Vec<PathBuf> = fs::read_dir(module)
        .with_context(|| format!("reading {}", module.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in names {
        let content = fs::read(&name).with_context(|| format!("reading {}", name.display()))?;
        let file_name = name.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for byte in file_name.bytes().chain([0]).chain(content) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parts() {
        assert_eq!(major_minor("v1.34.4").ok(), Some(("1", "34")));
        assert!(major_minor("v1").is_err());
    }
}
