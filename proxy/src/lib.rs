//! Picket: Kubernetes NetworkPolicy enforced by a sidecar proxy in every pod.
//!
//! - `policy`: the engine (pure).
//! - `cluster`: cluster state from its sources (manifest files).
//! - `cli`: the `picket` command line (`reach`, `explain`).

pub mod cli;
pub mod cluster;
pub mod policy;
