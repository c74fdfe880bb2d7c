//! Imports image-layout tarballs into a containerd with its `ctr` client.

use std::ffi::OsStr;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;

use crate::{Error, ref_names};

/// The containerd namespace that CRI, and so the kubelet, uses.
pub const NAMESPACE: &str = "k8s.io";

/// `ctr image import --base-name` names the image `<this>:<its ref name>` before it is tagged with its real name.
const IMPORT_BASE_NAME: &str = "oci-layout.local/import";

/// Imports the image-layout tarball `tar`, which must name one image, into
/// the [`NAMESPACE`] namespace of the containerd at `address` (its socket)
/// and names it `name`.
///
/// `ctr image import --base-name B` names the image `B:<ref name in the
/// tarball>`; that name is then tagged `name` (replacing an older image of
/// that name) and removed. CRI learns of the image asynchronously: callers
/// that need it wait for CRI's `ImageStatus` to find it.
pub fn import(address: &Path, tar: &Path, name: &str) -> Result<(), Error> {
    let file = File::open(tar).map_err(|source| Error::File { action: "open", path: tar.to_owned(), source })?;
    let refs = ref_names(BufReader::new(file))
        .map_err(|source| Error::Layout { path: tar.to_owned(), source: Box::new(source) })?;
    let [reference] = refs.as_slice() else {
        return Err(Error::RefCount { path: tar.to_owned(), refs });
    };
    let imported = format!("{IMPORT_BASE_NAME}:{reference}");
    ctr(
        address,
        &["image".as_ref(), "import".as_ref(), "--base-name".as_ref(), IMPORT_BASE_NAME.as_ref(), tar.as_ref()],
    )?;
    ctr(address, &["image".as_ref(), "tag".as_ref(), "--force".as_ref(), imported.as_ref(), name.as_ref()])?;
    ctr(address, &["image".as_ref(), "rm".as_ref(), imported.as_ref()])
}

/// Runs `ctr --address <address> --namespace k8s.io <args>`.
fn ctr(address: &Path, args: &[&OsStr]) -> Result<(), Error> {
    let mut command = Command::new("ctr");
    command.arg("--address").arg(address).args(["--namespace", NAMESPACE]).args(args);
    run(&mut command)
}

/// Runs `command` to its end; an error names it and, if it ran, holds its stderr.
fn run(command: &mut Command) -> Result<(), Error> {
    let output = command.output().map_err(|source| Error::CtrSpawn { command: command_line(command), source })?;
    if !output.status.success() {
        return Err(Error::Ctr {
            command: command_line(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// The program and its arguments, space-separated, for error messages.
fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Image;

    #[test]
    fn a_layout_that_names_no_image_is_refused_before_ctr_runs() {
        let dir = std::env::temp_dir().join(format!("oci-layout-ctr-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let layer = dir.join("layer.tar");
        std::fs::write(&layer, Image::new("1").layer().unwrap()).unwrap();
        let err = import(Path::new("/nonexistent.sock"), &layer, "docker.io/local/x:1").unwrap_err();
        assert!(matches!(&err, Error::Layout { source, .. } if matches!(**source, Error::NoIndex)), "{err}");
        assert!(err.to_string().contains("layer.tar"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();

        let err = import(Path::new("/nonexistent.sock"), &dir.join("missing.tar"), "x").unwrap_err();
        assert!(matches!(err, Error::File { action: "open", .. }), "{err}");
    }

    #[test]
    fn a_failing_command_is_named_with_its_stderr() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'no such image' >&2; exit 3"]);
        let err = run(&mut command).unwrap_err();
        assert!(matches!(&err, Error::Ctr { stderr, .. } if stderr == "no such image"), "{err:?}");
        assert_eq!(err.to_string(), "`sh -c echo 'no such image' >&2; exit 3` failed (exit status: 3): no such image");

        let err = run(&mut Command::new("/nonexistent/ctr")).unwrap_err();
        assert!(matches!(&err, Error::CtrSpawn { command, .. } if command == "/nonexistent/ctr"), "{err:?}");
        run(&mut Command::new("true")).unwrap();
    }
}
