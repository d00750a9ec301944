//! What the injector puts into pods: images, ports, resources and modes.
//!
//! Pure data, built once at startup from the command line (`cli.rs`) and
//! passed by reference to [`crate::patch::plan`]. Tests build it with
//! [`InjectConfig::for_test`]. The one part that changes while serving is the
//! control plane's CA in `--tls-mode secret` (the injector's own, which a
//! rotation replaces): [`LiveConfig`] holds the configuration in force, and
//! each review takes a snapshot of it.

#![warn(missing_docs)]

use std::sync::{Arc, RwLock};

use clap::ValueEnum;

/// The proxy's inbound (redirect target) port, as `picket-proxy` defaults it.
pub const DEFAULT_INBOUND_PORT: u16 = picket_common::INBOUND_PORT;
/// The proxy's admin port (probes, metrics), bound on the pod IP.
pub const DEFAULT_ADMIN_PORT: u16 = picket_common::ADMIN_PORT;
/// The proxy's local admin port, bound on 127.0.0.1.
pub const DEFAULT_LOCAL_ADMIN_PORT: u16 = picket_common::LOCAL_ADMIN_PORT;
/// The UID the proxy runs as; the image's user.
pub const DEFAULT_PROXY_UID: i64 = picket_common::PROXY_UID as i64;
/// The proxy image.
pub const DEFAULT_PROXY_IMAGE: &str = "picket/proxy:0.1.0";
/// Namespaces never injected, whatever the webhook configuration says.
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system", "picket-system"];

/// How the proxy container is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SidecarMode {
    /// A native sidecar: an init container with `restartPolicy: Always`
    /// (Kubernetes 1.29+). The app starts once the proxy is ready, and the
    /// proxy stops after the app.
    Native,
    /// The first regular container; the app may start before the proxy is ready.
    Container,
}

/// How init intercepts a pod's inbound connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Interception {
    /// nat REDIRECT: the app sees the pod's own address as every client's.
    Redirect,
    /// mangle TPROXY: the app sees each client's own address; the proxy
    /// container gets CAP_NET_RAW (and may escalate to it: the binary's
    /// file capability), nothing else.
    Tproxy,
}

/// Where injected sidecars get the cluster state from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateSource {
    /// Each sidecar watches the API server with its pod's service account
    /// (`PICKET_SOURCE=kube`): the app's service accounts need the ClusterRole
    /// `picket-proxy`.
    Direct,
    /// Each sidecar gets its pod's view from the control plane
    /// (`PICKET_SOURCE=control`), authenticated by a projected token for the
    /// audience `picket`: no RBAC for the app's service accounts.
    Control,
}

/// The control plane that injected sidecars connect to (state source control).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// Its address, `host:port` (`PICKET_CONTROL_ADDR`).
    pub addr: String,
    /// The PEM of the CA certificate(s) its certificate chains to (`PICKET_CONTROL_CA`).
    pub ca_pem: String,
}

/// CPU and memory for the proxy (and the init container), as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`, if any.
    pub cpu_request: Option<String>,
    /// `requests.memory`, if any.
    pub memory_request: Option<String>,
    /// `limits.cpu`, if any.
    pub cpu_limit: Option<String>,
    /// `limits.memory`, if any.
    pub memory_limit: Option<String>,
}

/// Everything the patch depends on besides the pod and its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// The image of both the init container and the proxy.
    pub proxy_image: String,
    /// `imagePullPolicy` of both containers.
    pub image_pull_policy: String,
    /// Native sidecar or regular container (a pod can override it).
    pub sidecar_mode: SidecarMode,
    /// The proxy's UID and GID.
    pub proxy_uid: i64,
    /// The proxy's inbound port.
    pub inbound_port: u16,
    /// The proxy's admin port (probes, metrics).
    pub admin_port: u16,
    /// The proxy's local admin port (127.0.0.1).
    pub local_admin_port: u16,
    /// The proxy's outbound port (loopback).
    pub outbound_port: u16,
    /// Inbound ports that bypass the proxy in every pod.
    pub exclude_inbound_ports: Vec<u16>,
    /// Whether init captures pods' outbound connections (a pod may opt out).
    pub outbound_capture: bool,
    /// How init intercepts inbound connections (a pod can override it).
    pub interception: Interception,
    /// The proxy's resources (a pod can override each).
    pub resources: Resources,
    /// `--backend` of `picket-proxy init`: auto, nft or legacy.
    pub iptables_backend: String,
    /// The proxy's log filter (`PICKET_LOG`), if set.
    pub proxy_log_level: Option<String>,
    /// Namespaces never injected.
    pub excluded_namespaces: Vec<String>,
    /// The version written into `picket.io/status`.
    pub version: String,
    /// The mTLS mode of pods whose pod and namespace name none
    /// (`picket.io/mtls`): `off`, `permissive` or `strict`.
    pub mtls_default: &'static str,
    /// The control plane the sidecars get their state from; `None`: they watch
    /// the API server themselves ([`StateSource::Direct`]).
    pub control: Option<ControlPlane>,
}

/// The configuration in force, swapped whole when the control plane's CA
/// changes; the webhook takes a snapshot per review.
#[derive(Debug)]
pub struct LiveConfig {
    current: RwLock<Arc<InjectConfig>>,
}

// === impl StateSource ===

impl StateSource {
    /// The name used in flags, logs and `picket.io/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            StateSource::Direct => "direct",
            StateSource::Control => "control",
        }
    }
}

// === impl Interception ===

impl Interception {
    /// The name used in flags, annotations and the proxy's environment.
    pub fn as_str(self) -> &'static str {
        match self {
            Interception::Redirect => "redirect",
            Interception::Tproxy => "tproxy",
        }
    }

    /// Parses an annotation value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "redirect" => Some(Interception::Redirect),
            "tproxy" => Some(Interception::Tproxy),
            _ => None,
        }
    }
}

// === impl SidecarMode ===

impl SidecarMode {
    /// The name used in flags, annotations and `picket.io/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Container => "container",
        }
    }

    /// Parses an annotation value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(SidecarMode::Native),
            "container" => Some(SidecarMode::Container),
            _ => None,
        }
    }
}

// === impl Resources ===

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: Some("10m".into()),
            memory_request: Some("32Mi".into()),
            cpu_limit: Some("1".into()),
            memory_limit: Some("256Mi".into()),
        }
    }
}

// === impl InjectConfig ===

impl InjectConfig {
    /// The defaults, as the command line has them.
    pub fn for_test() -> Self {
        InjectConfig {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            sidecar_mode: SidecarMode::Native,
            proxy_uid: DEFAULT_PROXY_UID,
            inbound_port: DEFAULT_INBOUND_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            local_admin_port: DEFAULT_LOCAL_ADMIN_PORT,
            exclude_inbound_ports: Vec::new(),
            outbound_port: picket_common::OUTBOUND_PORT,
            outbound_capture: true,
            interception: Interception::Redirect,
            resources: Resources::default(),
            iptables_backend: "auto".into(),
            proxy_log_level: None,
            excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            version: "0.1.0".into(),
            mtls_default: "off",
            control: None,
        }
    }

    /// Where the sidecars get their state from.
    pub fn state_source(&self) -> StateSource {
        match self.control {
            None => StateSource::Direct,
            Some(_) => StateSource::Control,
        }
    }
}

// === impl LiveConfig ===

impl LiveConfig {
    /// Holds `config` until it is changed.
    pub fn new(config: InjectConfig) -> Self {
        LiveConfig {
            current: RwLock::new(Arc::new(config)),
        }
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<InjectConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Points new sidecars at a control plane with this CA from now on; `false`
    /// when it is the CA already in force, or the sidecars get no control plane.
    pub fn set_control_ca(&self, ca_pem: &str) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let Some(control) = &current.control else {
            return false;
        };
        if control.ca_pem == ca_pem {
            return false;
        }
        let mut config = InjectConfig::clone(&current);
        if let Some(control) = &mut config.control {
            control.ca_pem = ca_pem.to_string();
        }
        *current = Arc::new(config);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controlled(ca_pem: &str) -> InjectConfig {
        InjectConfig {
            control: Some(ControlPlane {
                addr: "picket-control.picket-system.svc:8443".into(),
                ca_pem: ca_pem.into(),
            }),
            ..InjectConfig::for_test()
        }
    }

    #[test]
    fn a_new_control_ca_is_in_the_next_snapshot_and_not_in_older_ones() {
        let live = LiveConfig::new(controlled("old CA"));
        let before = live.current();
        assert!(!live.set_control_ca("old CA"), "the same CA is no change");
        assert!(live.set_control_ca("new CA"));
        let ca = |cfg: &InjectConfig| cfg.control.as_ref().unwrap().ca_pem.clone();
        assert_eq!(ca(&live.current()), "new CA");
        assert_eq!(ca(&before), "old CA", "a snapshot never changes");
        assert_eq!(live.current().state_source(), StateSource::Control);
    }

    #[test]
    fn direct_mode_has_no_ca_to_change() {
        let live = LiveConfig::new(InjectConfig::for_test());
        assert!(!live.set_control_ca("a CA"));
        assert_eq!(live.current().control, None);
        assert_eq!(live.current().state_source(), StateSource::Direct);
    }
}
