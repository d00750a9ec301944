//! Enforcement for this pod: every connection, inbound (a peer opened it)
//! or outbound (this pod did, captured), is registered, then decided
//! against the latest cluster snapshot: inbound by this pod's ingress side
//! and the source's egress side, outbound by this pod's egress side (and
//! the ingress side of a destination without a sidecar); every new
//! snapshot re-checks the live ones and tears down those no longer allowed
//! (ztunnel's connection manager and policy watcher, in one place).
//!
//! ```text
//!  accept ─▶ admit: register ─▶ snapshot (bounded wait) ─▶ decide ─▶ allowed? ─▶ relay
//!                      ▲                                                   │
//!  new snapshot ─▶ recheck: copy the table ─▶ decide each ─▶ kill the denied ┘ (reset)
//! ```
//!
//! - `registry`: the live connection table (register before check).
//! - `recheck`: the loop that re-decides live connections on every snapshot.
//!
//! No sockets: callers hand in addresses and get a registration whose
//! `killed()` resolves when a re-check forbids the connection.

mod audit;
pub mod mesh;
mod outbound;
mod recheck;
pub mod registry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::{MeshRefusal, Transport};
use picket_policy::{
    Decision, Direction, MtlsMode, NodeAddrs, PodKey, PortSpec, Protocol, Reason, Side,
};
use picket_state::control::{MeshedPod, Resolver};
use picket_state::{Snapshot, SnapshotRx};

use crate::metrics::{workload_of, ProxyMetrics};
use crate::net::{ClientAddr, OrigDstAddr};
use crate::tap::{self, Tap};
use registry::{Registration, Registry};

/// How long a connection may wait for state that decides it.
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    /// How long a connection waits for the first state before it is reset.
    pub state: Duration,
    /// How long a denied connection from an unknown pod-network IP waits for
    /// a state update that may know it (a new pod's first connection races
    /// its own Pod event).
    pub unknown_ip: Duration,
}

/// Admission and teardown of this pod's connections, both directions.
#[derive(Debug)]
pub struct Enforcer {
    /// This proxy's pod.
    pub pod: PodKey,
    /// The node's addresses from configuration (the pod's own hostIPs are added by the engine).
    pub node: NodeAddrs,
    /// What an outbound connection may always reach: this pod's own node
    /// (its hostIPs, its gateways), not `--node-cidrs` (other nodes, and
    /// whatever else those networks hold, are destinations like any other).
    pub own_node: NodeAddrs,
    /// The live connection table.
    pub registry: Arc<Registry>,
    /// The latest cluster state.
    pub snapshots: SnapshotRx,
    /// With the control plane as source: asks whether an address the view
    /// does not know is a pod's (one outside the view is decided at once).
    pub resolver: Option<Resolver>,
    /// Bounded waits.
    pub waits: Waits,
    /// This pod's own addresses from the downward API (`POD_IPS`, `POD_IP`);
    /// its Pod in the state adds the rest. Only these are ever dialled.
    pub pod_ips: Vec<std::net::IpAddr>,
    /// The pod network; empty: the /16 (IPv4) or /48 (IPv6) around this pod's IP.
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Metrics.
    pub metrics: Arc<ProxyMetrics>,
    /// The round robin over a Service's allowed endpoints.
    pub next_endpoint: std::sync::atomic::AtomicUsize,
    /// Whether outbound connections are decided (the sidecar was told init
    /// captures them, and its state holds Services); else they are reset.
    pub outbound: bool,
    /// Where decisions are published for `picket tap`.
    pub tap: Arc<Tap>,
    /// The mTLS mode the sidecar was started with (`--mtls`): the pod's
    /// own, in the state, may only make it stricter.
    pub mtls: MtlsMode,
    /// The control plane's answers about meshed pods outside the view.
    pub answers: mesh::Answers,
}

/// An admitted connection: its place in the table, and where to dial (the
/// original destination; for an outbound connection to a Service, the
/// endpoint chosen).
#[derive(Debug)]
pub struct Admitted {
    /// The registration, whose `killed()` resolves when a re-check forbids it.
    pub registration: Registration,
    /// Where to connect.
    pub dial: OrigDstAddr,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No cluster state arrived within the wait.
    NoState,
    /// The original destination is not one of this pod's addresses (loopback,
    /// another pod routed through this one): the proxy is no open relay.
    ForeignDestination,
    /// An outbound connection to loopback or an unspecified address: not
    /// captured, so it reached the outbound port directly (it would loop).
    Loop,
    /// An outbound connection to a sidecar run without `--outbound-capture`
    /// (init and run disagree): its state may lack the Services to decide it.
    OutboundOff,
    /// The policies deny it.
    Denied,
    /// The policies allow it, but how its peer came does not (see [`mesh`]).
    Mesh,
}

// === impl Enforcer ===

impl Enforcer {
    /// Decides a connection against a snapshot: an inbound one (`Ingress`)
    /// from its client to this pod, an outbound one (`Egress`) from this
    /// pod to its original destination.
    pub fn decide(
        &self,
        snapshot: &Snapshot,
        direction: Direction,
        client: ClientAddr,
        dst: OrigDstAddr,
    ) -> Decision {
        match direction {
            Direction::Ingress => snapshot.index.decide_from_ip(
                client.0.ip(),
                &self.pod,
                dst.0.ip(),
                dst.0.port(),
                Protocol::Tcp,
                &self.node,
            ),
            Direction::Egress => self.decide_outbound(snapshot, dst),
        }
    }

    /// Registers a connection, then decides it (waiting, bounded, for the
    /// first state, or for a state that knows a new pod's IP). Allowed: the
    /// registration, whose `killed()` resolves when a re-check forbids it.
    /// Refused: counted and logged here; the caller resets the connection.
    pub async fn admit(
        &self,
        direction: Direction,
        client: ClientAddr,
        dst: OrigDstAddr,
        transport: Transport,
    ) -> Result<Admitted, Refusal> {
        // Register before checking: a re-check after this point sees the connection.
        let registration = self
            .registry
            .register(direction, client, dst, transport.clone());
        let refused = self.metrics.refused_of(direction);
        let Some(snapshot) = self.current_snapshot().await else {
            refused.with_label_values(&["no-state"]).inc();
            self.tap_refusal(direction, client, dst, "no-state");
            tracing::info!(client.addr = %client, dst.addr = %dst, ?direction, "No cluster state yet; reset");
            return Err(Refusal::NoState);
        };
        match direction {
            Direction::Ingress if !self.is_own_address(&snapshot, dst) => {
                refused.with_label_values(&["foreign-destination"]).inc();
                self.tap_refusal(direction, client, dst, "foreign-destination");
                tracing::warn!(client.addr = %client, dst.addr = %dst, "Original destination is not this pod's address; reset without dialling");
                Err(Refusal::ForeignDestination)
            }
            Direction::Ingress => {
                self.admit_inbound(registration, snapshot, client, dst, &transport)
                    .await
            }
            Direction::Egress if !self.outbound => {
                refused.with_label_values(&["capture-off"]).inc();
                self.tap_refusal(direction, client, dst, "capture-off");
                tracing::warn!(client.addr = %client, dst.addr = %dst, "Outbound connection, but the sidecar runs without --outbound-capture (init and run must agree); reset");
                Err(Refusal::OutboundOff)
            }
            Direction::Egress if is_local(dst) => {
                refused.with_label_values(&["loop"]).inc();
                self.tap_refusal(direction, client, dst, "loop");
                tracing::warn!(client.addr = %client, dst.addr = %dst, "Outbound connection to a loopback address reached the proxy uncaptured; reset without dialling");
                Err(Refusal::Loop)
            }
            Direction::Egress => {
                self.admit_outbound(registration, snapshot, client, dst)
                    .await
            }
        }
    }

    /// Decides an inbound connection (waiting, bounded, for a state that
    /// knows a new client pod).
    async fn admit_inbound(
        &self,
        registration: Registration,
        mut snapshot: Arc<Snapshot>,
        client: ClientAddr,
        dst: OrigDstAddr,
        transport: &Transport,
    ) -> Result<Admitted, Refusal> {
        let decided_at = Instant::now();
        let direction = Direction::Ingress;
        let mut decision = self.decide(&snapshot, direction, client, dst);
        self.metrics
            .decision
            .observe(decided_at.elapsed().as_secs_f64());
        if !decision.allowed
            && decision.source.is_none()
            && self.may_be_a_new_pod(&snapshot, client.0.ip())
        {
            if let Some(newer) = self.wait_for_ip(client.0.ip()).await {
                snapshot = newer;
                decision = self.decide(&snapshot, direction, client, dst);
            }
        }
        self.count_decision(&snapshot, &decision, dst.0.port());
        let audit = self.audit_inbound(&snapshot, &decision, client, dst);
        self.tap_decision(&snapshot, direction, client, dst, &decision, audit);
        registration.set_decided_on(snapshot.version);
        if decision.allowed {
            if let Err(refusal) = self.check_mesh(&snapshot, transport, &decision, client) {
                self.refuse_mesh(&refusal, transport, client, dst);
                return Err(Refusal::Mesh);
            }
        }
        drop(snapshot);
        if !decision.allowed {
            tracing::info!(
                ?direction,
                client.addr = %client,
                dst.addr = %dst,
                peer = ?decision.source.as_ref().map(ToString::to_string),
                reason = %decision,
                "Connection denied"
            );
            return Err(Refusal::Denied);
        }
        registration.set_allowed_by(decision.ingress_policy().cloned());
        tracing::debug!(?direction, client.addr = %client, dst.addr = %dst, reason = %decision, "Connection allowed");
        Ok(Admitted {
            registration,
            dial: dst,
        })
    }

    /// Whether the original destination is one of this pod's own addresses.
    fn is_own_address(&self, snapshot: &Snapshot, dst: OrigDstAddr) -> bool {
        let ip = dst.0.ip().to_canonical();
        !ip.is_loopback()
            && !ip.is_unspecified()
            && (self.pod_ips.contains(&ip)
                || snapshot
                    .index
                    .pod(&self.pod)
                    .is_some_and(|p| p.ips.contains(&ip)))
    }

    /// This pod's mTLS mode: the stricter of the sidecar's flag and the
    /// pod's annotation in the state.
    pub fn own_mtls(&self, snapshot: &Snapshot) -> MtlsMode {
        let annotated = snapshot
            .index
            .pod(&self.pod)
            .map_or(MtlsMode::Off, |p| p.mtls);
        self.mtls.max(annotated)
    }

    /// Whether the pod holding `ip` originates mTLS (of several claimants,
    /// the one not being deleted): from the state, or, for an address the
    /// view does not hold, from the control plane (a bounded wait; no
    /// answer: no).
    pub async fn originates_mtls(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        {
            let Some(snapshot) = self.snapshots.borrow().clone() else {
                return false;
            };
            if !snapshot.index.pods_with_ip(ip).is_empty() {
                return snapshot
                    .index
                    .holder_of(ip)
                    .is_some_and(|p| p.originates_mtls());
            }
        }
        self.ask_meshed(ip).await.is_some_and(|m| m.originates_mtls)
    }

    /// The meshed pod holding `ip`, an address the view does not hold:
    /// the control plane's answer, kept a while (see [`mesh::Answers`]). No
    /// answer within [`RESOLVE_WAIT`]: none (and nothing kept).
    async fn ask_meshed(&self, ip: std::net::IpAddr) -> Option<MeshedPod> {
        let now = Instant::now();
        if let Some(kept) = self.answers.get(ip, now) {
            return kept;
        }
        let resolver = self.resolver.as_ref()?;
        let answer = tokio::time::timeout(RESOLVE_WAIT, resolver.resolve(ip))
            .await
            .ok()
            .flatten()?;
        self.answers.put(ip, answer.meshed.clone(), now);
        answer.meshed
    }

    /// The meshed pod an admitted outbound connection dials, when this pod
    /// originates mTLS (its mode is not off, and it has a certificate): from
    /// the state, or, for an address the view does not hold, from the
    /// control plane (a bounded wait; no answer: plaintext).
    pub async fn meshed_destination(
        &self,
        mesh: &crate::mesh::Mesh,
        dial: OrigDstAddr,
    ) -> Option<MeshedPod> {
        let snapshot = self.snapshots.borrow().clone()?;
        if self.own_mtls(&snapshot) == MtlsMode::Off || !mesh.credentials.is_certified() {
            return None;
        }
        let ip = dial.0.ip().to_canonical();
        // To its own addresses a pod's connection goes over loopback,
        // straight to the app: nothing there terminates mTLS.
        if self.pod_ips.contains(&ip) {
            return None;
        }
        if !snapshot.index.pods_with_ip(ip).is_empty() {
            let pod = snapshot
                .index
                .holder_of(ip)
                .filter(|p| p.meshed() && p.key != self.pod)?;
            return Some(MeshedPod {
                namespace: pod.key.namespace.to_string(),
                name: pod.key.name.to_string(),
                uid: pod.uid.to_string(),
                service_account: pod.service_account.to_string(),
                originates_mtls: pod.originates_mtls(),
            });
        }
        drop(snapshot);
        self.ask_meshed(ip).await
    }

    /// Checks an allowed inbound decision against how its peer came (see [`mesh`]).
    pub(crate) fn check_mesh(
        &self,
        snapshot: &Snapshot,
        transport: &Transport,
        decision: &Decision,
        client: ClientAddr,
    ) -> Result<(), MeshRefusal> {
        let mode = self.own_mtls(snapshot);
        if mode == MtlsMode::Off && *transport == Transport::Plaintext {
            return Ok(());
        }
        let ip = client.0.ip().to_canonical();
        let in_pod_network = !ip.is_loopback() && self.in_pod_network(snapshot, ip);
        mesh::check_inbound(&snapshot.index, mode, transport, decision, in_pod_network)
    }

    /// Counts and logs a mesh refusal, with the facts.
    fn refuse_mesh(
        &self,
        refusal: &MeshRefusal,
        transport: &Transport,
        client: ClientAddr,
        dst: OrigDstAddr,
    ) {
        let label = refusal.label();
        self.metrics
            .refused_of(Direction::Ingress)
            .with_label_values(&[label])
            .inc();
        self.tap_refusal(Direction::Ingress, client, dst, label);
        let cert = match transport {
            Transport::Mtls(id) => Some(id),
            Transport::Plaintext => None,
        };
        tracing::warn!(
            peer_ip = %client.0.ip(),
            dst.addr = %dst,
            refusal = label,
            cert_ns = cert.map(|c| c.namespace.as_str()),
            cert_sa = cert.map(|c| c.service_account.as_str()),
            cert_uid = cert.map(|c| c.uid.as_str()),
            ip_owner = ?refusal,
            "Connection refused by mTLS: its peer is not who its address says"
        );
    }

    /// Whether an address is in the pod network (`--pod-cidrs`; none: the
    /// /16 or /48 around this pod's own address).
    fn in_pod_network(&self, snapshot: &Snapshot, ip: std::net::IpAddr) -> bool {
        if !self.pod_cidrs.is_empty() {
            return self.pod_cidrs.iter().any(|n| n.contains(&ip));
        }
        let own = snapshot.index.pod(&self.pod);
        own.map(|p| p.ips.as_slice())
            .unwrap_or_default()
            .iter()
            .chain(&self.pod_ips)
            .any(|mine| {
                let prefix = if mine.is_ipv4() { 16 } else { 48 };
                ipnet::IpNet::new(*mine, prefix).is_ok_and(|n| n.trunc().contains(&ip))
            })
    }

    /// Whether an unknown peer address (the source of an inbound
    /// connection, the destination of an outbound one) may be a pod whose
    /// Pod event has not arrived yet.
    fn may_be_a_new_pod(&self, snapshot: &Snapshot, ip: std::net::IpAddr) -> bool {
        !self.waits.unknown_ip.is_zero()
            && !knows_ip(snapshot, ip)
            && self.in_pod_network(snapshot, ip)
    }

    /// Waits (bounded) for a snapshot that knows the client's IP. With the
    /// control plane, asks it first: an address some pod holds is one
    /// outside this pod's view (any pod that belongs in the view is in it
    /// when the answer comes), decided now on the current snapshot.
    async fn wait_for_ip(&self, ip: std::net::IpAddr) -> Option<Arc<Snapshot>> {
        let deadline = tokio::time::Instant::now() + self.waits.unknown_ip;
        if let Some(resolver) = &self.resolver {
            if let Ok(Some(true)) = tokio::time::timeout_at(deadline, resolver.is_pod(ip)).await {
                self.count_wait("outside-view");
                return self.snapshots.borrow().clone();
            }
        }
        let mut rx = self.snapshots.clone();
        let found = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|s| s.as_ref().is_some_and(|s| knows_ip(s, ip))),
        )
        .await;
        let (outcome, snapshot) = match found {
            Ok(Ok(snapshot)) => ("resolved", snapshot.clone()),
            _ => ("timeout", None),
        };
        self.count_wait(outcome);
        snapshot
    }

    fn count_wait(&self, outcome: &str) {
        self.metrics
            .unknown_ip_waits
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts a decision by outcome, deciding policy and (bounded) port.
    fn count_decision(&self, snapshot: &Snapshot, decision: &Decision, port: u16) {
        let policy_label;
        let policy = match &decision.reason {
            // A cluster policy decided: its tier and name.
            _ if decision.deciding_tier().is_some() => {
                policy_label = decision
                    .deciding_tier()
                    .map(|t| t.label())
                    .unwrap_or_default();
                &policy_label
            }
            _ if !decision.allowed => "isolated",
            Reason::Node => "node",
            Reason::SamePod => "same-pod",
            Reason::Policies {
                ingress: Side::Allowed { policy, .. },
                ..
            } => {
                policy_label = policy.to_string();
                &policy_label
            }
            _ => "no-policy",
        };
        let mut digits = [0u8; 5];
        let port = self.port_label(snapshot, port, &mut digits);
        let outcome = if decision.allowed {
            "allowed"
        } else {
            "denied"
        };
        self.metrics
            .connections
            .with_label_values(&[outcome, policy, port])
            .inc();
        if !decision.allowed {
            match &decision.source {
                Some(peer) => self
                    .metrics
                    .denied_peer(&peer.namespace, workload_of(&peer.name)),
                None => self.metrics.denied_peer("none", "none"),
            }
        }
    }

    /// A port's label value: its number where labelled (see
    /// [`Self::port_is_labelled`]), else `other`.
    fn port_label<'a>(&self, snapshot: &Snapshot, port: u16, digits: &'a mut [u8; 5]) -> &'a str {
        if self.port_is_labelled(snapshot, port) {
            format_port(port, digits)
        } else {
            "other"
        }
    }

    /// Whether the port is one the pod declares or a policy selecting it names:
    /// only those get their own label value (a port scan must not make 65,000 series).
    fn port_is_labelled(&self, snapshot: &Snapshot, port: u16) -> bool {
        let declared = snapshot
            .index
            .pod(&self.pod)
            .is_some_and(|p| p.ports.iter().any(|cp| cp.port == port));
        declared
            || snapshot
                .index
                .selecting(&self.pod, Direction::Ingress)
                .iter()
                .flat_map(|p| p.ingress.iter().flatten())
                .flat_map(|r| r.ports.iter().flatten())
                .any(|pm| matches!(pm.port, PortSpec::Range(a, b) if a <= port && port <= b && b - a < 64))
    }

    /// Publishes a decision to the tap (built only when a reader is attached).
    fn tap_decision(
        &self,
        snapshot: &Snapshot,
        direction: Direction,
        client: ClientAddr,
        dst: OrigDstAddr,
        decision: &Decision,
        audit: Option<(&'static str, String)>,
    ) {
        self.tap.publish(|| tap::Event {
            audit,
            ..tap::Event::decided(
                &snapshot.index,
                &self.pod,
                direction,
                client.0,
                dst.0,
                decision,
            )
        });
    }

    /// Publishes a refusal made without a policy decision to the tap.
    fn tap_refusal(
        &self,
        direction: Direction,
        client: ClientAddr,
        dst: OrigDstAddr,
        refusal: &'static str,
    ) {
        self.tap
            .publish(|| tap::Event::refused(&self.pod, direction, client.0, dst.0, refusal));
    }

    /// The latest snapshot, waiting (bounded) for the first one.
    async fn current_snapshot(&self) -> Option<Arc<Snapshot>> {
        if let Some(snapshot) = self.snapshots.borrow().clone() {
            return Some(snapshot);
        }
        let mut rx = self.snapshots.clone();
        let waited = tokio::time::timeout(self.waits.state, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(guard)) => guard.clone(),
            _ => None,
        }
    }
}

/// Whether the state knows `ip` as a pod's: a pod holds it, or, in
/// control mode, the view holds a pod's entry for it (a pod outside the
/// view, whose own policies decide).
fn knows_ip(snapshot: &Snapshot, ip: std::net::IpAddr) -> bool {
    let index = &snapshot.index;
    !index.pods_with_ip(ip).is_empty()
        || [index.egress_toward_me(), index.ingress_toward_me()]
            .into_iter()
            .flatten()
            .any(|c| c.address(ip).is_some())
}

/// How long an outbound connection to an address the view does not hold
/// waits for the control plane to say whether its pod is meshed.
const RESOLVE_WAIT: Duration = Duration::from_millis(100);

/// Whether an original destination is loopback or unspecified: never
/// captured, so never dialled from the outbound port.
fn is_local(dst: OrigDstAddr) -> bool {
    let ip = dst.0.ip().to_canonical();
    ip.is_loopback() || ip.is_unspecified()
}

/// Writes a port number into a small buffer, without allocating.
fn format_port(port: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("other")
}

#[cfg(test)]
pub(crate) mod tests;
