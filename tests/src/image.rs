//! The busybox image in test containers: [`oci_layout::busybox`], imported into
//! a private containerd with [`oci_layout::ctr::import`].

use std::path::Path;

use oci_layout::{busybox, ctr};

/// The image name as CRI reports and resolves it.
pub use oci_layout::busybox::IMAGE as BUSYBOX_IMAGE;

/// Imports the busybox image into the `k8s.io` namespace of the containerd at `address`
/// and names it [`BUSYBOX_IMAGE`].
///
/// CRI learns of the image asynchronously; callers wait for `ImageStatus` to find it.
pub fn import_busybox(address: &Path) -> anyhow::Result<()> {
    Ok(ctr::import(address, &busybox::cached_tar()?, BUSYBOX_IMAGE)?)
}
