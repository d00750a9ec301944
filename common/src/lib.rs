//! What Picket's binaries share, defined once: the proxy's ports and UID,
//! the environment variables the injector sets and the proxy reads, the
//! duration syntax of every flag, log set-up, the accept loop and jitter.
//!
//! Used by `picket-proxy`, `picket-control`, `picket-injector`, the state
//! sources and the lab. No I/O beyond installing the log subscriber and
//! accepting connections.
#![warn(missing_docs)]

pub mod accept;
pub mod duration;
pub mod env;
pub mod jitter;
pub mod logging;
pub mod port_list;

/// The port redirected inbound connections arrive on (REDIRECT target).
pub const INBOUND_PORT: u16 = 15006;
/// The port captured outbound connections arrive on (REDIRECT target in nat OUTPUT).
pub const OUTBOUND_PORT: u16 = 15001;
/// The admin port (/live, /ready, /metrics), bound on the pod IP; never redirected.
pub const ADMIN_PORT: u16 = 15020;
/// The local admin port (/connections, PUT /log-level), bound on 127.0.0.1.
pub const LOCAL_ADMIN_PORT: u16 = 15000;
/// The UID the sidecar runs as; the init rules and the injector use it too.
pub const PROXY_UID: u32 = 1337;
/// The firewall mark of the proxy's connections to its app in tproxy
/// interception: init's rules copy it to the connection, so the app's
/// replies (addressed to the client) are routed back to the proxy.
pub const TPROXY_MARK: u32 = 0x539;
/// The routing table init fills for [`TPROXY_MARK`]: every address is local.
pub const TPROXY_TABLE: u32 = 133;
/// Where `picket-proxy init` records the node's addresses for `run` (an emptyDir).
pub const NODE_FILE: &str = "/var/run/picket/node";
