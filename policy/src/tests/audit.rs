//! Audit mode: a policy annotated `picket.io/mode: audit`, or every policy
//! of a namespace so annotated, neither isolates nor allows; its audit
//! says what it would do.

use super::*;

const AUDITED_DENY_DB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod, annotations: {picket.io/mode: audit}}
spec: {podSelector: {matchLabels: {app: db}}}
"#;

fn audit_between(index: &PolicyIndex, from: &str, to: &str, port: u16) -> Option<Audit> {
    index.audit_between_pods(&key(from), &key(to), port, Protocol::Tcp, &node())
}

#[test]
fn an_audited_deny_neither_isolates_and_its_audit_denies_naming_it() {
    let idx = with(AUDITED_DENY_DB);
    assert!(
        allowed(&idx, "prod/web", "prod/db", 5432),
        "it does not isolate"
    );
    assert!(allowed_from_ip(&idx, "10.0.1.1", "prod/db", 5432));
    let audit = audit_between(&idx, "prod/web", "prod/db", 5432).expect("it concerns db");
    assert!(!audit.decision.allowed, "as if enforced it denies");
    assert_eq!(audit.policy, Some(AuditedPolicy::Network(key("prod/deny"))));
    let from_ip = idx
        .audit_from_ip(
            ip("10.0.1.1"),
            &key("prod/db"),
            ip("10.0.0.2"),
            5432,
            Protocol::Tcp,
            &node(),
        )
        .expect("it concerns db");
    assert!(!from_ip.decision.allowed);
    assert_eq!(
        from_ip.policy,
        Some(AuditedPolicy::Network(key("prod/deny")))
    );
    // A pod it does not select has no audit.
    assert_eq!(audit_between(&idx, "prod/db", "prod/web", 80), None);
}

#[test]
fn an_audited_allow_beside_an_enforced_deny_would_allow() {
    let idx = with(&format!(
        "{DENY_DB_INGRESS}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod, annotations: {picket.io/mode: audit}}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#
    ));
    assert!(
        !allowed(&idx, "prod/web", "prod/db", 5432),
        "the enforced deny holds"
    );
    let audit = audit_between(&idx, "prod/web", "prod/db", 5432).expect("audited");
    assert!(audit.decision.allowed, "the audited rule would allow");
    assert_eq!(
        audit.policy,
        Some(AuditedPolicy::Network(key("prod/allow-web")))
    );
    // From elsewhere both deny: the audit agrees with the decision.
    let audit = audit_between(&idx, "dev/web", "prod/db", 5432).expect("audited");
    assert!(!audit.decision.allowed);
}

#[test]
fn a_namespace_in_audit_mode_audits_its_policies_until_it_enforces_them() {
    let mut idx = with(DENY_DB_INGRESS);
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
    let prod: core::Namespace = serde_yaml::from_str(
        "metadata: {name: prod, labels: {env: prod}, annotations: {picket.io/mode: audit}}",
    )
    .unwrap();
    let prod = convert::namespace(&prod).unwrap();
    assert!(prod.audit);
    idx.apply_namespace(prod.clone());
    assert!(allowed(&idx, "prod/web", "prod/db", 5432), "audited now");
    let audit = audit_between(&idx, "prod/web", "prod/db", 5432).expect("audited");
    assert!(!audit.decision.allowed);
    assert_eq!(audit.policy, Some(AuditedPolicy::Network(key("prod/deny"))));
    idx.apply_namespace(Namespace {
        audit: false,
        ..prod
    });
    assert!(
        !allowed(&idx, "prod/web", "prod/db", 5432),
        "enforced again"
    );
    assert_eq!(audit_between(&idx, "prod/web", "prod/db", 5432), None);
}

#[test]
fn an_audited_egress_policy_of_the_source_audits_inbound_and_outbound() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: dev, annotations: {picket.io/mode: audit}}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
    );
    assert!(allowed_from_ip(&idx, "10.0.1.1", "prod/web", 80));
    let inbound = idx
        .audit_from_ip(
            ip("10.0.1.1"),
            &key("prod/web"),
            ip("10.0.0.1"),
            80,
            Protocol::Tcp,
            &node(),
        )
        .expect("the source's egress is audited");
    assert!(!inbound.decision.allowed);
    assert_eq!(
        inbound.policy,
        Some(AuditedPolicy::Network(key("dev/no-egress")))
    );
    let outbound = idx
        .audit_to_ip(&key("dev/web"), ip("10.0.0.1"), 80, Protocol::Tcp, &node())
        .expect("audited");
    assert!(!outbound.decision.allowed);
    assert_eq!(
        outbound.policy,
        Some(AuditedPolicy::Network(key("dev/no-egress")))
    );
    assert!(
        idx.decide_to_ip(&key("dev/web"), ip("10.0.0.1"), 80, Protocol::Tcp, &node())
            .allowed
    );
}

#[test]
fn the_mode_annotation_is_audit_or_enforce_and_anything_else_enforces_with_an_error() {
    let compile = |mode: &str| {
        let np: NetworkPolicy = serde_yaml::from_str(&format!(
            "metadata: {{name: p, namespace: prod, annotations: {{picket.io/mode: {mode}}}}}\nspec: {{podSelector: {{}}}}"
        ))
        .unwrap();
        convert::policy(&np).unwrap()
    };
    assert!(compile("audit").policy.audit);
    assert!(!compile("enforce").policy.audit);
    let typo = compile("Audit");
    assert!(!typo.policy.audit, "an unknown mode enforces");
    assert_eq!(typo.errors[0].field, "metadata.annotations[picket.io/mode]");
    assert!(
        typo.errors[0].reason.contains("\"Audit\""),
        "{}",
        typo.errors[0].reason
    );
    // A policy that cannot be compiled at all still audits when so annotated:
    // its deny-all is what audit reports, not what it enforces.
    let np: NetworkPolicy = serde_yaml::from_str(
        "metadata: {name: p, namespace: prod, annotations: {picket.io/mode: audit}}\nspec: {podSelector: {}, policyTypes: [Sideways]}",
    )
    .unwrap();
    let failed = convert::policy_failing_closed(&np).unwrap();
    assert!(failed.policy.audit);
    assert_eq!(failed.policy.ingress, Some(Vec::new()));
}

#[test]
fn explain_shows_the_verdict_as_if_the_audited_policies_were_enforced() {
    let idx = with(AUDITED_DENY_DB);
    let explanation = idx
        .explain_audit_between_pods(
            &key("prod/web"),
            &key("prod/db"),
            5432,
            Protocol::Tcp,
            &node(),
        )
        .expect("audited");
    assert!(!explanation.decision.allowed);
    let ingress = explanation.ingress.expect("the ingress side was tried");
    let tried: Vec<String> = ingress
        .policies
        .iter()
        .map(|p| p.policy.to_string())
        .collect();
    assert_eq!(tried, ["prod/deny"]);
}
