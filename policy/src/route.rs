//! Where an outbound connection may go: the address dialled, or, for a
//! Service's ClusterIP, each ready endpoint the source's egress side allows.
//!
//! NetworkPolicy egress is about the endpoint pods, not the ClusterIP (which
//! no policy can name but by `ipBlock`, and which kube-proxy translates on
//! the node after any decision could be made). So a ClusterIP is resolved
//! here, each endpoint decided on its own, and the data plane dials one of
//! those allowed, itself.
//!
//! Pure: no I/O.

use std::net::SocketAddr;

use super::eval::Decision;
use super::index::PolicyIndex;
use super::model::{NodeAddrs, ObjectKey, PodKey, Protocol};
use super::service::ServiceIndex;

/// The destinations an outbound connection may be relayed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The Service whose ClusterIP was dialled; `None`: a plain address.
    pub service: Option<ObjectKey>,
    /// The destinations allowed, with the decision for each (the dialled
    /// address itself when it is no ClusterIP), in address order.
    pub allowed: Vec<(SocketAddr, Decision)>,
    /// The first denial (of an endpoint, or of the address), for reasons.
    pub denied: Option<Decision>,
    /// How many destinations were decided (a Service's ready endpoints).
    pub candidates: usize,
}

// === impl PolicyIndex: routes ===

impl PolicyIndex {
    /// Routes a connection `src` opens to `dst`: a ClusterIP of `services`
    /// to the endpoints its egress side allows, any other address to itself
    /// when allowed.
    pub fn route(
        &self,
        services: &ServiceIndex,
        src: &PodKey,
        dst: SocketAddr,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Route {
        let ip = dst.ip().to_canonical();
        let (service, candidates) = match services.resolve(ip, dst.port(), protocol) {
            Some(resolved) => (Some(resolved.service), resolved.endpoints),
            None => (None, vec![SocketAddr::new(ip, dst.port())]),
        };
        let mut route = Route {
            service,
            allowed: Vec::new(),
            denied: None,
            candidates: candidates.len(),
        };
        for candidate in candidates {
            let decision = self.decide_to_ip(src, candidate.ip(), candidate.port(), protocol, node);
            if decision.allowed {
                route.allowed.push((candidate, decision));
            } else if route.denied.is_none() {
                route.denied = Some(decision);
            }
        }
        route
    }
}

// === impl Route ===

impl Route {
    /// The route's verdict for a re-check: the first allowed destination's
    /// decision, else the first denial, else (a Service without endpoints
    /// for the port) a denial.
    pub fn verdict(&self, src: &PodKey) -> Decision {
        match (self.allowed.first(), &self.denied) {
            (Some((_, allowed)), _) => allowed.clone(),
            (None, Some(denied)) => denied.clone(),
            (None, None) => Decision::no_endpoint(src),
        }
    }

    /// The `n`th allowed destination, round robin; `None`: none is allowed.
    pub fn pick(&self, n: usize) -> Option<&(SocketAddr, Decision)> {
        match self.allowed.len() {
            0 => None,
            len => self.allowed.get(n % len),
        }
    }

    /// The less loaded of two allowed destinations: the `n`th, round robin,
    /// and the next (ties go to the `n`th), by `load` (live connections).
    /// Round robin alone keeps sending to an endpoint whose connections
    /// pile up; two choices avoid it at the cost of one more lookup.
    pub fn pick_less_loaded(
        &self,
        n: usize,
        load: impl Fn(SocketAddr) -> usize,
    ) -> Option<&(SocketAddr, Decision)> {
        let first = self.pick(n)?;
        let second = self.pick(n + 1)?;
        Some(if load(second.0) < load(first.0) {
            second
        } else {
            first
        })
    }
}
