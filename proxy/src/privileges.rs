//! The sidecar's capabilities: none in redirect mode; CAP_NET_RAW alone in
//! tproxy mode, which `IP_TRANSPARENT` and `SO_MARK` need (either accepts
//! CAP_NET_RAW or CAP_NET_ADMIN since Linux 5.17; NET_RAW is the lesser).
//!
//! The proxy runs as its own non-root UID, so the capability cannot come
//! from the container's `capabilities.add` alone: the image's binary
//! carries it as a file capability, permitted but not effective
//! (`cap_net_raw+p`), which the kernel grants at exec only where the
//! container's bounding set has it (the injector adds NET_RAW for tproxy
//! pods) and privilege escalation is allowed. Here the proxy keeps exactly
//! what its mode needs, effective, and drops every other one it holds.
//! Capabilities are per thread: this runs before the runtime starts any.

use rustix::thread::{capabilities, set_capabilities, CapabilitySet, CapabilitySets};

use crate::net::Interception;

/// Why the proxy cannot hold what its mode needs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Tproxy mode without CAP_NET_RAW in the permitted set.
    #[error("--interception tproxy needs CAP_NET_RAW (for IP_TRANSPARENT and SO_MARK), which this process is not permitted: the container must add NET_RAW and allow privilege escalation (the binary's file capability), or run the proxy with NET_RAW in its ambient set")]
    NoNetRaw,
    /// The kernel refused the change.
    #[error("cannot set the proxy's capabilities: {0}")]
    Capset(#[from] rustix::io::Errno),
}

/// What a mode needs.
pub fn needed(interception: Interception) -> CapabilitySet {
    match interception {
        Interception::Redirect => CapabilitySet::empty(),
        Interception::Tproxy { .. } => CapabilitySet::NET_RAW,
    }
}

/// The sets to hold, given what the process is permitted: exactly `needed`,
/// effective and permitted, nothing inheritable; `None` when not permitted.
pub fn keep(held: CapabilitySets, needed: CapabilitySet) -> Option<CapabilitySets> {
    held.permitted.contains(needed).then_some(CapabilitySets {
        effective: needed,
        permitted: needed,
        inheritable: CapabilitySet::empty(),
    })
}

/// Makes this thread hold exactly what `interception` needs.
pub fn hold_only_what(interception: Interception) -> Result<(), PrivilegeError> {
    let held = capabilities(None)?;
    let sets = keep(held, needed(interception)).ok_or(PrivilegeError::NoNetRaw)?;
    if sets != held {
        set_capabilities(None, sets)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(effective: CapabilitySet, permitted: CapabilitySet) -> CapabilitySets {
        CapabilitySets {
            effective,
            permitted,
            inheritable: permitted,
        }
    }

    #[test]
    fn each_mode_keeps_exactly_what_it_needs() {
        let tproxy = Interception::Tproxy { mark: 0x539 };
        let file_capability = sets(CapabilitySet::empty(), CapabilitySet::NET_RAW);
        let kept = keep(file_capability, needed(tproxy)).unwrap();
        assert_eq!(kept.effective, CapabilitySet::NET_RAW, "raised");
        let root = sets(CapabilitySet::all(), CapabilitySet::all());
        let kept = keep(root, needed(tproxy)).unwrap();
        assert_eq!(kept.permitted, CapabilitySet::NET_RAW, "the rest dropped");
        assert!(kept.inheritable.is_empty());
        assert_eq!(
            keep(
                sets(CapabilitySet::empty(), CapabilitySet::NET_ADMIN),
                needed(tproxy)
            ),
            None
        );
        let redirect = keep(root, needed(Interception::Redirect)).unwrap();
        assert!(redirect.permitted.is_empty() && redirect.effective.is_empty());
    }
}
