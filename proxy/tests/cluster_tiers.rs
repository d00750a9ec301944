//! ClusterNetworkPolicy tiers through real sidecars: network namespaces
//! as pods, the real `picket-proxy` reading a cluster directory. A sample
//! of the network-policy-api conformance cases (`CNPAdminTierIngressTCP`,
//! its policy read from `tests/cnp-conformance/cases/admin-ingress-tcp.yaml`),
//! then what the tiers add around NetworkPolicy: a new Admin Deny cuts a
//! live connection, the Baseline tier denies where no NetworkPolicy
//! isolates, and a NetworkPolicy overrides it. Needs root. (The lab's
//! namespaces carry only `kubernetes.io/metadata.name`: selectors use it.)

mod support;

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::path::Path;

use picket_lab::proxy::http_get;
use serde_json::Value;
use support::*;

/// The first object the case applies: the `ingress-tcp` Admin policy.
fn conformance_policy() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/cnp-conformance/cases/admin-ingress-tcp.yaml");
    let case: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    case["steps"][0]["apply"][0].clone()
}

fn house(name: &str) -> String {
    format!("network-policy-conformance-{name}")
}

fn manifest(object: &Value) -> String {
    serde_yaml::to_string(object).unwrap()
}

#[test]
fn admin_and_baseline_tiers_decide_around_networkpolicy_and_a_new_admin_deny_cuts_live_connections()
{
    if !lab_available() {
        return;
    }
    let (gryffindor, ravenclaw, hufflepuff, slytherin) = (
        house("gryffindor"),
        house("ravenclaw"),
        house("hufflepuff"),
        house("slytherin"),
    );
    let c = Cluster::new(&[
        (
            &gryffindor,
            "harry-potter-0",
            &[("conformance-house", "gryffindor")],
        ),
        (
            &ravenclaw,
            "luna-lovegood-1",
            &[("conformance-house", "ravenclaw")],
        ),
        (
            &hufflepuff,
            "cedric-diggory-1",
            &[("conformance-house", "hufflepuff")],
        ),
        (
            &slytherin,
            "draco-malfoy-1",
            &[("conformance-house", "slytherin")],
        ),
    ]);
    let mut cnp = conformance_policy();
    c.write("ingress-tcp.yaml", &manifest(&cnp));
    let server = c.start("harry-potter-0");
    let metrics = || {
        let admin = SocketAddr::new(server.pod.ip, 15020);
        http_get(&server.pod.netns, admin, "/metrics").unwrap().1
    };

    // Upstream's pokes on the port the lab's app serves (8080).
    assert!(
        allowed_now(&c, "luna-lovegood-1", "harry-potter-0"),
        "rule 0 accepts ravenclaw"
    );
    c.assert_reset("cedric-diggory-1", "harry-potter-0", APP_PORT);
    assert!(
        allowed_now(&c, "draco-malfoy-1", "harry-potter-0"),
        "no rule of slytherin's matches 8080: the default allows"
    );
    let m = metrics();
    assert!(
        m.contains(r#"picket_inbound_connections_total{outcome="allowed",policy="admin:ingress-tcp",port="8080"} 1"#)
            && m.contains(r#"picket_inbound_connections_total{outcome="denied",policy="admin:ingress-tcp",port="8080"} 1"#),
        "the deciding tier and policy label the counts: {m}"
    );

    // Upstream's next mutation (rules 0 and 1 swapped) puts the Deny
    // first: the live connection from ravenclaw is cut.
    let mut live = c.connect("luna-lovegood-1", "harry-potter-0", APP_PORT);
    assert!(echoes(&mut live));
    let rules = cnp["spec"]["ingress"].as_array_mut().unwrap();
    rules.swap(0, 1);
    c.write("ingress-tcp.yaml", &manifest(&cnp));
    let mut buf = [0u8; 8];
    match live.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the live connection must be reset, got {other:?}"),
    }
    c.assert_reset("luna-lovegood-1", "harry-potter-0", APP_PORT);

    // The Baseline tier denies slytherin, which no NetworkPolicy isolates...
    let baseline = format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata: {{name: default-deny}}\n\
         spec: {{tier: Baseline, priority: 1, subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: {gryffindor}}}}}}}, \
         ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n"
    );
    c.write("baseline.yaml", &baseline);
    eventually("the Baseline to deny slytherin", READY, || {
        !allowed_now(&c, "draco-malfoy-1", "harry-potter-0")
    });
    // ...until a NetworkPolicy isolates the pod: it decides, the Baseline
    // no longer does.
    c.write(
        "allow-slytherin.yaml",
        &policy(
            &gryffindor,
            "allow-slytherin",
            &format!("{{podSelector: {{}}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {slytherin}}}}}}}]}}]}}"),
        ),
    );
    eventually("the NetworkPolicy to let slytherin in", READY, || {
        allowed_now(&c, "draco-malfoy-1", "harry-potter-0")
    });
    // The Admin tier still decides above it.
    c.assert_reset("cedric-diggory-1", "harry-potter-0", APP_PORT);
    c.assert_reset("luna-lovegood-1", "harry-potter-0", APP_PORT);
}
