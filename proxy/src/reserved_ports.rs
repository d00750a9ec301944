//! The proxy's ports, reserved in the pod's network namespace
//! (`net.ipv4.ip_local_reserved_ports`, which also covers IPv6), so that
//! the pod's own outgoing connections never take one as their source port
//! and keep the sidecar from binding it (a crash loop while the pod refuses
//! all inbound traffic).
//!
//! In a pod the injector sets the sysctl through the pod's
//! `securityContext.sysctls` (a safe sysctl since Kubernetes 1.27); `init`
//! sets it where `/proc/sys` is writable (the lab, privileged runtimes), and
//! `run` warns when a port is missing. Parsing and merging are pure; `reserve`
//! and `missing` read and write the sysctl file.

use std::collections::BTreeSet;
use std::path::Path;

use picket_common::port_list;

/// Where the kernel keeps the reserved ports of the current network namespace.
pub const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// A list with every port of `list` and of `ours` (an unreadable `list`
/// counts as empty: the kernel writes only valid lists).
pub fn merge(list: &str, ours: &[u16]) -> String {
    let mut ports = parse(list);
    ports.extend(ours.iter().copied());
    port_list::format(&ports)
}

fn parse(list: &str) -> BTreeSet<u16> {
    port_list::parse(list.trim()).unwrap_or_default()
}

/// Reserves `ours` in the sysctl at `path`, keeping what is already reserved.
pub fn reserve(path: &Path, ours: &[u16]) -> std::io::Result<String> {
    let current = std::fs::read_to_string(path)?;
    let merged = merge(current.trim(), ours);
    if parse(current.trim()) != parse(&merged) {
        std::fs::write(path, &merged)?;
    }
    Ok(merged)
}

/// Which of `ours` the sysctl at `path` does not reserve.
pub fn missing(path: &Path, ours: &[u16]) -> std::io::Result<Vec<u16>> {
    let reserved = parse(&std::fs::read_to_string(path)?);
    Ok(ours
        .iter()
        .copied()
        .filter(|p| !reserved.contains(p))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_merge_as_the_kernel_writes_them() {
        assert_eq!(merge("", &[15020, 15006, 15000]), "15000,15006,15020");
        assert_eq!(
            merge("8080,15001-15005", &[15000, 15006]),
            "8080,15000-15006"
        );
        assert_eq!(merge("15006", &[15006]), "15006");
    }

    #[test]
    fn reserving_keeps_the_pods_own_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip_local_reserved_ports");
        std::fs::write(&path, "8080\n").unwrap();
        assert_eq!(missing(&path, &[15000, 15006]).unwrap(), [15000, 15006]);
        reserve(&path, &[15000, 15006]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "8080,15000,15006");
        assert!(missing(&path, &[15000, 15006]).unwrap().is_empty());
    }
}
