//! The cluster's own network namespace.
//!
//! Every cluster process runs in a network namespace that has no route out
//! of the machine: the node address, the `kubernetes` Service's ClusterIP (a
//! local address here, so no kube-proxy is needed) and the pods' bridge all
//! live inside it. The host reaches the API server over one veth pair with
//! link-local addresses, which is the server in `target/cluster/kubeconfig`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::{HOST_VETH, HOST_VETH_IP, NETNS, NODE_IP, NODE_VETH, NODE_VETH_IP, SERVICE_IP};

/// Path of the namespace's bind mount, for `nsenter --net=`.
pub(super) fn netns_path() -> String {
    format!("/run/netns/{NETNS}")
}

/// Creates the namespace, its addresses and the veth pair to the host.
pub(super) fn create() -> Result<()> {
    ip(&["netns", "add", NETNS])?;
    ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
    // On lo: not every kernel has the dummy driver.
    ip(&["-n", NETNS, "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    ip(&["-n", NETNS, "addr", "add", &format!("{SERVICE_IP}/32"), "dev", "lo"])?;
    ip(&["link", "add", HOST_VETH, "type", "veth", "peer", "name", NODE_VETH, "netns", NETNS])?;
    ip(&["addr", "add", &format!("{HOST_VETH_IP}/30"), "dev", HOST_VETH])?;
    ip(&["link", "set", HOST_VETH, "up"])?;
    ip(&["-n", NETNS, "addr", "add", &format!("{NODE_VETH_IP}/30"), "dev", NODE_VETH])?;
    ip(&["-n", NETNS, "link", "set", NODE_VETH, "up"])
}

/// Whether the namespace exists.
pub(super) fn exists() -> bool {
    std::path::Path::new(&netns_path()).exists()
}

/// Removes the namespace (its interfaces go with it) and the host's veth end.
pub(super) fn delete() -> Vec<String> {
    let mut problems = Vec::new();
    if exists()
        && let Err(err) = ip(&["netns", "del", NETNS])
    {
        problems.push(format!("{err:#}"));
    }
    // Deleting the namespace deletes the pair; the host end goes a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::path::Path::new(&format!("/sys/class/net/{HOST_VETH}")).exists() {
        if std::time::Instant::now() >= deadline {
            if let Err(err) = ip(&["link", "del", HOST_VETH]) {
                problems.push(format!("{err:#}"));
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    problems
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
