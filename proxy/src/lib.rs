//! Picket: Kubernetes NetworkPolicy enforced by a sidecar proxy in every pod.
//!
//! - `policy`: the engine (pure).
//! - `cluster`: cluster state, its sources, and the snapshots the data plane reads.
//! - `net`: the data plane (listener, original destination, relay, connection table).
//! - `iptables`: the init container's rules.
//! - `admin`: /live, /ready, /connections.
//! - `cli`: the `picket` command line.
//! - `app`: wiring for the `picket-proxy` binary.

pub mod admin;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod iptables;
pub mod lab;
pub mod metrics;
pub mod net;
pub mod node;
pub mod policy;
pub mod telemetry;
