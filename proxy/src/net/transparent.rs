//! Transparent sockets, for tproxy interception: a listener that accepts
//! what TPROXY hands it (connections addressed to the pod, not to the
//! proxy), and the connection to the app from the client's own address,
//! marked so that init's rules route the app's replies back to the proxy
//! rather than out of the pod. Both need CAP_NET_RAW (`privileges`).
//!
//! The connection to the app takes the client's address with a port the
//! kernel picks, never the client's own port: the app's socket would then
//! have the same addresses and ports as the proxy's accepted one, and the
//! kernel would deliver the proxy's own SYN to that accepted socket.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use super::{ClientAddr, OrigDstAddr};

/// Lets a socket accept, or bind, addresses that are not this host's.
pub fn set_transparent(socket: &Socket, family_of: SocketAddr) -> io::Result<()> {
    if family_of.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    }
}

/// Connects to the app at `dst` from the client's address, with `mark`.
pub async fn connect_as_client(
    client: ClientAddr,
    dst: OrigDstAddr,
    mark: u32,
) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(dst.0),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    set_transparent(&socket, dst.0)?;
    socket.set_mark(mark)?;
    socket.bind(&SocketAddr::new(client.0.ip(), 0).into())?;
    TcpSocket::from_std_stream(socket.into())
        .connect(dst.0)
        .await
}
