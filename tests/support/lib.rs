//! Test support shared by Picket's crates.
//!
//! - [`apiserver`]: a Kubernetes API server for tests, speaking the real list/watch protocol
//!   over HTTPS for Pods, Namespaces, NetworkPolicies, Secrets, ServiceAccounts and
//!   MutatingWebhookConfigurations (with PATCH), with the ServiceAccount admission step on
//!   pod creates, and fault injection.
//! - [`announced`]: the addresses a child process says it listens on.
//! - [`certs`]: a throwaway CA and a serving certificate.
//! - [`prometheus`]: a real Prometheus, and the queries of a dashboard.

pub mod announced;
pub mod apiserver;
pub mod certs;
pub mod prometheus;

pub use apiserver::{ApiServer, ApiServerBuilder, Kind};
