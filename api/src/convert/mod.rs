//! The engine's model to and from the wire.
//!
//! Pure. Decoding is strict and fails closed: a message the sidecar cannot
//! read exactly (an address of the wrong length, an unknown enum value, a
//! port out of range) is an error naming the object and the field, and the
//! sidecar keeps its last view rather than apply part of one.

use std::net::IpAddr;

use ipnet::IpNet;
use picket_policy::selector::{Operator, Requirement};
use picket_policy::{
    CompiledSide, ContainerPort, Endpoint, EndpointSlice, IpBlock, MtlsMode, Namespace,
    NamespaceScope, ObjectKey, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule, Selector,
    Service, ServicePort, TowardRule,
};

use crate::v1;

pub mod cluster;

/// A message that does not decode into the model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{object}: {field}: {reason}")]
pub struct InvalidMessage {
    /// The object, as `kind namespace/name`.
    pub object: String,
    /// The field, relative to the object.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Where in a message decoding is, for errors.
struct At<'a> {
    object: &'a str,
}

impl At<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> InvalidMessage {
        InvalidMessage {
            object: self.object.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One decoded `WatchResponse`: what to apply and delete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    /// The commit's generation.
    pub generation: u64,
    /// Drop everything held before applying.
    pub full: bool,
    /// Namespaces to add or replace.
    pub namespaces: Vec<Namespace>,
    /// Pods to add or replace.
    pub pods: Vec<Pod>,
    /// Policies to add or replace.
    pub policies: Vec<Policy>,
    /// Objects to delete.
    pub removed: Vec<Removed>,
    /// Answers to `Resolve`.
    pub resolved: Vec<(IpAddr, Resolution)>,
    /// Sources' egress sides toward the view's pod to set or remove.
    pub egress: Vec<SideEntry>,
    /// Outbound parts: destinations' ingress sides toward the view's pod
    /// to set or remove.
    pub ingress: Vec<SideEntry>,
    /// Outbound parts: Services to add or replace.
    pub services: Vec<Service>,
    /// Outbound parts: EndpointSlices to add or replace.
    pub slices: Vec<EndpointSlice>,
    /// A full view with outbound parts.
    pub outbound: bool,
    /// More parts of this commit follow: publish nothing yet.
    pub more: bool,
    /// A full view of the whole cluster, without compiled sides (cluster
    /// policies concern the pod): other pods' sides come from their policies.
    pub cluster_wide: bool,
    /// ClusterNetworkPolicies to add or replace (cluster-wide views).
    pub cluster_policies: Vec<picket_policy::ClusterPolicy>,
    /// Nodes to add or replace (cluster-wide views).
    pub nodes: Vec<picket_policy::Node>,
}

/// The answer about an address the view does not know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Some pod of the cluster holds it.
    pub pod: bool,
    /// The pod holding it is meshed: who its certificate must name.
    pub meshed: Option<MeshedPod>,
}

/// A meshed pod, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshedPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its service account.
    pub service_account: String,
    /// It also originates mTLS (plaintext from its address is a forgery).
    pub originates_mtls: bool,
}

/// One other pod's side (a source's egress, a destination's ingress)
/// toward the view's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SideEntry {
    /// A pod of the view; `None`: it is not isolated that way (remove).
    Pod(ObjectKey, Option<CompiledSide>),
    /// The pods claiming each of these addresses, which the view holds no
    /// pod for (the same for all of them); none: remove.
    Addresses(Vec<IpAddr>, Vec<CompiledSide>),
}

/// An object to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// A namespace, by name.
    Namespace(String),
    /// A pod.
    Pod(ObjectKey),
    /// A policy.
    Policy(ObjectKey),
    /// A Service.
    Service(ObjectKey),
    /// An EndpointSlice.
    EndpointSlice(ObjectKey),
    /// A ClusterNetworkPolicy, by name.
    ClusterPolicy(String),
    /// A Node, by name.
    Node(String),
}

/// Decodes a whole message, or fails naming the first bad object: a
/// message is applied entirely or not at all.
pub fn decode(msg: &v1::WatchResponse) -> Result<Update, InvalidMessage> {
    if msg.full && msg.view_format != crate::VIEW_FORMAT {
        return Err(InvalidMessage {
            object: "view".into(),
            field: "view_format".into(),
            reason: format!(
                "the control plane serves view format {}, this sidecar speaks {}: upgrade picket-control",
                msg.view_format,
                crate::VIEW_FORMAT
            ),
        });
    }
    let removed = msg
        .removed
        .iter()
        .map(|r| {
            let at = At {
                object: &format!("removed {}/{}", r.namespace, r.name),
            };
            match v1::Kind::try_from(r.kind) {
                Ok(v1::Kind::Namespace) if !r.name.is_empty() => {
                    Ok(Removed::Namespace(r.name.clone()))
                }
                Ok(v1::Kind::Pod) => Ok(Removed::Pod(key(&at, &r.namespace, &r.name)?)),
                Ok(v1::Kind::Policy) => Ok(Removed::Policy(key(&at, &r.namespace, &r.name)?)),
                Ok(v1::Kind::Service) => Ok(Removed::Service(key(&at, &r.namespace, &r.name)?)),
                Ok(v1::Kind::EndpointSlice) => {
                    Ok(Removed::EndpointSlice(key(&at, &r.namespace, &r.name)?))
                }
                Ok(v1::Kind::ClusterPolicy) if !r.name.is_empty() => {
                    Ok(Removed::ClusterPolicy(r.name.clone()))
                }
                Ok(v1::Kind::Node) if !r.name.is_empty() => Ok(Removed::Node(r.name.clone())),
                _ => Err(at.err("kind", format!("unknown kind {}", r.kind))),
            }
        })
        .collect::<Result<_, _>>()?;
    let resolved = msg
        .resolved
        .iter()
        .map(|r| {
            ip_from_wire(&r.ip)
                .map(|ip| {
                    let meshed = r.meshed.as_ref().map(|m| MeshedPod {
                        namespace: m.namespace.clone(),
                        name: m.name.clone(),
                        uid: m.uid.clone(),
                        service_account: m.service_account.clone(),
                        originates_mtls: m.originates_mtls,
                    });
                    (ip, Resolution { pod: r.pod, meshed })
                })
                .ok_or_else(|| InvalidMessage {
                    object: "resolved".into(),
                    field: "ip".into(),
                    reason: "not 4 or 16 bytes".into(),
                })
        })
        .collect::<Result<_, _>>()?;
    let sides = |direction: &str, entries: &[v1::SourceEgress]| {
        entries
            .iter()
            .map(|e| side_from_wire(direction, e))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Update {
        generation: msg.generation,
        more: msg.more,
        egress: sides("egress", &msg.egress)?,
        ingress: sides("ingress", &msg.ingress)?,
        services: msg
            .services
            .iter()
            .map(service_from_wire)
            .collect::<Result<_, _>>()?,
        slices: msg
            .endpoint_slices
            .iter()
            .map(slice_from_wire)
            .collect::<Result<_, _>>()?,
        outbound: msg.outbound,
        resolved,
        full: msg.full,
        cluster_wide: msg.cluster_wide,
        cluster_policies: msg
            .cluster_policies
            .iter()
            .map(cluster::cluster_policy_from_wire)
            .collect::<Result<_, _>>()?,
        nodes: msg
            .nodes
            .iter()
            .map(cluster::node_from_wire)
            .collect::<Result<_, _>>()?,
        namespaces: msg
            .namespaces
            .iter()
            .map(namespace_from_wire)
            .collect::<Result<_, _>>()?,
        pods: msg
            .pods
            .iter()
            .map(pod_from_wire)
            .collect::<Result<_, _>>()?,
        policies: msg
            .policies
            .iter()
            .map(policy_from_wire)
            .collect::<Result<_, _>>()?,
        removed,
    })
}

// === to the wire ===

/// A pod's side toward the view's pod on the wire (`None`: remove).
pub fn pod_side_to_wire(key: &ObjectKey, egress: Option<&CompiledSide>) -> v1::SourceEgress {
    v1::SourceEgress {
        pod: Some(v1::PodRef {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            uid: String::new(),
        }),
        addresses: Vec::new(),
        claimants: egress.into_iter().map(toward_to_wire).collect(),
    }
}

/// The sides toward the view's pod of the pods claiming each of `ips` (the
/// same for all; none: remove) on the wire.
pub fn addresses_side_to_wire<'a>(
    ips: &[IpAddr],
    claimants: impl IntoIterator<Item = &'a CompiledSide>,
) -> v1::SourceEgress {
    v1::SourceEgress {
        pod: None,
        addresses: ips.iter().map(ip_to_wire).collect(),
        claimants: claimants.into_iter().map(toward_to_wire).collect(),
    }
}

fn toward_to_wire(egress: &CompiledSide) -> v1::EgressToward {
    let rules = |rules: &[TowardRule]| {
        rules
            .iter()
            .map(|r| v1::TowardRule {
                policy_namespace: r.policy.namespace.to_string(),
                policy_name: r.policy.name.to_string(),
                index: r.index as u32,
                rule: Some(rule_to_wire(&r.rule)),
            })
            .collect()
    };
    v1::EgressToward {
        policies: egress.policies as u32,
        rules: rules(&egress.rules),
        audited_policies: egress.audited as u32,
        audited_rules: rules(&egress.audited_rules),
    }
}

/// A namespace on the wire.
pub fn namespace_to_wire(ns: &Namespace) -> v1::Namespace {
    v1::Namespace {
        name: ns.name.to_string(),
        labels: ns.labels.clone(),
        audit: ns.audit,
    }
}

/// A pod on the wire.
pub fn pod_to_wire(pod: &Pod) -> v1::Pod {
    v1::Pod {
        namespace: pod.key.namespace.to_string(),
        name: pod.key.name.to_string(),
        labels: pod.labels.clone(),
        ips: pod.ips.iter().map(ip_to_wire).collect(),
        host_ips: pod.host_ips.iter().map(ip_to_wire).collect(),
        ports: pod
            .ports
            .iter()
            .map(|p| v1::ContainerPort {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: protocol_to_wire(p.protocol) as i32,
            })
            .collect(),
        host_network: pod.host_network,
        deleting: pod.deleting,
        created: pod.created,
        uid: pod.uid.to_string(),
        service_account: pod.service_account.to_string(),
        sidecar: pod.sidecar,
        mtls: mtls_to_wire(pod.mtls) as i32,
        outbound_exempt: pod.outbound_exempt,
    }
}

fn mtls_to_wire(mode: MtlsMode) -> v1::MtlsMode {
    match mode {
        MtlsMode::Off => v1::MtlsMode::MtlsOff,
        MtlsMode::Permissive => v1::MtlsMode::MtlsPermissive,
        MtlsMode::Strict => v1::MtlsMode::MtlsStrict,
    }
}

/// A mode from the wire; one this sidecar does not know is strict (fail
/// closed: a newer mode is never weaker than plaintext-by-policy).
fn mtls_from_wire(mode: i32) -> MtlsMode {
    match v1::MtlsMode::try_from(mode) {
        Ok(v1::MtlsMode::MtlsOff) => MtlsMode::Off,
        Ok(v1::MtlsMode::MtlsPermissive) => MtlsMode::Permissive,
        Ok(v1::MtlsMode::MtlsStrict) | Err(_) => MtlsMode::Strict,
    }
}

/// A Service on the wire.
pub fn service_to_wire(service: &Service) -> v1::Service {
    v1::Service {
        namespace: service.key.namespace.to_string(),
        name: service.key.name.to_string(),
        addresses: service.addresses.iter().map(ip_to_wire).collect(),
        ports: service.ports.iter().map(service_port_to_wire).collect(),
    }
}

/// An EndpointSlice on the wire.
pub fn slice_to_wire(slice: &EndpointSlice) -> v1::EndpointSlice {
    v1::EndpointSlice {
        namespace: slice.key.namespace.to_string(),
        name: slice.key.name.to_string(),
        service: slice
            .service
            .as_ref()
            .map(|s| s.name.to_string())
            .unwrap_or_default(),
        ports: slice.ports.iter().map(service_port_to_wire).collect(),
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| v1::Endpoint {
                addresses: e.addresses.iter().map(ip_to_wire).collect(),
                ready: e.ready,
                pod: e.pod.as_ref().map(|p| v1::PodRef {
                    namespace: p.namespace.to_string(),
                    name: p.name.to_string(),
                    uid: String::new(),
                }),
            })
            .collect(),
    }
}

fn service_port_to_wire(port: &ServicePort) -> v1::ServicePort {
    v1::ServicePort {
        name: port.name.as_ref().map(|n| n.to_string()),
        port: u32::from(port.port),
        protocol: protocol_to_wire(port.protocol) as i32,
    }
}

/// A compiled policy on the wire.
pub fn policy_to_wire(policy: &Policy) -> v1::Policy {
    let rules = |rules: &Option<Vec<Rule>>| {
        rules.as_ref().map(|rules| v1::Rules {
            rules: rules.iter().map(rule_to_wire).collect(),
        })
    };
    v1::Policy {
        namespace: policy.key.namespace.to_string(),
        name: policy.key.name.to_string(),
        pod_selector: Some(selector_to_wire(&policy.pod_selector)),
        ingress: rules(&policy.ingress),
        egress: rules(&policy.egress),
        audit: policy.audit,
    }
}

fn rule_to_wire(rule: &Rule) -> v1::Rule {
    v1::Rule {
        peers: rule.peers.as_ref().map(|peers| v1::Peers {
            peers: peers.iter().map(peer_to_wire).collect(),
        }),
        ports: rule.ports.as_ref().map(|ports| v1::Ports {
            ports: ports.iter().map(port_to_wire).collect(),
        }),
        broken: rule.broken.clone(),
    }
}

fn peer_to_wire(peer: &Peer) -> v1::Peer {
    use v1::pods_peer::Namespaces;
    let peer = match peer {
        Peer::Pods { namespaces, pods } => v1::peer::Peer::Pods(v1::PodsPeer {
            namespaces: Some(match namespaces {
                NamespaceScope::Policy(ns) => Namespaces::PolicyNamespace(ns.to_string()),
                NamespaceScope::Selected(s) => Namespaces::Selected(selector_to_wire(s)),
            }),
            pods: pods.as_ref().map(selector_to_wire),
        }),
        Peer::IpBlock(block) => v1::peer::Peer::IpBlock(v1::IpBlock {
            cidr: block.cidr.to_string(),
            except: block.except.iter().map(ToString::to_string).collect(),
        }),
    };
    v1::Peer { peer: Some(peer) }
}

fn port_to_wire(entry: &PortMatch) -> v1::PortMatch {
    use v1::port_match::Port;
    v1::PortMatch {
        protocol: protocol_to_wire(entry.protocol) as i32,
        port: Some(match &entry.port {
            PortSpec::Any => Port::Any(v1::Empty {}),
            PortSpec::Range(start, end) => Port::Range(v1::PortRange {
                start: u32::from(*start),
                end: u32::from(*end),
            }),
            PortSpec::Named(name) => Port::Named(name.clone()),
        }),
    }
}

fn selector_to_wire(selector: &Selector) -> v1::Selector {
    v1::Selector {
        requirements: selector
            .requirements()
            .iter()
            .map(|r| {
                let (operator, values) = match &r.operator {
                    Operator::In(v) => (v1::Operator::In, v.clone()),
                    Operator::NotIn(v) => (v1::Operator::NotIn, v.clone()),
                    Operator::Exists => (v1::Operator::Exists, Vec::new()),
                    Operator::DoesNotExist => (v1::Operator::DoesNotExist, Vec::new()),
                };
                v1::Requirement {
                    key: r.key.clone(),
                    operator: operator as i32,
                    values,
                }
            })
            .collect(),
    }
}

/// An address on the wire: 4 or 16 bytes.
pub fn ip_to_wire(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn protocol_to_wire(protocol: Protocol) -> v1::Protocol {
    match protocol {
        Protocol::Tcp => v1::Protocol::Tcp,
        Protocol::Udp => v1::Protocol::Udp,
        Protocol::Sctp => v1::Protocol::Sctp,
    }
}

// === from the wire ===

/// A namespace from the wire.
pub fn namespace_from_wire(ns: &v1::Namespace) -> Result<Namespace, InvalidMessage> {
    let at = At {
        object: &format!("namespace {}", ns.name),
    };
    if ns.name.is_empty() {
        return Err(at.err("name", "must not be empty"));
    }
    Ok(Namespace {
        name: ns.name.as_str().into(),
        labels: ns.labels.clone(),
        audit: ns.audit,
    })
}

/// A pod from the wire.
pub fn pod_from_wire(pod: &v1::Pod) -> Result<Pod, InvalidMessage> {
    let object = format!("pod {}/{}", pod.namespace, pod.name);
    let at = At { object: &object };
    let key = key(&at, &pod.namespace, &pod.name)?;
    let ips = |field: &str, list: &[Vec<u8>]| {
        list.iter()
            .enumerate()
            .map(|(i, b)| {
                ip_from_wire(b).ok_or_else(|| at.err(format!("{field}[{i}]"), "not 4 or 16 bytes"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = pod
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(ContainerPort {
                name: p.name.clone(),
                port: port_number(&at, &format!("ports[{i}].port"), p.port)?,
                protocol: protocol_from_wire(&at, &format!("ports[{i}].protocol"), p.protocol)?,
            })
        })
        .collect::<Result<Vec<_>, InvalidMessage>>()?;
    Ok(Pod {
        key,
        labels: pod.labels.clone(),
        ips: ips("ips", &pod.ips)?,
        host_ips: ips("hostIps", &pod.host_ips)?,
        ports,
        host_network: pod.host_network,
        deleting: pod.deleting,
        created: pod.created,
        uid: pod.uid.as_str().into(),
        service_account: pod.service_account.as_str().into(),
        sidecar: pod.sidecar,
        // Not in a view: what its sidecar's own decisions read has no use
        // for it (the control plane's coverage reads the cluster's).
        sidecar_ready: false,
        mtls: mtls_from_wire(pod.mtls),
        outbound_exempt: pod.outbound_exempt,
    })
}

/// A compiled policy from the wire.
pub fn policy_from_wire(policy: &v1::Policy) -> Result<Policy, InvalidMessage> {
    let object = format!("networkpolicy {}/{}", policy.namespace, policy.name);
    let at = At { object: &object };
    let key = key(&at, &policy.namespace, &policy.name)?;
    let pod_selector = policy
        .pod_selector
        .as_ref()
        .ok_or_else(|| at.err("podSelector", "missing"))
        .and_then(|s| selector_from_wire(&at, "podSelector", s))?;
    let rules = |field: &str, rules: &Option<v1::Rules>| {
        rules
            .as_ref()
            .map(|r| {
                r.rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| rule_from_wire(&at, &format!("{field}[{i}]"), rule))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
    };
    Ok(Policy {
        key,
        pod_selector,
        ingress: rules("ingress", &policy.ingress)?,
        egress: rules("egress", &policy.egress)?,
        audit: policy.audit,
    })
}

/// A Service from the wire.
pub fn service_from_wire(service: &v1::Service) -> Result<Service, InvalidMessage> {
    let object = format!("service {}/{}", service.namespace, service.name);
    let at = At { object: &object };
    Ok(Service {
        key: key(&at, &service.namespace, &service.name)?,
        addresses: ips_from_wire(&at, "addresses", &service.addresses)?,
        ports: service_ports_from_wire(&at, &service.ports)?,
    })
}

/// An EndpointSlice from the wire.
pub fn slice_from_wire(slice: &v1::EndpointSlice) -> Result<EndpointSlice, InvalidMessage> {
    let object = format!("endpointslice {}/{}", slice.namespace, slice.name);
    let at = At { object: &object };
    let key = key(&at, &slice.namespace, &slice.name)?;
    let endpoints = slice
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let pod = e
                .pod
                .as_ref()
                .map(|p| self::key(&at, &p.namespace, &p.name))
                .transpose()?;
            Ok(Endpoint {
                addresses: ips_from_wire(&at, &format!("endpoints[{i}].addresses"), &e.addresses)?,
                ready: e.ready,
                pod,
            })
        })
        .collect::<Result<Vec<_>, InvalidMessage>>()?;
    Ok(EndpointSlice {
        service: (!slice.service.is_empty())
            .then(|| ObjectKey::new(&slice.namespace, &slice.service)),
        key,
        ports: service_ports_from_wire(&at, &slice.ports)?,
        endpoints,
    })
}

fn service_ports_from_wire(
    at: &At<'_>,
    ports: &[v1::ServicePort],
) -> Result<Vec<ServicePort>, InvalidMessage> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(ServicePort {
                name: p.name.as_deref().map(Into::into),
                port: port_number(at, &format!("ports[{i}].port"), p.port)?,
                protocol: protocol_from_wire(at, &format!("ports[{i}].protocol"), p.protocol)?,
            })
        })
        .collect()
}

fn ips_from_wire(
    at: &At<'_>,
    field: &str,
    list: &[Vec<u8>],
) -> Result<Vec<IpAddr>, InvalidMessage> {
    list.iter()
        .enumerate()
        .map(|(i, b)| {
            ip_from_wire(b).ok_or_else(|| at.err(format!("{field}[{i}]"), "not 4 or 16 bytes"))
        })
        .collect()
}

fn side_from_wire(direction: &str, entry: &v1::SourceEgress) -> Result<SideEntry, InvalidMessage> {
    let object = match (&entry.pod, entry.addresses.first()) {
        (Some(pod), _) => format!("{direction} of {}/{}", pod.namespace, pod.name),
        (None, Some(ip)) => format!("{direction} of {:?} and others", ip_from_wire(ip)),
        (None, None) => direction.to_string(),
    };
    let at = At { object: &object };
    let claimants = entry
        .claimants
        .iter()
        .enumerate()
        .map(|(i, c)| toward_from_wire(&at, &format!("claimants[{i}]"), c))
        .collect::<Result<Vec<_>, _>>()?;
    match (&entry.pod, entry.addresses.is_empty()) {
        (Some(pod), true) => {
            let key = key(&at, &pod.namespace, &pod.name)?;
            if claimants.len() > 1 {
                return Err(at.err("claimants", "a pod has one side each way"));
            }
            Ok(SideEntry::Pod(key, claimants.into_iter().next()))
        }
        (None, false) => {
            let ips = entry
                .addresses
                .iter()
                .enumerate()
                .map(|(i, ip)| {
                    ip_from_wire(ip)
                        .ok_or_else(|| at.err(format!("addresses[{i}]"), "not 4 or 16 bytes"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SideEntry::Addresses(ips, claimants))
        }
        (Some(_), false) => Err(at.err(
            "addresses",
            "an entry is for a pod or for addresses, not both",
        )),
        (None, true) => Err(at.err("pod", "an entry names a pod or addresses")),
    }
}

fn toward_from_wire(
    at: &At<'_>,
    field: &str,
    egress: &v1::EgressToward,
) -> Result<CompiledSide, InvalidMessage> {
    if egress.policies == 0 && egress.audited_policies == 0 {
        return Err(at.err(
            format!("{field}.policies"),
            "at least one policy, enforced or audited, selects it",
        ));
    }
    // Rules without a policy counted would be read as not isolating.
    if egress.policies == 0 && !egress.rules.is_empty() {
        return Err(at.err(format!("{field}.policies"), "rules of no enforced policy"));
    }
    if egress.audited_policies == 0 && !egress.audited_rules.is_empty() {
        return Err(at.err(
            format!("{field}.audited_policies"),
            "rules of no audited policy",
        ));
    }
    let rules = |list: &[v1::TowardRule], name: &str| {
        list.iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("{field}.{name}[{i}]");
                let rule = r
                    .rule
                    .as_ref()
                    .ok_or_else(|| at.err(format!("{field}.rule"), "missing"))?;
                let rule = rule_from_wire(at, &format!("{field}.rule"), rule)?;
                if rule
                    .peers
                    .iter()
                    .flatten()
                    .any(|p| !matches!(p, Peer::IpBlock(_)))
                {
                    return Err(at.err(format!("{field}.rule.peers"), "only ipBlock peers"));
                }
                Ok(TowardRule {
                    policy: key(at, &r.policy_namespace, &r.policy_name)?,
                    index: r.index as usize,
                    rule,
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(CompiledSide {
        policies: egress.policies as usize,
        rules: rules(&egress.rules, "rules")?,
        audited: egress.audited_policies as usize,
        audited_rules: rules(&egress.audited_rules, "audited_rules")?,
    })
}

fn rule_from_wire(at: &At<'_>, field: &str, rule: &v1::Rule) -> Result<Rule, InvalidMessage> {
    let peers = rule
        .peers
        .as_ref()
        .map(|p| {
            p.peers
                .iter()
                .enumerate()
                .map(|(i, peer)| peer_from_wire(at, &format!("{field}.peers[{i}]"), peer))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let ports = rule
        .ports
        .as_ref()
        .map(|p| ports_from_wire(at, field, p))
        .transpose()?;
    Ok(Rule {
        peers,
        ports,
        broken: rule.broken.clone(),
    })
}

fn peer_from_wire(at: &At<'_>, field: &str, peer: &v1::Peer) -> Result<Peer, InvalidMessage> {
    use v1::pods_peer::Namespaces;
    match peer.peer.as_ref() {
        Some(v1::peer::Peer::Pods(p)) => {
            let namespaces = match p.namespaces.as_ref() {
                Some(Namespaces::PolicyNamespace(ns)) if !ns.is_empty() => {
                    NamespaceScope::Policy(ns.as_str().into())
                }
                Some(Namespaces::Selected(s)) => NamespaceScope::Selected(selector_from_wire(
                    at,
                    &format!("{field}.namespaces"),
                    s,
                )?),
                _ => return Err(at.err(format!("{field}.namespaces"), "missing")),
            };
            let pods = p
                .pods
                .as_ref()
                .map(|s| selector_from_wire(at, &format!("{field}.pods"), s))
                .transpose()?;
            Ok(Peer::Pods { namespaces, pods })
        }
        Some(v1::peer::Peer::IpBlock(b)) => {
            let net = |f: String, s: &str| {
                s.parse::<IpNet>()
                    .map_err(|e| at.err(f, format!("{s:?}: {e}")))
            };
            Ok(Peer::IpBlock(IpBlock {
                cidr: net(format!("{field}.ipBlock.cidr"), &b.cidr)?,
                except: b
                    .except
                    .iter()
                    .enumerate()
                    .map(|(i, e)| net(format!("{field}.ipBlock.except[{i}]"), e))
                    .collect::<Result<_, _>>()?,
            }))
        }
        None => Err(at.err(field, "a peer of no known kind")),
    }
}

/// A rule's `ports` entries, each named by its index under `field`.
fn ports_from_wire(
    at: &At<'_>,
    field: &str,
    ports: &v1::Ports,
) -> Result<Vec<PortMatch>, InvalidMessage> {
    ports
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| port_from_wire(at, &format!("{field}.ports[{i}]"), port))
        .collect()
}

fn port_from_wire(
    at: &At<'_>,
    field: &str,
    entry: &v1::PortMatch,
) -> Result<PortMatch, InvalidMessage> {
    use v1::port_match::Port;
    let protocol = protocol_from_wire(at, &format!("{field}.protocol"), entry.protocol)?;
    let port = match entry.port.as_ref() {
        Some(Port::Any(_)) => PortSpec::Any,
        Some(Port::Range(r)) => {
            let start = port_number(at, &format!("{field}.range.start"), r.start)?;
            let end = port_number(at, &format!("{field}.range.end"), r.end)?;
            if end < start {
                return Err(at.err(format!("{field}.range"), "end before start"));
            }
            PortSpec::Range(start, end)
        }
        Some(Port::Named(name)) => PortSpec::Named(name.clone()),
        None => return Err(at.err(field, "a port of no known kind")),
    };
    Ok(PortMatch { protocol, port })
}

fn selector_from_wire(
    at: &At<'_>,
    field: &str,
    selector: &v1::Selector,
) -> Result<Selector, InvalidMessage> {
    let requirements = selector
        .requirements
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let operator = match v1::Operator::try_from(r.operator) {
                Ok(v1::Operator::In) => Operator::In(r.values.clone()),
                Ok(v1::Operator::NotIn) => Operator::NotIn(r.values.clone()),
                Ok(v1::Operator::Exists) => Operator::Exists,
                Ok(v1::Operator::DoesNotExist) => Operator::DoesNotExist,
                Err(_) => {
                    return Err(at.err(
                        format!("{field}.requirements[{i}].operator"),
                        format!("unknown operator {}", r.operator),
                    ))
                }
            };
            Ok(Requirement {
                key: r.key.clone(),
                operator,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Selector::from_requirements(requirements))
}

fn key(at: &At<'_>, namespace: &str, name: &str) -> Result<ObjectKey, InvalidMessage> {
    if namespace.is_empty() || name.is_empty() {
        return Err(at.err("namespace/name", "must not be empty"));
    }
    Ok(ObjectKey::new(namespace, name))
}

/// An address from the wire; `None` unless 4 or 16 bytes.
pub fn ip_from_wire(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn port_number(at: &At<'_>, field: &str, port: u32) -> Result<u16, InvalidMessage> {
    u16::try_from(port).map_err(|_| at.err(field, format!("{port} is not a port")))
}

fn protocol_from_wire(at: &At<'_>, field: &str, protocol: i32) -> Result<Protocol, InvalidMessage> {
    match v1::Protocol::try_from(protocol) {
        Ok(v1::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(v1::Protocol::Udp) => Ok(Protocol::Udp),
        Ok(v1::Protocol::Sctp) => Ok(Protocol::Sctp),
        Err(_) => Err(at.err(field, format!("unknown protocol {protocol}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_view_of_another_format_is_refused() {
        for format in [0, 1, 2, 3, 4, 5, 6, 8] {
            let msg = v1::WatchResponse {
                full: true,
                view_format: format,
                ..Default::default()
            };
            let error = decode(&msg).unwrap_err();
            assert_eq!(error.field, "view_format", "{format}");
        }
        let msg = v1::WatchResponse {
            full: true,
            view_format: crate::VIEW_FORMAT,
            ..Default::default()
        };
        assert!(decode(&msg).unwrap().full);
        // Deltas and later parts carry no format: the stream's full view did.
        assert!(decode(&v1::WatchResponse::default()).is_ok());
    }

    #[test]
    fn egress_entries_round_trip_and_bad_ones_are_refused() {
        let mut side = CompiledSide {
            policies: 2,
            rules: vec![TowardRule {
                policy: ObjectKey::new("shop", "out"),
                index: 3,
                rule: Rule {
                    peers: Some(vec![Peer::IpBlock(IpBlock {
                        cidr: "10.0.0.0/8".parse().unwrap(),
                        except: vec!["10.1.0.0/16".parse().unwrap()],
                    })]),
                    ports: None,
                    broken: None,
                },
            }],
            audited: 0,
            audited_rules: Vec::new(),
        };
        let mut dry_run = side.rules[0].clone();
        dry_run.policy = ObjectKey::new("shop", "dry-run");
        side.audited = 1;
        side.audited_rules = vec![dry_run.clone()];
        // A side only an audited policy makes.
        let audited_only = CompiledSide {
            policies: 0,
            rules: Vec::new(),
            audited: 1,
            audited_rules: vec![dry_run],
        };
        let key = ObjectKey::new("shop", "web");
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let ips: Vec<IpAddr> = vec![ip, "fd00::7".parse().unwrap()];
        let msg = v1::WatchResponse {
            egress: vec![
                pod_side_to_wire(&key, Some(&side)),
                pod_side_to_wire(&key, None),
                addresses_side_to_wire(&ips, [&side, &audited_only]),
                addresses_side_to_wire(&ips[..1], []),
            ],
            ..Default::default()
        };
        let update = decode(&msg).unwrap();
        assert_eq!(
            update.egress,
            vec![
                SideEntry::Pod(key.clone(), Some(side.clone())),
                SideEntry::Pod(key.clone(), None),
                SideEntry::Addresses(ips.clone(), vec![side.clone(), audited_only]),
                SideEntry::Addresses(vec![ip], Vec::new()),
            ]
        );
        // A compiled rule with a pod peer would match this pod by its own
        // labels: refused, as is a side that no policy isolates.
        let mut bad = addresses_side_to_wire(&[ip], [&side]);
        bad.claimants[0].rules[0].rule.as_mut().unwrap().peers = Some(v1::Peers {
            peers: vec![v1::Peer {
                peer: Some(v1::peer::Peer::Pods(v1::PodsPeer {
                    namespaces: Some(v1::pods_peer::Namespaces::PolicyNamespace("shop".into())),
                    pods: None,
                })),
            }],
        });
        let msg = v1::WatchResponse {
            egress: vec![bad],
            ..Default::default()
        };
        assert!(decode(&msg).unwrap_err().field.ends_with("rule.peers"));
        let mut bad = addresses_side_to_wire(&[ip], [&side]);
        bad.claimants[0].policies = 0;
        bad.claimants[0].audited_policies = 0;
        let msg = v1::WatchResponse {
            egress: vec![bad],
            ..Default::default()
        };
        assert!(decode(&msg).unwrap_err().field.ends_with("policies"));
        // Rules of no policy counted: refused, not read as not isolating.
        for enforced in [true, false] {
            let mut bad = addresses_side_to_wire(&[ip], [&side]);
            match enforced {
                true => bad.claimants[0].policies = 0,
                false => bad.claimants[0].audited_policies = 0,
            }
            let msg = v1::WatchResponse {
                egress: vec![bad],
                ..Default::default()
            };
            let field = decode(&msg).unwrap_err().field;
            let want = if enforced {
                ".policies"
            } else {
                ".audited_policies"
            };
            assert!(field.ends_with(want), "{field}");
        }
        let refused = |bad: v1::SourceEgress| {
            let msg = v1::WatchResponse {
                egress: vec![bad],
                ..Default::default()
            };
            decode(&msg).unwrap_err().field
        };
        let mut bad = addresses_side_to_wire(&ips, []);
        bad.addresses[1] = vec![1, 2, 3];
        assert_eq!(refused(bad), "addresses[1]");
        let mut bad = pod_side_to_wire(&key, None);
        bad.addresses = vec![vec![10, 0, 0, 7]];
        assert_eq!(refused(bad), "addresses", "a pod and addresses");
        assert_eq!(refused(addresses_side_to_wire(&[], [])), "pod", "neither");
    }

    #[test]
    fn a_policy_round_trips() {
        let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}, matchExpressions: [{key: tier, operator: NotIn, values: [b, a]}]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 8080}
    - {port: http, protocol: TCP}
    - {port: 9000, endPort: 9010, protocol: UDP}
    - {protocol: SCTP}
  - {}
  - from: [{podSelector: {matchExpressions: [{key: x, operator: Bogus}]}}]
  egress:
  - to: [{ipBlock: {cidr: "fd00::/8"}}]
"#;
        let np = serde_yaml::from_str(yaml).unwrap();
        let policy = picket_policy::convert::policy(&np).unwrap().policy;
        assert!(policy.ingress.as_ref().unwrap()[2].broken.is_some());
        assert_eq!(policy_from_wire(&policy_to_wire(&policy)).unwrap(), policy);
    }

    #[test]
    fn a_bad_message_names_the_object_and_field() {
        let mut wire = v1::Pod {
            namespace: "shop".into(),
            name: "api-0".into(),
            ips: vec![vec![10, 0, 0]],
            ..Default::default()
        };
        let err = pod_from_wire(&wire).unwrap_err();
        assert_eq!(err.to_string(), "pod shop/api-0: ips[0]: not 4 or 16 bytes");
        wire.ips.clear();
        wire.ports.push(v1::ContainerPort {
            name: None,
            port: 70_000,
            protocol: 0,
        });
        let err = pod_from_wire(&wire).unwrap_err();
        assert_eq!(err.field, "ports[0].port");
    }

    #[test]
    fn a_pod_round_trips() {
        let pod = Pod {
            key: ObjectKey::new("shop", "api-0"),
            labels: [("app".to_string(), "api".to_string())].into(),
            ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            host_ips: vec!["192.168.0.1".parse().unwrap()],
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            host_network: false,
            deleting: true,
            created: Some(1_700_000_000),
            uid: "u-1".into(),
            service_account: "api".into(),
            sidecar: true,
            sidecar_ready: false,
            mtls: MtlsMode::Strict,
            outbound_exempt: true,
        };
        assert_eq!(pod_from_wire(&pod_to_wire(&pod)).unwrap(), pod);
    }
}
