//! The seam between where cluster state comes from and the one writer.
//!
//! The Kubernetes watch (`kube.rs`), the manifest directory (`dir.rs`) and,
//! next, the control-plane stream are implementations of one trait. Every
//! source keeps the same promises:
//!
//! - it replaces a kind wholesale ([`StateWriter::replace_all`]) only with a
//!   complete list of it, and otherwise applies and deletes objects;
//! - it commits with [`StateWriter::commit_if_complete`], so nothing is
//!   published until every kind has been listed once (the readiness latch:
//!   the data plane turns ready on the first snapshot, and until then
//!   connections wait and then reset);
//! - when it loses its upstream it keeps the last state (fail closed: losing
//!   state must never widen access) and says so once in the log.

use std::future::Future;

use crate::writer::StateWriter;

/// A source of cluster state.
pub trait Source: Send + 'static {
    /// The source's name in logs (`kube`, `files`).
    fn name(&self) -> &'static str;

    /// Feeds `writer` until the process ends.
    fn run(self, writer: StateWriter) -> impl Future<Output = ()> + Send;
}
