//! picket-injector: Picket's mutating admission webhook.
//!
//! ```text
//!  API server ──HTTPS POST /mutate──► server ──► review::parse ──► namespace lookup
//!                                        ▲                              │ labels
//!                                        │                              ▼
//!                                      tls (cert resolver,      patch::plan (pure)
//!                                        reloaded from files          │
//!                                        or the shared Secret)        ▼
//!                                                               review::respond
//! ```
//!
//! Pure: [`config`], [`quantity`], [`patch`], [`review`], [`certs`]. I/O:
//! [`namespace`] (kube), [`bootstrap`] (Secret and webhook configuration),
//! [`tls`] (file reload), [`server`] (HTTPS and admin), [`app`] (wiring).

pub mod app;
pub mod bootstrap;
pub mod certs;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod namespace;
pub mod patch;
pub mod quantity;
pub mod review;
pub mod server;
pub mod tls;
