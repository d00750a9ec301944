//! Cluster state and its sources. `files` reads manifests from disk.

pub mod files;

pub use files::{load_path, ClusterObjects, LoadError};
