//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) and Node to
//! the engine's model.
//!
//! The wire types follow the network-policy-api's `apis/v1alpha2`, written
//! by hand with serde: every field the API defines, unknown fields kept
//! out. What the CRD's validation would refuse, and what a newer CRD may
//! add that these types do not know (a peer or protocol with none of the
//! known fields set), fails closed as the API asks, per rule: an Accept
//! rule matches nothing, a Deny or Pass rule denies everything. What makes
//! the whole object unusable (no subject, an unknown tier) makes the
//! policy deny every connection of every pod it might select, both ways,
//! in the Admin tier at its priority.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::{cidr, mode, port_number, required, selector, InvalidField};
use crate::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Node, Subject, Tier};
use crate::model::{PortMatch, PortSpec, Protocol};
use crate::selector::Selector;

/// The API group and version served.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// The kind.
pub const KIND: &str = "ClusterNetworkPolicy";

/// A ClusterNetworkPolicy as the API serves it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    /// Object metadata (cluster-scoped: no namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: Spec,
}

/// `spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// `Admin` or `Baseline`.
    #[serde(default)]
    pub tier: String,
    /// 0-1000; lower first (required).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Exactly one of its fields set.
    #[serde(default)]
    pub subject: SubjectSpec,
    /// Ingress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<RuleSpec>,
    /// Egress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<RuleSpec>,
    /// Fields a newer API may add: any makes the policy unreadable.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// `spec.subject`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubjectSpec {
    /// Every pod of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// These pods of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Fields a newer API may add: any makes the subject unknown.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// `pods` of a subject or peer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// `{}` or absent: every namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Required; `{}`: every pod.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Fields a newer API may add.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// An ingress or egress rule (`from` for ingress, `to` for egress).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// The rule's name, for reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    /// Ingress peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<PeerSpec>>,
    /// Egress peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<PeerSpec>>,
    /// Ports; absent matches every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolSpec>>,
    /// Fields a newer API may add: any breaks the rule.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// A peer: exactly one field set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// Every pod of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// These pods of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// These nodes' addresses (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Domain names (egress, Accept only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
    /// Fields a newer API may add.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// A `protocols` entry: exactly one field set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolSpec {
    /// TCP ports.
    #[serde(default, rename = "tcp", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPorts>,
    /// UDP ports.
    #[serde(default, rename = "udp", skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPorts>,
    /// SCTP ports.
    #[serde(default, rename = "sctp", skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPorts>,
    /// A container port name on the destination pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_named_port: String,
    /// Fields a newer API may add.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// `tcp`, `udp` or `sctp` of a protocols entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    /// The destination port (the API requires one field set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<PortSpecWire>,
    /// Fields a newer API may add.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// A destination port: a number or a range.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortSpecWire {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// An inclusive range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
    /// Fields a newer API may add.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// An inclusive port range, `start < end`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PortRange {
    /// First port.
    pub start: i64,
    /// Last port.
    pub end: i64,
}

/// A compiled cluster policy, with the errors of its broken rules (or of
/// the whole object, when it had to fail closed entirely).
#[derive(Clone, Debug)]
pub struct CompiledClusterPolicy {
    /// The policy.
    pub policy: ClusterPolicy,
    /// One entry per problem, naming the field.
    pub errors: Vec<InvalidField>,
}

/// Compiles a ClusterNetworkPolicy, failing closed: an object whose tier,
/// priority or subject cannot be read becomes an Admin-tier deny-all of
/// every pod both ways (at its priority when that could be read, else
/// first), with the error; dropping it could open what it was meant to
/// close. Only an object without a name is an error.
pub fn cluster_policy(cnp: &ClusterNetworkPolicy) -> Result<CompiledClusterPolicy, InvalidField> {
    let name = cnp
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| required("metadata.name"))?;
    let mut errors = Vec::new();
    let audit = mode(&cnp.metadata).unwrap_or_else(|e| {
        errors.push(e);
        false
    });
    let spec = &cnp.spec;
    let priority = match spec.priority {
        None => Err(required("spec.priority")),
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p <= 1000)
            .ok_or_else(|| InvalidField {
                field: "spec.priority".into(),
                reason: format!("{p} is not within 0-1000"),
            }),
    };
    let unknown = spec.unknown.keys().next().map(|name| InvalidField {
        field: format!("spec.{name}"),
        reason: "unknown field (a newer API?)".into(),
    });
    let tier = match spec.tier.as_str() {
        "Admin" => Ok(Tier::Admin),
        "Baseline" => Ok(Tier::Baseline),
        other => Err(InvalidField {
            field: "spec.tier".into(),
            reason: format!("unknown tier {other:?} (expected Admin or Baseline)"),
        }),
    };
    let subject = subject(&spec.subject);
    let (tier, priority, subject) = match (tier, priority, subject, unknown) {
        (Ok(tier), Ok(priority), Ok(subject), None) => (tier, priority, subject),
        (tier, priority, subject, unknown) => {
            let (priority, priority_err) = match priority {
                Ok(p) => (p, None),
                Err(e) => (0, Some(e)),
            };
            errors.extend(
                [tier.err(), priority_err, subject.err(), unknown]
                    .into_iter()
                    .flatten(),
            );
            return Ok(CompiledClusterPolicy {
                policy: deny_all(name, priority, audit, &errors),
                errors,
            });
        }
    };
    let ingress = rules(&spec.ingress, "spec.ingress", "from", &mut errors);
    let egress = rules(&spec.egress, "spec.egress", "to", &mut errors);
    Ok(CompiledClusterPolicy {
        policy: ClusterPolicy {
            name: name.into(),
            tier,
            priority,
            subject,
            ingress,
            egress,
            audit,
        },
        errors,
    })
}

/// The policy an unreadable object becomes: Admin tier, every pod, every
/// connection both ways denied.
fn deny_all(name: &str, priority: u16, audit: bool, errors: &[InvalidField]) -> ClusterPolicy {
    let reason: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let rule = ClusterRule {
        name: None,
        action: Action::Deny,
        peers: Vec::new(),
        ports: None,
        broken: Some(reason.join("; ")),
    };
    ClusterPolicy {
        name: name.into(),
        tier: Tier::Admin,
        priority,
        subject: Subject::Namespaces(Selector::everything()),
        ingress: vec![rule.clone()],
        egress: vec![rule],
        audit,
    }
}

fn subject(s: &SubjectSpec) -> Result<Subject, InvalidField> {
    let field = "spec.subject";
    if let Some(name) = s.unknown.keys().next() {
        return Err(InvalidField {
            field: format!("{field}.{name}"),
            reason: "unknown subject type".into(),
        });
    }
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(selector(
            Some(ns),
            &format!("{field}.namespaces"),
        )?)),
        (None, Some(pods)) => {
            let (namespaces, pods) = namespaced_pod(pods, &format!("{field}.pods"))?;
            Ok(Subject::Pods { namespaces, pods })
        }
        _ => Err(InvalidField {
            field: field.into(),
            reason: "exactly one of namespaces or pods must be set".into(),
        }),
    }
}

fn namespaced_pod(p: &NamespacedPod, at: &str) -> Result<(Selector, Selector), InvalidField> {
    if let Some(name) = p.unknown.keys().next() {
        return Err(InvalidField {
            field: format!("{at}.{name}"),
            reason: "unknown field".into(),
        });
    }
    let Some(pods) = &p.pod_selector else {
        return Err(required(&format!("{at}.podSelector")));
    };
    Ok((
        selector(
            Some(&p.namespace_selector),
            &format!("{at}.namespaceSelector"),
        )?,
        selector(Some(pods), &format!("{at}.podSelector"))?,
    ))
}

fn rules(
    specs: &[RuleSpec],
    at: &str,
    peers_name: &str,
    errors: &mut Vec<InvalidField>,
) -> Vec<ClusterRule> {
    specs
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r, &format!("{at}[{i}]"), peers_name, errors))
        .collect()
}

fn rule(r: &RuleSpec, at: &str, peers_name: &str, errors: &mut Vec<InvalidField>) -> ClusterRule {
    let name = (!r.name.is_empty()).then(|| r.name.as_str().into());
    let action = match r.action.as_str() {
        "Accept" => Ok(Action::Accept),
        "Deny" => Ok(Action::Deny),
        "Pass" => Ok(Action::Pass),
        other => Err(InvalidField {
            field: format!("{at}.action"),
            reason: format!("unknown action {other:?} (expected Accept, Deny or Pass): denies"),
        }),
    };
    let action = match action {
        Ok(action) => action,
        Err(e) => {
            // Which action was meant is unknown: the safe reading denies.
            let broken = e.to_string();
            errors.push(e);
            return ClusterRule {
                name,
                action: Action::Deny,
                peers: Vec::new(),
                ports: None,
                broken: Some(broken),
            };
        }
    };
    let compiled = (|| {
        if let Some(name) = r.unknown.keys().next() {
            return Err(InvalidField {
                field: format!("{at}.{name}"),
                reason: "unknown field (a newer API?)".into(),
            });
        }
        let (peers_field, other) = match peers_name {
            "from" => (&r.from, &r.to),
            _ => (&r.to, &r.from),
        };
        if other.is_some() {
            let wrong = if peers_name == "from" { "to" } else { "from" };
            return Err(InvalidField {
                field: format!("{at}.{wrong}"),
                reason: format!("not a field of this direction's rules (expected {peers_name})"),
            });
        }
        let list = peers_field.as_deref().unwrap_or_default();
        if list.is_empty() {
            return Err(InvalidField {
                field: format!("{at}.{peers_name}"),
                reason: "must list at least one peer".into(),
            });
        }
        let peers = list
            .iter()
            .enumerate()
            .map(|(i, p)| {
                peer(
                    p,
                    &format!("{at}.{peers_name}[{i}]"),
                    peers_name == "to",
                    action,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ports = match &r.protocols {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(InvalidField {
                    field: format!("{at}.protocols"),
                    reason: "must list at least one entry when present".into(),
                })
            }
            Some(list) => {
                let mut ports = Vec::new();
                for (i, p) in list.iter().enumerate() {
                    ports.extend(protocol(p, &format!("{at}.protocols[{i}]"))?);
                }
                Some(ports)
            }
        };
        Ok(ClusterRule {
            name: name.clone(),
            action,
            peers,
            ports,
            broken: None,
        })
    })();
    compiled.unwrap_or_else(|e| {
        let broken = e.to_string();
        errors.push(e);
        ClusterRule {
            name,
            action,
            peers: Vec::new(),
            ports: None,
            broken: Some(broken),
        }
    })
}

fn peer(p: &PeerSpec, at: &str, egress: bool, action: Action) -> Result<ClusterPeer, InvalidField> {
    if let Some(name) = p.unknown.keys().next() {
        return Err(InvalidField {
            field: format!("{at}.{name}"),
            reason: "unknown peer type".into(),
        });
    }
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(InvalidField {
            field: at.into(),
            reason: "exactly one of namespaces, pods, nodes, networks or domainNames must be set"
                .into(),
        });
    }
    let egress_only = |field: &str| {
        if egress {
            Ok(())
        } else {
            Err(InvalidField {
                field: format!("{at}.{field}"),
                reason: "only egress rules may name this peer type".into(),
            })
        }
    };
    if let Some(ns) = &p.namespaces {
        return Ok(ClusterPeer::Namespaces(selector(
            Some(ns),
            &format!("{at}.namespaces"),
        )?));
    }
    if let Some(pods) = &p.pods {
        let (namespaces, pods) = namespaced_pod(pods, &format!("{at}.pods"))?;
        return Ok(ClusterPeer::Pods { namespaces, pods });
    }
    if let Some(nodes) = &p.nodes {
        egress_only("nodes")?;
        return Ok(ClusterPeer::Nodes(selector(
            Some(nodes),
            &format!("{at}.nodes"),
        )?));
    }
    if let Some(networks) = &p.networks {
        egress_only("networks")?;
        if networks.is_empty() {
            return Err(InvalidField {
                field: format!("{at}.networks"),
                reason: "must list at least one CIDR".into(),
            });
        }
        let nets = networks
            .iter()
            .enumerate()
            .map(|(i, n)| cidr(n, &format!("{at}.networks[{i}]")))
            .collect::<Result<_, _>>()?;
        return Ok(ClusterPeer::Networks(nets));
    }
    let names = p.domain_names.clone().unwrap_or_default();
    egress_only("domainNames")?;
    if action != Action::Accept {
        return Err(InvalidField {
            field: format!("{at}.domainNames"),
            reason: format!("only Accept rules may name domains, not {action}"),
        });
    }
    Ok(ClusterPeer::DomainNames(names))
}

/// One `protocols` entry: its port matches (a named port matches on any
/// protocol the destination declares it for).
fn protocol(p: &ProtocolSpec, at: &str) -> Result<Vec<PortMatch>, InvalidField> {
    if let Some(name) = p.unknown.keys().next() {
        return Err(InvalidField {
            field: format!("{at}.{name}"),
            reason: "unknown protocol match".into(),
        });
    }
    let named = !p.destination_named_port.is_empty();
    let set = [p.tcp.is_some(), p.udp.is_some(), p.sctp.is_some(), named];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(InvalidField {
            field: at.into(),
            reason: "exactly one of tcp, udp, sctp or destinationNamedPort must be set".into(),
        });
    }
    if named {
        let name = &p.destination_named_port;
        return Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .map(|protocol| PortMatch {
                protocol,
                port: PortSpec::Named(name.clone()),
            })
            .collect());
    }
    let (protocol, ports, field) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(ports), _, _) => (Protocol::Tcp, ports, "tcp"),
        (_, Some(ports), _) => (Protocol::Udp, ports, "udp"),
        (_, _, Some(ports)) => (Protocol::Sctp, ports, "sctp"),
        _ => unreachable!("one is set"),
    };
    if let Some(name) = ports.unknown.keys().next() {
        return Err(InvalidField {
            field: format!("{at}.{field}.{name}"),
            reason: "unknown field".into(),
        });
    }
    let at = format!("{at}.{field}.destinationPort");
    let port = match &ports.destination_port {
        // The API requires a field: none is one a newer API added.
        None => return Err(one_of_number_or_range(&at)),
        Some(wire) if !wire.unknown.is_empty() => return Err(one_of_number_or_range(&at)),
        Some(PortSpecWire {
            number: Some(n),
            range: None,
            ..
        }) => {
            let n = port_number(*n, &format!("{at}.number"))?;
            PortSpec::Range(n, n)
        }
        Some(PortSpecWire {
            number: None,
            range: Some(r),
            ..
        }) => {
            let start = port_number(r.start, &format!("{at}.range.start"))?;
            let end = port_number(r.end, &format!("{at}.range.end"))?;
            if start >= end {
                return Err(InvalidField {
                    field: format!("{at}.range"),
                    reason: format!("start {start} must be below end {end}"),
                });
            }
            PortSpec::Range(start, end)
        }
        Some(_) => {
            return Err(InvalidField {
                field: at,
                reason: "exactly one of number or range must be set".into(),
            })
        }
    };
    Ok(vec![PortMatch { protocol, port }])
}

/// A `destinationPort` that holds neither a number nor a range (or a field a newer API added).
fn one_of_number_or_range(at: &str) -> InvalidField {
    InvalidField {
        field: at.into(),
        reason: "exactly one of number or range must be set".into(),
    }
}

/// Converts a Node: its labels and the IPs of `status.addresses`.
pub fn node(n: &core::Node) -> Result<Node, InvalidField> {
    let name = n
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| required("metadata.name"))?;
    let mut addresses = Vec::new();
    for a in n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
    {
        // Hostnames are addresses too; only IPs can match a connection.
        if let Ok(ip) = IpAddr::from_str(a.address.trim()) {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    Ok(Node {
        name: name.into(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        addresses,
    })
}

#[cfg(test)]
mod tests;
