//! picket-proxy: the sidecar that enforces NetworkPolicy in every pod, and
//! its init container.
//!
//! - `net`: the data plane's sockets (listener, original destination, one connection, relay,
//!   transparent sockets for tproxy interception).
//! - `enforce`: admission, the live connection table, re-check and teardown.
//! - `iptables`: the init container's rules (and tproxy's policy routing).
//! - `privileges`: the capabilities the sidecar keeps (none, or NET_RAW for tproxy).
//! - `admin`: /live, /ready, /metrics, /connections, /tap, PUT /log-level.
//! - `tap`: the bounded broadcast of this pod's decisions `picket tap` reads.
//! - `metrics`, `node`, `config`: what the sidecar counts, who its node is, its flags.
//! - `reserved_ports`: the proxy's ports kept out of the pod's ephemeral range.
//! - `app`: wiring for the `picket-proxy` binary.
//!
//! The engine is the `picket-policy` crate; cluster state and its sources
//! are `picket-state`.

pub mod admin;
pub mod app;
pub mod config;
pub mod enforce;
pub mod iptables;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod node;
pub mod privileges;
pub mod reserved_ports;
pub mod tap;
