//! The pod's iptables rules: what `picket-proxy init` writes.
//!
//! `rules` turns a plan into an `iptables-restore` document (pure);
//! `apply` chooses a backend and runs the iptables tools (I/O).
#![warn(missing_docs)]

pub mod apply;
pub mod rules;

pub use apply::{apply, Applied, ApplyError, Backend, BackendChoice, CommandRunner, Runner};
pub use rules::{Family, Plan, CHAIN, JUMP};
