//! The command line of `picket-injector`: every flag has a `PICKET_INJECTOR_*`
//! environment variable. Parsed once in `main.rs`; [`InjectArgs::to_config`]
//! validates the injection settings into an [`InjectConfig`], and
//! [`Cli::control_target`] the state source's (the control plane's CA may be
//! the injector's own, known once its certificate Secret is read: `app.rs`
//! completes the configuration then).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::config::{
    InjectConfig, Interception, Resources, SidecarMode, StateSource, DEFAULT_ADMIN_PORT,
    DEFAULT_INBOUND_PORT, DEFAULT_LOCAL_ADMIN_PORT, DEFAULT_PROXY_IMAGE, DEFAULT_PROXY_UID,
};
use crate::{certs, quantity};

/// `picket-injector`: Picket's mutating admission webhook.
#[derive(Debug, Parser)]
#[command(name = "picket-injector", version, about)]
pub struct Cli {
    /// Where the HTTPS webhook listens.
    #[arg(long, env = "PICKET_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Where the admin server (/live, /ready, /metrics; plain HTTP) listens.
    #[arg(
        long,
        env = "PICKET_INJECTOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: SocketAddr,
    /// Larger request bodies are refused (413).
    #[arg(long, env = "PICKET_INJECTOR_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// After SIGTERM, report not ready and keep serving this long, then exit.
    #[arg(long, env = "PICKET_INJECTOR_SHUTDOWN_DELAY", default_value = "5s", value_parser = picket_common::duration::parse)]
    pub shutdown_delay: Duration,
    /// Where namespace labels and annotations (the Pod Security check, pod opt-outs) come from.
    #[arg(long, env = "PICKET_INJECTOR_NAMESPACE_LOOKUP", value_enum, default_value_t = LookupMode::Kube)]
    pub namespace_lookup: LookupMode,
    /// How long namespace labels are cached.
    #[arg(long, env = "PICKET_INJECTOR_NAMESPACE_CACHE_TTL", default_value = "30s", value_parser = picket_common::duration::parse)]
    pub namespace_cache_ttl: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub inject: InjectArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArgs,
}

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// A Secret shared by all replicas, created if absent; patches our webhook's caBundle.
    Secret,
    /// Mounted files (cert-manager), reloaded when they change.
    Files,
    /// Generated in memory at startup (tests, local runs); see --ca-out.
    SelfSigned,
}

/// Where namespace labels come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LookupMode {
    /// The Kubernetes API (get namespaces).
    Kube,
    /// Nowhere: every namespace has no labels or annotations (no Pod Security
    /// check, no pod opt-outs).
    None,
}

/// TLS settings.
#[derive(Clone, Debug, Args)]
pub struct TlsArgs {
    /// Where the certificate comes from.
    #[arg(long, env = "PICKET_INJECTOR_TLS_MODE", value_enum, default_value_t = TlsMode::Secret)]
    pub tls_mode: TlsMode,
    /// The certificate chain (files mode).
    #[arg(
        long,
        env = "PICKET_INJECTOR_TLS_CERT_FILE",
        default_value = "/var/run/picket-injector/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,
    /// The private key (files mode).
    #[arg(
        long,
        env = "PICKET_INJECTOR_TLS_KEY_FILE",
        default_value = "/var/run/picket-injector/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,
    /// How often the files are checked for changes (files mode).
    #[arg(long, env = "PICKET_INJECTOR_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = picket_common::duration::parse)]
    pub tls_reload_interval: Duration,
    /// Write the CA certificate here (self-signed and secret modes).
    #[arg(long, env = "PICKET_INJECTOR_CA_OUT")]
    pub ca_out: Option<PathBuf>,
    /// The Secret holding the shared certificate (secret mode).
    #[arg(
        long,
        env = "PICKET_INJECTOR_TLS_SECRET",
        default_value = "picket-injector-tls"
    )]
    pub tls_secret: String,
    /// The Secret holding the mesh's CA for picket-control (secret mode):
    /// created at start if absent, as the shared certificate is (empty: not
    /// made; the control plane's CA then comes from elsewhere, cert-manager say).
    #[arg(
        long,
        env = "PICKET_INJECTOR_MESH_CA_SECRET",
        default_value = "picket-mesh-ca"
    )]
    pub mesh_ca_secret: String,
    /// The injector's namespace (its Secret and Service live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "picket-system")]
    pub namespace: String,
    /// The injector's Service (the certificate's DNS names).
    #[arg(
        long,
        env = "PICKET_INJECTOR_SERVICE",
        default_value = "picket-injector"
    )]
    pub service: String,
    /// Our MutatingWebhookConfiguration, whose caBundle is kept current (secret mode).
    #[arg(
        long,
        env = "PICKET_INJECTOR_WEBHOOK_CONFIG",
        default_value = "picket-injector"
    )]
    pub webhook_config: String,
    /// How often the Secret and caBundle are re-checked (secret mode).
    #[arg(long, env = "PICKET_INJECTOR_TLS_RESYNC", default_value = "60s", value_parser = picket_common::duration::parse)]
    pub tls_resync: Duration,
    /// More names or IP addresses for the certificate, comma-separated.
    #[arg(long, env = "PICKET_INJECTOR_EXTRA_SANS", value_delimiter = ',')]
    pub extra_sans: Vec<String>,
}

/// What to inject.
#[derive(Clone, Debug, Args)]
pub struct InjectArgs {
    /// The image of the init container and the proxy.
    #[arg(long, env = "PICKET_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// imagePullPolicy of both containers.
    #[arg(
        long,
        env = "PICKET_INJECTOR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,
    /// native: an init container with restartPolicy Always (Kubernetes 1.29+); container: the first regular container.
    #[arg(long, env = "PICKET_INJECTOR_SIDECAR_MODE", value_enum, default_value_t = SidecarMode::Native)]
    pub sidecar_mode: SidecarMode,
    /// The proxy's UID and GID.
    #[arg(long, env = "PICKET_INJECTOR_PROXY_UID", default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: i64,
    /// The proxy's inbound port.
    #[arg(long, env = "PICKET_INJECTOR_PROXY_INBOUND_PORT", default_value_t = DEFAULT_INBOUND_PORT)]
    pub proxy_inbound_port: u16,
    /// The proxy's admin port (probes, metrics).
    #[arg(long, env = "PICKET_INJECTOR_PROXY_ADMIN_PORT", default_value_t = DEFAULT_ADMIN_PORT)]
    pub proxy_admin_port: u16,
    /// The proxy's local admin port (127.0.0.1).
    #[arg(long, env = "PICKET_INJECTOR_PROXY_LOCAL_ADMIN_PORT", default_value_t = DEFAULT_LOCAL_ADMIN_PORT)]
    pub proxy_local_admin_port: u16,
    /// The proxy's outbound port (bound on loopback; captured connections arrive there).
    #[arg(long, env = "PICKET_INJECTOR_PROXY_OUTBOUND_PORT", default_value_t = picket_common::OUTBOUND_PORT)]
    pub proxy_outbound_port: u16,
    /// Whether pods' outbound connections are captured (egress enforced at
    /// the source); a pod may opt out with `picket.io/outbound-capture: disabled`.
    #[arg(long, env = "PICKET_INJECTOR_OUTBOUND_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub outbound_capture: bool,
    /// The mTLS mode of pods whose pod and namespace annotations
    /// (`picket.io/mtls`) name none: off, permissive or strict. Not off needs
    /// --state-source control (the control plane is the mesh's CA).
    #[arg(long, env = "PICKET_INJECTOR_MTLS_DEFAULT", default_value = "off", value_parser = ["off", "permissive", "strict"])]
    pub mtls_default: String,
    /// How init intercepts inbound connections: redirect (the app sees the
    /// pod's own address as the client's) or tproxy (the app sees the
    /// client's; the proxy gets CAP_NET_RAW); a pod may choose with
    /// `picket.io/interception`.
    #[arg(long, env = "PICKET_INJECTOR_INTERCEPTION", value_enum, default_value_t = Interception::Redirect)]
    pub interception: Interception,
    /// Inbound ports that bypass the proxy in every pod, comma-separated.
    #[arg(
        long,
        env = "PICKET_INJECTOR_EXCLUDE_INBOUND_PORTS",
        value_delimiter = ','
    )]
    pub exclude_inbound_ports: Vec<u16>,
    /// The proxy's CPU request ("" for none).
    #[arg(long, env = "PICKET_INJECTOR_PROXY_CPU_REQUEST", default_value = "10m")]
    pub proxy_cpu_request: String,
    /// The proxy's memory request ("" for none).
    #[arg(
        long,
        env = "PICKET_INJECTOR_PROXY_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    pub proxy_memory_request: String,
    /// The proxy's CPU limit ("" for none).
    #[arg(long, env = "PICKET_INJECTOR_PROXY_CPU_LIMIT", default_value = "1")]
    pub proxy_cpu_limit: String,
    /// The proxy's memory limit ("" for none).
    #[arg(
        long,
        env = "PICKET_INJECTOR_PROXY_MEMORY_LIMIT",
        default_value = "256Mi"
    )]
    pub proxy_memory_limit: String,
    /// The init container's iptables backend: auto, nft or legacy.
    #[arg(long, env = "PICKET_INJECTOR_IPTABLES_BACKEND", default_value = "auto")]
    pub iptables_backend: String,
    /// The proxy's log filter (PICKET_LOG), if any.
    #[arg(long, env = "PICKET_INJECTOR_PROXY_LOG_LEVEL")]
    pub proxy_log_level: Option<String>,
    /// Namespaces never injected, comma-separated.
    #[arg(
        long,
        env = "PICKET_INJECTOR_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,picket-system"
    )]
    pub excluded_namespaces: Vec<String>,
}

/// Where injected sidecars get the cluster state from.
#[derive(Clone, Debug, Args)]
pub struct StateArgs {
    /// direct: each sidecar watches the API server (the app's service accounts need the ClusterRole picket-proxy); control: from picket-control.
    #[arg(long, env = "PICKET_INJECTOR_STATE_SOURCE", value_enum, default_value_t = StateSource::Direct)]
    pub state_source: StateSource,
    /// The control plane's host:port, for the sidecars (state source control; default: picket-control.NAMESPACE.svc:8443, NAMESPACE being --namespace).
    #[arg(long, env = "PICKET_INJECTOR_CONTROL_ADDR")]
    pub control_addr: Option<String>,
    /// The CA certificate(s) of the control plane, PEM, read at start (state source control; default in --tls-mode secret: the injector's own CA).
    #[arg(long, env = "PICKET_INJECTOR_CONTROL_CA_FILE")]
    pub control_ca_file: Option<PathBuf>,
}

/// The control plane the sidecars are pointed at, as the flags give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlTarget {
    /// `host:port`.
    pub addr: String,
    /// Where its CA comes from.
    pub ca: ControlCa,
}

/// Where the control plane's CA comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ControlCa {
    /// The PEM read from `--control-ca-file` at start.
    File(String),
    /// The CA of the injector's certificate Secret (`--tls-mode secret`), which
    /// also issues the control plane's certificate; followed when it changes.
    Injector,
}

impl std::fmt::Debug for ControlCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlCa::File(pem) => write!(f, "File({} bytes)", pem.len()),
            ControlCa::Injector => f.write_str("Injector"),
        }
    }
}

/// The control plane's default address: its Service in the injector's namespace.
pub fn default_control_addr(namespace: &str) -> String {
    format!("picket-control.{namespace}.svc:8443")
}

// === impl Cli ===

impl Cli {
    /// The control plane for `--state-source control`, `None` for direct;
    /// reads `--control-ca-file`. The error names the flag.
    pub fn control_target(&self) -> Result<Option<ControlTarget>, String> {
        let state = &self.state;
        if state.state_source == StateSource::Direct {
            if self.inject.mtls_default != "off" {
                return Err(format!(
                    "--mtls-default {} needs --state-source control: the control plane is the mesh's CA",
                    self.inject.mtls_default
                ));
            }
            return Ok(None);
        }
        let addr = match &state.control_addr {
            Some(addr) => check_host_port(addr).map(|()| addr.clone())?,
            None => default_control_addr(&self.tls.namespace),
        };
        let ca = match (&state.control_ca_file, self.tls.tls_mode) {
            (Some(path), _) => ControlCa::File(read_ca_file(path)?),
            (None, TlsMode::Secret) => ControlCa::Injector,
            (None, mode) => {
                return Err(format!(
                    "--state-source control needs the control plane's CA: give \
                     --control-ca-file (PICKET_INJECTOR_CONTROL_CA_FILE); only with \
                     --tls-mode secret is the injector's own CA used (--tls-mode is {})",
                    mode.as_str()
                ))
            }
        };
        Ok(Some(ControlTarget { addr, ca }))
    }
}

/// `host:port`, as the sidecar splits it (the host is its TLS server name).
fn check_host_port(addr: &str) -> Result<(), String> {
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
    });
    if valid {
        Ok(())
    } else {
        Err(format!("--control-addr {addr:?}: expected host:port"))
    }
}

fn read_ca_file(path: &std::path::Path) -> Result<String, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("--control-ca-file: cannot read {}: {e}", path.display()))?;
    certs::check_ca_pem(&pem).map_err(|e| format!("--control-ca-file: {}: {e}", path.display()))?;
    Ok(pem)
}

// === impl TlsMode ===

impl TlsMode {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Secret => "secret",
            TlsMode::Files => "files",
            TlsMode::SelfSigned => "self-signed",
        }
    }
}

// === impl InjectArgs ===

impl InjectArgs {
    /// Validates the settings; the error names the flag. The state source is
    /// direct (`control: None`): see [`Cli::control_target`].
    pub fn to_config(&self) -> Result<InjectConfig, String> {
        let quantity = |flag: &str, value: &str| -> Result<Option<String>, String> {
            if value.is_empty() {
                return Ok(None);
            }
            quantity::parse(value).map_err(|e| format!("--{flag}: {e}"))?;
            Ok(Some(value.to_string()))
        };
        let resources = Resources {
            cpu_request: quantity("proxy-cpu-request", &self.proxy_cpu_request)?,
            memory_request: quantity("proxy-memory-request", &self.proxy_memory_request)?,
            cpu_limit: quantity("proxy-cpu-limit", &self.proxy_cpu_limit)?,
            memory_limit: quantity("proxy-memory-limit", &self.proxy_memory_limit)?,
        };
        for (what, request, limit) in [
            ("cpu", &resources.cpu_request, &resources.cpu_limit),
            ("memory", &resources.memory_request, &resources.memory_limit),
        ] {
            if let (Some(r), Some(l)) = (request, limit) {
                if quantity::parse(r).ok() > quantity::parse(l).ok() {
                    return Err(format!(
                        "--proxy-{what}-request {r} exceeds --proxy-{what}-limit {l}"
                    ));
                }
            }
        }
        if !["auto", "nft", "legacy"].contains(&self.iptables_backend.as_str()) {
            return Err(format!(
                "--iptables-backend: {:?} is not auto, nft or legacy",
                self.iptables_backend
            ));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(format!(
                "--image-pull-policy: {:?} is not Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        if let Some(filter) = &self.proxy_log_level {
            crate::patch::check_log_filter(filter)
                .map_err(|e| format!("--proxy-log-level: {e}"))?;
        }
        let ports = [
            self.proxy_inbound_port,
            self.proxy_admin_port,
            self.proxy_local_admin_port,
            self.proxy_outbound_port,
        ];
        let distinct = ports
            .iter()
            .enumerate()
            .all(|(i, p)| !ports[..i].contains(p));
        if ports.contains(&0) || !distinct {
            return Err(format!(
                "proxy ports must be distinct and non-zero, got {ports:?}"
            ));
        }
        Ok(InjectConfig {
            proxy_image: self.proxy_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            sidecar_mode: self.sidecar_mode,
            proxy_uid: self.proxy_uid,
            inbound_port: self.proxy_inbound_port,
            admin_port: self.proxy_admin_port,
            local_admin_port: self.proxy_local_admin_port,
            outbound_port: self.proxy_outbound_port,
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            outbound_capture: self.outbound_capture,
            interception: self.interception,
            resources,
            iptables_backend: self.iptables_backend.clone(),
            proxy_log_level: self.proxy_log_level.clone(),
            excluded_namespaces: self.excluded_namespaces.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            mtls_default: match self.mtls_default.as_str() {
                "strict" => "strict",
                "permissive" => "permissive",
                _ => "off",
            },
            control: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("picket-injector").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_make_the_test_config() {
        let cli = parse(&[]);
        let mut config = cli.inject.to_config().unwrap();
        config.version = "0.1.0".into();
        assert_eq!(config, InjectConfig::for_test());
        assert_eq!(cli.tls.tls_mode, TlsMode::Secret);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let cli = parse(&["--proxy-cpu-request", "2", "--proxy-cpu-limit", "1"]);
        let err = cli.inject.to_config().unwrap_err();
        assert!(err.contains("--proxy-cpu-request"), "{err}");
        let cli = parse(&["--proxy-memory-limit", "lots"]);
        assert!(cli
            .inject
            .to_config()
            .unwrap_err()
            .contains("--proxy-memory-limit"));
        let cli = parse(&["--proxy-memory-limit", ""]);
        assert_eq!(cli.inject.to_config().unwrap().resources.memory_limit, None);
    }

    #[test]
    fn state_source_is_direct_unless_asked() {
        let cli = parse(&[]);
        assert_eq!(cli.state.state_source, StateSource::Direct);
        assert_eq!(cli.control_target(), Ok(None));
        // Control flags without control mode are ignored (a leftover variable must not stop it).
        let cli = parse(&["--control-addr", "nonsense", "--tls-mode", "files"]);
        assert_eq!(cli.control_target(), Ok(None));
    }

    #[test]
    fn state_flags_have_their_environment_variables() {
        use clap::CommandFactory;
        let command = Cli::command();
        let env = |id: &str| {
            let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_env().map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(
            env("state_source").as_deref(),
            Some("PICKET_INJECTOR_STATE_SOURCE")
        );
        assert_eq!(
            env("control_addr").as_deref(),
            Some("PICKET_INJECTOR_CONTROL_ADDR")
        );
        assert_eq!(
            env("control_ca_file").as_deref(),
            Some("PICKET_INJECTOR_CONTROL_CA_FILE")
        );
    }

    #[test]
    fn control_in_secret_mode_trusts_the_injectors_ca_at_its_namespaces_service() {
        let cli = parse(&["--state-source", "control"]);
        let target = cli.control_target().unwrap().unwrap();
        assert_eq!(target.addr, "picket-control.picket-system.svc:8443");
        assert_eq!(target.ca, ControlCa::Injector);
        let cli = parse(&["--state-source", "control", "--namespace", "picket"]);
        let target = cli.control_target().unwrap().unwrap();
        assert_eq!(target.addr, "picket-control.picket.svc:8443");
        let cli = parse(&[
            "--state-source",
            "control",
            "--control-addr",
            "[fd00::1]:9443",
        ]);
        assert_eq!(
            cli.control_target().unwrap().unwrap().addr,
            "[fd00::1]:9443"
        );
    }

    #[test]
    fn control_without_a_ca_fails_at_start_naming_the_flag() {
        for mode in ["files", "self-signed"] {
            let cli = parse(&["--state-source", "control", "--tls-mode", mode]);
            let err = cli.control_target().unwrap_err();
            assert!(
                err.contains("--control-ca-file") && err.contains("--state-source control"),
                "{mode}: {err}"
            );
        }
    }

    #[test]
    fn the_ca_file_is_read_at_start_and_must_hold_only_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = certs::generate(&["a.example".into()], std::time::SystemTime::now()).unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &bundle.ca_cert_pem).unwrap();
        let ca = ca.to_str().unwrap();
        // The file wins over the injector's own CA, in every TLS mode.
        for mode in ["files", "secret"] {
            let args = [
                "--state-source",
                "control",
                "--tls-mode",
                mode,
                "--control-ca-file",
                ca,
            ];
            let target = parse(&args).control_target().unwrap().unwrap();
            assert_eq!(
                target.ca,
                ControlCa::File(bundle.ca_cert_pem.clone()),
                "{mode}"
            );
        }

        let key = dir.path().join("tls.key");
        std::fs::write(&key, format!("{}{}", bundle.ca_cert_pem, bundle.key_pem)).unwrap();
        let missing = dir.path().join("missing.crt");
        for (path, problem) in [(&key, "PRIVATE KEY"), (&missing, "cannot read")] {
            let path = path.to_str().unwrap();
            let args = ["--state-source", "control", "--control-ca-file", path];
            let err = parse(&args).control_target().unwrap_err();
            assert!(
                err.contains("--control-ca-file") && err.contains(problem) && err.contains(path),
                "{err}"
            );
        }
    }

    #[test]
    fn a_control_addr_without_a_port_is_refused_naming_the_flag() {
        for bad in [
            "picket-control",
            ":8443",
            "picket-control:http",
            "picket-control:0",
        ] {
            let cli = parse(&["--state-source", "control", "--control-addr", bad]);
            let err = cli.control_target().unwrap_err();
            assert!(
                err.contains("--control-addr") && err.contains("host:port"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn log_filter_flag_is_checked_as_the_annotation_is() {
        for bad in ["bogus-level", "info,,=x["] {
            let cli = parse(&["--proxy-log-level", bad]);
            let err = cli.inject.to_config().unwrap_err();
            assert!(err.contains("--proxy-log-level"), "{bad}: {err}");
        }
        let cli = parse(&["--proxy-log-level", "picket_proxy=debug,info"]);
        let config = cli.inject.to_config().unwrap();
        assert_eq!(
            config.proxy_log_level.as_deref(),
            Some("picket_proxy=debug,info")
        );
    }
}
