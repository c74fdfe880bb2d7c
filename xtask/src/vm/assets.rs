//! The kernel and the emulator, fetched from Debian once and cached.
//!
//! Both come as packages that are downloaded and unpacked, never installed:
//! installing Debian's `qemu-system-x86` would remove the machine's newer
//! `qemu-utils`, and a guest kernel has no business in the host's /boot.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Debian's cloud flavour: few drivers, so it boots fast under emulation.
const FLAVOUR: &str = "-cloud-amd64";
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Where downloads are kept between runs: `COLLECTOR_VM_CACHE`, else
/// `$XDG_CACHE_HOME/collector-vm`, else `~/.cache/collector-vm`.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COLLECTOR_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("collector-vm")
}

/// The kernel modules the VM loads, under the package's `lib/modules/<version>/` (6.12's are
/// xz-compressed, `.ko.xz`), and whether the kernel must have it: loop devices, for the
/// node-health tests' ext4 images (the cloud kernel builds them as a module), and the
/// machine-check injector, where the kernel has machine checks at all (6.12's cloud kernel does,
/// 6.1's does not).
const MODULES: &[(&str, bool)] =
    &[("kernel/drivers/block/loop.ko", true), ("kernel/arch/x86/kernel/cpu/mce/mce-inject.ko", false)];

/// Written beside the modules: which of [`MODULES`] were looked for, so that a cache made
/// before one was added is fetched again.
const MODULES_SOUGHT: &str = "modules/sought";

/// A bootable kernel image.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// The bzImage.
    pub(crate) image: PathBuf,
    /// The Debian package it came from, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub(crate) package: String,
    /// The [`MODULES`], unpacked, in load order.
    pub(crate) modules: Vec<PathBuf>,
}

/// The newest Debian cloud kernel of `series` (`6.1`, `6.12`, or an exact
/// ABI such as `6.1.0-47`), from the cache or downloaded into it.
///
/// The first download pins the version for this cache: later runs boot the
/// same kernel until `kernel-<series>` is removed from the cache.
pub(crate) fn kernel(cache: &Path, series: &str) -> Result<Kernel> {
    if series.is_empty() || !series.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')) {
        bail!("--kernel takes a version such as 6.1 or 6.12, not {series:?}");
    }
    let dir = cache.join(format!("kernel-{series}"));
    if let Some(kernel) = cached_kernel(&dir)? {
        return Ok(kernel);
    }
    // A cache from before the modules were kept: fetch the same package again.
    let pinned = std::fs::read_to_string(dir.join("package")).ok().map(|p| p.trim().to_owned());
    let package = match pinned {
        Some(package) => package,
        None => newest_kernel_package(series)?,
    };
    eprintln!("xtask test-vm: downloading {package} (about 27 MB)");
    let tmp = fresh_dir(&cache.join(format!("kernel-{series}.tmp")))?;
    let deb = download(std::slice::from_ref(&package), &tmp)?.pop().context("no .deb")?;
    // /boot and the few modules the tests need: all the modules would be four times the size.
    // Listed first: tar fails on a name the package lacks, and optional ones may be missing.
    let listing = Command::new("dpkg-deb").arg("-c").arg(&deb).output().context("cannot run dpkg-deb")?;
    if !listing.status.success() {
        bail!("dpkg-deb -c {} failed ({})", deb.display(), listing.status);
    }
    let modules = module_members(&String::from_utf8_lossy(&listing.stdout));
    crate::command::run(
        Command::new("sh")
            .arg("-c")
            .arg(r#"deb=$1 dir=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards ./boot "$@""#)
            .arg("sh")
            .arg(&deb)
            .arg(&tmp)
            .args(&modules),
    )?;
    std::fs::remove_file(&deb).ok();
    let unpacked = tmp.join("modules");
    std::fs::create_dir_all(&unpacked)?;
    for &(module, required) in MODULES {
        let name = Path::new(module).file_name().context("a module path without a name")?;
        let found = modules.iter().find(|member| is_module(member, module));
        let Some(found) = found else {
            if required {
                bail!("{package} holds no lib/modules/*/{module}");
            }
            eprintln!("xtask test-vm: {package} has no {module}; the tests that need it see it missing");
            continue;
        };
        let path = tmp.join(found);
        if found.ends_with(".xz") {
            // busybox's insmod hands the kernel the file as it is: decompress it here.
            crate::command::run(Command::new("xz").arg("-d").arg(&path))
                .context("cannot decompress a module (`apt-get install xz-utils`)")?;
            std::fs::rename(path.with_extension(""), unpacked.join(name))?;
        } else {
            std::fs::rename(&path, unpacked.join(name))?;
        }
    }
    std::fs::write(tmp.join(MODULES_SOUGHT), sought())?;
    if tmp.join("lib").exists() {
        std::fs::remove_dir_all(tmp.join("lib"))?;
    }
    std::fs::write(tmp.join("package"), &package)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove the stale {}", dir.display()))?;
    }
    publish(&tmp, &dir)?;
    cached_kernel(&dir)?.with_context(|| format!("{package} holds no /boot/vmlinuz-*"))
}

fn cached_kernel(dir: &Path) -> Result<Option<Kernel>> {
    let Ok(package) = std::fs::read_to_string(dir.join("package")) else {
        return Ok(None);
    };
    let Ok(entries) = std::fs::read_dir(dir.join("boot")) else {
        return Ok(None);
    };
    if std::fs::read_to_string(dir.join(MODULES_SOUGHT)).ok() != Some(sought()) {
        return Ok(None);
    }
    let mut modules = Vec::new();
    for &(module, required) in MODULES {
        let path = dir.join("modules").join(Path::new(module).file_name().context("a module path without a name")?);
        if path.is_file() {
            modules.push(path);
        } else if required {
            return Ok(None);
        }
    }
    for entry in entries {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")) {
            return Ok(Some(Kernel { image: path, package: package.trim().to_owned(), modules }));
        }
    }
    Ok(None)
}

/// The names in [`MODULES`], one per line.
fn sought() -> String {
    MODULES.iter().map(|(module, _)| format!("{module}\n")).collect()
}

/// The package's members that are [`MODULES`], as `./lib/modules/<version>/...` paths, from
/// `dpkg-deb -c`'s listing (whose last column is the path).
fn module_members(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter(|path| MODULES.iter().any(|(module, _)| is_module(path, module)))
        .map(str::to_owned)
        .collect()
}

/// Whether the package member at `path` is `module`, plain or xz-compressed.
fn is_module(path: &str, module: &str) -> bool {
    path.ends_with(&format!("/{module}")) || path.ends_with(&format!("/{module}.xz"))
}

fn newest_kernel_package(series: &str) -> Result<String> {
    let mut names = kernel_packages()?;
    if names.is_empty() {
        // apt-cache finds nothing before the first `apt-get update`.
        crate::command::run(Command::new("apt-get").args(["update", "-q"]))?;
        names = kernel_packages()?;
    }
    let mut matching: Vec<(Vec<u64>, String)> = names
        .into_iter()
        .filter_map(|name| {
            let version = name.strip_prefix("linux-image-")?.strip_suffix(FLAVOUR)?.to_owned();
            let matches = version == series
                || version.starts_with(&format!("{series}."))
                || version.starts_with(&format!("{series}-"));
            matches.then(|| (version_key(&version), name))
        })
        .collect();
    matching.sort();
    match matching.pop() {
        Some((_, name)) => Ok(name),
        None => bail!(
            "no Debian package linux-image-{series}*{FLAVOUR} is known to apt on this machine \
             (see `apt-cache pkgnames linux-image-`)"
        ),
    }
}

fn kernel_packages() -> Result<Vec<String>> {
    let output = Command::new("apt-cache")
        .args(["pkgnames", "linux-image-"])
        .output()
        .context("cannot run apt-cache (test-vm fetches its kernel from Debian)")?;
    Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
}

/// `6.1.0-56` -> [6, 1, 0, 56]: orders the ABI names of one series.
fn version_key(version: &str) -> Vec<u64> {
    version.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// How to start the emulator.
#[derive(Debug)]
pub(crate) struct Qemu {
    binary: PathBuf,
    /// The unpacked tree, when qemu is not installed on the host.
    unpacked: Option<PathBuf>,
}

impl Qemu {
    /// A command for `qemu-system-x86_64` that finds its libraries and firmware.
    pub(crate) fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(&self.binary);
        if let Some(root) = &self.unpacked {
            let mut dirs = Vec::new();
            library_dirs(root, &mut dirs)?;
            dirs.sort();
            let mut path = std::env::join_paths(&dirs)?;
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                path.push(":");
                path.push(old);
            }
            cmd.env("LD_LIBRARY_PATH", path);
            cmd.env("QEMU_MODULE_DIR", root.join("usr/lib/x86_64-linux-gnu/qemu"));
            // Debian builds qemu with these firmware paths; -L adds them under the unpacked root.
            for firmware in ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"] {
                let dir = root.join(firmware);
                if dir.is_dir() {
                    cmd.arg("-L").arg(dir);
                }
            }
        }
        Ok(cmd)
    }

    /// `qemu-system-x86_64 --version`, which also proves its libraries load.
    fn version(&self) -> Result<String> {
        let output = self.command()?.arg("--version").output()?;
        if !output.status.success() {
            bail!("{} --version failed: {}", self.binary.display(), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().to_owned())
    }
}

/// The host's `qemu-system-x86_64` if installed, else Debian's unpacked into the cache.
pub(crate) fn qemu(cache: &Path) -> Result<(Qemu, String)> {
    if let Some(binary) = crate::command::which(QEMU_BINARY) {
        let qemu = Qemu { binary, unpacked: None };
        let version = qemu.version()?;
        return Ok((qemu, version));
    }
    let dir = cache.join("qemu");
    let cached = Qemu { binary: dir.join("usr/bin").join(QEMU_BINARY), unpacked: Some(dir.clone()) };
    if cached.binary.is_file() {
        match cached.version() {
            Ok(version) => return Ok((cached, version)),
            // A host library it relied on went away: fetch again.
            Err(err) => eprintln!("xtask test-vm: cached qemu is broken ({err:#}); fetching again"),
        }
    }
    let packages = qemu_packages()?;
    eprintln!("xtask test-vm: downloading {} packages for qemu (unpacked, not installed)", packages.len());
    let tmp = fresh_dir(&cache.join("qemu.tmp"))?;
    let debs = tmp.join(".debs");
    std::fs::create_dir(&debs)?;
    for deb in download(&packages, &debs)? {
        crate::command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    }
    std::fs::remove_dir_all(&debs).ok();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    publish(&tmp, &dir)?;
    let version = cached.version()?;
    Ok((cached, version))
}

/// What `apt-get install qemu-system-x86` would install (without recommends):
/// the emulator, its firmware, and the libraries this host lacks.
fn qemu_packages() -> Result<Vec<String>> {
    let simulate = || {
        Command::new("apt-get")
            .args(["install", "--simulate", "--no-install-recommends", "-q"])
            .arg(QEMU_PACKAGE)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot run apt-get")
    };
    let mut output = simulate()?;
    if !output.status.success() {
        crate::command::run(Command::new("apt-get").args(["update", "-q"]))?;
        output = simulate()?;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let packages: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    if !packages.iter().any(|p| p == QEMU_PACKAGE) {
        bail!("apt-get cannot install {QEMU_PACKAGE} here: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(packages)
}

fn library_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut has_library = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            library_dirs(&entry.path(), out)?;
        } else if entry.file_name().to_string_lossy().contains(".so") {
            has_library = true;
        }
    }
    if has_library {
        out.push(dir.to_owned());
    }
    Ok(())
}

/// `apt-get download PACKAGES` into `dir`; returns the .deb files in the same order.
fn download(packages: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    // As root, apt drops to the _apt user to download, which cannot write to
    // the cache; downloading as root is what apt falls back to anyway.
    crate::command::run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .args(packages)
            .current_dir(dir),
    )?;
    let mut debs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        debs.push(entry?.path());
    }
    packages
        .iter()
        .map(|package| {
            let prefix = format!("{package}_");
            debs.iter()
                .find(|deb| {
                    deb.file_name()
                        .map(|n| n.to_string_lossy())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                })
                .cloned()
                .with_context(|| format!("apt-get download {package} left no .deb in {}", dir.display()))
        })
        .collect()
}

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.to_owned())
}

/// Moves a completed download into place, so a run that was interrupted never leaves half a cache.
fn publish(tmp: &Path, dir: &Path) -> Result<()> {
    std::fs::rename(tmp, dir).with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_modules_plain_or_compressed_and_skips_the_rest() {
        let listing = "\
drwxr-xr-x root/root         0 2026-11-28 09:54 ./lib/modules/6.12.118+deb12-cloud-amd64/kernel/arch/x86/kernel/cpu/mce/
-rw-r--r-- root/root      8896 2026-11-28 09:54 ./lib/modules/6.12.118+deb12-cloud-amd64/kernel/arch/x86/kernel/cpu/mce/mce-inject.ko.xz
-rw-r--r-- root/root     31234 2026-11-28 09:54 ./lib/modules/6.12.118+deb12-cloud-amd64/kernel/drivers/block/loop.ko.xz
-rw-r--r-- root/root     77833 2026-11-26 17:12 ./lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/block/loop.ko
-rw-r--r-- root/root     12345 2026-11-26 17:12 ./lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/block/nbd.ko
";
        assert_eq!(
            module_members(listing),
            [
                "./lib/modules/6.12.118+deb12-cloud-amd64/kernel/arch/x86/kernel/cpu/mce/mce-inject.ko.xz",
                "./lib/modules/6.12.118+deb12-cloud-amd64/kernel/drivers/block/loop.ko.xz",
                "./lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/block/loop.ko",
            ]
        );
        assert_eq!(sought(), "kernel/drivers/block/loop.ko\nkernel/arch/x86/kernel/cpu/mce/mce-inject.ko\n");
    }

    #[test]
    fn kernel_versions_order_numerically() {
        let mut versions = ["6.1.0-9", "6.1.0-56", "6.1.0-47"].map(version_key);
        versions.sort();
        assert_eq!(versions, [vec![6, 1, 0, 9], vec![6, 1, 0, 47], vec![6, 1, 0, 56]]);
        assert_eq!(version_key("6.12.117+deb12"), [6, 12, 117, 12]);
    }
}
