//! Port lists as the kernel writes them in `net.ipv4.ip_local_reserved_ports`
//! (`8080,15000-15006`): the proxy's ports are reserved there, by init
//! where `/proc/sys` is writable and by the injector through the pod's
//! `securityContext.sysctls`. Pure.

use std::collections::BTreeSet;

/// The longest list taken: the kernel reads one page per write, and a
/// longer value only costs time.
pub const MAX_LIST_LEN: usize = 4096;

/// The ports of a reserved-ports list (`8080,15000-15006`; spaces around
/// entries and empty entries are allowed); `None` when an entry is not a port
/// or a range `low-high`, or the list is longer than the kernel takes.
/// Overlapping ranges are merged first, so the work is bounded by the port
/// space, not by how often a pod repeats `1-65535`.
pub fn parse(list: &str) -> Option<BTreeSet<u16>> {
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
pub fn format(ports: &BTreeSet<u16>) -> String {
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
        assert_eq!(parse(""), Some(BTreeSet::new()));
        assert_eq!(
            parse("80,100-102\n"),
            Some(BTreeSet::from([80, 100, 101, 102]))
        );
        let ports = parse(" 8080, 15001-15003 ,").unwrap();
        assert_eq!(format(&ports), "8080,15001-15003");
        for bad in ["x", "5-3", "1-2-3", "70000"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(format(&BTreeSet::from([65534, 65535])), "65534-65535");
    }

    #[test]
    fn huge_or_repetitive_lists_cost_no_more_than_the_port_space() {
        assert_eq!(parse(&"1-65535,".repeat(500)).map(|p| p.len()), Some(65535));
        assert_eq!(
            parse(&"1-65535,".repeat(600)),
            None,
            "longer than the kernel takes"
        );
    }
}
