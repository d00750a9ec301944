//! `picket status`: is everything the policies concern enforced?
//!
//! Reads the live cluster (a kubeconfig, or in-cluster): the control
//! plane's replicas and whether each is ready, how many pods run the
//! sidecar and how many of those are ready, and, per namespace, the pods
//! NetworkPolicy concerns that nothing enforces (the same count as
//! `picket_unenforced_pods`, see [`picket_policy::coverage`]). The cluster
//! is read by the same list-and-watch source the sidecars and the control
//! plane use, until it has listed every kind once. The report fails (the
//! command exits non-zero) when a pod is unenforced, so that it can gate a
//! pipeline.
//!
//! I/O here; the report itself (`Report`, `render`) is pure.

use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use picket_policy::coverage::{coverage, NamespaceCoverage};
use picket_policy::PolicyIndex;
use serde::Serialize;

/// The control plane's pod label.
const CONTROL_SELECTOR: &str = "app.kubernetes.io/name=picket-control";

/// What `picket status` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The control plane's replicas.
    pub control_plane: ControlPlane,
    /// Pods running the sidecar, and how many report it ready.
    pub sidecars: Sidecars,
    /// Per namespace NetworkPolicy concerns, its unenforced pods.
    pub namespaces: Vec<NamespaceReport>,
    /// How many pods are unenforced in all.
    pub unenforced: usize,
}

/// The control plane's replicas, in their namespace.
#[derive(Debug, Serialize)]
pub struct ControlPlane {
    /// Where it runs.
    pub namespace: String,
    /// Each replica.
    pub replicas: Vec<Replica>,
}

/// One replica of `picket-control`.
#[derive(Debug, Serialize)]
pub struct Replica {
    /// The pod's name.
    pub name: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Container restarts, summed.
    pub restarts: i32,
}

/// The sidecars of the cluster.
#[derive(Debug, Serialize)]
pub struct Sidecars {
    /// Pods whose spec runs the sidecar.
    pub pods: usize,
    /// Of those, how many report the sidecar container ready.
    pub ready: usize,
}

/// One namespace NetworkPolicy concerns.
#[derive(Debug, Serialize)]
pub struct NamespaceReport {
    /// The namespace.
    pub namespace: String,
    /// Pods NetworkPolicy concerns there.
    pub concerned: usize,
    /// Those nothing enforces, as `namespace/name`.
    pub unenforced: Vec<String>,
}

// === impl Report ===

impl Report {
    /// The report of an index and the control plane's replicas.
    pub fn of(index: &PolicyIndex, control_plane: ControlPlane) -> Self {
        let sidecars = index.pods().filter(|p| p.sidecar && !p.host_network);
        let (pods, ready) =
            sidecars.fold((0, 0), |(n, r), p| (n + 1, r + p.sidecar_ready as usize));
        let namespaces: Vec<NamespaceReport> = coverage(index)
            .into_iter()
            .map(
                |(
                    ns,
                    NamespaceCoverage {
                        concerned,
                        unenforced,
                    },
                )| NamespaceReport {
                    namespace: ns.to_string(),
                    concerned,
                    unenforced: unenforced.iter().map(ToString::to_string).collect(),
                },
            )
            .collect();
        let unenforced = namespaces.iter().map(|n| n.unenforced.len()).sum();
        Self {
            control_plane,
            sidecars: Sidecars { pods, ready },
            namespaces,
            unenforced,
        }
    }

    /// Whether something is wrong: a pod nothing enforces, or a control
    /// plane whose every replica is unready (sidecars that use it cannot
    /// start). A cluster without one (sidecars watching the API directly)
    /// is not wrong.
    pub fn failed(&self) -> bool {
        let replicas = &self.control_plane.replicas;
        self.unenforced > 0 || (!replicas.is_empty() && replicas.iter().all(|r| !r.ready))
    }

    /// The report for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let cp = &self.control_plane;
        let ready = cp.replicas.iter().filter(|r| r.ready).count();
        let _ = writeln!(
            out,
            "control plane ({}): {} replicas, {ready} ready",
            cp.namespace,
            cp.replicas.len()
        );
        for r in &cp.replicas {
            let state = if r.ready { "ready" } else { "NOT READY" };
            let _ = writeln!(out, "  {}  {state}  restarts {}", r.name, r.restarts);
        }
        if !cp.replicas.is_empty() && ready == 0 {
            let _ = writeln!(
                out,
                "CONTROL PLANE DOWN: no replica is ready; sidecars that use it cannot start"
            );
        }
        let _ = writeln!(
            out,
            "sidecars: {} pods run one, {} ready",
            self.sidecars.pods, self.sidecars.ready
        );
        if self.unenforced == 0 {
            let _ = writeln!(
                out,
                "enforced: every pod NetworkPolicy concerns has a ready sidecar ({} namespaces)",
                self.namespaces.len()
            );
            return out;
        }
        let _ = writeln!(
            out,
            "UNENFORCED: {} pods that NetworkPolicy concerns have no ready sidecar; nothing enforces their policies",
            self.unenforced
        );
        for ns in self.namespaces.iter().filter(|n| !n.unenforced.is_empty()) {
            let _ = writeln!(
                out,
                "  {}: {} of {}: {}",
                ns.namespace,
                ns.unenforced.len(),
                ns.concerned,
                ns.unenforced.join(", ")
            );
        }
        out
    }
}

/// Reads the cluster and reports.
pub fn status(kubeconfig: Option<&PathBuf>, control_namespace: &str) -> anyhow::Result<Report> {
    crate::live::block_on(async {
        let client = crate::live::client(kubeconfig).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), control_namespace);
        let listed = pods
            .list(&ListParams::default().labels(CONTROL_SELECTOR))
            .await
            .with_context(|| {
                format!("cannot list the control plane's pods in {control_namespace}")
            })?;
        let mut replicas: Vec<Replica> = listed.items.iter().map(replica).collect();
        replicas.sort_by(|a, b| a.name.cmp(&b.name));
        let index = crate::live::index(client).await?;
        Ok(Report::of(
            &index,
            ControlPlane {
                namespace: control_namespace.to_string(),
                replicas,
            },
        ))
    })
}

fn replica(pod: &Pod) -> Replica {
    let status = pod.status.as_ref();
    Replica {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |c| c.iter().map(|c| c.restart_count).sum()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(replicas: &[bool]) -> Report {
        Report::of(
            &PolicyIndex::new(),
            ControlPlane {
                namespace: "picket-system".into(),
                replicas: replicas
                    .iter()
                    .enumerate()
                    .map(|(i, ready)| Replica {
                        name: format!("picket-control-{i}"),
                        ready: *ready,
                        restarts: 0,
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn a_control_plane_with_no_ready_replica_fails_and_none_at_all_does_not() {
        assert!(!report(&[]).failed(), "sidecars watching the API directly");
        assert!(!report(&[true, false]).failed());
        let down = report(&[false, false]);
        assert!(down.failed());
        assert!(
            down.render().contains("CONTROL PLANE DOWN"),
            "{}",
            down.render()
        );
    }
}
