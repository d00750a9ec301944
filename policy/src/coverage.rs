//! Coverage: the pods that NetworkPolicy concerns and nothing enforces.
//!
//! A sidecar enforcer has a risk a CNI does not: a pod without the
//! sidecar, or whose sidecar is not ready, is not protected at all, and
//! nothing says so. A pod counts as unenforced when a policy selects it
//! (enforced or in audit mode), or its namespace is labelled for
//! injection, and its `picket-proxy` container is missing or not ready.
//! Pods with host networking (NetworkPolicy does not apply), without an
//! address yet or any more, or being deleted, do not count.
//!
//! Pure: from an index to counts. Readiness comes from the pods' status,
//! so the control plane's replicas, and `picket status`, each count the
//! whole cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::index::PolicyIndex;
use super::model::{Direction, Pod, PodKey, PolicyKey};

/// The namespace label that turns injection on.
pub const INJECT_LABEL: &str = "picket.io/inject";

/// One namespace's pods that NetworkPolicy concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceCoverage {
    /// How many pods NetworkPolicy concerns.
    pub concerned: usize,
    /// Those nothing enforces, sorted.
    pub unenforced: Vec<PodKey>,
}

/// Per namespace that has a pod NetworkPolicy concerns: those pods, and
/// the ones nothing enforces.
pub fn coverage(index: &PolicyIndex) -> BTreeMap<Arc<str>, NamespaceCoverage> {
    let mut namespaces: BTreeMap<Arc<str>, NamespaceCoverage> = BTreeMap::new();
    for pod in index.pods() {
        if !concerned(index, pod) {
            continue;
        }
        let ns = namespaces.entry(pod.key.namespace.clone()).or_default();
        ns.concerned += 1;
        if !(pod.sidecar && pod.sidecar_ready) {
            ns.unenforced.push(pod.key.clone());
        }
    }
    for ns in namespaces.values_mut() {
        ns.unenforced.sort();
    }
    namespaces
}

/// Per policy that selects unenforced pods (enforced or in audit mode):
/// those pods, sorted. What the control plane records as Events on the
/// policy.
pub fn unenforced_by_policy(index: &PolicyIndex) -> BTreeMap<PolicyKey, Vec<PodKey>> {
    let mut policies: BTreeMap<PolicyKey, Vec<PodKey>> = BTreeMap::new();
    for pod in index.pods() {
        if !concerned(index, pod) || (pod.sidecar && pod.sidecar_ready) {
            continue;
        }
        let mut selecting: Vec<&PolicyKey> = [Direction::Ingress, Direction::Egress]
            .into_iter()
            .flat_map(|d| {
                index
                    .selecting(&pod.key, d)
                    .iter()
                    .chain(index.auditing(&pod.key, d))
            })
            .map(|p| &p.key)
            .collect();
        selecting.sort();
        selecting.dedup();
        for policy in selecting {
            policies
                .entry(policy.clone())
                .or_default()
                .push(pod.key.clone());
        }
    }
    for pods in policies.values_mut() {
        pods.sort();
    }
    policies
}

/// Per namespace that has a pod NetworkPolicy concerns: how many of them
/// nothing enforces (0 when every one is).
pub fn unenforced(index: &PolicyIndex) -> BTreeMap<Arc<str>, usize> {
    coverage(index)
        .into_iter()
        .map(|(ns, c)| (ns, c.unenforced.len()))
        .collect()
}

/// Whether a policy concerns a live pod: a NetworkPolicy or a
/// ClusterNetworkPolicy with rules selects it, or its namespace is
/// labelled for injection.
fn concerned(index: &PolicyIndex, pod: &Pod) -> bool {
    if pod.host_network || pod.ips.is_empty() || pod.deleting {
        return false;
    }
    let selected = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .any(|d| {
            !index.selecting(&pod.key, d).is_empty() || !index.auditing(&pod.key, d).is_empty()
        });
    let namespace = index.namespace_labels(&pod.key.namespace);
    let cluster = index.cluster_policies().iter().any(|p| {
        !(p.ingress.is_empty() && p.egress.is_empty()) && p.selects(&pod.labels, namespace)
    });
    selected
        || cluster
        || index
            .namespace_labels(&pod.key.namespace)
            .and_then(|l| l.get(INJECT_LABEL))
            .is_some_and(|v| v == "enabled")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn pod(ns: &str, name: &str, labels: &str, status: &str) -> Pod {
        let pod: core::Pod = serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
             spec: {{containers: [{{name: app}}, {{name: picket-proxy}}]}}\n\
             status: {status}"
        ))
        .unwrap();
        convert::pod(&pod).unwrap()
    }

    fn index(pods: Vec<Pod>, injected: &[&str]) -> PolicyIndex {
        let np: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: deny, namespace: shop}\nspec: {podSelector: {matchLabels: {app: db}}}",
        )
        .unwrap();
        let namespaces = ["shop", "web", "batch"].map(|name| {
            let labels = if injected.contains(&name) {
                "{picket.io/inject: enabled}"
            } else {
                "{}"
            };
            let ns: core::Namespace =
                serde_yaml::from_str(&format!("metadata: {{name: {name}, labels: {labels}}}"))
                    .unwrap();
            convert::namespace(&ns).unwrap()
        });
        PolicyIndex::build(namespaces, pods, [convert::policy(&np).unwrap().policy])
    }

    const READY: &str = "{podIP: 10.0.0.1, containerStatuses: [{name: app, ready: true, image: a, imageID: a, restartCount: 0}, {name: picket-proxy, ready: true, image: p, imageID: p, restartCount: 0}]}";
    const NOT_READY: &str = "{podIP: 10.0.0.2, containerStatuses: [{name: picket-proxy, ready: false, image: p, imageID: p, restartCount: 3}]}";

    #[test]
    fn a_selected_pod_counts_until_its_sidecar_is_ready() {
        let unready = pod("shop", "db-0", "{app: db}", NOT_READY);
        assert!(unready.sidecar && !unready.sidecar_ready);
        let counts = unenforced(&index(vec![unready], &[]));
        assert_eq!(counts.get("shop"), Some(&1));
        let ready = pod("shop", "db-0", "{app: db}", READY);
        assert!(ready.sidecar_ready);
        let counts = unenforced(&index(vec![ready], &[]));
        assert_eq!(counts.get("shop"), Some(&0), "reported, and zero");
    }

    #[test]
    fn a_pod_without_the_sidecar_counts_where_a_policy_selects_it_or_injection_is_on() {
        let mut plain = pod("shop", "db-1", "{app: db}", READY);
        plain.sidecar = false;
        let mut web = pod("web", "front", "{app: front}", READY);
        web.sidecar = false;
        let mut batch = pod("batch", "job", "{app: job}", READY);
        batch.sidecar = false;
        let idx = index(vec![plain, web, batch], &["web"]);
        let counts = unenforced(&idx);
        assert_eq!(
            coverage(&idx)["shop"].unenforced,
            [crate::ObjectKey::parse("shop/db-1").unwrap()]
        );
        assert_eq!(counts.get("shop"), Some(&1), "a policy selects it");
        let by_policy = unenforced_by_policy(&idx);
        assert_eq!(
            by_policy.len(),
            1,
            "web's pod is unenforced, but no policy selects it"
        );
        assert_eq!(
            by_policy[&crate::ObjectKey::parse("shop/deny").unwrap()],
            [crate::ObjectKey::parse("shop/db-1").unwrap()]
        );
        assert_eq!(counts.get("web"), Some(&1), "its namespace is injected");
        assert_eq!(counts.get("batch"), None, "nothing concerns it");
    }

    #[test]
    fn a_pod_only_a_cluster_policy_selects_counts_too() {
        let mut job = pod("batch", "job", "{app: job}", READY);
        job.sidecar = false;
        let mut idx = index(vec![job], &[]);
        assert_eq!(unenforced(&idx).get("batch"), None);
        let cnp: convert::cluster::ClusterNetworkPolicy = serde_yaml::from_str(
            "metadata: {name: lockdown}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: batch}}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}",
        )
        .unwrap();
        idx.apply_cluster_policy(convert::cluster::cluster_policy(&cnp).unwrap().policy);
        assert_eq!(unenforced(&idx).get("batch"), Some(&1));
    }

    #[test]
    fn host_network_pending_and_deleting_pods_do_not_count() {
        let mut host = pod("shop", "a", "{app: db}", NOT_READY);
        host.host_network = true;
        let pending = pod("shop", "b", "{app: db}", "{}");
        let mut deleting = pod("shop", "c", "{app: db}", NOT_READY);
        deleting.deleting = true;
        let counts = unenforced(&index(vec![host, pending, deleting], &[]));
        assert_eq!(counts.get("shop"), None);
    }
}
