//! The listeners and their accept loops.
//!
//! The inbound listeners bind the wildcard address: REDIRECT in PREROUTING
//! rewrites the destination to the incoming interface's address, never
//! loopback; TPROXY hands a transparent listener the connection as it is.
//! The outbound listeners bind loopback only: REDIRECT in OUTPUT rewrites
//! the destination to it, and nothing from outside the pod can reach them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

use super::conn::Proxy;
use super::orig_dst::reset;
use super::{ClientAddr, Interception};
pub use picket_common::accept::accept_loop;

/// Binds a TCP listener with the options a proxy wants.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, Interception::Redirect)
}

/// The same, transparent when connections arrive by TPROXY.
fn bind_with(addr: SocketAddr, interception: Interception) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Interception::Tproxy { .. } = interception {
        super::transparent::set_transparent(&socket, addr)?;
    }
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit it: one setsockopt per listener, not per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Binds the inbound port on 0.0.0.0 and, when the kernel has IPv6, on [::]
/// (transparent in tproxy mode: TPROXY hands them connections addressed to the pod).
pub fn bind_inbound(port: u16, interception: Interception) -> io::Result<Vec<TcpListener>> {
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut listeners = vec![bind_with(v4, interception)?];
    match bind_with(
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        interception,
    ) {
        Ok(l) => listeners.push(l),
        Err(error) => tracing::debug!(%error, "No IPv6 inbound listener"),
    }
    Ok(listeners)
}

/// Binds the outbound port on 127.0.0.1 and, when the kernel has IPv6, on [::1].
pub fn bind_outbound(port: u16) -> io::Result<Vec<TcpListener>> {
    let mut listeners = vec![bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?];
    match bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
        Ok(l) => listeners.push(l),
        Err(error) => tracing::debug!(%error, "No IPv6 outbound listener"),
    }
    Ok(listeners)
}

/// Accepts connections forever, one task each; over the limit, resets.
pub async fn serve(listener: TcpListener, inbound: Arc<Proxy>) {
    accept_loop(&listener, |stream, peer| {
        if inbound.active.load(Ordering::Relaxed) >= inbound.limits.max_connections {
            inbound
                .metrics
                .refused_of(inbound.direction)
                .with_label_values(&["over-limit"])
                .inc();
            tracing::warn!(client.addr = %peer, limit = inbound.limits.max_connections, "Connection limit reached; reset");
            reset(stream);
            return;
        }
        tokio::spawn(inbound.clone().handle(stream, ClientAddr(peer)));
    })
    .await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "set once on the listener, not per connection"
        );
        drop(client);
    }
}
