//! The environment variables between the injector (which sets them on the
//! injected containers) and the proxy (which reads them).

/// The inbound port.
pub const INBOUND_PORT: &str = "PICKET_INBOUND_PORT";
/// The outbound port.
pub const OUTBOUND_PORT: &str = "PICKET_OUTBOUND_PORT";
/// How inbound connections reach the proxy (`redirect`, `tproxy`).
pub const INTERCEPTION: &str = "PICKET_INTERCEPTION";
/// The firewall mark of the proxy's connections to its app (tproxy).
pub const TPROXY_MARK: &str = "PICKET_TPROXY_MARK";
/// Whether init captures the pod's outbound connections (`on`, `off`).
pub const OUTBOUND_CAPTURE: &str = "PICKET_OUTBOUND_CAPTURE";
/// Outbound destination ports that bypass the proxy.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "PICKET_EXCLUDE_OUTBOUND_PORTS";
/// Outbound destination networks that bypass the proxy.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "PICKET_EXCLUDE_OUTBOUND_CIDRS";
/// The proxy's UID, whose connections init never captures.
pub const PROXY_UID: &str = "PICKET_PROXY_UID";
/// The admin port.
pub const ADMIN_PORT: &str = "PICKET_ADMIN_PORT";
/// The local admin port.
pub const LOCAL_ADMIN_PORT: &str = "PICKET_LOCAL_ADMIN_PORT";
/// The node file written by init and read by the sidecar.
pub const NODE_FILE: &str = "PICKET_NODE_FILE";
/// The iptables backend of init.
pub const IPTABLES_BACKEND: &str = "PICKET_IPTABLES_BACKEND";
/// Inbound ports that bypass the proxy.
pub const EXCLUDE_INBOUND_PORTS: &str = "PICKET_EXCLUDE_INBOUND_PORTS";
/// Where the sidecar's cluster state comes from.
pub const SOURCE: &str = "PICKET_SOURCE";
/// The log filter of every Picket binary (falls back to `RUST_LOG`).
pub const LOG: &str = "PICKET_LOG";
/// The log format of the sidecar.
pub const LOG_FORMAT: &str = "PICKET_LOG_FORMAT";
/// The pod's name (downward API).
pub const POD_NAME: &str = "POD_NAME";
/// The pod's namespace (downward API).
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// The pod's IP (downward API `status.podIP`).
pub const POD_IP: &str = "POD_IP";
/// The node's address (downward API `status.hostIP`).
pub const HOST_IP: &str = "HOST_IP";
/// The node's addresses (downward API `status.hostIPs`).
pub const HOST_IPS: &str = "HOST_IPS";
/// The pod's IPs (downward API `status.podIPs`, comma-separated).
pub const POD_IPS: &str = "POD_IPS";
/// The pod's mTLS mode (`off`, `permissive`, `strict`).
pub const MTLS: &str = "PICKET_MTLS";
/// Inbound ports of server-first protocols, where mTLS is not detected.
pub const SKIP_DETECT_PORTS: &str = "PICKET_SKIP_DETECT_PORTS";
