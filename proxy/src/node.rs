//! What the proxy knows of its node: addresses whose traffic is always
//! allowed (kubelet probes). `init` records the pod's default gateways in a
//! small file; `run` reads it back.
//!
//! Parsing is pure; `read_gateways`, `write_file` and `read_file` do file I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// An IPv6 address of the pod on an interface other than loopback, a global
/// one first, from the text of `/proc/net/if_inet6`. Any such address (a
/// link-local `fe80::` one included: a neighbour on the same bridge reaches
/// it) means inbound IPv6 traffic can reach the pod.
pub fn ipv6_address(if_inet6: &str) -> Option<Ipv6Addr> {
    const SCOPE_GLOBAL: &str = "00";
    let addresses: Vec<(bool, Ipv6Addr)> = if_inet6
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(hex), Some(scope), Some(device)) =
                (fields.first(), fields.get(3), fields.get(5))
            else {
                return None;
            };
            if *device == "lo" {
                return None;
            }
            let address = u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)?;
            Some((*scope == SCOPE_GLOBAL, address))
        })
        .collect();
    addresses
        .iter()
        .find(|(global, _)| *global)
        .or_else(|| addresses.first())
        .map(|(_, address)| *address)
}

/// Default gateways from the text of `/proc/net/route` (IPv4).
pub fn parse_route_v4(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(gateway), Some(flags)) =
            (fields.get(1), fields.get(2), fields.get(3))
        else {
            continue;
        };
        const RTF_GATEWAY: u32 = 0x2;
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        if *dest != "00000000" || flags & RTF_GATEWAY == 0 {
            continue;
        }
        if let Ok(gw) = u32::from_str_radix(gateway, 16) {
            // The kernel prints the address as a host-order word of network-order bytes.
            let ip = IpAddr::V4(Ipv4Addr::from(gw.to_le_bytes()));
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// Default gateways from the text of `/proc/net/ipv6_route`.
pub fn parse_route_v6(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(prefix), Some(next_hop)) =
            (fields.first(), fields.get(1), fields.get(4))
        else {
            continue;
        };
        if dest.chars().any(|c| c != '0') || *prefix != "00" {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(next_hop, 16) else {
            continue;
        };
        if bits != 0 {
            let ip = IpAddr::V6(Ipv6Addr::from(bits));
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The pod's default gateways, read from `/proc` (this network namespace).
pub fn read_gateways() -> Vec<IpAddr> {
    let mut out = parse_route_v4(&std::fs::read_to_string("/proc/net/route").unwrap_or_default());
    out.extend(parse_route_v6(
        &std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default(),
    ));
    out
}

/// Writes node addresses, one per line.
pub fn write_file(path: &Path, addrs: &[IpAddr]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Reads node addresses written by `write_file`; blank lines and `#` comments are skipped.
pub fn read_file(path: &Path) -> std::io::Result<Vec<IpAddr>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not an IP address: {l:?}", path.display()),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_default_gateway_is_read_from_proc_route() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route_v4(text),
            vec!["10.77.0.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn ipv6_default_gateway_is_read_from_proc_ipv6_route() {
        let text = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                    fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            parse_route_v6(text),
            vec!["fd00::1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn the_pods_ipv6_addresses_are_found_in_proc_if_inet6() {
        let loopback = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            ipv6_address(loopback),
            None,
            "loopback only: nothing arrives"
        );
        let link_local =
            format!("{loopback}fe800000000000000000000000000002 02 40 20 80     eth0\n");
        assert_eq!(ipv6_address(&link_local), Some("fe80::2".parse().unwrap()));
        let dual_stack =
            format!("{link_local}fd000000000000000000000000000002 02 40 00 80     eth0\n");
        assert_eq!(
            ipv6_address(&dual_stack),
            Some("fd00::2".parse().unwrap()),
            "a global one first"
        );
    }

    #[test]
    fn node_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node");
        let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        write_file(&path, &addrs).unwrap();
        assert_eq!(read_file(&path).unwrap(), addrs);
        std::fs::write(&path, "nonsense\n").unwrap();
        assert!(read_file(&path).is_err());
    }
}
