//! Cluster state and its sources: what the data plane and the CLI know of the
//! cluster, and where it comes from.
//!
//! ```text
//!  Source (kube.rs, dir.rs, control.rs)
//!     │ apply / delete / replace_all(kind)          (kind.rs: Object, ObjectRef, Kind)
//!     ▼
//!  StateWriter (writer.rs) ── commit ──▶ watch<Arc<Snapshot>> ──▶ accept path, re-check
//! ```
//!
//! - `kind`: the kinds of object the state holds, described once.
//! - `changes`: which objects each recent commit changed.
//! - `writer`: the one writer (apply, delete, replace-all-of-kind) and the snapshots it publishes.
//! - `source`: the seam every source implements.
//! - `files`: manifests on disk, parsed into the engine's model (also `picket reach`'s input).
//! - `dir`: `--cluster-dir`, a watched directory of manifests.
//! - `kube`: the Kubernetes API (list/watch).
//! - `control`: the control plane's stream of this pod's view.
#![warn(missing_docs)]

pub mod changes;
pub mod control;
pub mod dir;
pub mod files;
pub mod kind;
pub mod kube;
pub mod source;
pub mod writer;

pub use files::{load_path, ClusterObjects, LoadError};
pub use kind::{Kind, KindSet, Object, ObjectRef};
pub use source::Source;
pub use writer::{ChangeReason, Snapshot, SnapshotRx, StateWriter};
