//! The proxy's ports, reserved in the pod's `spec.securityContext.sysctls`
//! (`net.ipv4.ip_local_reserved_ports`), so that the pod's own outgoing
//! connections never take one as their source port and keep a restarted
//! sidecar from binding it.
//!
//! Pure. The list format is the kernel's (`8080,15000-15006`), as in
//! `picket-proxy`'s `reserved_ports.rs`, which sets the same sysctl where
//! `/proc/sys` is writable.

use std::collections::BTreeSet;

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Pod, PodSecurityContext, Sysctl};
use serde_json::Value;

use super::{add, to_value, InvalidSysctl, PORT_RANGE_SYSCTL, RESERVED_PORTS_SYSCTL};

/// The ops reserving `ours` in the pod's sysctls: the whole `securityContext`
/// or `sysctls` list when absent, our entry appended when the pod reserves no
/// ports, else the pod's entry replaced by the union (none when it already
/// holds our ports). Every other sysctl is left as it is.
///
/// Refused: a reserved-ports list that does not parse, and a
/// `net.ipv4.ip_local_port_range` that does not parse or that would have no
/// free port left once these ports are reserved.
pub(super) fn reserved_ports_ops(
    pod: &Pod,
    ours: &[u16],
) -> Result<Vec<PatchOperation>, InvalidSysctl> {
    let security_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sysctls = security_context.and_then(|sc| sc.sysctls.as_ref());
    // The API server refuses a pod naming a sysctl twice: the first is the one.
    let find = |name: &str| {
        sysctls
            .into_iter()
            .flatten()
            .enumerate()
            .find(|(_, s)| s.name == name)
    };

    let own = match find(RESERVED_PORTS_SYSCTL) {
        None => None,
        Some((index, sysctl)) => {
            let ports = parse_ports(&sysctl.value).ok_or_else(|| InvalidSysctl {
                name: RESERVED_PORTS_SYSCTL,
                value: sysctl.value.clone(),
                message: "is not a list of ports and port ranges (8080,15000-15006)".into(),
            })?;
            Some((index, ports))
        }
    };
    let mut reserved = own.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
    reserved.extend(ours.iter().copied());

    if let Some((_, range)) = find(PORT_RANGE_SYSCTL) {
        check_port_range(&range.value, &reserved, ours)?;
    }

    let value = format_ports(&reserved);
    let ops = match (security_context, sysctls, own) {
        (None, _, _) => {
            let sc = PodSecurityContext {
                sysctls: Some(vec![sysctl(value)]),
                ..PodSecurityContext::default()
            };
            vec![add(&["spec", "securityContext"], to_value(&sc))]
        }
        (Some(_), None, _) => vec![add(
            &["spec", "securityContext", "sysctls"],
            to_value(&[sysctl(value)]),
        )],
        (Some(_), Some(_), None) => vec![add(
            &["spec", "securityContext", "sysctls", "-"],
            to_value(&sysctl(value)),
        )],
        (Some(_), Some(_), Some((_, ports))) if ports == reserved => Vec::new(),
        (Some(_), Some(_), Some((index, _))) => vec![add(
            &[
                "spec",
                "securityContext",
                "sysctls",
                &index.to_string(),
                "value",
            ],
            Value::String(value),
        )],
    };
    Ok(ops)
}

fn sysctl(value: String) -> Sysctl {
    Sysctl {
        name: RESERVED_PORTS_SYSCTL.into(),
        value,
    }
}

/// Refuses a port range (`low high`) that is not two port numbers with
/// `low <= high`, or whose every port is in `reserved` (the pod's own and
/// `ours`): the pod could open no outgoing connection.
fn check_port_range(
    value: &str,
    reserved: &BTreeSet<u16>,
    ours: &[u16],
) -> Result<(), InvalidSysctl> {
    let invalid = |message: String| InvalidSysctl {
        name: PORT_RANGE_SYSCTL,
        value: value.to_string(),
        message,
    };
    let (low, high) = parse_range(value).ok_or_else(|| {
        invalid("is not two port numbers (1-65535), the lower first: \"32768 60999\"".into())
    })?;
    if (low..=high).all(|port| reserved.contains(&port)) {
        return Err(invalid(format!(
            "leaves no free port once {RESERVED_PORTS_SYSCTL} reserves {} (the pod's own \
             ports and the proxy's {}): widen the range",
            format_ports(reserved),
            format_ports(&ours.iter().copied().collect()),
        )));
    }
    Ok(())
}

/// `low high`, separated by whitespace, as the kernel writes the range.
fn parse_range(value: &str) -> Option<(u16, u16)> {
    let mut parts = value.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if 0 < low && low <= high => Some((low, high)),
        _ => None,
    }
}

/// The longest reserved-ports value taken: the kernel reads one page per
/// write, and a longer value only costs the webhook time.
const MAX_LIST_LEN: usize = 4096;

/// The ports of a reserved-ports list (`8080,15000-15006`; spaces around
/// entries and empty entries are allowed); `None` when an entry is not a port
/// or a range `low-high`, or the list is longer than the kernel takes.
/// Overlapping ranges are merged first, so the work is bounded by the port
/// space, not by how often a pod repeats `1-65535`.
pub(super) fn parse_ports(list: &str) -> Option<BTreeSet<u16>> {
    if list.len() > MAX_LIST_LEN {
        return None;
    }
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (low, high) = entry.split_once('-').unwrap_or((entry, entry));
        let low: u16 = low.trim().parse().ok()?;
        let high: u16 = high.trim().parse().ok()?;
        if low > high {
            return None;
        }
        ranges.push((low, high));
    }
    ranges.sort_unstable();
    let mut ports = BTreeSet::new();
    let mut next: u32 = 0;
    for (low, high) in ranges {
        let from = u32::from(low).max(next);
        for port in from..=u32::from(high) {
            ports.insert(port as u16);
        }
        next = next.max(u32::from(high) + 1);
    }
    Some(ports)
}

/// The ports as the kernel lists them: ascending, consecutive ports as ranges.
pub(super) fn format_ports(ports: &BTreeSet<u16>) -> String {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for &port in ports {
        match ranges.last_mut() {
            Some((_, high)) if u32::from(*high) + 1 == u32::from(port) => *high = port,
            _ => ranges.push((port, port)),
        }
    }
    let entries: Vec<String> = ranges
        .into_iter()
        .map(|(low, high)| {
            if low == high {
                low.to_string()
            } else {
                format!("{low}-{high}")
            }
        })
        .collect();
    entries.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_format_as_the_kernel_writes_them() {
        assert_eq!(parse_ports(""), Some(BTreeSet::new()));
        let ports = parse_ports(" 8080, 15001-15003 ,").unwrap();
        assert_eq!(ports, BTreeSet::from([8080, 15001, 15002, 15003]));
        assert_eq!(format_ports(&ports), "8080,15001-15003");
        for bad in ["x", "80-", "90-80", "70000", "1-2-3"] {
            assert_eq!(parse_ports(bad), None, "{bad}");
        }
        assert_eq!(format_ports(&BTreeSet::from([65534, 65535])), "65534-65535");
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        for bad in ["0 10", "10", "", "10 9", "1 2 3", "1-2"] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn huge_or_repetitive_lists_cost_no_more_than_the_port_space() {
        let repeated = "1-65535,".repeat(500);
        assert_eq!(parse_ports(&repeated).map(|p| p.len()), Some(65535));
        assert_eq!(
            parse_ports(&"1-65535,".repeat(600)),
            None,
            "longer than the kernel takes"
        );
    }
}
