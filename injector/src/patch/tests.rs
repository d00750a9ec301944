//! Patch tests over the pod fixtures in `tests/fixtures/pods/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

use super::*;
use crate::config::{InjectConfig, SidecarMode};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Pod {
    let path = fixtures_dir().join("pods").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn privileged_ns() -> BTreeMap<String, String> {
    BTreeMap::from([("picket.io/inject".to_string(), "enabled".to_string())])
}

/// No namespace annotations: the namespace's pods may not opt out.
static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();

/// A namespace's annotations letting its pods opt out.
fn allowing_opt_outs() -> BTreeMap<String, String> {
    BTreeMap::from([(ALLOW_POD_OPT_OUT_KEY.to_string(), "true".to_string())])
}

fn plan_with(
    pod: &Pod,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> Plan {
    let ns = NamespaceView {
        name: "shop",
        labels: Some(labels),
        annotations: Some(annotations),
    };
    plan(pod, &ns, cfg)
}

fn plan_in(pod: &Pod, labels: &BTreeMap<String, String>, cfg: &InjectConfig) -> Plan {
    plan_with(pod, labels, &NO_ANNOTATIONS, cfg)
}

/// In a namespace that lets its pods opt out.
fn plan_allowing_opt_outs(pod: &Pod, cfg: &InjectConfig) -> Plan {
    plan_with(pod, &privileged_ns(), &allowing_opt_outs(), cfg)
}

fn plan_default(pod: &Pod) -> Plan {
    plan_in(pod, &privileged_ns(), &InjectConfig::for_test())
}

fn container_mode() -> InjectConfig {
    InjectConfig {
        sidecar_mode: SidecarMode::Container,
        ..InjectConfig::for_test()
    }
}

/// Applies the ops with the json-patch crate, as the API server would.
fn apply(pod: &Pod, ops: &[PatchOperation]) -> Pod {
    let mut doc = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut doc, ops).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    serde_json::from_value(doc).expect("patched pod is a Pod")
}

/// What every patched pod must satisfy beyond deserializing as a Pod.
fn check_invariants(pod: &Pod) {
    assert_eq!(duplicate_names(pod), Vec::<String>::new(), "duplicates");
    let spec = pod.spec.as_ref().unwrap();
    for c in spec.init_containers.iter().flatten() {
        if c.restart_policy.as_deref() != Some("Always") {
            assert!(
                c.readiness_probe.is_none() && c.liveness_probe.is_none(),
                "plain init container {} has probes",
                c.name
            );
            assert!(
                c.startup_probe.is_none(),
                "plain init container {} has a startup probe",
                c.name
            );
        }
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        assert!(c.image.is_some(), "container {} has no image", c.name);
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                spec.volumes.iter().flatten().any(|v| v.name == m.name),
                "container {} mounts unknown volume {}",
                c.name,
                m.name
            );
        }
    }
}

fn init_names(pod: &Pod) -> Vec<&str> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

fn container_names(pod: &Pod) -> Vec<&str> {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers.iter().map(|c| c.name.as_str()).collect()
}

fn find<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn status(pod: &Pod) -> Value {
    serde_json::from_str(annotation(pod, STATUS_KEY).expect("status annotation")).unwrap()
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, ops: &[PatchOperation]) {
    let path = fixtures_dir().join("golden").join(format!("{name}.json"));
    let actual = serde_json::to_string_pretty(ops).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e} (run with UPDATE_GOLDEN=1)"));
    assert_eq!(
        actual, expected,
        "patch differs from {path:?} (UPDATE_GOLDEN=1 rewrites it)"
    );
}

// === injection ===

#[test]
fn plain_pod_gets_init_container_and_native_sidecar() {
    let pod = fixture("plain");
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    golden("plain-native", &plan.ops);

    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert_eq!(init_names(&patched), [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(container_names(&patched), ["app"]);

    let init = find(&patched, INIT_CONTAINER);
    assert_eq!(init.args.as_deref(), Some(&["init".to_string()][..]));
    let sc = init.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(init.restart_policy, None);

    let proxy = find(&patched, PROXY_CONTAINER);
    assert_eq!(proxy.args.as_deref(), Some(&["run".to_string()][..]));
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add, None);
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    for probe in [
        &proxy.readiness_probe,
        &proxy.liveness_probe,
        &proxy.startup_probe,
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.port, IntOrString::Int(15020));
    }
    let startup = proxy.startup_probe.as_ref().unwrap();
    assert_eq!(
        startup.http_get.as_ref().unwrap().path.as_deref(),
        Some("/ready")
    );
    let resources = proxy.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "256Mi");
    let fields: Vec<(&str, &str)> = proxy
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.as_str(), field.field_path.as_str()))
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
            ("HOST_IP", "status.hostIP"),
            ("POD_IPS", "status.podIPs"),
            ("HOST_IPS", "status.hostIPs"),
            ("NODE_NAME", "spec.nodeName"),
        ]
    );
    assert_eq!(env_value(proxy, "PICKET_SOURCE"), Some("kube"));
    // The node file is shared through the emptyDir.
    assert_eq!(env_value(proxy, "PICKET_NODE_FILE"), Some(NODE_FILE));
    assert_eq!(env_value(init, "PICKET_NODE_FILE"), Some(NODE_FILE));
    // The app's token is reused: no volume of our own.
    let mounts: Vec<&str> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(mounts, [RUN_VOLUME, "kube-api-access-x7k2p"]);
    let volumes: Vec<&str> = patched
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "kube-api-access-x7k2p",
            RUN_VOLUME,
            XTABLES_VOLUME,
            NO_TOKEN_VOLUME
        ]
    );

    assert_eq!(annotation(&patched, "prometheus.io/scrape"), Some("true"));
    assert_eq!(annotation(&patched, "prometheus.io/port"), Some("15020"));
    assert_eq!(annotation(&patched, "prometheus.io/path"), Some("/metrics"));
    assert_eq!(annotation(&patched, DEFAULT_CONTAINER_KEY), None);
    let status = status(&patched);
    assert_eq!(status["injected"], true);
    assert_eq!(status["mode"], "native");
}

#[test]
fn whole_arrays_and_maps_are_added_when_absent() {
    let plan = plan_default(&fixture("plain"));
    let paths: Vec<String> = plan.ops.iter().map(|op| op.path().to_string()).collect();
    assert_eq!(
        paths,
        [
            "/spec/initContainers",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/spec/volumes/-",
            "/spec/securityContext",
            "/metadata/annotations"
        ]
    );
    let Some(PatchOperation::Add(first)) = plan.ops.first() else {
        panic!("first op is not an add");
    };
    assert_eq!(first.value.as_array().map(Vec::len), Some(2));
}

#[test]
fn container_mode_puts_proxy_first_and_points_kubectl_at_the_app() {
    let pod = fixture("plain");
    let plan = plan_in(&pod, &privileged_ns(), &container_mode());
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Container));
    golden("plain-container", &plan.ops);
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert_eq!(init_names(&patched), [INIT_CONTAINER]);
    assert_eq!(container_names(&patched), [PROXY_CONTAINER, "app"]);
    let proxy = find(&patched, PROXY_CONTAINER);
    assert_eq!(proxy.restart_policy, None);
    assert!(proxy.startup_probe.is_none());
    assert!(proxy.readiness_probe.is_some() && proxy.liveness_probe.is_some());
    assert_eq!(annotation(&patched, DEFAULT_CONTAINER_KEY), Some("app"));
    assert_eq!(status(&patched)["mode"], "container");
}

#[test]
fn pod_annotation_overrides_the_sidecar_mode() {
    let mut pod = fixture("plain");
    pod.metadata.annotations = Some(BTreeMap::from([(
        SIDECAR_MODE_KEY.to_string(),
        "container".to_string(),
    )]));
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Container));
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert_eq!(container_names(&patched), [PROXY_CONTAINER, "app"]);
}

#[test]
fn existing_init_container_comes_after_ours() {
    for cfg in [InjectConfig::for_test(), container_mode()] {
        let pod = fixture("with-init");
        let plan = plan_in(&pod, &privileged_ns(), &cfg);
        let patched = apply(&pod, &plan.ops);
        check_invariants(&patched);
        let expected: &[&str] = match cfg.sidecar_mode {
            SidecarMode::Native => &[INIT_CONTAINER, PROXY_CONTAINER, "migrate"],
            SidecarMode::Container => &[INIT_CONTAINER, "migrate"],
        };
        assert_eq!(init_names(&patched), expected);
        // Annotations existed: keys are added one by one, escaped.
        assert_eq!(annotation(&patched, "team"), Some("storage"));
        let json = serde_json::to_string(&plan.ops).unwrap();
        assert!(json.contains("/metadata/annotations/prometheus.io~1scrape"));
        assert!(json.contains("/metadata/annotations/picket.io~1status"));
        assert!(json.contains("/spec/initContainers/0"));
    }
}

#[test]
fn pod_without_security_context_or_token_gets_a_projected_token() {
    let pod = fixture("with-init");
    assert!(pod.spec.as_ref().unwrap().security_context.is_none());
    let plan = plan_default(&pod);
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    let spec = patched.spec.as_ref().unwrap();
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    // `/spec/volumes` was absent: added as one array.
    assert_eq!(
        volumes,
        [RUN_VOLUME, XTABLES_VOLUME, NO_TOKEN_VOLUME, TOKEN_VOLUME]
    );
    let proxy = find(&patched, PROXY_CONTAINER);
    let token = proxy
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == SA_TOKEN_DIR)
        .expect("token mount");
    assert_eq!(token.name, TOKEN_VOLUME);
    assert_eq!(token.read_only, Some(true));
}

#[test]
fn run_as_non_root_pod_still_runs_the_init_container_as_root() {
    let pod = fixture("run-as-non-root");
    let plan = plan_default(&pod);
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    let spec = patched.spec.as_ref().unwrap();
    // The pod's own security context is left as it was.
    let pod_sc = spec.security_context.as_ref().unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(pod_sc.run_as_user, Some(1000));
    // Container-level settings override it, for both of ours.
    let init_sc = find(&patched, INIT_CONTAINER)
        .security_context
        .clone()
        .unwrap();
    assert_eq!(
        (init_sc.run_as_user, init_sc.run_as_non_root),
        (Some(0), Some(false))
    );
    let proxy_sc = find(&patched, PROXY_CONTAINER)
        .security_context
        .clone()
        .unwrap();
    assert_eq!(
        (proxy_sc.run_as_user, proxy_sc.run_as_non_root),
        (Some(1337), Some(true))
    );
}

#[test]
fn apps_own_scrape_annotations_are_never_overwritten() {
    let pod = fixture("scrape-annotations");
    let plan = plan_default(&pod);
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert_eq!(annotation(&patched, "prometheus.io/port"), Some("9090"));
    assert_eq!(annotation(&patched, "prometheus.io/path"), None);
    let json = serde_json::to_string(&plan.ops).unwrap();
    assert!(!json.contains("prometheus.io"), "{json}");
}

#[test]
fn generate_name_pod_without_namespace_is_injected() {
    let pod = fixture("generate-name");
    assert!(pod.metadata.name.is_none() && pod.metadata.namespace.is_none());
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert_eq!(patched.metadata.name, None);
    assert_eq!(
        patched.metadata.generate_name.as_deref(),
        Some("web-7d9f8c6b5-")
    );
    assert_eq!(init_names(&patched), [INIT_CONTAINER, PROXY_CONTAINER]);
}

#[test]
fn excluded_ports_and_resources_come_from_annotations() {
    let pod = fixture("excluded-ports");
    let cfg = InjectConfig {
        exclude_inbound_ports: vec![22],
        ..InjectConfig::for_test()
    };
    let plan = plan_allowing_opt_outs(&pod, &cfg);
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    let init = find(&patched, INIT_CONTAINER);
    assert_eq!(
        env_value(init, "PICKET_EXCLUDE_INBOUND_PORTS"),
        Some("22,9000,9001")
    );
    let proxy = find(&patched, PROXY_CONTAINER);
    let resources = proxy.resources.as_ref().unwrap();
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "512Mi");
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "50m");
    // Without annotations, no exclusions at all.
    let plain = fixture("plain");
    let patched = apply(&plain, &plan_default(&plain).ops);
    assert_eq!(
        env_value(
            find(&patched, INIT_CONTAINER),
            "PICKET_EXCLUDE_INBOUND_PORTS"
        ),
        None
    );
}

#[test]
fn invalid_annotations_reject_the_pod_naming_the_annotation() {
    let cases = [
        (EXCLUDE_INBOUND_PORTS_KEY, "9000,x"),
        (EXCLUDE_INBOUND_PORTS_KEY, "70000"),
        (EXCLUDE_INBOUND_PORTS_KEY, "15006"),
        (SIDECAR_MODE_KEY, "sometimes"),
        (INTERCEPTION_KEY, "TPROXY"),
        (OUTBOUND_CAPTURE_KEY, "off"),
        (EXCLUDE_OUTBOUND_PORTS_KEY, "53,dns"),
        (EXCLUDE_OUTBOUND_CIDRS_KEY, "10.0.0.0/33"),
        (MEMORY_LIMIT_KEY, "lots"),
        (CPU_REQUEST_KEY, "2"),
    ];
    for (key, value) in cases {
        let mut pod = fixture("plain");
        pod.metadata.annotations = Some(BTreeMap::from([(key.to_string(), value.to_string())]));
        // Where the exclusions count at all.
        let plan = plan_allowing_opt_outs(&pod, &InjectConfig::for_test());
        let Decision::Rejected(Rejection::InvalidAnnotation(invalid)) = &plan.decision else {
            panic!("{key}={value}: {:?}", plan.decision);
        };
        assert_eq!(invalid.key, key);
        assert!(plan.ops.is_empty());
        assert!(invalid.to_string().contains(key), "{invalid}");
    }
}

// === interception ===

#[test]
fn a_tproxy_pod_gets_net_raw_in_its_proxy_and_nothing_else() {
    let caps = |c: &Container| {
        let sc = c.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        (
            caps.add.clone(),
            caps.drop.clone(),
            sc.allow_privilege_escalation,
            sc.run_as_user,
            sc.run_as_non_root,
        )
    };
    let pod = annotated(&[(INTERCEPTION_KEY, "tproxy")]);
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    let (init, proxy) = (
        find(&patched, INIT_CONTAINER),
        find(&patched, PROXY_CONTAINER),
    );
    for c in [init, proxy] {
        assert_eq!(
            env_value(c, "PICKET_INTERCEPTION"),
            Some("tproxy"),
            "{}",
            c.name
        );
    }
    let all = Some(vec!["ALL".to_string()]);
    assert_eq!(
        caps(proxy),
        (
            Some(vec!["NET_RAW".to_string()]),
            all.clone(),
            Some(true),
            Some(1337),
            Some(true)
        ),
        "NET_RAW, and the escalation its file capability needs"
    );
    // Init is as in redirect mode.
    let plain = apply(&fixture("plain"), &plan_default(&fixture("plain")).ops);
    assert_eq!(caps(init), caps(find(&plain, INIT_CONTAINER)));
    // Re-reviewed, the pod is already injected: nothing to change.
    let again = plan_default(&patched);
    assert_eq!(again.decision, Decision::AlreadyInjected);
    assert!(again.ops.is_empty(), "{:?}", again.ops);

    // The default, or `redirect` where the injector defaults to tproxy.
    let default = find(&plain, PROXY_CONTAINER);
    assert_eq!(env_value(default, "PICKET_INTERCEPTION"), None);
    assert_eq!(
        caps(default),
        (None, all, Some(false), Some(1337), Some(true))
    );
    let tproxy_default = InjectConfig {
        interception: Interception::Tproxy,
        ..InjectConfig::for_test()
    };
    let pod = annotated(&[(INTERCEPTION_KEY, "redirect")]);
    let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &tproxy_default).ops);
    assert_eq!(caps(find(&patched, PROXY_CONTAINER)).0, None);
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &tproxy_default).ops);
    assert_eq!(
        env_value(find(&patched, INIT_CONTAINER), "PICKET_INTERCEPTION"),
        Some("tproxy")
    );
}

// === outbound capture ===

fn annotated(pairs: &[(&str, &str)]) -> Pod {
    let mut pod = fixture("plain");
    pod.metadata.annotations = Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    pod
}

#[test]
fn outbound_capture_is_on_with_the_node_addresses_and_the_pods_exclusions() {
    let pod = annotated(&[
        (EXCLUDE_OUTBOUND_PORTS_KEY, "5432, 53,5432"),
        (
            EXCLUDE_OUTBOUND_CIDRS_KEY,
            "169.254.169.254/32,10.96.0.7/12",
        ),
    ]);
    let patched = apply(
        &pod,
        &plan_allowing_opt_outs(&pod, &InjectConfig::for_test()).ops,
    );
    let init = find(&patched, INIT_CONTAINER);
    assert_eq!(env_value(init, "PICKET_OUTBOUND_CAPTURE"), Some("enabled"));
    assert_eq!(env_value(init, "PICKET_PROXY_UID"), Some("1337"));
    assert_eq!(
        env_value(init, "PICKET_EXCLUDE_OUTBOUND_PORTS"),
        Some("53,5432")
    );
    assert_eq!(
        env_value(init, "PICKET_EXCLUDE_OUTBOUND_CIDRS"),
        Some("169.254.169.254/32,10.96.0.0/12")
    );
    let host_ip = init
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "HOST_IPS")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(
        host_ip,
        Some("status.hostIPs"),
        "the node is never captured"
    );
}

#[test]
fn a_pod_may_turn_outbound_capture_off_only_where_its_namespace_allows_opt_outs() {
    let pod = annotated(&[(OUTBOUND_CAPTURE_KEY, "disabled")]);
    let allowed = apply(
        &pod,
        &plan_allowing_opt_outs(&pod, &InjectConfig::for_test()).ops,
    );
    assert_eq!(
        env_value(find(&allowed, INIT_CONTAINER), "PICKET_OUTBOUND_CAPTURE"),
        None
    );
    let plan = plan_in(&pod, &privileged_ns(), &InjectConfig::for_test());
    let ignored = apply(&pod, &plan.ops);
    assert_eq!(
        env_value(find(&ignored, INIT_CONTAINER), "PICKET_OUTBOUND_CAPTURE"),
        Some("enabled"),
        "the namespace does not allow opt-outs: still captured"
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains(OUTBOUND_CAPTURE_KEY)),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn an_app_running_as_the_proxy_uid_is_refused_where_its_egress_would_bypass() {
    for level in ["pod", "container"] {
        let mut pod = fixture("plain");
        let spec = pod.spec.as_mut().unwrap();
        let uid = Some(InjectConfig::for_test().proxy_uid);
        match level {
            "pod" => {
                spec.security_context
                    .get_or_insert_with(Default::default)
                    .run_as_user = uid;
            }
            _ => {
                spec.containers[0]
                    .security_context
                    .get_or_insert_with(Default::default)
                    .run_as_user = uid;
            }
        }
        let plan = plan_in(&pod, &privileged_ns(), &InjectConfig::for_test());
        let Decision::Rejected(Rejection::Unenforceable(why)) = &plan.decision else {
            panic!("{level}: {:?}", plan.decision);
        };
        assert!(
            why.problem.contains("runs as the proxy's UID 1337"),
            "{why}"
        );
        // Without outbound capture nothing bypasses: injected.
        let off = InjectConfig {
            outbound_capture: false,
            ..InjectConfig::for_test()
        };
        let plan = plan_in(&pod, &privileged_ns(), &off);
        assert!(matches!(plan.decision, Decision::Injected(_)), "{level}");
        // Where pod authors are trusted (opt-outs allowed): a warning.
        let plan = plan_allowing_opt_outs(&pod, &InjectConfig::for_test());
        assert!(matches!(plan.decision, Decision::Injected(_)), "{level}");
        assert!(
            plan.warnings.iter().any(|w| w.contains("proxy's UID")),
            "{:?}",
            plan.warnings
        );
    }
}

#[test]
fn outbound_capture_is_off_when_the_injector_turns_it_off() {
    let pod = fixture("plain");
    let off = InjectConfig {
        outbound_capture: false,
        ..InjectConfig::for_test()
    };
    let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &off).ops);
    assert_eq!(
        env_value(find(&patched, INIT_CONTAINER), "PICKET_OUTBOUND_CAPTURE"),
        None
    );
}

// === idempotence ===

#[test]
fn injected_pod_gets_no_second_copy() {
    for cfg in [InjectConfig::for_test(), container_mode()] {
        for name in [
            "plain",
            "with-init",
            "generate-name",
            "run-as-non-root",
            "sysctls",
        ] {
            let pod = fixture(name);
            let once = apply(&pod, &plan_in(&pod, &privileged_ns(), &cfg).ops);
            let again = plan_in(&once, &privileged_ns(), &cfg);
            assert_eq!(again.decision, Decision::AlreadyInjected, "{name}");
            assert!(again.ops.is_empty(), "{name}: {:?}", again.ops);
        }
    }
}

#[test]
fn reinvocation_moves_our_containers_back_in_front() {
    let pod = fixture("plain");
    let mut once = apply(&pod, &plan_default(&pod).ops);
    // Another webhook prepends its own init container after us.
    let other = Container {
        name: "vault-agent-init".into(),
        image: Some("vault:1".into()),
        ..Container::default()
    };
    once.spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()
        .insert(0, other);
    let again = plan_default(&once);
    assert_eq!(again.decision, Decision::AlreadyInjected);
    let fixed = apply(&once, &again.ops);
    assert_eq!(
        init_names(&fixed),
        [INIT_CONTAINER, PROXY_CONTAINER, "vault-agent-init"]
    );
    assert!(plan_default(&fixed).ops.is_empty());
}

// === skips ===

fn assert_skipped(
    pod: &Pod,
    (labels, annotations): (&BTreeMap<String, String>, &BTreeMap<String, String>),
    reason: &SkipReason,
    warns: bool,
) -> Plan {
    let plan = plan_with(pod, labels, annotations, &InjectConfig::for_test());
    assert_eq!(plan.decision, Decision::Skipped(reason.clone()));
    assert_eq!(!plan.warnings.is_empty(), warns, "{:?}", plan.warnings);
    let patched = apply(pod, &plan.ops);
    assert_eq!(patched.spec, pod.spec, "skipped pod's spec changed");
    let status = status(&patched);
    assert_eq!(status["injected"], false);
    assert_eq!(status["reason"], reason.as_str());
    // And skipping again changes nothing.
    let again = plan_with(&patched, labels, annotations, &InjectConfig::for_test());
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    plan
}

#[test]
fn opted_out_pods_are_left_alone_where_the_namespace_allows_it() {
    let (labels, annotations) = (privileged_ns(), allowing_opt_outs());
    let pod = fixture("opted-out-label");
    let ns = (&labels, &annotations);
    assert_skipped(&pod, ns, &SkipReason::OptedOutByLabel, false);
    let pod = fixture("opted-out-annotation");
    assert_skipped(&pod, ns, &SkipReason::OptedOutByAnnotation, false);
}

#[test]
fn host_network_pods_are_never_injected() {
    let pod = fixture("host-network");
    let ns = (&privileged_ns(), &NO_ANNOTATIONS);
    let plan = assert_skipped(&pod, ns, &SkipReason::HostNetwork, true);
    assert!(plan.warnings[0].contains("hostNetwork"));
}

#[test]
fn port_conflicts_skip_with_a_warning() {
    // Only where pods may go unenforced: elsewhere a colliding port would be
    // an opt-out in disguise, and the pod is refused.
    let pod = fixture("port-conflict");
    let reason = SkipReason::PortConflict(15006);
    assert_skipped(
        &pod,
        (&privileged_ns(), &allowing_opt_outs()),
        &reason,
        true,
    );
}

#[test]
fn what_would_leave_a_pod_unenforced_refuses_it_where_the_namespace_does_not_allow_it() {
    let labels = privileged_ns();
    let ns = NamespaceView {
        name: "shop",
        labels: Some(&labels),
        annotations: Some(&NO_ANNOTATIONS),
    };
    let refused = |pod: &Pod| match plan(pod, &ns, &InjectConfig::for_test()).decision {
        Decision::Rejected(Rejection::Unenforceable(u)) => u.to_string(),
        other => panic!("not refused: {other:?}"),
    };
    let message = refused(&fixture("port-conflict"));
    assert!(
        message.contains("port 15006") && message.contains("allow-pod-opt-out"),
        "{message}"
    );

    // An app container mounting the proxy's node file could make any address "the node".
    let mut pod = fixture("plain");
    pod.spec.as_mut().unwrap().containers[0].volume_mounts =
        Some(vec![k8s_openapi::api::core::v1::VolumeMount {
            name: "picket-run".into(),
            mount_path: "/x".into(),
            ..Default::default()
        }]);
    let message = refused(&pod);
    assert!(
        message.contains("mounts the volume picket-run"),
        "{message}"
    );

    // An app container that can rewrite the pod's iptables could remove the redirect.
    for (privileged, caps) in [
        (Some(true), None),
        (None, Some(vec!["NET_ADMIN".to_string()])),
    ] {
        let mut pod = fixture("plain");
        pod.spec.as_mut().unwrap().containers[0].security_context =
            Some(k8s_openapi::api::core::v1::SecurityContext {
                privileged,
                capabilities: caps.map(|add| k8s_openapi::api::core::v1::Capabilities {
                    add: Some(add),
                    drop: None,
                }),
                ..Default::default()
            });
        let message = refused(&pod);
        assert!(
            message.contains("could remove the pod's redirect"),
            "{message}"
        );
        // Where pods may go unenforced, it is injected as before.
        let allowing = allowing_opt_outs();
        let open = NamespaceView {
            annotations: Some(&allowing),
            ..ns
        };
        assert!(matches!(
            plan(&pod, &open, &InjectConfig::for_test()).decision,
            Decision::Injected(_)
        ));
    }
}

#[test]
fn system_namespaces_get_no_patch_at_all() {
    let pod = fixture("plain");
    for ns in ["kube-system", "picket-system"] {
        let plan = plan(
            &pod,
            &NamespaceView {
                name: ns,
                labels: Some(&privileged_ns()),
                annotations: Some(&allowing_opt_outs()),
            },
            &InjectConfig::for_test(),
        );
        assert_eq!(
            plan.decision,
            Decision::Skipped(SkipReason::ExcludedNamespace)
        );
        assert!(plan.ops.is_empty());
    }
}

#[test]
fn pod_security_baseline_or_restricted_warns_instead_of_injecting() {
    let pod = fixture("plain");
    for level in ["baseline", "restricted"] {
        let mut labels = privileged_ns();
        labels.insert(POD_SECURITY_ENFORCE_KEY.into(), level.into());
        let reason = SkipReason::PodSecurity(level.into());
        let plan = assert_skipped(&pod, (&labels, &NO_ANNOTATIONS), &reason, true);
        assert!(plan.warnings[0].contains(level), "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("NET_ADMIN"));
    }
    let mut labels = privileged_ns();
    labels.insert(POD_SECURITY_ENFORCE_KEY.into(), "privileged".into());
    let plan = plan_in(&pod, &labels, &InjectConfig::for_test());
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
}

#[test]
fn unknown_namespace_labels_inject_with_a_warning() {
    let pod = fixture("plain");
    let plan = plan(
        &pod,
        &NamespaceView {
            name: "shop",
            labels: None,
            annotations: None,
        },
        &InjectConfig::for_test(),
    );
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    assert_eq!(plan.warnings.len(), 1);
}

#[test]
fn duplicate_names_are_found() {
    let mut pod = fixture("plain");
    let app = pod.spec.as_ref().unwrap().containers[0].clone();
    pod.spec.as_mut().unwrap().containers.push(app);
    let dups = duplicate_names(&pod);
    assert!(dups.contains(&"container app".to_string()), "{dups:?}");
    assert!(dups.contains(&"port 8080/TCP".to_string()), "{dups:?}");
    assert!(dups.contains(&"port name http".to_string()), "{dups:?}");
}

#[test]
fn self_check_catches_new_duplicates_but_not_the_pods_own() {
    // The app's own duplicate ports (the API server only warns) do not stop injection.
    let mut pod = fixture("plain");
    let mut second = pod.spec.as_ref().unwrap().containers[0].clone();
    second.name = "sidecar".into();
    for port in second.ports.iter_mut().flatten() {
        port.name = None;
    }
    pod.spec.as_mut().unwrap().containers.push(second);
    assert_eq!(duplicate_names(&pod), ["port 8080/TCP"]);
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));

    // A duplicate the patch would introduce is refused before it leaves.
    let plain = fixture("plain");
    let ops = plan_default(&plain).ops;
    let mut doubled = ops.clone();
    doubled.extend(ops);
    let problem = self_check(&plain, &doubled).unwrap_err();
    // `/spec/initContainers` is added whole (so replaced), volumes are appended.
    assert_eq!(problem, "duplicate volume picket-run");
    assert!(self_check(&plain, &plan_default(&plain).ops).is_ok());
}

// === containers named like ours ===

fn find_mut<'a>(pod: &'a mut Pod, name: &str) -> &'a mut Container {
    let spec = pod.spec.as_mut().unwrap();
    spec.init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The refusal's message, or a panic naming what was decided instead.
fn rejection(plan: &Plan, what: &str) -> String {
    let Decision::Rejected(rejected) = &plan.decision else {
        panic!("{what}: not rejected: {:?}", plan.decision);
    };
    assert!(plan.ops.is_empty(), "{what}: {:?}", plan.ops);
    rejected.to_string()
}

#[test]
fn pod_bringing_its_own_picket_containers_is_rejected_naming_them() {
    let plan = plan_default(&fixture("impostor"));
    let message = rejection(&plan, "impostor");
    assert!(message.contains(INIT_CONTAINER), "{message}");
    assert!(message.contains("image"), "{message}");
}

#[test]
fn tampered_copies_of_our_containers_are_rejected_naming_container_and_field() {
    let pod = fixture("plain");
    let injected = apply(&pod, &plan_default(&pod).ops);
    type Tamper = fn(&mut Container);
    let cases: [(&str, &str, Tamper); 9] = [
        (INIT_CONTAINER, "image", |c| {
            c.image = Some("evil/proxy:1".into())
        }),
        (INIT_CONTAINER, "args", |c| {
            c.args = Some(vec!["--help".into()])
        }),
        (INIT_CONTAINER, "env", |c| {
            let all_ports = env("PICKET_EXCLUDE_INBOUND_PORTS", "1-65535");
            c.env.get_or_insert_with(Vec::new).push(all_ports);
        }),
        (INIT_CONTAINER, "securityContext", |c| {
            c.security_context = None;
        }),
        (PROXY_CONTAINER, "command", |c| {
            c.command = Some(vec!["/bin/sleep".into()]);
        }),
        (PROXY_CONTAINER, "securityContext", |c| {
            c.security_context.as_mut().unwrap().run_as_user = Some(0);
        }),
        (PROXY_CONTAINER, "envFrom", |c| {
            c.env_from = Some(vec![Default::default()]);
        }),
        (PROXY_CONTAINER, "volumeMounts", |c| {
            let over_the_binary = VolumeMount {
                name: "kube-api-access-x7k2p".into(),
                mount_path: "/usr/local/bin".into(),
                ..VolumeMount::default()
            };
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(over_the_binary);
        }),
        (PROXY_CONTAINER, "restartPolicy", |c| {
            c.restart_policy = None
        }),
    ];
    for (name, field, tamper) in cases {
        let mut pod = injected.clone();
        tamper(find_mut(&mut pod, name));
        let message = rejection(&plan_default(&pod), &format!("{name} {field}"));
        assert!(
            message.contains(name) && message.contains(field),
            "{name} {field}: {message}"
        );
    }
}

#[test]
fn one_of_our_containers_without_the_other_is_rejected() {
    let pod = fixture("plain");
    let injected = apply(&pod, &plan_default(&pod).ops);
    for (kept, missing) in [
        (INIT_CONTAINER, PROXY_CONTAINER),
        (PROXY_CONTAINER, INIT_CONTAINER),
    ] {
        let mut pod = injected.clone();
        let inits = pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap();
        inits.retain(|c| c.name != missing);
        let message = rejection(&plan_default(&pod), &format!("only {kept}"));
        assert!(message.contains(missing), "{message}");
    }
}

// === pod opt-outs ===

#[test]
fn pod_opt_outs_are_ignored_with_a_warning_where_the_namespace_does_not_allow_them() {
    for name in ["opted-out-label", "opted-out-annotation"] {
        let pod = fixture(name);
        let plan = plan_default(&pod);
        assert_eq!(
            plan.decision,
            Decision::Injected(SidecarMode::Native),
            "{name}"
        );
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("picket.io/allow-pod-opt-out") && w.contains(INJECT_KEY)),
            "{name}: {:?}",
            plan.warnings
        );
        let patched = apply(&pod, &plan.ops);
        assert_eq!(init_names(&patched), [INIT_CONTAINER, PROXY_CONTAINER]);
    }

    let pod = fixture("excluded-ports");
    let cfg = InjectConfig {
        exclude_inbound_ports: vec![22],
        ..InjectConfig::for_test()
    };
    let plan = plan_in(&pod, &privileged_ns(), &cfg);
    let patched = apply(&pod, &plan.ops);
    // The injector's own setting stays; the pod's annotation is ignored.
    assert_eq!(
        env_value(
            find(&patched, INIT_CONTAINER),
            "PICKET_EXCLUDE_INBOUND_PORTS"
        ),
        Some("22")
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains(EXCLUDE_INBOUND_PORTS_KEY)
                && w.contains("picket.io/allow-pod-opt-out")),
        "{:?}",
        plan.warnings
    );
}

// === the init container's privileges ===

#[test]
fn init_container_has_a_read_only_root_and_an_empty_dir_for_the_xtables_lock() {
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_default(&pod).ops);
    check_invariants(&patched);
    let init = find(&patched, INIT_CONTAINER);
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    let lock = env_value(init, "XTABLES_LOCKFILE").expect("XTABLES_LOCKFILE");
    let mount = init
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| lock.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("nothing mounted over {lock}"));
    assert_ne!(mount.read_only, Some(true));
    let volume = patched
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert!(volume.empty_dir.is_some(), "{volume:?}");
}

#[test]
fn pod_without_an_automounted_token_hears_that_the_proxy_gets_one() {
    let plan = plan_default(&fixture("no-automount"));
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("automountServiceAccountToken") && w.contains(TOKEN_VOLUME)),
        "{:?}",
        plan.warnings
    );
    // A pod with the app's token gets no such warning.
    assert!(plan_default(&fixture("plain")).warnings.is_empty());
}

#[test]
fn init_container_mounts_an_empty_directory_where_the_token_would_go() {
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_default(&pod).ops);
    let init = find(&patched, INIT_CONTAINER);
    let mount = init
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == SA_TOKEN_DIR)
        .expect("a mount at the token directory");
    assert_eq!(mount.read_only, Some(true));
    let volume = patched
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert!(
        volume.empty_dir.is_some() && volume.projected.is_none(),
        "{volume:?}"
    );
}

// === the downward API ===

#[test]
fn proxy_gets_every_pod_and_node_address_from_the_downward_api() {
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_default(&pod).ops);
    let proxy = find(&patched, PROXY_CONTAINER);
    let field = |name: &str| {
        let var = proxy.env.iter().flatten().find(|e| e.name == name)?;
        let selector = var.value_from.as_ref()?.field_ref.as_ref()?;
        Some(selector.field_path.clone())
    };
    assert_eq!(field("POD_IPS").as_deref(), Some("status.podIPs"));
    assert_eq!(field("HOST_IPS").as_deref(), Some("status.hostIPs"));
    assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"));
    assert_eq!(field("HOST_IP").as_deref(), Some("status.hostIP"));
}

// === the proxy's log filter ===

#[test]
fn invalid_or_silencing_log_filters_are_refused_naming_the_annotation() {
    for value in ["info,,=x[", "bogus-level", "inf0", "picket=loud", " , "] {
        let mut pod = fixture("plain");
        pod.metadata.annotations = Some(BTreeMap::from([(
            LOG_LEVEL_KEY.to_string(),
            value.to_string(),
        )]));
        let message = rejection(&plan_default(&pod), value);
        assert!(message.contains(LOG_LEVEL_KEY), "{value}: {message}");
    }
    for value in [
        "debug",
        "WARN",
        "off",
        "picket_proxy=debug,info",
        "picket_state::kube=trace",
        "info,[accept]=debug",
    ] {
        let mut pod = fixture("plain");
        pod.metadata.annotations = Some(BTreeMap::from([(
            LOG_LEVEL_KEY.to_string(),
            value.to_string(),
        )]));
        let plan = plan_default(&pod);
        assert_eq!(
            plan.decision,
            Decision::Injected(SidecarMode::Native),
            "{value}"
        );
        let patched = apply(&pod, &plan.ops);
        assert_eq!(
            env_value(find(&patched, PROXY_CONTAINER), "PICKET_LOG"),
            Some(value)
        );
    }
}

// === reserved ports ===

const RESERVED: &str = "net.ipv4.ip_local_reserved_ports";
const RANGE: &str = "net.ipv4.ip_local_port_range";

/// The pod's sysctls, as (name, value) pairs in order.
fn sysctls(pod: &Pod) -> Vec<(String, String)> {
    let spec = pod.spec.as_ref().unwrap();
    let sc = spec.security_context.as_ref();
    sc.and_then(|sc| sc.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The paths of the ops that touch `spec.securityContext`.
fn security_context_paths(plan: &Plan) -> Vec<String> {
    plan.ops
        .iter()
        .map(|op| op.path().to_string())
        .filter(|p| p.starts_with("/spec/securityContext"))
        .collect()
}

/// The sysctls fixture with its sysctls replaced.
fn with_sysctls(list: &[(&str, &str)]) -> Pod {
    let mut pod = fixture("sysctls");
    let sc = pod
        .spec
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.sysctls = Some(
        list.iter()
            .map(|(name, value)| k8s_openapi::api::core::v1::Sysctl {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
    );
    pod
}

#[test]
fn proxy_ports_are_reserved_in_a_new_security_context() {
    for cfg in [InjectConfig::for_test(), container_mode()] {
        let pod = fixture("plain");
        let plan = plan_in(&pod, &privileged_ns(), &cfg);
        // No securityContext: the whole object is added.
        assert_eq!(security_context_paths(&plan), ["/spec/securityContext"]);
        let patched = apply(&pod, &plan.ops);
        check_invariants(&patched);
        assert_eq!(
            sysctls(&patched),
            pairs(&[(RESERVED, "15000-15001,15006,15020")])
        );
    }
}

#[test]
fn security_context_without_sysctls_keeps_its_fields_and_gets_the_list() {
    let pod = fixture("run-as-non-root");
    let plan = plan_default(&pod);
    assert_eq!(
        security_context_paths(&plan),
        ["/spec/securityContext/sysctls"]
    );
    let patched = apply(&pod, &plan.ops);
    let sc = patched
        .spec
        .as_ref()
        .unwrap()
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(1000));
    assert_eq!(sc.fs_group, Some(2000));
    assert_eq!(
        sysctls(&patched),
        pairs(&[(RESERVED, "15000-15001,15006,15020")])
    );
}

#[test]
fn pods_own_sysctls_are_kept_and_its_reserved_ports_merged_with_ours() {
    let pod = fixture("sysctls");
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    // Only the value of the pod's own entry changes.
    assert_eq!(
        security_context_paths(&plan),
        ["/spec/securityContext/sysctls/2/value"]
    );
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert_eq!(
        sysctls(&patched),
        pairs(&[
            ("kernel.shm_rmid_forced", "1"),
            (RANGE, "10000 20000"),
            (RESERVED, "8080,15000-15006,15020"),
        ])
    );
    let sc = patched
        .spec
        .as_ref()
        .unwrap()
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(sc.run_as_user, Some(1000));

    // Sysctls without the reserved ports: ours are appended.
    let pod = with_sysctls(&[("kernel.shm_rmid_forced", "1")]);
    let plan = plan_default(&pod);
    assert_eq!(
        security_context_paths(&plan),
        ["/spec/securityContext/sysctls/-"]
    );
    assert_eq!(
        sysctls(&apply(&pod, &plan.ops)),
        pairs(&[
            ("kernel.shm_rmid_forced", "1"),
            (RESERVED, "15000-15001,15006,15020"),
        ])
    );
}

#[test]
fn reserved_ports_that_already_cover_ours_are_left_as_the_pod_wrote_them() {
    let pod = with_sysctls(&[(RESERVED, "15020, 15000-15010")]);
    let plan = plan_default(&pod);
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    assert_eq!(security_context_paths(&plan), Vec::<String>::new());
    let patched = apply(&pod, &plan.ops);
    assert_eq!(
        sysctls(&patched),
        pairs(&[(RESERVED, "15020, 15000-15010")])
    );
}

#[test]
fn configured_ports_are_reserved_and_init_gets_the_local_admin_port() {
    let cfg = InjectConfig {
        inbound_port: 16006,
        admin_port: 16020,
        local_admin_port: 16000,
        outbound_port: 16001,
        ..InjectConfig::for_test()
    };
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &cfg).ops);
    assert_eq!(
        sysctls(&patched),
        pairs(&[(RESERVED, "16000-16001,16006,16020")])
    );
    let init = find(&patched, INIT_CONTAINER);
    assert_eq!(env_value(init, "PICKET_INBOUND_PORT"), Some("16006"));
    assert_eq!(env_value(init, "PICKET_ADMIN_PORT"), Some("16020"));
    assert_eq!(env_value(init, "PICKET_LOCAL_ADMIN_PORT"), Some("16000"));
    let patched = apply(&pod, &plan_default(&pod).ops);
    let init = find(&patched, INIT_CONTAINER);
    assert_eq!(env_value(init, "PICKET_LOCAL_ADMIN_PORT"), Some("15000"));
}

#[test]
fn port_ranges_that_overlap_our_ports_but_keep_a_free_port_are_fine() {
    for (range, reserved) in [
        ("10000 20000", "8080"),
        ("15000 15007", "15001-15005"),
        ("14999 15006", "15001-15005"),
        ("15006  15007", ""),
        ("32768\t60999", "15000"),
        ("1024 65535", "1024-15005"),
    ] {
        let pod = with_sysctls(&[(RANGE, range), (RESERVED, reserved)]);
        let plan = plan_default(&pod);
        assert_eq!(
            plan.decision,
            Decision::Injected(SidecarMode::Native),
            "{range:?} with {reserved:?}"
        );
        let patched = apply(&pod, &plan.ops);
        assert_eq!(sysctls(&patched)[0], (RANGE.to_string(), range.to_string()));
    }
}

#[test]
fn port_ranges_with_no_free_port_or_that_do_not_parse_reject_the_pod() {
    let cases: [(&[(&str, &str)], &str); 9] = [
        // Entirely within our ports.
        (&[(RANGE, "15006 15006")], "15006 15006"),
        (&[(RANGE, "15000 15000")], "15000 15000"),
        // Within ours plus the pod's own reservations.
        (
            &[(RANGE, "15000 15006"), (RESERVED, "15001-15005")],
            "15000 15006",
        ),
        (
            &[(RESERVED, "1-65535"), (RANGE, "1024 65535")],
            "1024 65535",
        ),
        // Not two port numbers, low <= high.
        (&[(RANGE, "15000")], "15000"),
        (&[(RANGE, "a b")], "a b"),
        (&[(RANGE, "20000 10000")], "20000 10000"),
        (&[(RANGE, "1024 70000")], "1024 70000"),
        (&[(RANGE, "1024 2048 4096")], "1024 2048 4096"),
    ];
    for (list, value) in cases {
        let pod = with_sysctls(list);
        let message = rejection(&plan_default(&pod), value);
        for part in ["spec.securityContext.sysctls", RANGE, value] {
            assert!(message.contains(part), "{value:?}: {part} not in {message}");
        }
    }
    // The pod's own reserved ports must parse too: merged, they would change meaning.
    let pod = with_sysctls(&[(RESERVED, "8080,http")]);
    let message = rejection(&plan_default(&pod), "8080,http");
    for part in ["spec.securityContext.sysctls", RESERVED, "8080,http"] {
        assert!(message.contains(part), "{part} not in {message}");
    }
}

#[test]
fn reinvocation_restores_reserved_ports_another_webhook_dropped() {
    let pod = fixture("sysctls");
    let mut once = apply(&pod, &plan_default(&pod).ops);
    let sc = once
        .spec
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.sysctls.as_mut().unwrap().retain(|s| s.name != RESERVED);
    let again = plan_default(&once);
    assert_eq!(again.decision, Decision::AlreadyInjected);
    let fixed = apply(&once, &again.ops);
    assert_eq!(
        sysctls(&fixed),
        pairs(&[
            ("kernel.shm_rmid_forced", "1"),
            (RANGE, "10000 20000"),
            (RESERVED, "15000-15001,15006,15020"),
        ])
    );
    assert!(plan_default(&fixed).ops.is_empty());
}

mod control;
