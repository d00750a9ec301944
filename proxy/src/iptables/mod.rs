//! The pod's iptables rules: what `picket-proxy init` writes.
//!
//! `rules` turns a plan into an `iptables-restore` document (pure);
//! `apply` chooses a backend and runs the iptables tools (I/O).
#![warn(missing_docs)]

pub mod apply;
pub mod rules;

pub use apply::{
    apply, apply_ipv6, Applied, ApplyError, Backend, BackendChoice, CommandRunner, Ipv6Rules,
    Runner,
};
pub use rules::{Family, Jumps, OutboundPlan, Plan, CHAIN, JUMP, OUTBOUND_CHAIN, OUTBOUND_JUMP};
