//! ClusterNetworkPolicies and Nodes to and from the wire (cluster-wide views).
//!
//! Strict, as the rest: an unset tier or action is refused, not read as
//! the enum's first value.

use std::collections::BTreeMap;

use ipnet::IpNet;
use picket_policy::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Node, Subject, Tier};

use super::{
    ip_from_wire, ip_to_wire, port_to_wire, ports_from_wire, selector_from_wire, selector_to_wire,
    At, InvalidMessage,
};
use crate::v1;

// === to the wire ===

/// A cluster policy on the wire.
pub fn cluster_policy_to_wire(policy: &ClusterPolicy) -> v1::ClusterPolicy {
    let (namespaces, pods) = match &policy.subject {
        Subject::Namespaces(ns) => (ns, None),
        Subject::Pods { namespaces, pods } => (namespaces, Some(pods)),
    };
    v1::ClusterPolicy {
        name: policy.name.to_string(),
        tier: match policy.tier {
            Tier::Admin => v1::Tier::Admin,
            Tier::Baseline => v1::Tier::Baseline,
        } as i32,
        priority: u32::from(policy.priority),
        namespaces: Some(selector_to_wire(namespaces)),
        pods: pods.map(selector_to_wire),
        ingress: policy.ingress.iter().map(rule_to_wire).collect(),
        egress: policy.egress.iter().map(rule_to_wire).collect(),
        audit: policy.audit,
    }
}

fn rule_to_wire(rule: &ClusterRule) -> v1::ClusterRule {
    use v1::cluster_peer::Peer;
    let strings = |values: Vec<String>| v1::Strings { values };
    v1::ClusterRule {
        name: rule.name.as_deref().map(str::to_string),
        action: match rule.action {
            Action::Accept => v1::Action::Accept,
            Action::Deny => v1::Action::Deny,
            Action::Pass => v1::Action::Pass,
        } as i32,
        peers: rule
            .peers
            .iter()
            .map(|peer| v1::ClusterPeer {
                peer: Some(match peer {
                    ClusterPeer::Namespaces(ns) => Peer::Namespaces(selector_to_wire(ns)),
                    ClusterPeer::Pods { namespaces, pods } => Peer::Pods(v1::NamespacedPods {
                        namespaces: Some(selector_to_wire(namespaces)),
                        pods: Some(selector_to_wire(pods)),
                    }),
                    ClusterPeer::Nodes(nodes) => Peer::Nodes(selector_to_wire(nodes)),
                    ClusterPeer::Networks(nets) => {
                        Peer::Networks(strings(nets.iter().map(ToString::to_string).collect()))
                    }
                    ClusterPeer::DomainNames(names) => Peer::DomainNames(strings(names.clone())),
                }),
            })
            .collect(),
        ports: rule.ports.as_ref().map(|ports| v1::Ports {
            ports: ports.iter().map(port_to_wire).collect(),
        }),
        broken: rule.broken.clone(),
    }
}

/// A node on the wire.
pub fn node_to_wire(node: &Node) -> v1::Node {
    v1::Node {
        name: node.name.to_string(),
        labels: node.labels.clone(),
        addresses: node.addresses.iter().map(ip_to_wire).collect(),
    }
}

// === from the wire ===

/// A cluster policy from the wire.
pub fn cluster_policy_from_wire(
    policy: &v1::ClusterPolicy,
) -> Result<ClusterPolicy, InvalidMessage> {
    let object = format!("clusternetworkpolicy {}", policy.name);
    let at = At { object: &object };
    if policy.name.is_empty() {
        return Err(at.err("name", "must not be empty"));
    }
    let tier = match v1::Tier::try_from(policy.tier) {
        Ok(v1::Tier::Admin) => Tier::Admin,
        Ok(v1::Tier::Baseline) => Tier::Baseline,
        Ok(v1::Tier::Unspecified) | Err(_) => {
            return Err(at.err("tier", format!("unknown tier {}", policy.tier)))
        }
    };
    let priority = u16::try_from(policy.priority)
        .ok()
        .filter(|p| *p <= 1000)
        .ok_or_else(|| {
            at.err(
                "priority",
                format!("{} is not within 0-1000", policy.priority),
            )
        })?;
    let namespaces = policy
        .namespaces
        .as_ref()
        .ok_or_else(|| at.err("namespaces", "missing"))
        .and_then(|s| selector_from_wire(&at, "namespaces", s))?;
    let subject = match &policy.pods {
        None => Subject::Namespaces(namespaces),
        Some(pods) => Subject::Pods {
            namespaces,
            pods: selector_from_wire(&at, "pods", pods)?,
        },
    };
    let rules = |field: &str, rules: &[v1::ClusterRule]| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule_from_wire(&at, &format!("{field}[{i}]"), r))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(ClusterPolicy {
        name: policy.name.as_str().into(),
        tier,
        priority,
        subject,
        ingress: rules("ingress", &policy.ingress)?,
        egress: rules("egress", &policy.egress)?,
        audit: policy.audit,
    })
}

fn rule_from_wire(
    at: &At<'_>,
    field: &str,
    rule: &v1::ClusterRule,
) -> Result<ClusterRule, InvalidMessage> {
    use v1::cluster_peer::Peer;
    let action = match v1::Action::try_from(rule.action) {
        Ok(v1::Action::Accept) => Action::Accept,
        Ok(v1::Action::Deny) => Action::Deny,
        Ok(v1::Action::Pass) => Action::Pass,
        Ok(v1::Action::Unspecified) | Err(_) => {
            return Err(at.err(
                format!("{field}.action"),
                format!("unknown action {}", rule.action),
            ))
        }
    };
    let peers = rule
        .peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            let field = format!("{field}.peers[{i}]");
            let selector = |name: &str, s: Option<&v1::Selector>| {
                s.ok_or_else(|| at.err(format!("{field}.{name}"), "missing"))
                    .and_then(|s| selector_from_wire(at, &format!("{field}.{name}"), s))
            };
            Ok(match peer.peer.as_ref() {
                Some(Peer::Namespaces(ns)) => {
                    ClusterPeer::Namespaces(selector("namespaces", Some(ns))?)
                }
                Some(Peer::Pods(p)) => ClusterPeer::Pods {
                    namespaces: selector("pods.namespaces", p.namespaces.as_ref())?,
                    pods: selector("pods.pods", p.pods.as_ref())?,
                },
                Some(Peer::Nodes(nodes)) => ClusterPeer::Nodes(selector("nodes", Some(nodes))?),
                Some(Peer::Networks(nets)) => ClusterPeer::Networks(
                    nets.values
                        .iter()
                        .map(|n| {
                            n.parse::<IpNet>().map_err(|e| {
                                at.err(format!("{field}.networks"), format!("{n:?}: {e}"))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Some(Peer::DomainNames(names)) => ClusterPeer::DomainNames(names.values.clone()),
                None => return Err(at.err(field, "a peer of no known kind")),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = rule
        .ports
        .as_ref()
        .map(|p| ports_from_wire(at, field, p))
        .transpose()?;
    Ok(ClusterRule {
        name: rule.name.as_deref().map(Into::into),
        action,
        peers,
        ports,
        broken: rule.broken.clone(),
    })
}

/// A node from the wire.
pub fn node_from_wire(node: &v1::Node) -> Result<Node, InvalidMessage> {
    let object = format!("node {}", node.name);
    let at = At { object: &object };
    if node.name.is_empty() {
        return Err(at.err("name", "must not be empty"));
    }
    let addresses = node
        .addresses
        .iter()
        .map(|a| ip_from_wire(a).ok_or_else(|| at.err("addresses", "not 4 or 16 bytes")))
        .collect::<Result<_, _>>()?;
    Ok(Node {
        name: node.name.as_str().into(),
        labels: node
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_policy::convert::cluster::{cluster_policy, ClusterNetworkPolicy};

    #[test]
    fn a_cluster_policy_and_a_node_cross_the_wire_unchanged_and_unset_enums_are_refused() {
        let cnp: ClusterNetworkPolicy = serde_yaml::from_str(
            r#"
metadata: {name: gate}
spec:
  tier: Baseline
  priority: 7
  subject: {pods: {namespaceSelector: {matchLabels: {team: pay}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [api]}]}}}
  ingress:
  - {name: gw, action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 90}}}}]}
  - {action: Pass, from: [{futurePeer: {}}]}
  egress:
  - {action: Deny, to: [{networks: [10.0.0.0/8]}, {nodes: {}}, {pods: {namespaceSelector: {}, podSelector: {}}}], protocols: [{destinationNamedPort: web}]}
  - {action: Accept, to: [{domainNames: [example.com]}]}
"#,
        )
        .unwrap();
        let policy = cluster_policy(&cnp).unwrap().policy;
        let wire = cluster_policy_to_wire(&policy);
        assert_eq!(cluster_policy_from_wire(&wire).unwrap(), policy);
        let node = Node {
            name: "n1".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            addresses: vec!["192.168.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        };
        assert_eq!(node_from_wire(&node_to_wire(&node)).unwrap(), node);

        let mut unset = wire.clone();
        unset.tier = v1::Tier::Unspecified as i32;
        assert_eq!(cluster_policy_from_wire(&unset).unwrap_err().field, "tier");
        let mut unset = wire;
        unset.ingress[0].action = v1::Action::Unspecified as i32;
        assert_eq!(
            cluster_policy_from_wire(&unset).unwrap_err().field,
            "ingress[0].action"
        );
    }
}
