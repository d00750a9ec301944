//! Cluster state and its sources.
//!
//! - `state`: the one writer (apply, delete, replace-all-of-kind) and the snapshots it publishes.
//! - `files`: manifests on disk, parsed into the engine's model.
//! - `dir`: `--cluster-dir`, a watched directory of manifests.

pub mod dir;
pub mod files;
pub mod kube;
pub mod state;

pub use files::{load_path, ClusterObjects, LoadError};
pub use state::{KindSnapshot, Object, ObjectRef, Snapshot, SnapshotRx, StateWriter};
