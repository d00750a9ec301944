//! `picket reach`: every ordered pair of pods, for each port, decided and rendered.
//!
//! Pure: computes over an index and returns text.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use picket_policy::{Audit, Decision, NodeAddrs, PodKey, PolicyIndex, Protocol, Reason, Side};

/// One evaluated connection.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The source pod.
    pub from: PodKey,
    /// The destination pod.
    pub to: PodKey,
    /// The destination port.
    pub port: u16,
    /// The protocol (TCP).
    pub protocol: Protocol,
    /// The engine's decision.
    pub decision: Decision,
    /// Whether the data plane enforces it (see [`enforced`]).
    pub enforced: bool,
    /// The decision had the policies in audit mode been enforced; `None`
    /// when none concerns the pair.
    pub audit: Option<Audit>,
}

impl Probe {
    /// The audit, when it decides otherwise than the decision.
    pub fn audit_differs(&self) -> Option<&Audit> {
        self.audit
            .as_ref()
            .filter(|a| a.decision.allowed != self.decision.allowed)
    }
}

/// The JSON shape of a probe; other tools consume it, keep it stable.
#[derive(Debug, Serialize)]
struct JsonProbe {
    from: String,
    to: String,
    port: u16,
    protocol: &'static str,
    allowed: bool,
    reason: String,
    enforced: bool,
    /// Present when a policy in audit mode concerns the pair.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<JsonAudit>,
}

/// What the policies in audit mode would decide.
#[derive(Debug, Serialize)]
struct JsonAudit {
    allowed: bool,
    reason: String,
    /// The audited policy that decides it, when one does.
    policy: Option<String>,
}

/// The label that turns injection on for a namespace, or (`disabled`) off for a pod.
use picket_policy::coverage::INJECT_LABEL;

/// Whether a pod runs Picket's sidecar, or will: its spec has the
/// container, or its namespace is labelled for injection and the pod does
/// not opt out (an opt-out counts whether or not its namespace honours it:
/// claiming enforcement must be certain).
pub fn runs_sidecar(index: &PolicyIndex, pod: &PodKey) -> bool {
    let Some(p) = index.pod(pod) else {
        return false;
    };
    if p.sidecar {
        return true;
    }
    let injected = index
        .namespace_labels(&pod.namespace)
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "enabled");
    injected && p.labels.get(INJECT_LABEL).is_none_or(|v| v != "disabled") && !p.host_network
}

/// Whether the data plane enforces a verdict between two pods: one end
/// runs the sidecar. The destination's checks both sides (its ingress, the
/// source's egress); a source that captures its outbound connections checks
/// its egress and, toward a pod without a sidecar, that pod's ingress.
pub fn enforced(index: &PolicyIndex, from: &PodKey, to: &PodKey) -> bool {
    runs_sidecar(index, to) || runs_sidecar(index, from)
}

/// Evaluates every ordered pair of pods (self pairs included) on each port:
/// the given ports, or else every TCP port the destination declares. Sorted
/// by from, to, port.
pub fn probes(index: &PolicyIndex, ports: &[u16]) -> Vec<Probe> {
    let mut pods: Vec<&PodKey> = index.pods().map(|p| &p.key).collect();
    pods.sort();
    let mut out = Vec::new();
    for from in &pods {
        for to in &pods {
            let Some(dst) = index.pod(to) else { continue };
            let node = NodeAddrs::from_ips(dst.host_ips.iter().copied());
            let dst_ports: BTreeSet<u16> = if ports.is_empty() {
                dst.ports
                    .iter()
                    .filter(|p| p.protocol == Protocol::Tcp)
                    .map(|p| p.port)
                    .collect()
            } else {
                ports.iter().copied().collect()
            };
            for port in dst_ports {
                let decision = index.decide_between_pods(from, to, port, Protocol::Tcp, &node);
                let audit = index.audit_between_pods(from, to, port, Protocol::Tcp, &node);
                out.push(Probe {
                    from: (*from).clone(),
                    to: (*to).clone(),
                    port,
                    protocol: Protocol::Tcp,
                    decision,
                    enforced: enforced(index, from, to),
                    audit,
                });
            }
        }
    }
    out
}

/// Renders probes as one JSON array.
pub fn render_json(probes: &[Probe]) -> serde_json::Result<String> {
    let rows: Vec<JsonProbe> = probes
        .iter()
        .map(|p| JsonProbe {
            from: p.from.to_string(),
            to: p.to.to_string(),
            port: p.port,
            protocol: p.protocol.as_str(),
            allowed: p.decision.allowed,
            reason: p.decision.to_string(),
            enforced: p.enforced,
            audit: p.audit.as_ref().map(|a| JsonAudit {
                allowed: a.decision.allowed,
                reason: a.decision.to_string(),
                policy: a.policy.as_ref().map(ToString::to_string),
            }),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&rows)?;
    text.push('\n');
    Ok(text)
}

/// Renders one truth table per port: sources as rows, destinations as columns.
pub fn render_table(index: &PolicyIndex, probes: &[Probe], explain: bool) -> String {
    let mut pods: Vec<&PodKey> = index.pods().map(|p| &p.key).collect();
    pods.sort();
    let ports: BTreeSet<u16> = probes.iter().map(|p| p.port).collect();
    let mut out = String::new();
    if ports.is_empty() {
        out.push_str("no probes: no pod declares a TCP port; pass --port N\n");
        return out;
    }
    let width = pods.iter().map(|k| k.to_string().len()).max().unwrap_or(0);
    let number_width = pods.len().to_string().len();
    let cell = number_width.max(2) + 1;
    let _ = writeln!(out, "Destinations:");
    for (i, pod) in pods.iter().enumerate() {
        let _ = writeln!(out, "  {:>number_width$}  {pod}", i + 1);
    }
    let audited = probes.iter().any(|p| p.audit_differs().is_some());
    for port in &ports {
        let _ = writeln!(
            out,
            "\nport {port}/TCP   rows: from, columns: to   ✓ allowed  ✗ denied  · not probed"
        );
        if audited {
            let _ = writeln!(
                out,
                "  audit mode: ✓* allowed, an audited policy would deny  ✗* denied, an audited policy would allow"
            );
        }
        let _ = write!(out, "{:width$}    ", "");
        for i in 0..pods.len() {
            let _ = write!(out, "{:>cell$}", i + 1);
        }
        out.push('\n');
        for from in &pods {
            let _ = write!(out, "{:width$}    ", from.to_string());
            let mut notes = Vec::new();
            for (i, to) in pods.iter().enumerate() {
                let probe = probes
                    .iter()
                    .find(|p| p.port == *port && p.from == **from && p.to == **to);
                let differs = probe.and_then(Probe::audit_differs);
                let mark = match (probe, differs) {
                    (None, _) => "·",
                    (Some(p), None) if p.decision.allowed => "✓",
                    (Some(_), None) => "✗",
                    (Some(p), Some(_)) if p.decision.allowed => "✓*",
                    (Some(_), Some(_)) => "✗*",
                };
                let _ = write!(out, "{mark:>cell$}");
                if let Some(p) = probe.filter(|_| explain) {
                    if let Some(note) = explain_note(&p.decision) {
                        notes.push(format!("{}: {note}", i + 1));
                    }
                    if let Some(audit) = differs {
                        notes.push(format!("{}: {}", i + 1, audit_note(audit)));
                    }
                }
            }
            out.push('\n');
            for note in notes {
                let _ = writeln!(out, "{:width$}      {note}", "");
            }
        }
    }
    let allowed = probes.iter().filter(|p| p.decision.allowed).count();
    let cluster = match index.counts().cluster_policies {
        0 => String::new(),
        n => format!(
            ", {n} ClusterNetworkPolic{}",
            if n == 1 { "y" } else { "ies" }
        ),
    };
    let _ = writeln!(
        out,
        "\n{} over {} and {}: {allowed} allowed, {} denied ({}{cluster})",
        plural(probes.len(), "probe"),
        plural(pods.len(), "pod"),
        plural(ports.len(), "port"),
        probes.len() - allowed,
        plural(index.counts().policies, "policy"),
    );
    let in_audit = index.policies().filter(|p| index.is_audited(p)).count()
        + index.cluster_policies().iter().filter(|p| p.audit).count();
    if in_audit > 0 {
        let differ = |allowed: bool| {
            probes
                .iter()
                .filter(|p| p.audit_differs().is_some() && p.decision.allowed == allowed)
                .count()
        };
        let _ = writeln!(
            out,
            "in audit mode: {}; enforced, they would deny {} allowed and allow {} denied",
            plural(in_audit, "policy"),
            differ(true),
            differ(false),
        );
    }
    out
}

/// What the audited policies would do to a cell that they decide otherwise.
fn audit_note(audit: &Audit) -> String {
    let verdict = if audit.decision.allowed {
        "allow"
    } else {
        "deny"
    };
    match &audit.policy {
        Some(policy) => format!("audit: {policy} would {verdict} ({})", audit.decision),
        None => format!("audit: would {verdict} ({})", audit.decision),
    }
}

fn plural(n: usize, noun: &str) -> String {
    match (n, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "policy") => format!("{n} policies"),
        _ => format!("{n} {noun}s"),
    }
}

/// What decided a cell, when a policy had a say.
fn explain_note(decision: &Decision) -> Option<String> {
    match &decision.reason {
        Reason::Policies {
            ingress: Side::NotIsolated,
            egress: Side::NotIsolated | Side::NotApplicable,
        } => None,
        Reason::SamePod => None,
        _ => Some(decision.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_state::files::parse_manifest;

    fn index(yaml: &str) -> PolicyIndex {
        parse_manifest(std::path::Path::new("t.yaml"), yaml)
            .unwrap()
            .index()
    }

    fn key(s: &str) -> PodKey {
        PodKey::parse(s).unwrap()
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: on, labels: {picket.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: off}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: on}
---
apiVersion: v1
kind: Pod
metadata: {name: out, namespace: on, labels: {picket.io/inject: disabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: off}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: off}
---
apiVersion: v1
kind: Pod
metadata: {name: injected, namespace: off}
spec: {containers: [{name: app}, {name: picket-proxy}]}
"#;

    #[test]
    fn a_verdict_is_enforced_only_where_an_end_runs_the_sidecar() {
        let idx = index(CLUSTER);
        assert!(runs_sidecar(&idx, &key("on/a")), "injected namespace");
        assert!(!runs_sidecar(&idx, &key("on/out")), "opted out");
        assert!(
            runs_sidecar(&idx, &key("off/injected")),
            "has the container"
        );
        assert!(enforced(&idx, &key("off/b"), &key("on/a")));
        assert!(enforced(&idx, &key("on/a"), &key("off/b")), "at the source");
        assert!(enforced(&idx, &key("off/b"), &key("off/injected")));
        assert!(!enforced(&idx, &key("off/b"), &key("off/c")));
        assert!(!enforced(&idx, &key("on/out"), &key("off/c")));
        let json = render_json(&probes(&idx, &[80])).unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let unenforced: Vec<String> = rows
            .iter()
            .filter(|r| r["enforced"] == false)
            .map(|r| {
                format!(
                    "{} -> {}",
                    r["from"].as_str().unwrap(),
                    r["to"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            unenforced,
            [
                "off/b -> off/b",
                "off/b -> off/c",
                "off/b -> on/out",
                "off/c -> off/b",
                "off/c -> off/c",
                "off/c -> on/out",
                "on/out -> off/b",
                "on/out -> off/c",
                "on/out -> on/out",
            ]
        );
    }
}
