//! Services and their endpoints: how the outbound proxy turns the ClusterIP
//! and port an app dialled into the endpoint pods NetworkPolicy egress is
//! about (inside the pod the destination is still the ClusterIP; kube-proxy
//! translates it on the node, after the policy would have to be decided).
//!
//! A ClusterIP and port resolve to the Service's port, then through its
//! EndpointSlices (whose ports carry the target port already resolved, by
//! number or by name, per endpoint group) to the ready endpoints' addresses
//! of the dialled family. Headless Services have no ClusterIP (their names
//! resolve to pod IPs already); ExternalName Services are DNS, out of scope.
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::model::{ObjectKey, PodKey, Protocol};

/// A Service, as the outbound proxy resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// The addresses that lead to its endpoints: `spec.clusterIPs` (none:
    /// headless, or ExternalName), `spec.externalIPs`, and
    /// `status.loadBalancer.ingress[].ip` (kube-proxy sends in-cluster
    /// traffic to those straight to the endpoints too).
    pub addresses: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
}

/// A port of a Service, or of an EndpointSlice (where `port` is the target
/// port, resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; slices name their ports after the Service's.
    pub name: Option<Arc<str>>,
    /// The port number.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// An EndpointSlice of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and name of the slice.
    pub key: ObjectKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`);
    /// `None`: a slice no Service owns, never resolved.
    pub service: Option<ObjectKey>,
    /// The target ports, by Service port name.
    pub ports: Vec<ServicePort>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its addresses (the slice's address type; only the first is dialled,
    /// as kube-proxy does).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (unset means ready, as the API says).
    pub ready: bool,
    /// The pod behind it (`targetRef` of kind Pod), if any.
    pub pod: Option<PodKey>,
}

/// Every Service and EndpointSlice, indexed by ClusterIP and by Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceIndex {
    services: BTreeMap<ObjectKey, Arc<Service>>,
    by_address: BTreeMap<IpAddr, ObjectKey>,
    slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    slices_of: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
}

/// What a ClusterIP and port resolve to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The Service holding the ClusterIP.
    pub service: ObjectKey,
    /// The ready endpoints of the dialled port, of the dialled family, each
    /// once, in address order; empty: none (or the Service has no such port).
    pub endpoints: Vec<SocketAddr>,
}

// === impl ServiceIndex ===

impl ServiceIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, service: Service) {
        self.delete_service(&service.key);
        for ip in &service.addresses {
            self.by_address.insert(*ip, service.key.clone());
        }
        self.services.insert(service.key.clone(), Arc::new(service));
    }

    /// Removes a Service; whether it was there.
    pub fn delete_service(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.services.remove(key) else {
            return false;
        };
        for ip in &old.addresses {
            if self.by_address.get(ip) == Some(key) {
                self.by_address.remove(ip);
            }
        }
        true
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        self.delete_slice(&slice.key);
        if let Some(service) = &slice.service {
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(slice.key.clone());
        }
        self.slices.insert(slice.key.clone(), Arc::new(slice));
    }

    /// Removes an EndpointSlice; whether it was there.
    pub fn delete_slice(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.slices.remove(key) else {
            return false;
        };
        if let Some(service) = &old.service {
            if let Some(set) = self.slices_of.get_mut(service) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(service);
                }
            }
        }
        true
    }

    /// Replaces every Service.
    pub fn replace_services(&mut self, services: impl IntoIterator<Item = Service>) {
        self.services.clear();
        self.by_address.clear();
        for service in services {
            self.apply_service(service);
        }
    }

    /// Replaces every EndpointSlice.
    pub fn replace_slices(&mut self, slices: impl IntoIterator<Item = EndpointSlice>) {
        self.slices.clear();
        self.slices_of.clear();
        for slice in slices {
            self.apply_slice(slice);
        }
    }

    /// A Service by key.
    pub fn service(&self, key: &ObjectKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// An EndpointSlice by key.
    pub fn slice(&self, key: &ObjectKey) -> Option<&Arc<EndpointSlice>> {
        self.slices.get(key)
    }

    /// Every Service, by key.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Every EndpointSlice, by key.
    pub fn slices(&self) -> impl Iterator<Item = &Arc<EndpointSlice>> {
        self.slices.values()
    }

    /// Whether an address is some Service's ClusterIP.
    pub fn is_service_address(&self, ip: IpAddr) -> bool {
        self.by_address.contains_key(&ip)
    }

    /// What a ClusterIP and port resolve to; `None`: the address is no
    /// Service's ClusterIP.
    pub fn resolve(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<Resolved> {
        let key = self.by_address.get(&ip)?;
        let mut resolved = Resolved {
            service: key.clone(),
            endpoints: Vec::new(),
        };
        let Some(wanted) = self.services.get(key).and_then(|s| {
            s.ports
                .iter()
                .find(|p| p.port == port && p.protocol == protocol)
        }) else {
            return Some(resolved);
        };
        let slices = self.slices_of.get(key).into_iter().flatten();
        for slice in slices.filter_map(|k| self.slices.get(k)) {
            let Some(target) = slice
                .ports
                .iter()
                .find(|p| p.name == wanted.name && p.protocol == protocol)
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                // The addresses of one endpoint are fungible, and kube-proxy
                // uses the first: so does this.
                if let Some(address) = endpoint.addresses.first() {
                    if address.is_ipv4() == ip.is_ipv4() {
                        resolved
                            .endpoints
                            .push(SocketAddr::new(*address, target.port));
                    }
                }
            }
        }
        resolved.endpoints.sort_unstable();
        resolved.endpoints.dedup();
        Some(resolved)
    }

    /// How many Services and EndpointSlices the index holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ObjectKey {
        ObjectKey::parse(s).unwrap()
    }

    fn port(name: Option<&str>, port: u16) -> ServicePort {
        ServicePort {
            name: name.map(Arc::from),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn endpoint(ip: &str, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.parse().unwrap()],
            ready,
            pod: None,
        }
    }

    fn db() -> ServiceIndex {
        let mut index = ServiceIndex::new();
        index.apply_service(Service {
            key: key("shop/db"),
            addresses: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00:96::10".parse().unwrap(),
            ],
            ports: vec![port(Some("sql"), 5432), port(Some("metrics"), 9187)],
        });
        index.apply_slice(EndpointSlice {
            key: key("shop/db-a"),
            service: Some(key("shop/db")),
            ports: vec![port(Some("sql"), 15432), port(Some("metrics"), 9187)],
            endpoints: vec![endpoint("10.0.0.2", true), endpoint("10.0.0.3", false)],
        });
        index.apply_slice(EndpointSlice {
            key: key("shop/db-b"),
            service: Some(key("shop/db")),
            ports: vec![port(Some("sql"), 5432)],
            endpoints: vec![endpoint("10.0.0.4", true), endpoint("10.0.0.2", true)],
        });
        index.apply_slice(EndpointSlice {
            key: key("shop/db-v6"),
            service: Some(key("shop/db")),
            ports: vec![port(Some("sql"), 5432)],
            endpoints: vec![endpoint("fd00::4", true)],
        });
        index
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_cluster_ip_resolves_to_the_ready_endpoints_of_the_port_per_slice() {
        let index = db();
        let resolved = index
            .resolve("10.96.0.10".parse().unwrap(), 5432, Protocol::Tcp)
            .unwrap();
        assert_eq!(resolved.service, key("shop/db"));
        // The target port differs per slice; the not-ready endpoint is left out.
        assert_eq!(
            resolved.endpoints,
            addrs(&["10.0.0.2:5432", "10.0.0.2:15432", "10.0.0.4:5432"])
        );
        let v6 = index
            .resolve("fd00:96::10".parse().unwrap(), 5432, Protocol::Tcp)
            .unwrap();
        assert_eq!(
            v6.endpoints,
            addrs(&["[fd00::4]:5432"]),
            "the dialled family"
        );
    }

    #[test]
    fn an_unknown_port_resolves_to_no_endpoint_and_an_unknown_address_to_nothing() {
        let index = db();
        let ip = "10.96.0.10".parse().unwrap();
        assert_eq!(
            index.resolve(ip, 80, Protocol::Tcp).unwrap().endpoints,
            vec![]
        );
        assert_eq!(
            index.resolve(ip, 5432, Protocol::Udp).unwrap().endpoints,
            vec![]
        );
        assert!(index
            .resolve("10.0.0.2".parse().unwrap(), 5432, Protocol::Tcp)
            .is_none());
    }

    #[test]
    fn deleting_and_replacing_keep_the_indexes_consistent() {
        let mut index = db();
        assert!(index.delete_slice(&key("shop/db-b")));
        let ip = "10.96.0.10".parse().unwrap();
        assert_eq!(
            index.resolve(ip, 5432, Protocol::Tcp).unwrap().endpoints,
            addrs(&["10.0.0.2:15432"])
        );
        // A Service whose ClusterIP changes no longer answers on the old one.
        index.apply_service(Service {
            key: key("shop/db"),
            addresses: vec!["10.96.0.11".parse().unwrap()],
            ports: vec![port(Some("sql"), 5432)],
        });
        assert!(index.resolve(ip, 5432, Protocol::Tcp).is_none());
        assert!(index.is_service_address("10.96.0.11".parse().unwrap()));
        assert!(index.delete_service(&key("shop/db")));
        assert!(!index.delete_service(&key("shop/db")));
        assert!(!index.is_service_address("10.96.0.11".parse().unwrap()));
        let mut rebuilt = ServiceIndex::new();
        rebuilt.replace_slices(index.slices().map(|s| (**s).clone()));
        assert_eq!(rebuilt, index);
    }
}
