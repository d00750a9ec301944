//! The patch with state source control: the proxy gets its state from the
//! control plane, with a projected token for the audience `picket` that no
//! other container mounts.

use serde_json::json;

use super::*;
use crate::config::ControlPlane;

/// The configured CA (the patch copies it; it does not parse it).
const CA: &str = "-----BEGIN CERTIFICATE-----\nTUlJQnRlc3RjYQ==\n-----END CERTIFICATE-----\n";
const ADDR: &str = "picket-control.picket-system.svc:8443";

fn controlled(mode: SidecarMode, ca: &str) -> InjectConfig {
    InjectConfig {
        sidecar_mode: mode,
        control: Some(ControlPlane {
            addr: ADDR.into(),
            ca_pem: ca.into(),
        }),
        ..InjectConfig::for_test()
    }
}

fn control_mode() -> InjectConfig {
    controlled(SidecarMode::Native, CA)
}

fn volume<'a>(pod: &'a Pod, name: &str) -> Option<&'a Volume> {
    let spec = pod.spec.as_ref().unwrap();
    spec.volumes.iter().flatten().find(|v| v.name == name)
}

/// The containers (both lists) that mount `volume`, with where.
fn mounting<'a>(pod: &'a Pod, volume: &str) -> Vec<(&'a str, &'a str)> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .flat_map(|c| c.volume_mounts.iter().flatten().map(move |m| (c, m)))
        .filter(|(_, m)| m.name == volume)
        .map(|(c, m)| (c.name.as_str(), m.mount_path.as_str()))
        .collect()
}

fn control_env(proxy: &Container) -> Vec<(&str, &str)> {
    proxy
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("PICKET_CONTROL_") || e.name == "PICKET_SOURCE")
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
        .collect()
}

#[test]
fn plain_pod_in_control_mode() {
    let pod = fixture("plain");
    let plan = plan_in(&pod, &privileged_ns(), &control_mode());
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    golden("plain-native-control", &plan.ops);
}

#[test]
fn pods_the_control_plane_serves_are_captured_outbound_like_the_others() {
    // Their sidecars ask the control plane for views with outbound parts.
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &control_mode()).ops);
    for container in [INIT_CONTAINER, PROXY_CONTAINER] {
        assert_eq!(
            env_value(find(&patched, container), "PICKET_OUTBOUND_CAPTURE"),
            Some("enabled"),
            "{container}"
        );
    }
}

#[test]
fn the_proxy_alone_mounts_a_token_for_the_audience_picket() {
    for cfg in [control_mode(), controlled(SidecarMode::Container, CA)] {
        let pod = fixture("plain");
        let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &cfg).ops);
        check_invariants(&patched);

        let token = volume(&patched, CONTROL_TOKEN_VOLUME).expect("the control token volume");
        assert_eq!(
            to_value(token),
            json!({
                "name": "picket-control-token",
                "projected": {
                    "defaultMode": 0o644,
                    "sources": [{"serviceAccountToken": {
                        "audience": "picket",
                        "expirationSeconds": 3600,
                        "path": "token",
                    }}],
                },
            })
        );
        assert_eq!(
            mounting(&patched, CONTROL_TOKEN_VOLUME),
            [(PROXY_CONTAINER, "/var/run/secrets/picket")]
        );
        let proxy = find(&patched, PROXY_CONTAINER);
        let mount = proxy.volume_mounts.iter().flatten();
        let mount = mount
            .clone()
            .find(|m| m.name == CONTROL_TOKEN_VOLUME)
            .unwrap();
        assert_eq!(mount.read_only, Some(true));

        assert_eq!(
            control_env(proxy),
            [
                ("PICKET_SOURCE", "control"),
                ("PICKET_CONTROL_ADDR", ADDR),
                ("PICKET_CONTROL_CA", CA),
                ("PICKET_CONTROL_TOKEN_FILE", "/var/run/secrets/picket/token"),
            ]
        );
        let status = status(&patched);
        assert_eq!(status["stateSource"], "control");
        assert_eq!(
            status["volumes"],
            json!([
                RUN_VOLUME,
                XTABLES_VOLUME,
                NO_TOKEN_VOLUME,
                CONTROL_TOKEN_VOLUME
            ])
        );
    }
}

#[test]
fn the_proxy_holds_no_api_token_in_control_mode() {
    // The app keeps its token; the proxy, which does not call the API server,
    // mounts the empty directory there (so the ServiceAccount plugin adds none).
    let pod = fixture("plain");
    let patched = apply(&pod, &plan_in(&pod, &privileged_ns(), &control_mode()).ops);
    assert_eq!(
        mounting(&patched, "kube-api-access-x7k2p"),
        [("app", SA_TOKEN_DIR)]
    );
    assert_eq!(
        mounting(&patched, NO_TOKEN_VOLUME),
        [
            (INIT_CONTAINER, SA_TOKEN_DIR),
            (PROXY_CONTAINER, SA_TOKEN_DIR)
        ]
    );
    assert!(volume(&patched, TOKEN_VOLUME).is_none());
}

#[test]
fn pods_without_an_automounted_token_still_get_the_control_token() {
    let pod = fixture("no-automount");
    let plan = plan_in(&pod, &privileged_ns(), &control_mode());
    assert_eq!(plan.decision, Decision::Injected(SidecarMode::Native));
    // No API token is added for the proxy, so nothing to warn about.
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let patched = apply(&pod, &plan.ops);
    check_invariants(&patched);
    assert!(volume(&patched, CONTROL_TOKEN_VOLUME).is_some());
    assert!(volume(&patched, TOKEN_VOLUME).is_none());
    assert_eq!(
        mounting(&patched, CONTROL_TOKEN_VOLUME),
        [(PROXY_CONTAINER, CONTROL_TOKEN_DIR)]
    );
}

#[test]
fn direct_mode_adds_nothing_of_the_control_plane() {
    for name in ["plain", "no-automount", "with-init"] {
        let pod = fixture(name);
        let patched = apply(&pod, &plan_default(&pod).ops);
        assert!(volume(&patched, CONTROL_TOKEN_VOLUME).is_none(), "{name}");
        assert!(
            mounting(&patched, CONTROL_TOKEN_VOLUME).is_empty(),
            "{name}"
        );
        let proxy = find(&patched, PROXY_CONTAINER);
        assert_eq!(control_env(proxy), [("PICKET_SOURCE", "kube")], "{name}");
        let mounts = proxy.volume_mounts.iter().flatten();
        assert!(
            mounts.clone().all(|m| m.mount_path != CONTROL_TOKEN_DIR),
            "{name}"
        );
        assert!(status(&patched).get("stateSource").is_none(), "{name}");
    }
}

#[test]
fn control_injected_pod_gets_no_second_copy() {
    for cfg in [control_mode(), controlled(SidecarMode::Container, CA)] {
        for name in ["plain", "with-init", "generate-name", "no-automount"] {
            let pod = fixture(name);
            let once = apply(&pod, &plan_in(&pod, &privileged_ns(), &cfg).ops);
            let again = plan_in(&once, &privileged_ns(), &cfg);
            assert_eq!(again.decision, Decision::AlreadyInjected, "{name}");
            assert!(again.ops.is_empty(), "{name}: {:?}", again.ops);
        }
    }
}

#[test]
fn a_proxy_pointed_elsewhere_is_not_ours() {
    let pod = fixture("plain");
    let injected = apply(&pod, &plan_in(&pod, &privileged_ns(), &control_mode()).ops);
    type Tamper = fn(&mut Container);
    let cases: [(&str, Tamper); 3] = [
        ("env", |c| {
            let var = c.env.iter_mut().flatten();
            let mut var = var.filter(|e| e.name == CONTROL_ADDR_ENV);
            var.next().unwrap().value = Some("evil.example:443".into());
        }),
        ("env", |c| {
            let var = c.env.iter_mut().flatten();
            let mut var = var.filter(|e| e.name == CONTROL_CA_ENV);
            var.next().unwrap().value = Some("-----BEGIN CERTIFICATE-----\n".into());
        }),
        ("volumeMounts", |c| {
            let mounts = c.volume_mounts.iter_mut().flatten();
            let mut mounts = mounts.filter(|m| m.name == CONTROL_TOKEN_VOLUME);
            mounts.next().unwrap().name = "stolen-token".into();
        }),
    ];
    for (field, tamper) in cases {
        let mut pod = injected.clone();
        tamper(find_mut(&mut pod, PROXY_CONTAINER));
        let plan = plan_in(&pod, &privileged_ns(), &control_mode());
        let message = rejection(&plan, field);
        assert!(
            message.contains(PROXY_CONTAINER) && message.contains(field),
            "{field}: {message}"
        );
    }
}

#[test]
fn a_proxy_of_the_other_state_source_or_an_older_ca_is_not_taken_for_ours() {
    // As with another image: the pod was injected under another configuration.
    let pod = fixture("plain");
    let direct = apply(&pod, &plan_default(&pod).ops);
    let plan = plan_in(&direct, &privileged_ns(), &control_mode());
    let message = rejection(&plan, "direct pod, control injector");
    assert!(
        message.contains(PROXY_CONTAINER) && message.contains("env"),
        "{message}"
    );

    let controlled_pod = apply(&pod, &plan_in(&pod, &privileged_ns(), &control_mode()).ops);
    let message = rejection(
        &plan_default(&controlled_pod),
        "control pod, direct injector",
    );
    assert!(message.contains("env"), "{message}");

    let rotated = controlled(SidecarMode::Native, "another CA");
    let plan = plan_in(&controlled_pod, &privileged_ns(), &rotated);
    let message = rejection(&plan, "older CA");
    assert!(message.contains("env"), "{message}");
}

#[test]
fn the_control_token_name_is_reserved_naming_the_field() {
    let mut pod = fixture("plain");
    let spec = pod.spec.as_mut().unwrap();
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: CONTROL_TOKEN_VOLUME.into(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    });
    // Where pods may not go unenforced: refused.
    let plan = plan_in(&pod, &privileged_ns(), &control_mode());
    let message = rejection(&plan, "colliding volume");
    assert!(
        message.contains("spec.volumes[1].name") && message.contains(CONTROL_TOKEN_VOLUME),
        "{message}"
    );
    // Where they may: skipped, saying why. The name is reserved in direct mode
    // too, so that switching to control never turns an injected pod away.
    for cfg in [control_mode(), InjectConfig::for_test()] {
        let plan = plan_allowing_opt_outs(&pod, &cfg);
        let reason = SkipReason::NameConflict {
            field: "spec.volumes[1].name".into(),
            name: CONTROL_TOKEN_VOLUME.into(),
        };
        assert_eq!(plan.decision, Decision::Skipped(reason));
        assert!(
            plan.warnings[0].contains("spec.volumes[1].name"),
            "{:?}",
            plan.warnings
        );
    }
}

#[test]
fn an_app_container_mounting_the_control_token_is_refused() {
    // Even in a pod injected already: the app would hold the proxy's credential.
    let pod = fixture("plain");
    let mut injected = apply(&pod, &plan_in(&pod, &privileged_ns(), &control_mode()).ops);
    find_mut(&mut injected, "app")
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: CONTROL_TOKEN_VOLUME.into(),
            mount_path: "/stolen".into(),
            ..VolumeMount::default()
        });
    let plan = plan_allowing_opt_outs(&injected, &control_mode());
    let message = rejection(&plan, "app mounting the token");
    assert!(
        message.contains("container app") && message.contains(CONTROL_TOKEN_VOLUME),
        "{message}"
    );
}

/// The mTLS mode: the pod's annotation, else its namespace's (written on
/// the pod, which is what the engine reads), else the install's; the proxy
/// gets it, with the skip-detect ports.
#[test]
fn the_mtls_mode_comes_from_the_pod_else_its_namespace_and_reaches_the_proxy() {
    let cfg = control_mode();
    let mut pod = fixture("plain");
    let ns_annotations = BTreeMap::from([(MTLS_KEY.to_string(), "strict".to_string())]);
    let plan = plan_with(&pod, &privileged_ns(), &ns_annotations, &cfg);
    assert!(matches!(plan.decision, Decision::Injected(_)), "{plan:?}");
    let injected = apply(&pod, &plan.ops);
    assert_eq!(annotation(&injected, MTLS_KEY), Some("strict"));
    let proxy = find(&injected, PROXY_CONTAINER);
    assert_eq!(env_value(proxy, picket_common::env::MTLS), Some("strict"));

    pod.metadata.annotations = Some(BTreeMap::from([
        (MTLS_KEY.to_string(), "permissive".to_string()),
        (SKIP_DETECT_PORTS_KEY.to_string(), "3306, 25".to_string()),
    ]));
    let plan = plan_with(&pod, &privileged_ns(), &ns_annotations, &cfg);
    let injected = apply(&pod, &plan.ops);
    assert_eq!(
        annotation(&injected, MTLS_KEY),
        Some("permissive"),
        "the pod's own wins"
    );
    let proxy = find(&injected, PROXY_CONTAINER);
    assert_eq!(
        env_value(proxy, picket_common::env::MTLS),
        Some("permissive")
    );
    assert_eq!(
        env_value(proxy, picket_common::env::SKIP_DETECT_PORTS),
        Some("25,3306")
    );
    // Reinvoked on the injected pod: nothing new, nothing rejected.
    let again = plan_with(&injected, &privileged_ns(), &ns_annotations, &cfg);
    assert_eq!(again.decision, Decision::AlreadyInjected, "{again:?}");

    // No annotation anywhere: the install's default, off: nothing said.
    let plain = fixture("plain");
    let plan = plan_with(&plain, &privileged_ns(), &NO_ANNOTATIONS, &cfg);
    let injected = apply(&plain, &plan.ops);
    assert_eq!(annotation(&injected, MTLS_KEY), None);
    assert_eq!(
        env_value(find(&injected, PROXY_CONTAINER), picket_common::env::MTLS),
        None
    );
}

#[test]
fn an_unknown_mode_or_mtls_without_the_control_plane_rejects_the_pod() {
    let mut pod = fixture("plain");
    pod.metadata.annotations = Some(BTreeMap::from([(MTLS_KEY.to_string(), "on".to_string())]));
    let plan = plan_with(&pod, &privileged_ns(), &NO_ANNOTATIONS, &control_mode());
    match &plan.decision {
        Decision::Rejected(Rejection::InvalidAnnotation(invalid)) => {
            assert_eq!(invalid.key, MTLS_KEY);
            assert!(invalid.message.contains("\"on\""), "{invalid:?}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    pod.metadata.annotations = Some(BTreeMap::from([(
        MTLS_KEY.to_string(),
        "strict".to_string(),
    )]));
    let plan = plan_with(
        &pod,
        &privileged_ns(),
        &NO_ANNOTATIONS,
        &InjectConfig::for_test(),
    );
    match &plan.decision {
        Decision::Rejected(Rejection::Unenforceable(u)) => {
            assert!(u.problem.contains("control plane"), "{u:?}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}
