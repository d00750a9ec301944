use super::*;

fn parse(yaml: &str) -> CompiledClusterPolicy {
    let cnp: ClusterNetworkPolicy = serde_yaml::from_str(yaml).unwrap();
    cluster_policy(&cnp).unwrap()
}

#[test]
fn a_policy_compiles_with_its_tier_priority_subject_peers_and_ports() {
    let c = parse(
        r#"
metadata: {name: gate, annotations: {picket.io/mode: audit}}
spec:
  tier: Admin
  priority: 7
  subject: {pods: {namespaceSelector: {matchLabels: {team: pay}}, podSelector: {matchLabels: {app: api}}}}
  ingress:
  - name: from-gateway
    action: Accept
    from: [{namespaces: {matchLabels: {role: gateway}}}]
    protocols: [{tcp: {destinationPort: {number: 8080}}}, {udp: {destinationPort: {range: {start: 1000, end: 2000}}}}]
  - action: Deny
    from: [{namespaces: {}}]
  egress:
  - action: Pass
    to: [{networks: ["10.0.0.0/8", "fd00::/8"]}, {nodes: {}}]
    protocols: [{destinationNamedPort: web}]
"#,
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let p = c.policy;
    assert_eq!(
        (&*p.name, p.tier, p.priority, p.audit),
        ("gate", Tier::Admin, 7, true)
    );
    assert!(matches!(p.subject, Subject::Pods { .. }));
    assert_eq!(p.ingress.len(), 2);
    let first = &p.ingress[0];
    assert_eq!(first.name.as_deref(), Some("from-gateway"));
    assert_eq!(first.action, Action::Accept);
    assert_eq!(
        first.ports.as_deref().unwrap(),
        [
            PortMatch {
                protocol: Protocol::Tcp,
                port: PortSpec::Range(8080, 8080)
            },
            PortMatch {
                protocol: Protocol::Udp,
                port: PortSpec::Range(1000, 2000)
            },
        ]
    );
    assert_eq!(p.ingress[1].ports, None, "no protocols: every port");
    let egress = &p.egress[0];
    assert_eq!(egress.action, Action::Pass);
    assert!(matches!(&egress.peers[0], ClusterPeer::Networks(n) if n.len() == 2));
    assert!(matches!(&egress.peers[1], ClusterPeer::Nodes(s) if s.is_everything()));
    assert_eq!(
        egress.ports.as_ref().unwrap().len(),
        3,
        "a named port on any protocol"
    );
}

#[test]
fn what_cannot_be_read_fails_closed_per_rule_as_the_api_asks() {
    let c = parse(
        r#"
metadata: {name: odd}
spec:
  tier: Baseline
  priority: 3
  subject: {namespaces: {}}
  ingress:
  - {action: Allow, from: [{namespaces: {}}]}
  - {action: Accept, from: [{futurePeer: {}}]}
  - {action: Pass, from: [{}]}
  - {action: Accept, from: [{networks: ["10.0.0.0/8"]}]}
  egress:
  - {action: Deny, to: [{domainNames: [example.com]}]}
  - {action: Accept, to: [{domainNames: ["*.example.com"]}]}
  - {action: Accept, to: [{pods: {podSelector: {}}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]}
"#,
    );
    let fields: Vec<&str> = c.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].action",
            "spec.ingress[1].from[0].futurePeer",
            "spec.ingress[2].from[0]",
            "spec.ingress[3].from[0].networks",
            "spec.egress[0].to[0].domainNames",
            "spec.egress[2].protocols[0].tcp.destinationPort.range",
        ]
    );
    let p = c.policy;
    let ingress: Vec<(Action, bool)> = p
        .ingress
        .iter()
        .map(|r| (r.effective_action(), r.broken.is_some()))
        .collect();
    assert_eq!(
        ingress,
        [
            (Action::Deny, true),   // unknown action: denies
            (Action::Accept, true), // an Accept that matches nothing
            (Action::Deny, true),   // a broken Pass denies
            (Action::Accept, true), // networks is an egress peer
        ]
    );
    assert!(p.egress[0].broken.is_some() && p.egress[0].action == Action::Deny);
    assert!(p.egress[1].broken.is_none() && p.egress[1].has_domain_names());
    assert!(p.egress[2].broken.is_some());
}

#[test]
fn an_unreadable_subject_tier_or_priority_makes_an_admin_deny_all() {
    for (spec, field) in [
        ("{tier: Admin, priority: 5, subject: {}}", "spec.subject"),
        (
            "{tier: Admin, priority: 5, subject: {namespaces: {}, pods: {podSelector: {}}}}",
            "spec.subject",
        ),
        (
            "{tier: Platform, priority: 5, subject: {namespaces: {}}}",
            "spec.tier",
        ),
        (
            "{tier: Baseline, priority: 1001, subject: {namespaces: {}}}",
            "spec.priority",
        ),
        (
            "{tier: Admin, priority: 5, subject: {nodes: {}}}",
            "spec.subject.nodes",
        ),
    ] {
        let c = parse(&format!("metadata: {{name: broken}}\nspec: {spec}\n"));
        assert_eq!(c.errors[0].field, field, "{spec}");
        let p = c.policy;
        assert_eq!(p.tier, Tier::Admin, "{spec}");
        assert!(matches!(&p.subject, Subject::Namespaces(s) if s.is_everything()));
        for rule in p.ingress.iter().chain(&p.egress) {
            assert_eq!(rule.effective_action(), Action::Deny);
            assert!(rule.broken.is_some());
        }
    }
    let cnp: ClusterNetworkPolicy = serde_yaml::from_str("spec: {tier: Admin}").unwrap();
    assert_eq!(cluster_policy(&cnp).unwrap_err().field, "metadata.name");
}

#[test]
fn a_node_keeps_its_labels_and_ip_addresses() {
    let object: core::Node = serde_yaml::from_str(
        r#"
metadata: {name: n1, labels: {zone: a}}
status:
  addresses:
  - {type: InternalIP, address: 192.168.0.10}
  - {type: Hostname, address: n1}
  - {type: InternalIP, address: "fd00::10"}
"#,
    )
    .unwrap();
    let n = node(&object).unwrap();
    assert_eq!(&*n.name, "n1");
    assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(
        n.addresses,
        [
            "192.168.0.10".parse::<IpAddr>().unwrap(),
            "fd00::10".parse().unwrap()
        ]
    );
}

#[test]
fn fields_a_newer_api_adds_or_the_crd_requires_fail_closed_not_open() {
    let c = parse(
        r#"
metadata: {name: newer}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - {action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {}}]}
  - {action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {sourcePort: {number: 80}}}]}
  - {action: Accept, from: [{pods: {namespaceSelector: {}}}]}
  - {action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {}, nodeSelector: {}}}]}
  - {action: Accept, from: [{namespaces: {}}], schedule: nightly}
  - {action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80, step: 2}}}]}
"#,
    );
    assert_eq!(c.errors.len(), 6, "{:?}", c.errors);
    assert!(
        c.policy.ingress.iter().all(|r| r.broken.is_some()),
        "each Accept matches nothing"
    );
    for spec in [
        "{tier: Admin, subject: {namespaces: {}}}",
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, egressTiers: []}",
    ] {
        let c = parse(&format!("metadata: {{name: p}}\nspec: {spec}\n"));
        assert!(!c.errors.is_empty(), "{spec}");
        assert!(
            c.policy
                .egress
                .iter()
                .all(|r| r.effective_action() == Action::Deny),
            "{spec}: a deny-all"
        );
    }
}
