//! Cluster-wide admin policy: ClusterNetworkPolicy (network-policy-api,
//! `policy.networking.k8s.io/v1alpha2`) compiled, and the two tiers it
//! fills around NetworkPolicy.
//!
//! Per direction, a side is decided in order by the Admin tier (by
//! priority, first matching rule wins: Accept, Deny, or Pass to the next
//! tier), NetworkPolicy (as [`crate::eval`] always did), the Baseline tier
//! (Accept or Deny; a Pass ends the tier), and the default: allowed.
//!
//! Order within a tier: by priority, then by name. The API lets two
//! policies share a priority and leaves the outcome to the implementation;
//! here the one whose name sorts first wins, and
//! [`ClusterPolicies::shared_priorities`] lists such pairs for a warning.
//!
//! Subjects are matched at decision time against the pod's and its
//! namespace's labels, like namespace selectors of NetworkPolicy peers: a
//! change of a cluster policy, a pod or a namespace rebuilds nothing else.
//!
//! Pure: no I/O.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::labels::LabelSource;
use super::model::{Direction, PortMatch};
use super::selector::{Labels, Selector};

/// The two tiers ClusterNetworkPolicy may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Above NetworkPolicy: cannot be overridden by namespace owners.
    Admin,
    /// Below NetworkPolicy: a default that NetworkPolicy overrides.
    Baseline,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The side allows; no lower rule or tier is consulted.
    Accept,
    /// The side denies; no lower rule or tier is consulted.
    Deny,
    /// Skips the rest of the tier: the next tier decides.
    Pass,
}

/// A compiled ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    /// The policy's name (cluster-scoped).
    pub name: Arc<str>,
    /// Its tier.
    pub tier: Tier,
    /// Its priority within the tier: lower is consulted first (0-1000).
    pub priority: u16,
    /// The pods it applies to.
    pub subject: Subject,
    /// Rules for connections into the subject pods, in precedence order.
    pub ingress: Vec<ClusterRule>,
    /// Rules for connections out of the subject pods, in precedence order.
    pub egress: Vec<ClusterRule>,
    /// In audit mode (annotation `picket.io/mode: audit`): counted only
    /// by audit verdicts, as NetworkPolicies in audit mode are.
    pub audit: bool,
}

/// The pods a cluster policy applies to (hostNetwork pods never are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every pod of the namespaces whose labels match.
    Namespaces(Selector),
    /// The pods whose labels match, in the namespaces whose labels match.
    Pods {
        /// Which namespaces.
        namespaces: Selector,
        /// Which pods of them.
        pods: Selector,
    },
}

/// One ingress or egress rule of a cluster policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// The rule's `name`, when it has one.
    pub name: Option<Arc<str>>,
    /// What it does to the connections it matches.
    pub action: Action,
    /// Its `from` or `to` peers: any one matching is enough.
    pub peers: Vec<ClusterPeer>,
    /// Its `protocols` entries; `None` matches every port.
    pub ports: Option<Vec<PortMatch>>,
    /// Set when part of the rule could not be compiled. It then fails
    /// closed as the API asks: an Accept rule matches nothing, a Deny or
    /// Pass rule denies everything.
    pub broken: Option<String>,
}

/// A peer of a cluster policy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    /// Every pod of the namespaces whose labels match.
    Namespaces(Selector),
    /// The pods whose labels match, in the namespaces whose labels match.
    Pods {
        /// Which namespaces.
        namespaces: Selector,
        /// Which pods of them.
        pods: Selector,
    },
    /// The addresses of the nodes whose labels match (egress only).
    Nodes(Selector),
    /// Any address in these networks, pods' included (egress only).
    Networks(Vec<IpNet>),
    /// Domain names (egress Accept only). The sidecar has no DNS
    /// knowledge to match them with: such a peer matches nothing, so it
    /// never widens access, and `explain` says it is unsupported.
    DomainNames(Vec<String>),
}

/// A node, for `nodes` peers: its labels and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name.
    pub name: Arc<str>,
    /// Its labels.
    pub labels: Labels,
    /// Its addresses (`status.addresses` that are IPs).
    pub addresses: Vec<IpAddr>,
}

/// The cluster policies of both tiers, each tier sorted by priority, then
/// name: the order a side consults them in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPolicies {
    admin: Vec<Arc<ClusterPolicy>>,
    baseline: Vec<Arc<ClusterPolicy>>,
}

// === impl Tier ===

impl Tier {
    /// `Admin` or `Baseline`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }

    /// `admin` or `baseline`: the metric label.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Admin => "admin",
            Tier::Baseline => "baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Action ===

impl Action {
    /// `Accept`, `Deny` or `Pass`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl ClusterPolicy ===

impl ClusterPolicy {
    /// The rules for one direction.
    pub fn rules(&self, direction: Direction) -> &[ClusterRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy applies to a pod of a namespace with these
    /// labels (`None`: the namespace is not known, so only `{}` matches).
    pub fn selects(&self, pod: &impl LabelSource, namespace: Option<&impl LabelSource>) -> bool {
        self.subject.matches(pod, namespace)
    }
}

// === impl Subject ===

impl Subject {
    /// Whether a pod with `pod` labels, of a namespace with `namespace`
    /// labels, is one of the subject's.
    pub fn matches(&self, pod: &impl LabelSource, namespace: Option<&impl LabelSource>) -> bool {
        match self {
            Subject::Namespaces(namespaces) => namespace_matches(namespaces, namespace),
            Subject::Pods { namespaces, pods } => {
                namespace_matches(namespaces, namespace) && pods.matches(pod)
            }
        }
    }
}

/// A namespace selector against a namespace's labels; an unknown
/// namespace's labels are unknown, not empty: `NotIn`/`DoesNotExist` must
/// not match it, only `{}` does. NetworkPolicy's `namespaceSelector` reads
/// it the same way.
pub(crate) fn namespace_matches(selector: &Selector, namespace: Option<&impl LabelSource>) -> bool {
    match namespace {
        Some(labels) => selector.matches(labels),
        None => selector.is_everything(),
    }
}

// === impl ClusterRule ===

impl ClusterRule {
    /// What the rule does when it matches: a broken Pass denies (fail
    /// closed), as the API asks.
    pub fn effective_action(&self) -> Action {
        match (self.action, &self.broken) {
            (Action::Pass, Some(_)) => Action::Deny,
            (action, _) => action,
        }
    }

    /// Whether the rule's peers include domain names, which are not enforced.
    pub fn has_domain_names(&self) -> bool {
        self.peers
            .iter()
            .any(|p| matches!(p, ClusterPeer::DomainNames(_)))
    }
}

// === impl ClusterPeer ===

impl fmt::Display for ClusterPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPeer::Namespaces(ns) => write!(f, "namespaces {{{ns}}}"),
            ClusterPeer::Pods { namespaces, pods } => {
                write!(f, "pods {{{pods}}} in namespaces {{{namespaces}}}")
            }
            ClusterPeer::Nodes(nodes) => write!(f, "nodes {{{nodes}}}"),
            ClusterPeer::Networks(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "networks {}", nets.join(", "))
            }
            ClusterPeer::DomainNames(names) => {
                write!(
                    f,
                    "domainNames {} (unsupported: matches nothing)",
                    names.join(", ")
                )
            }
        }
    }
}

// === impl ClusterPolicies ===

impl ClusterPolicies {
    /// Adds or replaces a policy (by name, in whichever tier it was);
    /// returns the old one.
    pub fn insert(&mut self, policy: ClusterPolicy) -> Option<Arc<ClusterPolicy>> {
        let old = self.remove(&policy.name);
        let list = self.tier_mut(policy.tier);
        let at = list.partition_point(|p| order(p) < order(&policy));
        list.insert(at, Arc::new(policy));
        old
    }

    /// Removes a policy by name; returns it.
    pub fn remove(&mut self, name: &str) -> Option<Arc<ClusterPolicy>> {
        for list in [&mut self.admin, &mut self.baseline] {
            if let Some(at) = list.iter().position(|p| &*p.name == name) {
                return Some(list.remove(at));
            }
        }
        None
    }

    /// A policy by name.
    pub fn get(&self, name: &str) -> Option<&Arc<ClusterPolicy>> {
        self.iter().find(|p| &*p.name == name)
    }

    /// One tier's policies, in the order a side consults them.
    pub fn tier(&self, tier: Tier) -> &[Arc<ClusterPolicy>] {
        match tier {
            Tier::Admin => &self.admin,
            Tier::Baseline => &self.baseline,
        }
    }

    fn tier_mut(&mut self, tier: Tier) -> &mut Vec<Arc<ClusterPolicy>> {
        match tier {
            Tier::Admin => &mut self.admin,
            Tier::Baseline => &mut self.baseline,
        }
    }

    /// Every policy: the Admin tier, then the Baseline tier, each in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClusterPolicy>> {
        self.admin.iter().chain(&self.baseline)
    }

    /// How many policies both tiers hold.
    pub fn len(&self) -> usize {
        self.admin.len() + self.baseline.len()
    }

    /// Whether no cluster policy exists: every side is then decided by
    /// NetworkPolicy alone, exactly as without tiers.
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.baseline.is_empty()
    }

    /// The pairs of policies of one tier that share a priority (the first
    /// of each pair is consulted first): the API leaves their order to the
    /// implementation, so administrators should hear of it.
    pub fn shared_priorities(&self) -> Vec<(&ClusterPolicy, &ClusterPolicy)> {
        [&self.admin, &self.baseline]
            .into_iter()
            .flat_map(|list| list.windows(2))
            .filter(|w| w[0].priority == w[1].priority)
            .map(|w| (&*w[0], &*w[1]))
            .collect()
    }
}

/// The order within a tier: priority, then name.
fn order(p: &ClusterPolicy) -> (u16, &str) {
    (p.priority, &p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, tier: Tier, priority: u16) -> ClusterPolicy {
        ClusterPolicy {
            name: name.into(),
            tier,
            priority,
            subject: Subject::Namespaces(Selector::everything()),
            ingress: Vec::new(),
            egress: Vec::new(),
            audit: false,
        }
    }

    #[test]
    fn a_tier_is_consulted_by_priority_then_name_and_shared_priorities_are_reported() {
        let mut all = ClusterPolicies::default();
        all.insert(policy("b", Tier::Admin, 10));
        all.insert(policy("a", Tier::Admin, 10));
        all.insert(policy("z", Tier::Admin, 5));
        all.insert(policy("base", Tier::Baseline, 1));
        let names: Vec<&str> = all.tier(Tier::Admin).iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["z", "a", "b"]);
        let shared: Vec<(&str, &str)> = all
            .shared_priorities()
            .into_iter()
            .map(|(a, b)| (&*a.name, &*b.name))
            .collect();
        assert_eq!(shared, [("a", "b")]);
        // Moving a policy to the other tier replaces it there.
        all.insert(policy("a", Tier::Baseline, 0));
        assert_eq!(all.tier(Tier::Admin).len(), 2);
        assert_eq!(&*all.tier(Tier::Baseline)[0].name, "a");
        assert!(all.shared_priorities().is_empty());
        assert_eq!(all.remove("z").map(|p| p.priority), Some(5));
        assert_eq!(all.len(), 3);
    }
}
