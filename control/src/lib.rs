//! `picket-control`: watches the cluster once and streams each sidecar the
//! view its pod's decisions need.
//!
//! - `view`: which objects one pod's view holds (pure).
//! - `delta`: what a subscriber was sent and the next message (pure).
//! - `parts`: a large message as parts of bounded size (pure).
//! - `auth`: the caller's pod, from its token's TokenReview.
//! - `service`: the `Watch` service, one task per sidecar.
//! - `serve`: TLS and HTTP/2.
//! - `metrics`: the control plane's own metrics.
//! - `events`: coverage as Events on NetworkPolicies.
//! - `status`: the connected sidecars and their view lag, for `/status`.
//! - `app`: wiring (the cluster watch, the service, `/ready` and `/metrics`).
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod ca;
pub mod certify;
pub mod delta;
pub mod events;
pub mod metrics;
pub mod parts;
pub mod serve;
pub mod service;
pub mod status;
pub mod view;

#[cfg(test)]
mod tests;
