//! Explanations as text: what `picket explain` prints.
//!
//! Pure: from the engine's [`Explanation`] (every rule tried) to a string.

use std::fmt::Write as _;

use picket_policy::{Action, ClusterPolicyTrace, Decision, Explanation, SideTrace};

/// The whole reasoning for one connection: the verdict, why, and every
/// policy and rule of both sides.
pub fn explanation(e: &Explanation) -> String {
    let verdict = if e.decision.allowed {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let mut out = format!(
        "{} -> {} port {}/{}: {verdict}\n  because: {}\n",
        e.from, e.to, e.port, e.protocol, e.decision
    );
    for trace in [&e.ingress, &e.egress].into_iter().flatten() {
        side(&mut out, trace);
    }
    out
}

/// What the policies in audit mode would decide, beside the decision:
/// the verdict as if they were enforced, and its reasoning.
pub fn audit(audited: &Explanation, decision: &Decision) -> String {
    let verdict = if audited.decision.allowed {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let same = if audited.decision.allowed == decision.allowed {
        "the same"
    } else {
        "NOT the same"
    };
    let mut out = format!(
        "  audit mode: with the audited policies enforced: {verdict} ({same} verdict)\n    because: {}\n",
        audited.decision
    );
    let mut sides = String::new();
    for trace in [&audited.ingress, &audited.egress].into_iter().flatten() {
        side(&mut sides, trace);
    }
    for line in sides.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn side(out: &mut String, trace: &SideTrace) {
    let dir = trace.direction.as_str();
    if !trace.admin.is_empty() {
        let _ = writeln!(out, "  {dir} of {}: Admin tier", trace.pod);
        tier(out, &trace.admin);
        let decided = trace
            .admin
            .iter()
            .flat_map(|p| &p.rules)
            .find(|r| r.peer.is_some() && r.port.is_some())
            .is_some_and(|r| r.action != Action::Pass);
        if decided {
            let _ = writeln!(
                out,
                "  {dir} of {}: NetworkPolicy and Baseline tiers not consulted (the Admin tier decided)",
                trace.pod
            );
            return;
        }
    }
    network_policies(out, trace);
    if !trace.baseline.is_empty() {
        let _ = writeln!(out, "  {dir} of {}: Baseline tier", trace.pod);
        tier(out, &trace.baseline);
    }
}

/// A tier's cluster policies, rule by rule: the first rule that matches
/// decides (or passes).
fn tier(out: &mut String, policies: &[ClusterPolicyTrace]) {
    let mut decided = false;
    for policy in policies {
        let _ = writeln!(
            out,
            "    ClusterNetworkPolicy {} (priority {}):",
            policy.policy, policy.priority
        );
        for rule in &policy.rules {
            let name = rule
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = write!(out, "      rule {}{name} {}: ", rule.index, rule.action);
            let matched = rule.peer.is_some() && rule.port.is_some();
            let verdict = match (matched, decided) {
                (false, _) => "no",
                (true, true) => "matches (a rule above decided)",
                (true, false) => match rule.action {
                    Action::Accept => "ACCEPTS",
                    Action::Deny => "DENIES",
                    Action::Pass => "PASSES to the next tier",
                },
            };
            decided |= matched;
            if let Some(broken) = &rule.broken {
                let effect = match rule.action {
                    Action::Accept => "matches nothing",
                    _ => "denies everything",
                };
                let _ = writeln!(out, "broken, {effect} ({broken}) => {verdict}");
                continue;
            }
            let peer = match rule.peer {
                Some(Some(i)) => format!("peer: entry {i} matches"),
                Some(None) => "peer: any (matches)".to_string(),
                None if rule.unsupported_domain_names => {
                    "peer: no entry matches (domainNames are not supported: they match nothing)"
                        .to_string()
                }
                None => "peer: no entry matches".to_string(),
            };
            let port = match rule.port {
                Some(None) => "port: any (matches)".to_string(),
                Some(Some(i)) => format!("port: entry {i} matches"),
                None => "port: no entry matches".to_string(),
            };
            let _ = writeln!(out, "{peer}; {port} => {verdict}");
        }
    }
}

/// The NetworkPolicy tier of a side.
fn network_policies(out: &mut String, trace: &SideTrace) {
    let dir = trace.direction.as_str();
    if trace.policies.is_empty() {
        let _ = writeln!(out, "  {dir} of {}: no policy isolates it", trace.pod);
        return;
    }
    let names: Vec<String> = trace
        .policies
        .iter()
        .map(|p| p.policy.to_string())
        .collect();
    let _ = writeln!(
        out,
        "  {dir} of {}: isolated by {}",
        trace.pod,
        names.join(", ")
    );
    for policy in &trace.policies {
        if policy.rules.is_empty() {
            let _ = writeln!(out, "    {}: no {dir} rules (denies all)", policy.policy);
            continue;
        }
        let _ = writeln!(out, "    {}:", policy.policy);
        for rule in &policy.rules {
            let _ = write!(out, "      rule {}: ", rule.index);
            if let Some(broken) = &rule.broken {
                let _ = writeln!(out, "broken, allows nothing ({broken})");
                continue;
            }
            let peer = match rule.peer {
                Some(None) => "peer: any (matches)".to_string(),
                Some(Some(i)) => format!("peer: entry {i} matches"),
                None => "peer: no entry matches".to_string(),
            };
            let port = match rule.port {
                Some(None) => "port: any (matches)".to_string(),
                Some(Some(i)) => format!("port: entry {i} matches"),
                None => "port: no entry matches".to_string(),
            };
            let verdict = if rule.peer.is_some() && rule.port.is_some() {
                "ALLOWS"
            } else {
                "no"
            };
            let _ = writeln!(out, "{peer}; {port} => {verdict}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use picket_policy::{NodeAddrs, ObjectKey, Protocol};

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
status: {podIP: 10.0.0.1, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432, name: postgres}]}]}
status: {podIP: 10.0.0.2, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
status: {podIP: 10.0.1.1, hostIP: 192.168.1.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {matchLabels: {app: db}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: nobody}}}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"#;

    // Moved from the engine's tests (policy/src/tests.rs) with the renderer.
    #[test]
    fn explanations_name_the_policy_and_rule() {
        let idx = picket_state::files::parse_manifest(Path::new("t.yaml"), CLUSTER)
            .unwrap()
            .index();
        let node = NodeAddrs::from_ips(["192.168.1.1".parse().unwrap()]);
        let key = |s: &str| ObjectKey::parse(s).unwrap();
        let e = idx.explain_between_pods(
            &key("prod/web"),
            &key("prod/db"),
            5432,
            Protocol::Tcp,
            &node,
        );
        assert!(e.decision.allowed);
        let text = super::explanation(&e);
        assert!(text.contains("allowed by prod/allow-web rule 1"), "{text}");
        assert!(
            text.contains("isolated by prod/allow-web, prod/deny"),
            "{text}"
        );
        let e =
            idx.explain_between_pods(&key("dev/web"), &key("prod/db"), 5432, Protocol::Tcp, &node);
        let text = super::explanation(&e);
        assert!(!e.decision.allowed);
        assert!(
            text.contains("isolated by 2 policies, no rule allows"),
            "{text}"
        );
        assert!(
            text.contains("prod/deny: no ingress rules (denies all)"),
            "{text}"
        );
    }
}
