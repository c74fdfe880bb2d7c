//! Running the programs xtask orchestrates: finding them, running them, and
//! what a binary needs from the file system (`ldd`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// `program` as `PATH` finds it.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
}

/// Runs `cmd`, failing with the command line and its status unless it succeeds. Its output goes
/// to stderr: stdout is for what a task produces (`cargo xtask run -- trace | jq`).
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.stdout(std::io::stderr()).status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The shared libraries (the dynamic loader included) that `binary` needs, at
/// the paths `ldd` reports. Empty for a static binary.
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("cannot run ldd (Debian package libc-bin)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && format!("{stdout}{stderr}").contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let libraries = parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))?;
    if !output.status.success() {
        bail!("ldd {} failed ({}): {}", binary.display(), output.status, stderr.trim());
    }
    Ok(libraries)
}

/// The files in `ldd`'s output, in order: `name => /path (0x...)` for a
/// library, `/path (0x...)` for the dynamic loader. The kernel's vDSO
/// (`linux-vdso.so.1 (0x...)`) is no file. A library that is `not found` is an
/// error that names it; so is any line of another form.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match line.split_once("=>").map(|(name, location)| (name.trim(), location.trim())) {
            Some((name, "not found")) => {
                missing.push(name);
                continue;
            }
            // An older glibc prints the vDSO as `linux-vdso.so.1 =>  (0x...)`.
            Some((_, location)) => match without_address(location) {
                (file, _) if file.starts_with('/') => file,
                ("", true) => continue,
                _ => bail!("unexpected line in ldd's output: {line:?}"),
            },
            None => match without_address(line) {
                (file, _) if file.starts_with('/') => file,
                // The vDSO: an address but no file.
                (_, true) => continue,
                ("statically linked", false) => continue,
                _ => bail!("unexpected line in ldd's output: {line:?}"),
            },
        };
        if !files.iter().any(|f| f == Path::new(file)) {
            files.push(PathBuf::from(file));
        }
    }
    if !missing.is_empty() {
        bail!("shared libraries not found: {}", missing.join(", "));
    }
    Ok(files)
}

/// `text` without a trailing ` (0x...)` load address, and whether it had one.
fn without_address(text: &str) -> (&str, bool) {
    match text.rsplit_once("(0x") {
        Some((before, address)) if address.ends_with(')') => (before.trim_end(), true),
        _ => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader_in_order() {
        // `ldd target/release/collector` on Debian 12.
        let text = "\tlinux-vdso.so.1 (0x00007ffc3a5f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1e2c9c2000)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f1e2c8e3000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1e2c702000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f1e2e4d0000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn the_vdso_in_either_form_and_a_static_binary_give_no_file() {
        assert!(parse_ldd("\tlinux-vdso.so.1 =>  (0x00007ffd5b1f4000)\n").unwrap().is_empty());
        assert!(parse_ldd("\tlinux-vdso.so.1 (0x00007ffd5b1f4000)\n").unwrap().is_empty());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(parse_ldd("").unwrap().is_empty());
    }

    #[test]
    fn a_missing_library_is_an_error_that_names_it() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc3a5f2000)\n\
                    \tlibfoo.so.1 => not found\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1e2c702000)\n\
                    \tlibbar.so.2 => not found\n";
        let err = parse_ldd(text).unwrap_err();
        assert_eq!(err.to_string(), "shared libraries not found: libfoo.so.1, libbar.so.2");
    }

    #[test]
    fn an_unknown_line_is_an_error() {
        let err = parse_ldd("\tlibfoo.so.1 => somewhere\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1 => somewhere"), "{err}");
        assert!(parse_ldd("ldd: something odd\n").is_err());
    }
}
