//! The compiled model the engine evaluates: pods, namespaces and policies as
//! plain data, with Kubernetes' defaulting already applied.
//!
//! Pure: no I/O. `convert.rs` builds these from Kubernetes objects.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::labels::same_bytes;
use super::selector::{Labels, Selector};

/// A namespaced object's identity: `namespace/name`.
///
/// Made with [`ObjectKey::new`], which hashes it once: keys are looked up in
/// the index's maps many times per decision and per view, and hashing two
/// strings behind pointers each time was the largest single cost of
/// computing views. The fields are read, never assigned.
#[derive(Clone)]
pub struct ObjectKey {
    /// The namespace the object lives in.
    pub namespace: Arc<str>,
    /// The object's name.
    pub name: Arc<str>,
    /// The hash of `namespace` and `name`.
    hash: u64,
}

/// A pod's identity.
pub type PodKey = ObjectKey;
/// A NetworkPolicy's identity.
pub type PolicyKey = ObjectKey;

/// The transport protocols NetworkPolicy names; the proxy enforces TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, the default when a port names no protocol.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A pod as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace and name.
    pub key: PodKey,
    /// The pod's labels.
    pub labels: Labels,
    /// The pod's IPs; empty when it has none yet, or has finished.
    pub ips: Vec<IpAddr>,
    /// The addresses of the node the pod runs on (`status.hostIPs`).
    pub host_ips: Vec<IpAddr>,
    /// The ports its containers declare, for named ports.
    pub ports: Vec<ContainerPort>,
    /// Pods with host networking share the node's IP: they are node traffic.
    pub host_network: bool,
    /// The pod is being deleted (`metadata.deletionTimestamp`): it yields its
    /// IPs to a newer pod that claims them.
    pub deleting: bool,
    /// When the pod was created (`metadata.creationTimestamp`, Unix seconds).
    pub created: Option<i64>,
    /// `metadata.uid`; empty when not known (a workload template, a manifest
    /// without one).
    pub uid: Arc<str>,
    /// `spec.serviceAccountName`; empty when not known.
    pub service_account: Arc<str>,
    /// The pod runs Picket's sidecar (a container named `picket-proxy`, as
    /// the injector adds it): only such pods may ask the control plane for a view.
    pub sidecar: bool,
    /// The sidecar container reports ready (`status.containerStatuses`):
    /// only then is anything enforcing the pod's policies. Not part of a
    /// view (a sidecar's own view has no use for it).
    pub sidecar_ready: bool,
    /// Its mTLS mode (annotation `picket.io/mtls`, which the injector sets
    /// from the namespace's when the pod has none).
    pub mtls: MtlsMode,
    /// Some of its outbound connections bypass the proxy (capture disabled,
    /// or excluded ports or networks): it does not originate mTLS for all of
    /// them, so plaintext from it proves nothing.
    pub outbound_exempt: bool,
}

/// A pod's mTLS mode between sidecars (annotation `picket.io/mtls`),
/// ordered from the weakest to the strictest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MtlsMode {
    /// No mTLS: outbound is relayed as plaintext, inbound mTLS is not offered.
    #[default]
    Off,
    /// mTLS to meshed destinations; inbound plaintext is decided by policy,
    /// except from pods that originate mTLS (a forged source address).
    Permissive,
    /// As permissive, and inbound plaintext only from the node, loopback
    /// and addresses outside the pod network (which only ipBlock rules allow).
    Strict,
}

impl MtlsMode {
    /// The annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Off => "off",
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }

    /// Reads the annotation's value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "off" => Some(MtlsMode::Off),
            "permissive" => Some(MtlsMode::Permissive),
            "strict" => Some(MtlsMode::Strict),
            _ => None,
        }
    }
}

// === impl Pod (mesh) ===

impl Pod {
    /// Its sidecar terminates mTLS: a meshed destination, to which other
    /// sidecars originate mTLS.
    pub fn meshed(&self) -> bool {
        self.sidecar && self.mtls != MtlsMode::Off && !self.host_network
    }

    /// Its sidecar originates mTLS for every outbound connection to a
    /// meshed destination: plaintext from its address is a forgery.
    pub fn originates_mtls(&self) -> bool {
        self.meshed() && !self.outbound_exempt
    }
}

/// One declared container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    /// The port's name, which named ports in policies refer to.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
}

/// A namespace: its labels are what `namespaceSelector` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's name.
    pub name: Arc<str>,
    /// Its labels, `kubernetes.io/metadata.name` included.
    pub labels: Labels,
    /// Every policy of the namespace is in audit mode (annotation
    /// `picket.io/mode: audit` on the namespace).
    pub audit: bool,
}

/// The two directions a policy can isolate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Connections into the selected pods.
    Ingress,
    /// Connections out of the selected pods.
    Egress,
}

/// A compiled NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Namespace and name.
    pub key: PolicyKey,
    /// Which pods of the policy's namespace it applies to.
    pub pod_selector: Selector,
    /// Ingress rules when the policy isolates ingress (`None`: it does not).
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules when the policy isolates egress (`None`: it does not).
    pub egress: Option<Vec<Rule>>,
    /// The policy is in audit mode (annotation `picket.io/mode: audit`):
    /// it neither isolates nor allows; decisions say what it would have
    /// done (see [`PolicyIndex::audit_from_ip`](crate::PolicyIndex::audit_from_ip)).
    pub audit: bool,
}

/// One ingress or egress rule: it allows when a peer and a port both match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The peers it allows; `None` allows every peer (absent or empty `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    /// The ports it allows; `None` allows every port (absent or empty `ports`).
    pub ports: Option<Vec<PortMatch>>,
    /// Set when the rule could not be compiled: it then allows nothing (fail closed).
    pub broken: Option<String>,
}

/// A `from` or `to` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods chosen by labels: `podSelector`, `namespaceSelector`, or both (AND).
    Pods {
        /// Which namespaces the pods may live in.
        namespaces: NamespaceScope,
        /// Which pods of those namespaces; `None` means all of them.
        pods: Option<Selector>,
    },
    /// Addresses: a CIDR minus its exceptions.
    IpBlock(IpBlock),
}

/// The namespaces a pod peer may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Only the policy's own namespace (a `podSelector` alone).
    Policy(Arc<str>),
    /// Namespaces whose labels match.
    Selected(Selector),
}

/// An `ipBlock`: addresses in `cidr` but in none of `except`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// The allowed range.
    pub cidr: IpNet,
    /// Ranges carved out of it.
    pub except: Vec<IpNet>,
}

/// One `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    /// The protocol the entry allows (TCP when absent).
    pub protocol: Protocol,
    /// Which ports of that protocol.
    pub port: PortSpec,
}

/// The port part of a `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// No port given: every port of the protocol.
    Any,
    /// A number, or a range `port..=endPort`.
    Range(u16, u16),
    /// A name, resolved against the destination pod's container ports.
    Named(String),
}

/// Addresses of the destination's node: traffic from them is always allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    nets: Vec<IpNet>,
}

// === impl ObjectKey ===

impl ObjectKey {
    /// A key from a namespace and a name.
    pub fn new(namespace: &str, name: &str) -> Self {
        let mut hasher = rustc_hash::FxHasher::default();
        namespace.hash(&mut hasher);
        name.hash(&mut hasher);
        Self {
            namespace: namespace.into(),
            name: name.into(),
            hash: hasher.finish(),
        }
    }

    /// This key naming its namespace with `shared`, the same string in an
    /// allocation the keys of a namespace's objects share: a decision reads
    /// the namespace of a pod it has not touched before, and one string per
    /// namespace stays in cache where one per pod would not. A different
    /// string leaves the key as it is.
    pub(crate) fn sharing_namespace(self, shared: &Arc<str>) -> Self {
        if Arc::ptr_eq(&self.namespace, shared) || *self.namespace != **shared {
            return self;
        }
        Self {
            namespace: Arc::clone(shared),
            ..self
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &Arc<str>, b: &Arc<str>| {
            Arc::ptr_eq(a, b) || same_bytes(a.as_bytes(), b.as_bytes())
        };
        self.hash == other.hash
            && same(&self.namespace, &other.namespace)
            && same(&self.name, &other.name)
    }
}

impl Eq for ObjectKey {}

impl Hash for ObjectKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.namespace, &self.name).cmp(&(&other.namespace, &other.name))
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectKey")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Protocol ===

impl Protocol {
    /// Parses a Kubernetes protocol name (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes name of the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Direction ===

impl Direction {
    /// `ingress` or `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

// === impl Pod ===

impl Pod {
    /// The pod's IP of the same family as `like`, else its first IP.
    pub fn ip_like(&self, like: Option<IpAddr>) -> Option<IpAddr> {
        like.and_then(|l| {
            self.ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == l.is_ipv4())
        })
        .or_else(|| self.ips.first().copied())
    }
}

// === impl Policy ===

impl Policy {
    /// The policy's rules for one direction, when it isolates that direction.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

// === impl Rule ===

impl Rule {
    /// A rule that allows everything (`- {}`).
    pub fn allow_all() -> Self {
        Self {
            peers: None,
            ports: None,
            broken: None,
        }
    }
}

// === impl IpBlock ===

impl IpBlock {
    /// Whether the address is in the CIDR and in none of the exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        net_contains(&self.cidr, ip) && !self.except.iter().any(|e| net_contains(e, ip))
    }
}

/// Whether a network holds an address (of its own family): `IpNet`'s
/// `contains`, in the few instructions a decision that tries every
/// `ipBlock` of a pod's policies wants.
pub(crate) fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpNet::V4(net), IpAddr::V4(ip)) => {
            let differ = u32::from(net.addr()) ^ u32::from(ip);
            differ
                .checked_shr(32 - u32::from(net.prefix_len()))
                .unwrap_or(0)
                == 0
        }
        (IpNet::V6(net), IpAddr::V6(ip)) => {
            let differ = u128::from(net.addr()) ^ u128::from(ip);
            differ
                .checked_shr(128 - u32::from(net.prefix_len()))
                .unwrap_or(0)
                == 0
        }
        _ => false,
    }
}

// === impl PortSpec ===

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "any/{}", self.protocol),
            PortSpec::Range(a, b) if a == b => write!(f, "{a}/{}", self.protocol),
            PortSpec::Range(a, b) => write!(f, "{a}-{b}/{}", self.protocol),
            PortSpec::Named(n) => write!(f, "{n}/{}", self.protocol),
        }
    }
}

// === impl NodeAddrs ===

impl NodeAddrs {
    /// A node known by these addresses and networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
        }
    }

    /// A node known by these single addresses.
    pub fn from_ips(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        Self::new(ips.into_iter().map(IpNet::from))
    }

    /// Adds an address or network.
    pub fn push(&mut self, net: IpNet) {
        self.nets.push(net);
    }

    /// Whether the address belongs to the node.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| net_contains(n, ip))
    }

    /// Whether no address is known.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_holds_what_ipnet_says_it_holds() {
        let nets = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.2.3/32",
            "10.1.2.0/31",
            "172.16.0.0/12",
            "::/0",
            "fd00::/8",
            "fd00::1/128",
            "2001:db8::/33",
        ];
        let ips = [
            "0.0.0.0",
            "10.0.0.0",
            "10.1.2.3",
            "10.1.2.1",
            "10.1.2.2",
            "11.0.0.0",
            "172.31.255.255",
            "172.32.0.0",
            "255.255.255.255",
            "::",
            "::ffff:10.1.2.3",
            "fd00::1",
            "fd00::2",
            "2001:db8:7fff::1",
            "2001:db8:8000::1",
        ];
        for net in nets {
            let net: IpNet = net.parse().unwrap();
            for ip in ips {
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(net_contains(&net, ip), net.contains(&ip), "{net} {ip}");
            }
        }
    }
}
