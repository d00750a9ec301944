//! What the injector puts into pods: images, ports, resources and modes.
//!
//! Pure data, built once at startup from the command line (`cli.rs`) and
//! passed by reference to [`crate::patch::plan`]. Tests build it with
//! [`InjectConfig::for_test`].

#![warn(missing_docs)]

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
    /// Inbound ports that bypass the proxy in every pod.
    pub exclude_inbound_ports: Vec<u16>,
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
            resources: Resources::default(),
            iptables_backend: "auto".into(),
            proxy_log_level: None,
            excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            version: "0.1.0".into(),
        }
    }
}
