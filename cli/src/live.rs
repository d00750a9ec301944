//! The live cluster as an index: the same list-and-watch source the
//! sidecars and the control plane use, until every kind has been listed
//! once. What `picket status`, and `reach`/`explain` with `--kubeconfig`
//! or `--live`, read.
//!
//! I/O.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use picket_policy::PolicyIndex;
use picket_state::kube::KubeSource;
use picket_state::{Source as _, StateWriter};

/// How long to wait for the cluster's first complete list.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `f` on a runtime of its own.
pub fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?
        .block_on(f)
}

/// A client: from `kubeconfig`, else inferred (in-cluster, `KUBECONFIG`,
/// `~/.kube/config`), as kubectl.
pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    Ok(picket_state::kube::client(kubeconfig).await?)
}

/// The cluster's Pods, Namespaces and NetworkPolicies, listed once.
pub async fn index(client: kube::Client) -> anyhow::Result<PolicyIndex> {
    let restarts = prometheus::IntCounterVec::new(
        prometheus::Opts::new("picket_cli_watch_restarts_total", "unused"),
        &["kind"],
    )?;
    let (writer, mut snapshots) = StateWriter::new();
    let source = tokio::spawn(KubeSource::new(client, restarts).run(writer));
    let synced = tokio::time::timeout(SYNC_TIMEOUT, snapshots.wait_for(|s| s.is_some())).await;
    let snapshot = match synced {
        Ok(Ok(s)) => (*s).clone(),
        _ => None,
    };
    source.abort();
    let snapshot = snapshot.with_context(|| {
        format!(
            "the cluster's Pods, Namespaces, NetworkPolicies, ClusterNetworkPolicies and Nodes were not listed within {}s",
            SYNC_TIMEOUT.as_secs()
        )
    })?;
    Ok(snapshot.index.clone())
}
