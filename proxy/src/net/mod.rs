//! The data plane: accept redirected connections, decide, relay or reset, and
//! tear down live connections that a new state forbids.
//!
//! Address newtypes keep the client's address and the original destination
//! from being swapped.

pub mod buffered;
pub mod conn;
pub mod listener;
pub mod mesh;
pub mod orig_dst;
pub mod pipes;
pub mod read_ahead;
pub mod relay;
pub mod transparent;

use std::fmt;
use std::net::SocketAddr;

/// How inbound connections reach the proxy, as init intercepted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interception {
    /// nat REDIRECT: the destination is rewritten to the proxy's port and
    /// read back from SO_ORIGINAL_DST; the app sees the pod's own address
    /// as the client.
    Redirect,
    /// mangle TPROXY: the connection keeps its addresses (the accepted
    /// socket's local address is the original destination), and the proxy
    /// connects to the app from the client's own address, its connection
    /// marked with `mark` so the app's replies are routed back to it.
    Tproxy {
        /// The firewall mark of the proxy's connections to the app.
        mark: u32,
    },
}

/// The peer that opened the connection, as seen by the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// Where the client meant to connect (before REDIRECT rewrote it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
