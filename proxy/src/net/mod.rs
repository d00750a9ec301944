//! The data plane: accept redirected connections, decide, relay or reset, and
//! tear down live connections that a new state forbids.
//!
//! Address newtypes keep the client's address and the original destination
//! from being swapped.

pub mod conn;
pub mod listener;
pub mod orig_dst;
pub mod pipes;
pub mod relay;

use std::fmt;
use std::net::SocketAddr;

/// The peer that opened the connection, as seen by the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// Where the client meant to connect, before REDIRECT rewrote it.
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
