//! The injection patch: a pure function from (pod, namespace, config) to a
//! decision and the JSONPatch that carries it out.
//!
//! No I/O. `review.rs` calls [`plan`] with the decoded pod, the namespace
//! labels the server looked up, and the startup configuration.
//!
//! ```text
//!  pod ──┐
//!  ns  ──┼─► plan ─► Plan { decision, ops, warnings }
//!  cfg ──┘            │
//!                     ├─ Injected:        init container first, proxy (native sidecar
//!                     │                   right after it, or first regular container),
//!                     │                   volumes, the reserved-ports sysctl, annotations;
//!                     │                   state source control: the proxy's env and token
//!                     ├─ AlreadyInjected: nothing (or a reorder if another webhook
//!                     │                   put its init container before ours, and the
//!                     │                   sysctl if it dropped ours); only when our
//!                     │                   containers are exactly what we would inject
//!                     ├─ Skipped(reason): only `picket.io/status`
//!                     └─ Rejected:        a per-pod annotation is invalid, a container
//!                                         named like ours is not ours, or the pod's
//!                                         port range sysctl cannot be reconciled
//! ```

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, MoveOperation, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use picket_common::env as vars;
use serde_json::Value;
use thiserror::Error;

use crate::config::{InjectConfig, Interception, Resources, SidecarMode, StateSource};
use crate::quantity;

/// The init container's name.
pub const INIT_CONTAINER: &str = "picket-init";
/// The proxy container's name.
pub const PROXY_CONTAINER: &str = "picket-proxy";
/// The emptyDir shared by the init container and the proxy (the node file).
pub const RUN_VOLUME: &str = "picket-run";
/// Where [`RUN_VOLUME`] is mounted in both containers.
pub const RUN_DIR: &str = "/var/run/picket";
/// The file `picket-proxy init` writes the node's addresses to, on [`RUN_VOLUME`].
pub const NODE_FILE: &str = picket_common::NODE_FILE;
/// The projected service-account token, added when the pod mounts none (state source direct).
pub const TOKEN_VOLUME: &str = "picket-token";
/// The proxy's projected token for the control plane (state source control),
/// mounted into the proxy alone.
pub const CONTROL_TOKEN_VOLUME: &str = "picket-control-token";
/// Where [`CONTROL_TOKEN_VOLUME`] is mounted in the proxy.
pub const CONTROL_TOKEN_DIR: &str = "/var/run/secrets/picket";
/// The token's file in [`CONTROL_TOKEN_DIR`].
pub const CONTROL_TOKEN_PATH: &str = "token";
/// The audience of the control token: the control plane accepts no other.
pub const CONTROL_AUDIENCE: &str = "picket";
/// The control token's lifetime; the kubelet renews it before it expires.
pub const CONTROL_TOKEN_SECONDS: i64 = 3600;
/// The proxy's variable naming the control plane, `host:port`.
pub const CONTROL_ADDR_ENV: &str = "PICKET_CONTROL_ADDR";
/// The proxy's variable holding the PEM of the control plane's CA.
pub const CONTROL_CA_ENV: &str = "PICKET_CONTROL_CA";
/// The proxy's variable naming its control token's file.
pub const CONTROL_TOKEN_FILE_ENV: &str = "PICKET_CONTROL_TOKEN_FILE";
/// The emptyDir where the init container's iptables takes its lock (the root is read-only).
pub const XTABLES_VOLUME: &str = "picket-xtables";
/// Where [`XTABLES_VOLUME`] is mounted in the init container.
pub const XTABLES_DIR: &str = "/run/xtables";
/// The variable iptables reads its lock file's path from (default `/run/xtables.lock`).
pub const XTABLES_LOCKFILE_ENV: &str = "XTABLES_LOCKFILE";
/// An empty emptyDir the init container (and, with state source control, the
/// proxy) mounts, read-only, at [`SA_TOKEN_DIR`]: the ServiceAccount admission
/// plugin then mounts no token into it.
pub const NO_TOKEN_VOLUME: &str = "picket-no-token";
/// The volumes the injection adds (in either state source); a pod already using
/// one of these names is not injected.
pub const OUR_VOLUMES: [&str; 5] = [
    RUN_VOLUME,
    XTABLES_VOLUME,
    NO_TOKEN_VOLUME,
    TOKEN_VOLUME,
    CONTROL_TOKEN_VOLUME,
];
/// Where the proxy reads its service-account token, as in-cluster clients expect.
pub const SA_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name of the proxy's admin port.
pub const ADMIN_PORT_NAME: &str = "picket-admin";
/// The binary inside the proxy image.
pub const PROXY_BINARY: &str = "/usr/local/bin/picket-proxy";

/// Label (and, as a fallback, annotation) opting a pod out with the value [`DISABLED`].
pub const INJECT_KEY: &str = "picket.io/inject";
/// The value of [`INJECT_KEY`] that opts a pod out.
pub const DISABLED: &str = "disabled";
/// Annotation: what was injected, or why not.
pub const STATUS_KEY: &str = "picket.io/status";
/// Annotation: inbound ports that bypass the proxy, comma-separated.
pub const EXCLUDE_INBOUND_PORTS_KEY: &str = "picket.io/exclude-inbound-ports";
/// Annotation: `disabled` turns outbound capture off for the pod.
pub const OUTBOUND_CAPTURE_KEY: &str = "picket.io/outbound-capture";
/// Annotation: outbound destination ports that bypass the proxy, comma-separated.
pub const EXCLUDE_OUTBOUND_PORTS_KEY: &str = "picket.io/exclude-outbound-ports";
/// Annotation: outbound destination networks (CIDRs) that bypass the proxy, comma-separated.
pub const EXCLUDE_OUTBOUND_CIDRS_KEY: &str = "picket.io/exclude-outbound-cidrs";
/// Annotation (pod or namespace): the pod's mTLS mode, `off`, `permissive`
/// or `strict`. A pod without it gets its namespace's, written on the pod.
pub const MTLS_KEY: &str = "picket.io/mtls";
/// Annotation: inbound ports of server-first protocols, comma-separated
/// (no bytes are awaited to detect mTLS on them).
pub const SKIP_DETECT_PORTS_KEY: &str = "picket.io/skip-detect-ports";
/// Annotation: `redirect` or `tproxy` (the app sees the client's address).
pub const INTERCEPTION_KEY: &str = "picket.io/interception";
/// Annotation: `native` or `container`.
pub const SIDECAR_MODE_KEY: &str = "picket.io/sidecar-mode";
/// Annotation: the proxy's CPU request.
pub const CPU_REQUEST_KEY: &str = "picket.io/proxy-cpu-request";
/// Annotation: the proxy's CPU limit.
pub const CPU_LIMIT_KEY: &str = "picket.io/proxy-cpu-limit";
/// Annotation: the proxy's memory request.
pub const MEMORY_REQUEST_KEY: &str = "picket.io/proxy-memory-request";
/// Annotation: the proxy's memory limit.
pub const MEMORY_LIMIT_KEY: &str = "picket.io/proxy-memory-limit";
/// Annotation: the proxy's log filter (`PICKET_LOG`).
pub const LOG_LEVEL_KEY: &str = "picket.io/proxy-log-level";
/// Namespace annotation: with the value `"true"`, the namespace's pods may opt out
/// ([`INJECT_KEY`]) or exclude inbound ports ([`EXCLUDE_INBOUND_PORTS_KEY`]).
pub const ALLOW_POD_OPT_OUT_KEY: &str = "picket.io/allow-pod-opt-out";
/// Annotation kubectl reads to pick the container of `logs` and `exec`.
pub const DEFAULT_CONTAINER_KEY: &str = "kubectl.kubernetes.io/default-container";
/// The namespace label of Pod Security admission's enforced level.
pub const POD_SECURITY_ENFORCE_KEY: &str = "pod-security.kubernetes.io/enforce";
/// The prefix of Prometheus scrape annotations.
pub const PROMETHEUS_PREFIX: &str = "prometheus.io/";
/// The sysctl reserving the proxy's ports in the pod's network namespace, set in
/// `spec.securityContext.sysctls` (merged with the pod's own reservations).
pub const RESERVED_PORTS_SYSCTL: &str = "net.ipv4.ip_local_reserved_ports";
/// The sysctl of the pod's ephemeral port range (`low high`), checked against
/// the reservations.
pub const PORT_RANGE_SYSCTL: &str = "net.ipv4.ip_local_port_range";

/// The namespace as the patch sees it.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceView<'a> {
    /// The namespace's name (the request's, not the object's, which may be empty).
    pub name: &'a str,
    /// Its labels; `None` when they could not be read.
    pub labels: Option<&'a BTreeMap<String, String>>,
    /// Its annotations; `None` when they could not be read.
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

/// What [`plan`] decided, and the patch and warnings that go with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What happens to the pod.
    pub decision: Decision,
    /// The JSONPatch; empty when nothing changes.
    pub ops: Vec<PatchOperation>,
    /// Admission warnings shown to whoever created the pod.
    pub warnings: Vec<String>,
}

/// What happens to a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The init container and the proxy are added, in this mode.
    Injected(SidecarMode),
    /// The pod already has our containers; at most they are put back in order.
    AlreadyInjected,
    /// The pod is left alone, but for `picket.io/status`.
    Skipped(SkipReason),
    /// The pod is refused with this error.
    Rejected(Rejection),
}

/// Why a pod is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Rejection {
    /// A per-pod annotation is invalid.
    #[error(transparent)]
    InvalidAnnotation(#[from] InvalidAnnotation),
    /// A container carries one of our names but is not what we inject.
    #[error(transparent)]
    ForeignContainer(#[from] ForeignContainer),
    /// The pod's sysctls cannot be reconciled with the proxy's reserved ports.
    #[error(transparent)]
    InvalidSysctl(#[from] InvalidSysctl),
    /// The pod would run unenforced, or could switch enforcement off, in a
    /// namespace that does not allow pods to.
    #[error(transparent)]
    Unenforceable(#[from] Unenforceable),
}

/// What in a pod would leave it unenforced, or let its containers switch
/// enforcement off, where the namespace does not allow pods to go unenforced.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "{problem}; the namespace does not allow pods to go unenforced (namespace annotation \
     picket.io/allow-pod-opt-out: \"true\")"
)]
pub struct Unenforceable {
    /// What it is, naming the container, port, volume or field.
    pub problem: String,
}

/// Why a pod is not injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The namespace is one we never inject (`kube-system`, `picket-system`).
    ExcludedNamespace,
    /// The pod carries the label `picket.io/inject: disabled`.
    OptedOutByLabel,
    /// The pod carries the annotation `picket.io/inject: disabled`.
    OptedOutByAnnotation,
    /// The pod shares the node's network: the init container would rewrite the node's iptables.
    HostNetwork,
    /// A Windows pod: no iptables.
    Windows,
    /// The namespace enforces this Pod Security level, which refuses NET_ADMIN.
    PodSecurity(String),
    /// The pod already uses a port the proxy needs.
    PortConflict(u16),
    /// The pod already uses a name (volume or port) the injection needs.
    NameConflict {
        /// Where, e.g. `spec.volumes[0].name`.
        field: String,
        /// The name.
        name: String,
    },
    /// The patched pod failed the last check (duplicate names or ports); a bug
    /// or an unforeseen pod, never sent to the API server.
    SelfCheck(String),
}

/// A per-pod annotation with a value the injector cannot use.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("annotation {key}: {message}")]
pub struct InvalidAnnotation {
    /// The annotation's key.
    pub key: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

/// A sysctl of the pod (`spec.securityContext.sysctls`) that the proxy's reserved
/// ports ([`RESERVED_PORTS_SYSCTL`]) cannot be merged with.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("spec.securityContext.sysctls: {name} {value:?} {message}")]
pub struct InvalidSysctl {
    /// The sysctl's name.
    pub name: &'static str,
    /// The pod's value.
    pub value: String,
    /// What is wrong with it.
    pub message: String,
}

/// A container named [`INIT_CONTAINER`] or [`PROXY_CONTAINER`] that is not what the
/// injector would add: taken for ours, it would leave the pod unenforced.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "container {name}: {problem}; the names {INIT_CONTAINER} and {PROXY_CONTAINER} are \
     reserved for the containers picket injects"
)]
pub struct ForeignContainer {
    /// The container's name.
    pub name: &'static str,
    /// Where it differs from what picket injects.
    pub problem: String,
}

/// The per-pod settings, after annotations override the configuration.
#[derive(Clone, Debug)]
struct PodSettings {
    mode: SidecarMode,
    interception: Interception,
    exclude_inbound_ports: Vec<u16>,
    outbound: Option<OutboundSettings>,
    resources: Resources,
    log_level: Option<String>,
    mtls: MtlsSettings,
}

/// A pod's mTLS between sidecars.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MtlsSettings {
    /// `off`, `permissive` or `strict`.
    mode: &'static str,
    /// Whether the pod itself named the mode (else it is written on it).
    annotated: bool,
    /// Inbound ports where mTLS is not detected.
    skip_detect_ports: Vec<u16>,
}

// === impl Decision ===

impl Decision {
    /// A static label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Injected(_) => "injected",
            Decision::AlreadyInjected => "already_injected",
            Decision::Skipped(_) => "skipped",
            Decision::Rejected(_) => "rejected",
        }
    }
}

// === impl Rejection ===

impl Rejection {
    /// A static label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejection::InvalidAnnotation(_) => "invalid_annotation",
            Rejection::ForeignContainer(_) => "foreign_container",
            Rejection::InvalidSysctl(_) => "invalid_sysctl",
            Rejection::Unenforceable(_) => "unenforceable",
        }
    }
}

// === impl SkipReason ===

impl SkipReason {
    /// A static label for metrics, logs and `picket.io/status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::ExcludedNamespace => "excluded_namespace",
            SkipReason::OptedOutByLabel => "opted_out_by_label",
            SkipReason::OptedOutByAnnotation => "opted_out_by_annotation",
            SkipReason::HostNetwork => "host_network",
            SkipReason::Windows => "windows",
            SkipReason::PodSecurity(_) => "pod_security",
            SkipReason::PortConflict(_) => "port_conflict",
            SkipReason::NameConflict { .. } => "name_conflict",
            SkipReason::SelfCheck(_) => "self_check",
        }
    }

    /// A sentence for `picket.io/status` and warnings.
    pub fn message(&self) -> String {
        match self {
            SkipReason::ExcludedNamespace => "namespace is never injected".into(),
            SkipReason::OptedOutByLabel => format!("opted out by label {INJECT_KEY}={DISABLED}"),
            SkipReason::OptedOutByAnnotation => {
                format!("opted out by annotation {INJECT_KEY}={DISABLED}")
            }
            SkipReason::HostNetwork => {
                "hostNetwork pod: the init container would rewrite the node's iptables".into()
            }
            SkipReason::Windows => "Windows pod: no iptables".into(),
            SkipReason::PodSecurity(level) => format!(
                "namespace enforces Pod Security {level:?}, which refuses the init container's \
                 NET_ADMIN and NET_RAW; label the namespace \
                 {POD_SECURITY_ENFORCE_KEY}=privileged or disable injection"
            ),
            SkipReason::PortConflict(port) => {
                format!("pod already uses port {port}, which the proxy needs")
            }
            SkipReason::NameConflict { field, name } => {
                format!("{field}: pod already uses the name {name:?}, which the injection needs")
            }
            SkipReason::SelfCheck(problem) => {
                format!("the injected pod would be invalid ({problem})")
            }
        }
    }

    /// Whether the pod's creator should hear about it (opt-outs are deliberate; these are not).
    fn warns(&self) -> bool {
        !matches!(
            self,
            SkipReason::ExcludedNamespace
                | SkipReason::OptedOutByLabel
                | SkipReason::OptedOutByAnnotation
        )
    }
}

// === plan ===

/// Decides what to do with `pod`, created in namespace `ns`, and builds the patch.
///
/// In order: excluded namespaces are left untouched; a pod that already has
/// containers named like ours gets nothing new when they are exactly what we
/// would inject (reinvocation, re-submitted pods) and is rejected otherwise;
/// opt-outs (only where the namespace allows them), hostNetwork and Windows
/// pods, namespaces enforcing Pod Security `baseline` or `restricted`, and pods
/// that already use the proxy's ports or names are skipped with a
/// `picket.io/status` annotation saying why; invalid per-pod annotations, and a
/// port range sysctl that leaves no free port once the proxy's ports are
/// reserved (or that does not parse), reject the pod; everything else is
/// injected, the proxy's ports reserved in its sysctls. With a control plane
/// (`cfg.control`), the proxy gets its state from it instead of the API server:
/// it holds a projected token for the audience `picket` ([`CONTROL_TOKEN_VOLUME`],
/// mounted into no other container) and no API token.
pub fn plan(pod: &Pod, ns: &NamespaceView<'_>, cfg: &InjectConfig) -> Plan {
    if cfg.excluded_namespaces.iter().any(|n| n == ns.name) {
        return Plan {
            decision: Decision::Skipped(SkipReason::ExcludedNamespace),
            ops: Vec::new(),
            warnings: Vec::new(),
        };
    }
    let opt_outs = allows_pod_opt_outs(ns);
    if let Some(problem) = foreign_mount(pod) {
        return rejected(Unenforceable { problem }.into());
    }
    if !opt_outs {
        if let Some(problem) = netfilter_access(pod) {
            return rejected(Unenforceable { problem }.into());
        }
    }
    if has_our_containers(pod) {
        return already_injected(pod, ns, cfg, opt_outs);
    }
    if let Some(reason) = skip_reason(pod, ns, cfg, opt_outs) {
        return skip_or_refuse(pod, reason, opt_outs);
    }
    let settings = match PodSettings::from_pod(pod, ns, cfg, opt_outs) {
        Ok(settings) => settings,
        Err(invalid) => return rejected(invalid.into()),
    };
    if settings.mtls.mode != "off" && cfg.control.is_none() {
        return rejected(
            Unenforceable {
                problem: format!(
                    "{MTLS_KEY} is {:?}, but the injector runs without a control plane (--state-source direct):                      mTLS needs picket-control, the mesh's CA",
                    settings.mtls.mode
                ),
            }
            .into(),
        );
    }
    let mut warnings = ignored_opt_outs(pod, ns);
    if let Some(problem) = settings
        .outbound
        .as_ref()
        .and_then(|_| runs_as_proxy_uid(pod, cfg))
    {
        if !opt_outs {
            return rejected(Unenforceable { problem }.into());
        }
        warnings.push(format!("picket: {problem}"));
    }
    let reserved_ports = match sysctls::reserved_ports_ops(pod, &proxy_ports(cfg)) {
        Ok(ops) => ops,
        Err(invalid) => return rejected(invalid.into()),
    };
    let ops = inject_ops(pod, cfg, &settings, reserved_ports);
    if let Err(problem) = self_check(pod, &ops) {
        return skip_or_refuse(pod, SkipReason::SelfCheck(problem), opt_outs);
    }
    if ns.labels.is_none() {
        warnings.push(format!(
            "picket: could not read namespace {:?} to check its Pod Security level and whether \
             it allows pod opt-outs; injected anyway",
            ns.name
        ));
    }
    if cfg.control.is_none() && existing_token_mount(pod).is_none() {
        warnings.push(format!(
            "picket: the pod mounts no service-account token (automountServiceAccountToken: \
             false on the pod or its service account), but the proxy container gets one of its \
             own (projected volume {TOKEN_VOLUME}): it reads pods, namespaces and \
             NetworkPolicies with the pod's service account"
        ));
    }
    Plan {
        decision: Decision::Injected(settings.mode),
        ops,
        warnings,
    }
}

/// A pod with containers named like ours: nothing to do (but a reorder, and our
/// reserved ports if another webhook dropped them) when they are what we inject,
/// rejected otherwise.
fn already_injected(pod: &Pod, ns: &NamespaceView<'_>, cfg: &InjectConfig, opt_outs: bool) -> Plan {
    let checked = PodSettings::from_pod(pod, ns, cfg, opt_outs)
        .map_err(Rejection::from)
        .and_then(|settings| check_ours(pod, cfg, &settings).map_err(Rejection::from))
        .and_then(|()| {
            sysctls::reserved_ports_ops(pod, &proxy_ports(cfg)).map_err(Rejection::from)
        });
    match checked {
        Ok(reserved_ports) => Plan {
            decision: Decision::AlreadyInjected,
            ops: reorder_ops(pod).into_iter().chain(reserved_ports).collect(),
            warnings: Vec::new(),
        },
        Err(rejection) => rejected(rejection),
    }
}

/// The ports the proxy listens on: inbound, admin, local admin, outbound.
fn proxy_ports(cfg: &InjectConfig) -> [u16; 4] {
    [
        cfg.inbound_port,
        cfg.admin_port,
        cfg.local_admin_port,
        cfg.outbound_port,
    ]
}

fn rejected(rejection: Rejection) -> Plan {
    Plan {
        decision: Decision::Rejected(rejection),
        ops: Vec::new(),
        warnings: Vec::new(),
    }
}

/// [`skip`], but where the namespace does not allow pods to go unenforced, a
/// reason the pod's author controls (ports or names that collide with ours, a
/// pod the patch cannot be applied to) refuses the pod instead: otherwise
/// declaring port 15006 would be an opt-out.
fn skip_or_refuse(pod: &Pod, reason: SkipReason, opt_outs: bool) -> Plan {
    let authored = matches!(
        reason,
        SkipReason::PortConflict(_) | SkipReason::NameConflict { .. } | SkipReason::SelfCheck(_)
    );
    if authored && !opt_outs {
        return rejected(
            Unenforceable {
                problem: format!("cannot inject: {}", reason.message()),
            }
            .into(),
        );
    }
    skip(pod, reason)
}

/// A container of the pod's own that mounts one of the volumes the injection
/// adds: the node file (which addresses count as the node, always allowed),
/// the xtables lock or the proxy's tokens would be in the app's hands.
fn foreign_mount(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let theirs = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != INIT_CONTAINER && c.name != PROXY_CONTAINER)
        .map(|c| (c.name.as_str(), c.volume_mounts.iter().flatten()))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (c.name.as_str(), c.volume_mounts.iter().flatten())),
        );
    for (name, mounts) in theirs {
        if let Some(mount) = mounts
            .into_iter()
            .find(|m| OUR_VOLUMES.contains(&m.name.as_str()))
        {
            return Some(format!(
                "container {name} mounts the volume {}, which picket injects for its own containers",
                mount.name
            ));
        }
    }
    None
}

/// The pod's own containers (regular, init, ephemeral; not ours), each
/// with its security context.
fn app_containers(spec: &PodSpec) -> impl Iterator<Item = (&str, Option<&SecurityContext>)> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != INIT_CONTAINER && c.name != PROXY_CONTAINER)
        .map(|c| (c.name.as_str(), c.security_context.as_ref()))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| (c.name.as_str(), c.security_context.as_ref())),
        )
}

/// A container of the pod's own that can rewrite the pod's iptables rules
/// (privileged, or with NET_ADMIN, SYS_ADMIN or ALL): it could remove the
/// redirect to the proxy.
fn netfilter_access(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let containers = app_containers(spec);
    for (name, context) in containers {
        let Some(context) = context else { continue };
        if context.privileged == Some(true) {
            return Some(format!(
                "container {name} is privileged and could remove the pod's redirect to the proxy"
            ));
        }
        let added = context.capabilities.as_ref().and_then(|c| c.add.as_ref());
        if let Some(cap) = added.into_iter().flatten().find(|cap| {
            let cap = cap.trim_start_matches("CAP_");
            ["NET_ADMIN", "SYS_ADMIN", "ALL"].contains(&cap)
        }) {
            return Some(format!(
                "container {name} adds the capability {cap} and could remove the pod's redirect to the proxy"
            ));
        }
    }
    None
}

/// A container of the pod's own that runs as the proxy's UID (its own
/// `runAsUser`, or the pod's): init's outbound chain returns that UID's
/// connections uncaptured, so its egress would go unenforced at the
/// source. (An image whose default user is that UID, with no `runAsUser`,
/// cannot be seen here: docs/injector.md says so.)
fn runs_as_proxy_uid(pod: &Pod, cfg: &InjectConfig) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let pod_uid = spec.security_context.as_ref().and_then(|c| c.run_as_user);
    let containers = app_containers(spec);
    for (name, context) in containers {
        let uid = context.and_then(|c| c.run_as_user).or(pod_uid);
        if uid == Some(cfg.proxy_uid) {
            return Some(format!(
                "container {name} runs as the proxy's UID {}: its outbound connections would bypass the proxy (give it another runAsUser)",
                cfg.proxy_uid
            ));
        }
    }
    None
}

/// Leaves the pod alone but for `picket.io/status`, warning when the reason is not an opt-out.
fn skip(pod: &Pod, reason: SkipReason) -> Plan {
    let warnings = if reason.warns() {
        vec![format!("picket: not injected: {}", reason.message())]
    } else {
        Vec::new()
    };
    let status = serde_json::json!({
        "injected": false,
        "reason": reason.as_str(),
        "message": reason.message(),
    })
    .to_string();
    let ops = annotation_ops(pod, &[(STATUS_KEY, status)]);
    Plan {
        decision: Decision::Skipped(reason),
        ops,
        warnings,
    }
}

/// Applies the ops to a copy of the pod and checks the result: it must apply,
/// decode as a Pod, and have no duplicate names or ports that the pod did not
/// already have (the API server only warns about duplicate ports).
fn self_check(pod: &Pod, ops: &[PatchOperation]) -> Result<(), String> {
    let before = duplicate_names(pod);
    let mut doc = serde_json::to_value(pod).map_err(|e| e.to_string())?;
    json_patch::patch(&mut doc, ops).map_err(|e| format!("patch does not apply: {e}"))?;
    let patched: Pod =
        serde_json::from_value(doc).map_err(|e| format!("patched pod does not decode: {e}"))?;
    match duplicate_names(&patched)
        .into_iter()
        .find(|d| !before.contains(d))
    {
        Some(duplicate) => Err(format!("duplicate {duplicate}")),
        None => Ok(()),
    }
}

/// Whether the pod already carries our init container or proxy, in either list.
pub fn has_our_containers(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let names = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str());
    names
        .into_iter()
        .any(|n| n == INIT_CONTAINER || n == PROXY_CONTAINER)
}

/// Where our containers are in the pod: the list's field path, the index, the container.
type Found<'a> = (&'static str, usize, &'a Container);

/// Checks that the containers named like ours are the ones we would inject: both are
/// there, the init container among the init containers, the proxy among the init
/// containers (native) or the containers (container mode: either is accepted, the mode
/// may have changed since), and each has what decides what it runs and with which
/// privileges ([`differing_field`]).
fn check_ours(
    pod: &Pod,
    cfg: &InjectConfig,
    settings: &PodSettings,
) -> Result<(), ForeignContainer> {
    let Some(spec) = &pod.spec else {
        return Ok(()); // No spec, no containers.
    };
    let find = |name: &str| -> Option<Found<'_>> {
        let inits = spec.init_containers.iter().flatten().enumerate();
        let inits = inits.map(|(i, c)| ("spec.initContainers", i, c));
        let regular = spec.containers.iter().enumerate();
        let regular = regular.map(|(i, c)| ("spec.containers", i, c));
        inits.chain(regular).find(|(_, _, c)| c.name == name)
    };
    let foreign = |name, problem: String| ForeignContainer { name, problem };
    let (init, proxy) = match (find(INIT_CONTAINER), find(PROXY_CONTAINER)) {
        (Some(init), Some(proxy)) => (init, proxy),
        (None, _) => {
            let problem = format!("missing beside {PROXY_CONTAINER}: picket injects both");
            return Err(foreign(INIT_CONTAINER, problem));
        }
        (_, None) => {
            let problem = format!("missing beside {INIT_CONTAINER}: picket injects both");
            return Err(foreign(PROXY_CONTAINER, problem));
        }
    };
    if init.0 != "spec.initContainers" {
        let problem = format!("is in {}; picket injects it as an init container", init.0);
        return Err(foreign(INIT_CONTAINER, problem));
    }
    let mode = match proxy.0 {
        "spec.initContainers" => SidecarMode::Native,
        _ => SidecarMode::Container,
    };
    let settings = PodSettings {
        mode,
        ..settings.clone()
    };
    // Direct: the proxy reads the app's token, or its own (`picket-token`) when the
    // app had none at injection: the ServiceAccount plugin may have mounted one into
    // the app since. Either is the pod's own service account. (Control: one proxy,
    // whatever the app mounts; its env names the control plane and CA in force.)
    let proxies = [existing_token_mount(pod), None].map(|t| proxy_container(cfg, &settings, t));
    let expected = [
        (INIT_CONTAINER, init, vec![init_container(cfg, &settings)]),
        (PROXY_CONTAINER, proxy, proxies.into()),
    ];
    for (name, (list, index, found), candidates) in expected {
        if let Some(field) = differing_from_all(found, &candidates) {
            let problem = format!("{list}[{index}].{field} differs from what picket injects");
            return Err(foreign(name, problem));
        }
    }
    Ok(())
}

/// [`differing_field`] for a container that may be any of `candidates`: `None` when
/// it is one of them, else the field where it differs from the first.
fn differing_from_all(found: &Container, candidates: &[Container]) -> Option<&'static str> {
    let mut fields = candidates.iter().map(|c| differing_field(found, c));
    let first = fields.next()?;
    if fields.all(|field| field.is_some()) {
        first
    } else {
        None
    }
}

/// The first field, of those that make a container ours, where `found` differs from
/// `expected`. The API server defaults none of them (it does default
/// `terminationMessagePath`, probe and port fields, which are therefore not compared).
fn differing_field(found: &Container, expected: &Container) -> Option<&'static str> {
    let same = [
        ("image", found.image == expected.image),
        ("command", found.command == expected.command),
        ("args", found.args == expected.args),
        ("env", found.env == expected.env),
        ("envFrom", found.env_from == expected.env_from),
        (
            "volumeMounts",
            found.volume_mounts == expected.volume_mounts,
        ),
        (
            "securityContext",
            found.security_context == expected.security_context,
        ),
        (
            "restartPolicy",
            found.restart_policy == expected.restart_policy,
        ),
        ("lifecycle", found.lifecycle == expected.lifecycle),
    ];
    same.into_iter()
        .find(|(_, same)| !same)
        .map(|(field, _)| field)
}

/// Whether the namespace lets its pods opt out (annotation [`ALLOW_POD_OPT_OUT_KEY`]);
/// never when its annotations could not be read.
fn allows_pod_opt_outs(ns: &NamespaceView<'_>) -> bool {
    lookup(ns.annotations, ALLOW_POD_OPT_OUT_KEY) == Some("true")
}

/// Warnings for the pod's opt-outs that its namespace does not allow: they are ignored.
fn ignored_opt_outs(pod: &Pod, ns: &NamespaceView<'_>) -> Vec<String> {
    if allows_pod_opt_outs(ns) {
        return Vec::new();
    }
    let (labels, annotations) = (
        pod.metadata.labels.as_ref(),
        pod.metadata.annotations.as_ref(),
    );
    let mut ignored = Vec::new();
    if lookup(labels, INJECT_KEY) == Some(DISABLED) {
        ignored.push(format!("label {INJECT_KEY}={DISABLED}"));
    }
    if lookup(annotations, INJECT_KEY) == Some(DISABLED) {
        ignored.push(format!("annotation {INJECT_KEY}={DISABLED}"));
    }
    for key in [
        EXCLUDE_INBOUND_PORTS_KEY,
        OUTBOUND_CAPTURE_KEY,
        EXCLUDE_OUTBOUND_PORTS_KEY,
        EXCLUDE_OUTBOUND_CIDRS_KEY,
    ] {
        if lookup(annotations, key).is_some() {
            ignored.push(format!("annotation {key}"));
        }
    }
    ignored
        .into_iter()
        .map(|what| {
            format!(
                "picket: {what} ignored: namespace {:?} does not allow pod opt-outs (namespace \
                 annotation {ALLOW_POD_OPT_OUT_KEY}: \"true\"); the pod is injected and enforced",
                ns.name
            )
        })
        .collect()
}

fn skip_reason(
    pod: &Pod,
    ns: &NamespaceView<'_>,
    cfg: &InjectConfig,
    opt_outs: bool,
) -> Option<SkipReason> {
    let meta = &pod.metadata;
    if opt_outs && lookup(meta.labels.as_ref(), INJECT_KEY) == Some(DISABLED) {
        return Some(SkipReason::OptedOutByLabel);
    }
    if opt_outs && lookup(meta.annotations.as_ref(), INJECT_KEY) == Some(DISABLED) {
        return Some(SkipReason::OptedOutByAnnotation);
    }
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return Some(SkipReason::HostNetwork);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Some(SkipReason::Windows);
    }
    if let Some(level) = lookup(ns.labels, POD_SECURITY_ENFORCE_KEY) {
        if level == "baseline" || level == "restricted" {
            return Some(SkipReason::PodSecurity(level.to_string()));
        }
    }
    let ours = proxy_ports(cfg);
    let regular = spec.containers.iter().enumerate();
    let regular = regular.map(|(i, c)| ("spec.containers", i, c));
    let inits = spec.init_containers.iter().flatten().enumerate();
    let inits = inits.map(|(i, c)| ("spec.initContainers", i, c));
    for (list, i, container) in regular.chain(inits) {
        for (j, port) in container.ports.iter().flatten().enumerate() {
            if let Some(&taken) = ours.iter().find(|p| i32::from(**p) == port.container_port) {
                return Some(SkipReason::PortConflict(taken));
            }
            if port.name.as_deref() == Some(ADMIN_PORT_NAME) {
                return Some(SkipReason::NameConflict {
                    field: format!("{list}[{i}].ports[{j}].name"),
                    name: ADMIN_PORT_NAME.into(),
                });
            }
        }
    }
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        if OUR_VOLUMES.contains(&volume.name.as_str()) {
            return Some(SkipReason::NameConflict {
                field: format!("spec.volumes[{i}].name"),
                name: volume.name.clone(),
            });
        }
    }
    None
}

fn lookup<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).map(String::as_str)
}

/// What init's outbound capture leaves alone for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OutboundSettings {
    exclude_ports: Vec<u16>,
    exclude_cidrs: Vec<ipnet::IpNet>,
}

// === impl OutboundSettings ===

impl OutboundSettings {
    /// The pod's outbound capture: `None` when off (the injector's
    /// configuration, or the pod's `disabled` where its namespace allows
    /// opt-outs). Pods the control plane serves are captured too: their
    /// sidecars ask for views with outbound parts.
    fn from_pod<'a>(
        get: &impl Fn(&'static str) -> Option<&'a str>,
        cfg: &InjectConfig,
        opt_outs: bool,
    ) -> Result<Option<Self>, InvalidAnnotation> {
        let pod_says = |key| get(key).filter(|_| opt_outs);
        match pod_says(OUTBOUND_CAPTURE_KEY) {
            None | Some("enabled") => {}
            Some(DISABLED) => return Ok(None),
            Some(other) => {
                return Err(InvalidAnnotation {
                    key: OUTBOUND_CAPTURE_KEY,
                    message: format!("{other:?} is neither \"enabled\" nor \"disabled\""),
                })
            }
        }
        if !cfg.outbound_capture {
            return Ok(None);
        }
        let mut settings = Self {
            exclude_ports: port_list(
                pod_says(EXCLUDE_OUTBOUND_PORTS_KEY),
                EXCLUDE_OUTBOUND_PORTS_KEY,
            )?,
            ..Self::default()
        };
        for item in list(pod_says(EXCLUDE_OUTBOUND_CIDRS_KEY)) {
            let net = item
                .parse::<ipnet::IpNet>()
                .map_err(|e| InvalidAnnotation {
                    key: EXCLUDE_OUTBOUND_CIDRS_KEY,
                    message: format!("{item:?} is not a CIDR such as 10.0.0.0/8: {e}"),
                })?;
            settings.exclude_cidrs.push(net.trunc());
        }
        Ok(Some(settings))
    }
}

/// The ports of a comma-separated annotation, sorted, each once.
fn port_list(value: Option<&str>, key: &'static str) -> Result<Vec<u16>, InvalidAnnotation> {
    let mut ports = list(value)
        .map(|item| {
            item.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| InvalidAnnotation {
                    key,
                    message: format!("{item:?} is not a port number (1-65535)"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// The non-empty items of a comma-separated annotation.
fn list(value: Option<&str>) -> impl Iterator<Item = &str> {
    value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

// === impl MtlsSettings ===

impl MtlsSettings {
    /// The pod's mode (its annotation, else its namespace's, else the
    /// install's) and its skip-detect ports. A value that is no mode rejects
    /// the pod: guessing could leave it weaker than asked.
    fn from_pod<'a>(
        get: &impl Fn(&'static str) -> Option<&'a str>,
        ns: &NamespaceView<'_>,
        cfg: &InjectConfig,
    ) -> Result<Self, InvalidAnnotation> {
        let from_ns = lookup(ns.annotations, MTLS_KEY).map(str::trim);
        let (value, annotated) = match (get(MTLS_KEY), from_ns) {
            (Some(own), _) => (own, true),
            (None, Some(namespace)) => (namespace, false),
            (None, None) => (cfg.mtls_default, false),
        };
        let mode = ["off", "permissive", "strict"]
            .into_iter()
            .find(|m| *m == value)
            .ok_or_else(|| InvalidAnnotation {
                key: MTLS_KEY,
                message: format!(
                    "{value:?} (on the {}) is none of \"off\", \"permissive\", \"strict\"",
                    if annotated { "pod" } else { "namespace" }
                ),
            })?;
        let skip_detect_ports = port_list(get(SKIP_DETECT_PORTS_KEY), SKIP_DETECT_PORTS_KEY)?;
        Ok(Self {
            mode,
            annotated,
            skip_detect_ports,
        })
    }
}

// === impl PodSettings ===

impl PodSettings {
    /// The settings for `pod`; its port exclusions count only when `opt_outs` (its
    /// namespace allows pod opt-outs).
    fn from_pod(
        pod: &Pod,
        ns: &NamespaceView<'_>,
        cfg: &InjectConfig,
        opt_outs: bool,
    ) -> Result<Self, InvalidAnnotation> {
        let annotations = pod.metadata.annotations.as_ref();
        let get = |key| lookup(annotations, key).map(str::trim);
        let mtls = MtlsSettings::from_pod(&get, ns, cfg)?;

        let mode = match get(SIDECAR_MODE_KEY) {
            None => cfg.sidecar_mode,
            Some(value) => SidecarMode::parse(value).ok_or_else(|| InvalidAnnotation {
                key: SIDECAR_MODE_KEY,
                message: format!("{value:?} is neither \"native\" nor \"container\""),
            })?,
        };

        // Not an opt-out: enforcement is the same either way.
        let interception = match get(INTERCEPTION_KEY) {
            None => cfg.interception,
            Some(value) => Interception::parse(value).ok_or_else(|| InvalidAnnotation {
                key: INTERCEPTION_KEY,
                message: format!("{value:?} is neither \"redirect\" nor \"tproxy\""),
            })?,
        };

        let mut exclude_inbound_ports = cfg.exclude_inbound_ports.clone();
        if let Some(value) = get(EXCLUDE_INBOUND_PORTS_KEY).filter(|_| opt_outs) {
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let port = item
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| InvalidAnnotation {
                        key: EXCLUDE_INBOUND_PORTS_KEY,
                        message: format!("{item:?} is not a port number (1-65535)"),
                    })?;
                if port == cfg.inbound_port {
                    return Err(InvalidAnnotation {
                        key: EXCLUDE_INBOUND_PORTS_KEY,
                        message: format!("{port} is the proxy's own inbound port"),
                    });
                }
                exclude_inbound_ports.push(port);
            }
        }
        exclude_inbound_ports.sort_unstable();
        exclude_inbound_ports.dedup();
        let outbound = OutboundSettings::from_pod(&get, cfg, opt_outs)?;

        let mut resources = cfg.resources.clone();
        for (key, slot) in [
            (CPU_REQUEST_KEY, &mut resources.cpu_request),
            (CPU_LIMIT_KEY, &mut resources.cpu_limit),
            (MEMORY_REQUEST_KEY, &mut resources.memory_request),
            (MEMORY_LIMIT_KEY, &mut resources.memory_limit),
        ] {
            if let Some(value) = get(key) {
                quantity::parse(value).map_err(|e| InvalidAnnotation {
                    key,
                    message: e.to_string(),
                })?;
                *slot = Some(value.to_string());
            }
        }
        for (what, request, limit, key) in [
            (
                "cpu",
                &resources.cpu_request,
                &resources.cpu_limit,
                CPU_REQUEST_KEY,
            ),
            (
                "memory",
                &resources.memory_request,
                &resources.memory_limit,
                MEMORY_REQUEST_KEY,
            ),
        ] {
            if let (Some(request), Some(limit)) = (request, limit) {
                // Both parse: defaults are checked at startup, overrides above.
                let (r, l) = (quantity::parse(request), quantity::parse(limit));
                if let (Ok(r), Ok(l)) = (r, l) {
                    if r > l {
                        return Err(InvalidAnnotation {
                            key,
                            message: format!(
                                "the proxy's {what} request {request} exceeds its limit {limit}"
                            ),
                        });
                    }
                }
            }
        }

        if let Some(value) = get(LOG_LEVEL_KEY) {
            check_log_filter(value).map_err(|message| InvalidAnnotation {
                key: LOG_LEVEL_KEY,
                message,
            })?;
        }
        let log_level = get(LOG_LEVEL_KEY)
            .map(str::to_string)
            .or_else(|| cfg.proxy_log_level.clone());

        Ok(PodSettings {
            mtls,
            mode,
            interception,
            exclude_inbound_ports,
            outbound,
            resources,
            log_level,
        })
    }
}

// === log filters ===

/// The levels a directive may name on its own (in any case).
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter for the proxy (`PICKET_LOG`): it must parse as a `tracing`
/// filter, and no directive may be a bare word that is not a level. `tracing`
/// reads such a word as a target (`bogus-level` enables only the target
/// `bogus-level` and so silences the proxy): a typo, most likely. A directive
/// naming a target has `=`, `::` or a span (`[...]`): `picket_proxy=debug`. An
/// empty filter is refused too (it would leave only errors).
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    if directives(filter).is_empty() {
        return Err(
            "the filter is empty: name a level (trace, debug, info, warn, error, off)".into(),
        );
    }
    picket_common::logging::check_filter(filter)
        .map_err(|e| format!("{filter:?} is not a log filter: {e}"))?;
    for directive in directives(filter) {
        let names_target = directive.contains(['=', '[']) || directive.contains("::");
        if !names_target && !LOG_LEVELS.iter().any(|l| directive.eq_ignore_ascii_case(l)) {
            return Err(format!(
                "{directive:?} is neither a level ({}) nor a target=level directive; \
                 as a target it would silence every other log",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The comma-separated directives of a filter, trimmed, empty ones left out; commas
/// inside a span's `[...]` or `{...}` do not separate.
fn directives(filter: &str) -> Vec<&str> {
    let mut directives = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in filter.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                directives.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    directives.push(&filter[start..]);
    directives
        .into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

// === building the patch ===

/// The ops injecting the pod; `reserved_ports` (from [`sysctls::reserved_ports_ops`])
/// go after the volumes.
fn inject_ops(
    pod: &Pod,
    cfg: &InjectConfig,
    settings: &PodSettings,
    reserved_ports: Vec<PatchOperation>,
) -> Vec<PatchOperation> {
    let spec = pod.spec.clone().unwrap_or_default();
    let token_mount = existing_token_mount(pod);
    let init = init_container(cfg, settings);
    let proxy = proxy_container(cfg, settings, token_mount.clone());
    let mut ops = Vec::new();

    let (leading_init, regular) = match settings.mode {
        SidecarMode::Native => (vec![init, proxy], None),
        SidecarMode::Container => (vec![init], Some(proxy)),
    };
    match &spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], to_value(&leading_init))),
        Some(_) => {
            for (i, container) in leading_init.iter().enumerate() {
                let index = i.to_string();
                ops.push(add(
                    &["spec", "initContainers", &index],
                    to_value(container),
                ));
            }
        }
    }
    if let Some(proxy) = regular {
        ops.push(add(&["spec", "containers", "0"], to_value(&proxy)));
    }

    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let mut volumes = vec![
        empty_dir(RUN_VOLUME),
        empty_dir(XTABLES_VOLUME),
        empty_dir(NO_TOKEN_VOLUME),
    ];
    if cfg.control.is_some() {
        volumes.push(control_token_volume());
    } else if token_mount.is_none() {
        volumes.push(token_volume());
    }
    match &spec.volumes {
        None => ops.push(add(&["spec", "volumes"], to_value(&volumes))),
        Some(_) => {
            for volume in &volumes {
                ops.push(add(&["spec", "volumes", "-"], to_value(volume)));
            }
        }
    }
    ops.extend(reserved_ports);

    let mut status = serde_json::json!({
        "injected": true,
        "version": cfg.version,
        "mode": settings.mode.as_str(),
        "image": cfg.proxy_image,
        "initContainers": match settings.mode {
            SidecarMode::Native => vec![INIT_CONTAINER, PROXY_CONTAINER],
            SidecarMode::Container => vec![INIT_CONTAINER],
        },
        "containers": match settings.mode {
            SidecarMode::Native => vec![],
            SidecarMode::Container => vec![PROXY_CONTAINER],
        },
        "volumes": volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
    });
    if cfg.control.is_some() {
        // Only here: the status of a direct injection stays as it was.
        status["stateSource"] = StateSource::Control.as_str().into();
    }
    let mut annotations = vec![(STATUS_KEY, status.to_string())];
    let existing = pod.metadata.annotations.as_ref();
    let has_scrape_annotations =
        existing.is_some_and(|map| map.keys().any(|key| key.starts_with(PROMETHEUS_PREFIX)));
    if !has_scrape_annotations {
        annotations.push(("prometheus.io/scrape", "true".into()));
        annotations.push(("prometheus.io/port", cfg.admin_port.to_string()));
        annotations.push(("prometheus.io/path", "/metrics".into()));
    }
    // The pod's mode on the pod itself: what the engine reads of it.
    if settings.mtls.mode != "off" {
        if !settings.mtls.annotated {
            annotations.push((MTLS_KEY, settings.mtls.mode.to_string()));
        }
        // Its outbound connections are not captured: plaintext from it
        // proves nothing to its peers.
        if settings.outbound.is_none() && lookup(existing, OUTBOUND_CAPTURE_KEY).is_none() {
            annotations.push((OUTBOUND_CAPTURE_KEY, DISABLED.to_string()));
        }
    }
    if settings.mode == SidecarMode::Container && lookup(existing, DEFAULT_CONTAINER_KEY).is_none()
    {
        if let Some(app) = spec.containers.first() {
            annotations.push((DEFAULT_CONTAINER_KEY, app.name.clone()));
        }
    }
    ops.extend(annotation_ops(pod, &annotations));
    ops
}

/// Ops adding (or overwriting) annotations; none for an annotation that already has its value.
fn annotation_ops(pod: &Pod, annotations: &[(&str, String)]) -> Vec<PatchOperation> {
    match &pod.metadata.annotations {
        None => {
            let map: BTreeMap<&str, &str> =
                annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
            vec![add(&["metadata", "annotations"], to_value(&map))]
        }
        Some(existing) => annotations
            .iter()
            .filter(|(key, value)| existing.get(*key) != Some(value))
            .map(|(key, value)| {
                add(
                    &["metadata", "annotations", key],
                    Value::String(value.clone()),
                )
            })
            .collect(),
    }
}

/// Moves our init container back to the front, and a native proxy right after
/// it, when another webhook has put its own init containers before them.
fn reorder_ops(pod: &Pod) -> Vec<PatchOperation> {
    let Some(inits) = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    let mut ops = Vec::new();
    let mut wanted = vec![INIT_CONTAINER];
    if names.contains(&PROXY_CONTAINER) {
        wanted.push(PROXY_CONTAINER);
    }
    let mut target = 0;
    for name in wanted {
        let Some(at) = names.iter().position(|n| *n == name) else {
            continue;
        };
        if at != target {
            let name = names.remove(at);
            names.insert(target, name);
            ops.push(PatchOperation::Move(MoveOperation {
                from: pointer(&["spec", "initContainers", &at.to_string()]),
                path: pointer(&["spec", "initContainers", &target.to_string()]),
            }));
        }
        target += 1;
    }
    ops
}

fn init_container(cfg: &InjectConfig, settings: &PodSettings) -> Container {
    let mut env = vec![
        env(vars::INBOUND_PORT, cfg.inbound_port.to_string()),
        env(vars::OUTBOUND_PORT, cfg.outbound_port.to_string()),
        env(vars::ADMIN_PORT, cfg.admin_port.to_string()),
        // Init reserves all three ports (where /proc/sys is writable).
        env(vars::LOCAL_ADMIN_PORT, cfg.local_admin_port.to_string()),
        env(vars::NODE_FILE, NODE_FILE),
        env(vars::IPTABLES_BACKEND, cfg.iptables_backend.clone()),
        env(XTABLES_LOCKFILE_ENV, format!("{XTABLES_DIR}/xtables.lock")),
    ];
    if !settings.exclude_inbound_ports.is_empty() {
        let ports: Vec<String> = settings
            .exclude_inbound_ports
            .iter()
            .map(u16::to_string)
            .collect();
        env.push(env_var(vars::EXCLUDE_INBOUND_PORTS, ports.join(",")));
    }
    if settings.interception == Interception::Tproxy {
        env.push(env_var(
            vars::INTERCEPTION,
            Interception::Tproxy.as_str().into(),
        ));
    }
    if let Some(outbound) = &settings.outbound {
        // Not `on`: YAML 1.1 readers of a rendered pod would see a boolean.
        env.push(env_var(vars::OUTBOUND_CAPTURE, "enabled".into()));
        env.push(env_var(vars::PROXY_UID, cfg.proxy_uid.to_string()));
        // The node's addresses are never captured (kubelet, node-local services).
        env.push(field_env(vars::HOST_IP, "status.hostIP"));
        env.push(field_env(vars::HOST_IPS, "status.hostIPs"));
        if !outbound.exclude_ports.is_empty() {
            let ports: Vec<String> = outbound.exclude_ports.iter().map(u16::to_string).collect();
            env.push(env_var(vars::EXCLUDE_OUTBOUND_PORTS, ports.join(",")));
        }
        if !outbound.exclude_cidrs.is_empty() {
            let nets: Vec<String> = outbound
                .exclude_cidrs
                .iter()
                .map(ToString::to_string)
                .collect();
            env.push(env_var(vars::EXCLUDE_OUTBOUND_CIDRS, nets.join(",")));
        }
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.proxy_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec![PROXY_BINARY.into()]),
        args: Some(vec!["init".into()]),
        env: Some(env),
        resources: Some(resources(&settings.resources)),
        security_context: Some(SecurityContext {
            // iptables needs root with these two capabilities (NET_RAW: the legacy
            // backend talks to the kernel through a raw socket; nft needs only
            // NET_ADMIN); a pod-level runAsNonRoot: true would refuse the container
            // without the override.
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables-legacy takes its lock in XTABLES_LOCKFILE, on its own emptyDir.
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            run_mount(),
            VolumeMount {
                name: XTABLES_VOLUME.into(),
                mount_path: XTABLES_DIR.into(),
                ..VolumeMount::default()
            },
            // Root must not hold the app's token: with a mount of its own at the
            // token's path, the ServiceAccount admission plugin (which runs again
            // after the webhooks when they are reinvoked) leaves it alone.
            no_token_mount(),
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn proxy_container(
    cfg: &InjectConfig,
    settings: &PodSettings,
    token_mount: Option<VolumeMount>,
) -> Container {
    let downward = [
        field_env(vars::POD_NAME, "metadata.name"),
        field_env(vars::POD_NAMESPACE, "metadata.namespace"),
        field_env(vars::POD_IP, "status.podIP"),
        field_env(vars::HOST_IP, "status.hostIP"),
        // Dual stack: every address of the pod and of its node (comma-separated).
        field_env(vars::POD_IPS, "status.podIPs"),
        field_env(vars::HOST_IPS, "status.hostIPs"),
        field_env("NODE_NAME", "spec.nodeName"),
    ];
    let settings_env = [
        // One malloc arena: the proxy's large allocations come in bursts
        // (decoding lists) and glibc's per-thread arenas keep the freed
        // memory (measured: 66 MiB PSS with 10,000 pods, 47 MiB with this).
        env("MALLOC_ARENA_MAX", "1"),
        env(vars::INBOUND_PORT, cfg.inbound_port.to_string()),
        env(vars::OUTBOUND_PORT, cfg.outbound_port.to_string()),
        env(vars::ADMIN_PORT, cfg.admin_port.to_string()),
        env(vars::LOCAL_ADMIN_PORT, cfg.local_admin_port.to_string()),
        env(vars::NODE_FILE, NODE_FILE),
    ];
    // The sidecar decides what init captures: both get the same setting.
    let capture = settings
        .outbound
        .as_ref()
        .map(|_| env(vars::OUTBOUND_CAPTURE, "enabled"));
    let tproxy = settings.interception == Interception::Tproxy;
    let interception = tproxy.then(|| env(vars::INTERCEPTION, Interception::Tproxy.as_str()));
    let mut env: Vec<EnvVar> = downward
        .into_iter()
        .chain(state_env(cfg))
        .chain(settings_env)
        .chain(capture)
        .chain(interception)
        .collect();
    if let Some(level) = &settings.log_level {
        env.push(env_var(vars::LOG, level.clone()));
    }
    if settings.mtls.mode != "off" {
        env.push(env_var(vars::MTLS, settings.mtls.mode.into()));
    }
    if !settings.mtls.skip_detect_ports.is_empty() {
        let ports: Vec<String> = settings
            .mtls
            .skip_detect_ports
            .iter()
            .map(u16::to_string)
            .collect();
        env.push(env_var(vars::SKIP_DETECT_PORTS, ports.join(",")));
    }
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(cfg.admin_port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    };
    let native = settings.mode == SidecarMode::Native;
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(cfg.proxy_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec![PROXY_BINARY.into()]),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: i32::from(cfg.admin_port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources(&settings.resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(cfg.proxy_uid),
            run_as_group: Some(cfg.proxy_uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            // Tproxy: IP_TRANSPARENT and SO_MARK need NET_RAW, which a
            // non-root process gets only from the binary's file capability
            // (`cap_net_raw+p`), granted at exec only when escalation is
            // allowed and the bounding set has it: nothing else is added.
            allow_privilege_escalation: Some(tproxy),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: tproxy.then(|| vec!["NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        readiness_probe: Some(http_probe("/ready", 5, 3)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        // Native: the next init container (and so the app) starts only once
        // the proxy is ready; up to five minutes for the first cluster state.
        startup_probe: native.then(|| http_probe("/ready", 1, 300)),
        restart_policy: native.then(|| "Always".into()),
        volume_mounts: Some(proxy_mounts(cfg, token_mount)),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// Where the proxy gets its state: the API server (`kube`), or the control
/// plane, with its address, its CA and the token to present.
fn state_env(cfg: &InjectConfig) -> Vec<EnvVar> {
    let Some(control) = &cfg.control else {
        return vec![env(vars::SOURCE, "kube")];
    };
    vec![
        env(vars::SOURCE, "control"),
        env(CONTROL_ADDR_ENV, control.addr.clone()),
        env(CONTROL_CA_ENV, control.ca_pem.clone()),
        env(
            CONTROL_TOKEN_FILE_ENV,
            format!("{CONTROL_TOKEN_DIR}/{CONTROL_TOKEN_PATH}"),
        ),
    ]
}

/// The proxy's mounts: the node file's directory, then, direct, an API token
/// (the app's, `api_token`, or without one [`TOKEN_VOLUME`]); control, no API
/// token (an empty directory at its path, so that the ServiceAccount admission
/// plugin adds none) and the control token.
fn proxy_mounts(cfg: &InjectConfig, api_token: Option<VolumeMount>) -> Vec<VolumeMount> {
    if cfg.control.is_some() {
        return vec![
            run_mount(),
            no_token_mount(),
            VolumeMount {
                name: CONTROL_TOKEN_VOLUME.into(),
                mount_path: CONTROL_TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ];
    }
    let api_token = api_token.unwrap_or_else(|| VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: SA_TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    vec![run_mount(), api_token]
}

/// [`NO_TOKEN_VOLUME`] at the service-account token's path, read-only.
fn no_token_mount() -> VolumeMount {
    VolumeMount {
        name: NO_TOKEN_VOLUME.into(),
        mount_path: SA_TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The app's service-account token mount, if any container but ours has one.
///
/// The ServiceAccount admission plugin runs before webhooks, so the proxy we
/// add does not get the token mounted: we copy the app's mount, or (when the
/// pod or its service account opted out of automounting) project a token of
/// our own.
fn existing_token_mount(pod: &Pod) -> Option<VolumeMount> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != INIT_CONTAINER && c.name != PROXY_CONTAINER)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .find(|m| m.mount_path.trim_end_matches('/') == SA_TOKEN_DIR)
        .map(|m| VolumeMount {
            name: m.name.clone(),
            mount_path: SA_TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            default_mode: Some(0o644),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The proxy's token for the control plane: the pod's service account, bound to
/// the pod, for the audience `picket` alone (the API server does not accept it).
/// The kubelet projects it whatever `automountServiceAccountToken` says.
fn control_token_volume() -> Volume {
    let token = VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(CONTROL_AUDIENCE.into()),
            expiration_seconds: Some(CONTROL_TOKEN_SECONDS),
            path: CONTROL_TOKEN_PATH.into(),
            ..ServiceAccountTokenProjection::default()
        }),
        ..VolumeProjection::default()
    };
    Volume {
        name: CONTROL_TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![token]),
            // The API server's default, written out: the pod as stored is the one sent.
            default_mode: Some(0o644),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn resources(r: &Resources) -> ResourceRequirements {
    let map = |pairs: [(&str, &Option<String>); 2]| {
        let map: BTreeMap<String, Quantity> = pairs
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: map([("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
        limits: map([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
        ..ResourceRequirements::default()
    }
}

fn run_mount() -> VolumeMount {
    VolumeMount {
        name: RUN_VOLUME.into(),
        mount_path: RUN_DIR.into(),
        ..VolumeMount::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    env_var(name, value.into())
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field_path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    // Token::from(&str) escapes `~` as `~0` and `/` as `~1`.
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("k8s-openapi types always serialize to JSON")
}

/// Names used twice in the pod: containers across both lists, container
/// ports by number and by name, and volumes. Empty for a well-formed pod;
/// [`plan`] checks every patched pod with it before the patch leaves.
pub fn duplicate_names(pod: &Pod) -> Vec<String> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut dups = Vec::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut ports = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    for c in all {
        if !seen.insert(c.name.as_str()) {
            dups.push(format!("container {}", c.name));
        }
        for p in c.ports.iter().flatten() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if !ports.insert((p.container_port, proto)) {
                dups.push(format!("port {}/{proto}", p.container_port));
            }
            if let Some(name) = &p.name {
                if !port_names.insert(name.as_str()) {
                    dups.push(format!("port name {name}"));
                }
            }
        }
    }
    let mut volumes = BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        if !volumes.insert(v.name.as_str()) {
            dups.push(format!("volume {}", v.name));
        }
    }
    dups
}

mod sysctls;

#[cfg(test)]
mod tests;
