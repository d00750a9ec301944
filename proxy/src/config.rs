//! Command-line and environment configuration of `picket-proxy`.
//!
//! Every flag has a `PICKET_*` environment variable (the injector sets them);
//! the pod's identity comes from the downward API variables.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use picket_common::duration::parse as parse_duration;
use picket_common::{
    env, ADMIN_PORT, INBOUND_PORT, LOCAL_ADMIN_PORT, NODE_FILE, OUTBOUND_PORT, PROXY_UID,
    TPROXY_MARK, TPROXY_TABLE,
};

use crate::net::Interception;

/// `picket-proxy`: the Picket sidecar.
#[derive(Debug, Parser)]
#[command(name = "picket-proxy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar proxy.
    Run(Box<RunArgs>),
    /// Write the pod's iptables rules, record the node's addresses, and exit (the init container).
    Init(InitArgs),
}

/// Ports shared by `run` and `init`.
#[derive(Clone, Debug, Args)]
pub struct Ports {
    /// The port redirected connections arrive on.
    #[arg(long, env = env::INBOUND_PORT, default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,
    /// The port captured outbound connections arrive on (bound on loopback).
    #[arg(long, env = env::OUTBOUND_PORT, default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// The admin port (/live, /ready), bound on the pod IP; never redirected.
    #[arg(long, env = env::ADMIN_PORT, default_value_t = ADMIN_PORT)]
    pub admin_port: u16,
    /// The local admin port (/connections), bound on 127.0.0.1 only.
    #[arg(long, env = env::LOCAL_ADMIN_PORT, default_value_t = LOCAL_ADMIN_PORT)]
    pub local_admin_port: u16,
}

// === impl Ports ===

impl Ports {
    /// Every port the proxy listens on: never dialled, reserved in the pod.
    pub fn own(&self) -> [u16; 4] {
        [
            self.inbound_port,
            self.outbound_port,
            self.admin_port,
            self.local_admin_port,
        ]
    }
}

/// How inbound connections reach the proxy: `run` and `init` must agree.
#[derive(Clone, Debug, Args)]
pub struct InterceptionArgs {
    /// How inbound connections reach the proxy: `redirect` (nat REDIRECT;
    /// the app sees the pod's own address as every client's) or `tproxy`
    /// (mangle TPROXY; the app sees each client's own address; the sidecar
    /// needs CAP_NET_RAW).
    #[arg(long, env = env::INTERCEPTION, value_enum, default_value_t = InterceptionArg::Redirect)]
    pub interception: InterceptionArg,
    /// The firewall mark of the proxy's connections to the app in tproxy
    /// mode (decimal or 0x hex, not 0): the app's replies carry it back.
    #[arg(long, env = env::TPROXY_MARK, default_value_t = TPROXY_MARK, value_parser = parse_mark)]
    pub tproxy_mark: u32,
}

// === impl InterceptionArgs ===

impl InterceptionArgs {
    /// The interception these flags ask for.
    pub fn interception(&self) -> Interception {
        match self.interception {
            InterceptionArg::Redirect => Interception::Redirect,
            InterceptionArg::Tproxy => Interception::Tproxy {
                mark: self.tproxy_mark,
            },
        }
    }
}

/// A firewall mark: decimal or `0x` hex, not zero (zero is every unmarked packet).
fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        Ok(0) => Err("0 marks nothing: choose another mark".into()),
        Ok(mark) => Ok(mark),
        Err(e) => Err(format!("{text:?} is not a mark (decimal or 0x hex): {e}")),
    }
}

/// Arguments of `picket-proxy run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ports: Ports,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub interception: InterceptionArgs,
    /// This pod's name (downward API).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: String,
    /// This pod's namespace (downward API).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: String,
    /// This pod's IP, where the admin server listens (downward API); default: all addresses.
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<IpAddr>,
    /// This pod's IPs (downward API `status.podIPs`), comma-separated: the
    /// only original destinations the proxy dials (with its Pod's IPs in the state).
    #[arg(long, env = env::POD_IPS, value_delimiter = ',')]
    pub pod_ips: Vec<IpAddr>,
    /// The node's addresses (downward API `status.hostIPs`), comma-separated.
    #[arg(long, env = env::HOST_IPS, value_delimiter = ',')]
    pub host_ips: Vec<IpAddr>,
    /// The node's address (downward API `status.hostIP`).
    #[arg(long, env = env::HOST_IP)]
    pub host_ip: Option<IpAddr>,
    /// Networks whose traffic counts as node traffic, comma-separated.
    #[arg(long, env = "PICKET_NODE_CIDRS", value_delimiter = ',')]
    pub node_cidrs: Vec<IpNet>,
    /// The file `init` wrote the pod's gateway to (missing is fine).
    #[arg(long, env = env::NODE_FILE, default_value = NODE_FILE)]
    pub node_file: PathBuf,
    /// Where the cluster state comes from (default: files when --cluster-dir is given, else kube).
    #[arg(long, env = env::SOURCE, value_enum)]
    pub source: Option<SourceArg>,
    /// A directory of manifests to read the cluster from, watched for changes (source files).
    #[arg(long, env = "PICKET_CLUSTER_DIR")]
    pub cluster_dir: Option<PathBuf>,
    /// A kubeconfig for running outside a cluster (source kube; default: in-cluster configuration).
    #[arg(long, env = "PICKET_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The control plane, `host:port` (source control).
    #[arg(
        long,
        env = "PICKET_CONTROL_ADDR",
        default_value = "picket-control.picket-system.svc:8443"
    )]
    pub control_addr: String,
    /// The name the control plane's certificate must carry (default: the host of --control-addr).
    #[arg(long, env = "PICKET_CONTROL_SERVER_NAME")]
    pub control_server_name: Option<String>,
    /// The CA certificates (PEM text) the control plane's certificate must chain to (source control).
    #[arg(long, env = "PICKET_CONTROL_CA", conflicts_with = "control_ca_file")]
    pub control_ca: Option<String>,
    /// A file holding those CA certificates (source control).
    #[arg(long, env = "PICKET_CONTROL_CA_FILE")]
    pub control_ca_file: Option<PathBuf>,
    /// The projected service-account token for audience `picket` (source control).
    #[arg(
        long,
        env = "PICKET_CONTROL_TOKEN_FILE",
        default_value = "/var/run/secrets/picket/token"
    )]
    pub control_token_file: PathBuf,
    /// The longest wait between reconnects to the control plane.
    #[arg(long, env = "PICKET_CONTROL_MAX_BACKOFF", default_value = "10s", value_parser = parse_duration)]
    pub control_max_backoff: Duration,
    /// How long a connection from an unknown pod-network IP waits for a state update before it is decided.
    #[arg(long, env = "PICKET_UNKNOWN_IP_WAIT", default_value = "500ms", value_parser = parse_duration)]
    pub unknown_ip_wait: Duration,
    /// The pod network, comma-separated (default: the /16, or /48 for IPv6, around this pod's IP).
    #[arg(long, env = "PICKET_POD_CIDRS", value_delimiter = ',')]
    pub pod_cidrs: Vec<IpNet>,
    /// The period of the full rescan of the cluster directory.
    #[arg(long, env = "PICKET_RESYNC", default_value = "30s", value_parser = parse_duration)]
    pub resync: Duration,
    /// How long to wait for the app to accept a connection.
    #[arg(long, env = "PICKET_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Close connections idle this long (default: never).
    #[arg(long, env = "PICKET_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Reset new connections beyond this many live ones.
    #[arg(long, env = "PICKET_MAX_CONNECTIONS", default_value_t = 65_536)]
    pub max_connections: usize,
    /// How long a connection waits for the first cluster state before it is reset.
    #[arg(long, env = "PICKET_STATE_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub state_wait: Duration,
    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Peer namespaces and workloads that may appear as metric labels before folding into `other`.
    #[arg(long, env = "PICKET_PEER_LABEL_LIMIT", default_value_t = crate::metrics::DEFAULT_PEER_LABEL_LIMIT)]
    pub peer_label_limit: usize,
    /// Worker threads of the proxy's runtime (1 keeps the proxy on one core).
    #[arg(long, env = "PICKET_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// After SIGTERM, keep serving this long, then exit.
    #[arg(long, env = "PICKET_DRAIN", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Whether init captures this pod's outbound connections (the same
    /// setting as init's): then the sidecar watches Services and
    /// EndpointSlices too. Off, an outbound connection that reaches the
    /// proxy anyway is reset (the state to decide it is not kept).
    #[arg(long, env = env::OUTBOUND_CAPTURE, value_enum, default_value_t = OutboundArg::Off)]
    pub outbound_capture: OutboundArg,
    /// mTLS between sidecars (the pod's `picket.io/mtls`; its annotation in
    /// the state may only make it stricter). Not off: the sidecar gets a
    /// certificate from the control plane (it needs `--source control`),
    /// is ready only once it has one, terminates mTLS inbound and
    /// originates it to meshed pods.
    #[arg(long, env = env::MTLS, value_enum, default_value_t = MtlsArg::Off)]
    pub mtls: MtlsArg,
    /// Inbound ports of server-first protocols (the app speaks first),
    /// comma-separated: no bytes are awaited to detect mTLS; a source that
    /// originates mTLS gets a handshake, any other is plaintext.
    #[arg(long, env = env::SKIP_DETECT_PORTS, value_delimiter = ',')]
    pub skip_detect_ports: Vec<u16>,
}

/// `--mtls` values (see `picket_policy::MtlsMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MtlsArg {
    /// No mTLS.
    Off,
    /// mTLS to and from meshed pods; plaintext by policy, but from pods
    /// that originate mTLS.
    Permissive,
    /// As permissive; plaintext only from the node and from outside the pod network.
    Strict,
}

impl MtlsArg {
    /// The engine's mode.
    pub fn mode(self) -> picket_policy::MtlsMode {
        match self {
            MtlsArg::Off => picket_policy::MtlsMode::Off,
            MtlsArg::Permissive => picket_policy::MtlsMode::Permissive,
            MtlsArg::Strict => picket_policy::MtlsMode::Strict,
        }
    }
}

/// Arguments of `picket-proxy init`.
#[derive(Clone, Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ports: Ports,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub interception: InterceptionArgs,
    /// The routing table tproxy interception fills for its mark (every address local).
    #[arg(long, env = "PICKET_TPROXY_TABLE", default_value_t = TPROXY_TABLE)]
    pub tproxy_table: u32,
    /// Inbound ports that bypass the proxy, comma-separated.
    #[arg(long, env = env::EXCLUDE_INBOUND_PORTS, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Whether the pod's own outbound TCP connections are captured, so that
    /// its egress policies are enforced at the source.
    #[arg(long, env = env::OUTBOUND_CAPTURE, value_enum, default_value_t = OutboundArg::Off)]
    pub outbound_capture: OutboundArg,
    /// Outbound destination ports that bypass the proxy, comma-separated.
    #[arg(long, env = env::EXCLUDE_OUTBOUND_PORTS, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks that bypass the proxy, comma-separated.
    #[arg(long, env = env::EXCLUDE_OUTBOUND_CIDRS, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// The proxy's UID: its own connections are never captured.
    #[arg(long, env = env::PROXY_UID, default_value_t = PROXY_UID)]
    pub proxy_uid: u32,
    /// The node's addresses (downward API `status.hostIPs`), comma-separated:
    /// outbound connections to them are not captured.
    #[arg(long, env = env::HOST_IPS, value_delimiter = ',')]
    pub host_ips: Vec<IpAddr>,
    /// The node's address (downward API `status.hostIP`).
    #[arg(long, env = env::HOST_IP)]
    pub host_ip: Option<IpAddr>,
    /// The iptables backend.
    #[arg(long, env = env::IPTABLES_BACKEND, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Whether to write IPv6 rules too (auto: when the kernel has IPv6).
    #[arg(long, env = "PICKET_IPV6", value_enum, default_value_t = Ipv6Arg::Auto)]
    pub ipv6: Ipv6Arg,
    /// Where to record the node's addresses for `run`.
    #[arg(long, env = env::NODE_FILE, default_value = NODE_FILE)]
    pub node_file: PathBuf,
    /// Print the rules and the gateway instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--source` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// The Kubernetes API (in-cluster configuration, or --kubeconfig).
    Kube,
    /// A watched directory of manifests (--cluster-dir).
    Files,
    /// The control plane's stream of this pod's view (picket-control).
    Control,
}

/// `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// `--backend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The backend already holding our chain, else nft if it works, else legacy.
    Auto,
    /// iptables-nft.
    Nft,
    /// iptables-legacy.
    Legacy,
}

/// `--outbound-capture` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutboundArg {
    /// Capture the pod's outbound TCP connections (also `enabled`).
    #[value(alias = "enabled")]
    On,
    /// Leave them alone (egress is then enforced only at destinations with
    /// a sidecar; also `disabled`).
    #[value(alias = "disabled")]
    Off,
}

/// `--interception` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InterceptionArg {
    /// nat REDIRECT (the default).
    Redirect,
    /// mangle TPROXY: the app sees the client's address.
    Tproxy,
}

/// `--ipv6` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Arg {
    /// When the kernel has IPv6.
    Auto,
    /// Always; fail if it cannot.
    On,
    /// Never.
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_decimal_or_hex_and_never_zero() {
        assert_eq!(parse_mark("1337"), Ok(1337));
        assert_eq!(parse_mark("0x539"), Ok(1337));
        assert!(parse_mark("0").unwrap_err().contains("marks nothing"));
        assert!(parse_mark("0x").is_err() && parse_mark("mark").is_err());
    }
}
