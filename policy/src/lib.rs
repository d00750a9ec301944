//! The NetworkPolicy engine: a compiled model of pods, namespaces and
//! policies, an index over them, and decisions with explanations.
//!
//! Pure: no I/O, no async. Kubernetes types appear only in `convert`.
#![warn(missing_docs)]

pub mod audit;
pub mod cluster;
pub mod convert;
pub mod coverage;
pub mod eval;
pub mod index;
pub mod labels;
pub mod model;
pub mod route;
pub mod selector;
pub mod service;
pub mod shards;
mod tiers;
pub mod toward;
pub mod trace;

pub use audit::{Audit, AuditedPolicy};
pub use cluster::{
    Action, ClusterPeer, ClusterPolicies, ClusterPolicy, ClusterRule, Node, Subject, Tier,
};
pub use eval::{Decision, Reason, Side, TierVerdict};
pub use index::{IndexCounts, PolicyIndex};
pub use labels::{LabelSource, Labels, PackedLabels};
pub use model::{
    ContainerPort, Direction, IpBlock, MtlsMode, Namespace, NamespaceScope, NodeAddrs, ObjectKey,
    Peer, Pod, PodKey, Policy, PolicyKey, PortMatch, PortSpec, Protocol, Rule,
};
pub use route::Route;
pub use selector::Selector;
pub use service::{Endpoint, EndpointSlice, Resolved, Service, ServiceIndex, ServicePort};
pub use toward::{CompiledSide, CompiledSides, TowardRule};
pub use trace::{
    ClusterPolicyTrace, ClusterRuleTrace, Explanation, NoTrace, PolicyTrace, Recorder, RuleTrace,
    SideTrace, Trace,
};

#[cfg(test)]
mod properties;
#[cfg(any(test, feature = "testgen"))]
pub mod testgen;
#[cfg(test)]
mod tests;
