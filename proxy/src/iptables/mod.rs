//! The pod's iptables rules: what `picket-proxy init` writes.
//!
//! `rules` turns a plan into an `iptables-restore` document (pure);
//! `apply` chooses a backend and runs the iptables tools (I/O); `routing`
//! writes the policy routing of tproxy interception.
#![warn(missing_docs)]

pub mod apply;
pub mod routing;
pub mod rules;

pub use apply::{
    apply, apply_ipv6, Applied, ApplyError, Backend, BackendChoice, CommandRunner, Ipv6Rules,
    Runner,
};
pub use routing::Routing;
pub use rules::{
    Family, Interception, Jumps, OutboundPlan, Plan, CHAIN, JUMP, OUTBOUND_CHAIN, OUTBOUND_JUMP,
};
