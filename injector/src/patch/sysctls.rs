//! The proxy's ports, reserved in the pod's `spec.securityContext.sysctls`
//! (`net.ipv4.ip_local_reserved_ports`), so that the pod's own outgoing
//! connections never take one as their source port and keep a restarted
//! sidecar from binding it.
//!
//! Pure. The list format is the kernel's (`8080,15000-15006`), as in
//! `picket-proxy`'s `reserved_ports.rs`, which sets the same sysctl where
//! `/proc/sys` is writable.

use std::collections::BTreeSet;

use picket_common::port_list;

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
            let ports = port_list::parse(&sysctl.value).ok_or_else(|| InvalidSysctl {
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

    let value = port_list::format(&reserved);
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
            port_list::format(reserved),
            port_list::format(&ours.iter().copied().collect()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        for bad in ["0 10", "10", "", "10 9", "1 2 3", "1-2"] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
    }
}
