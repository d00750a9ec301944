//! The listeners and their accept loops.
//!
//! The inbound listeners bind the wildcard address: REDIRECT in PREROUTING
//! rewrites the destination to the incoming interface's address, never
//! loopback; TPROXY hands a transparent listener the connection as it is.
//! The outbound listeners bind loopback only: REDIRECT in OUTPUT rewrites
//! the destination to it, and nothing from outside the pod can reach them.
//!
//! The data listeners ([`DataListener`]) accept sockets the runtime has not
//! registered: a connection is registered with epoll only once it is
//! admitted, so a denied one (a scan, a flood) costs no `epoll_ctl` to add
//! and none to remove.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::net::SocketFlags;
use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;

use super::conn::Proxy;
use super::orig_dst::reset;
use super::{ClientAddr, Interception};
use picket_common::accept::accept_each;
pub use picket_common::accept::accept_loop;

/// A listener of the data plane: readiness from the runtime, accepted
/// sockets left unregistered (see the module's documentation).
pub type DataListener = AsyncFd<std::net::TcpListener>;

/// Binds a TCP listener with the options a proxy wants (the admin port's).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(socket(addr, Interception::Redirect)?)
}

/// Binds a data listener, transparent when connections arrive by TPROXY.
fn bind_data(addr: SocketAddr, interception: Interception) -> io::Result<DataListener> {
    // Deprecated as unsound for an inner type that may close or swap its fd
    // while registered (tokio#8587); a std listener owns its fd for life.
    #[allow(deprecated)]
    AsyncFd::with_interest(socket(addr, interception)?, Interest::READABLE)
}

fn socket(addr: SocketAddr, interception: Interception) -> io::Result<std::net::TcpListener> {
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
    Ok(socket.into())
}

/// Binds the inbound port on 0.0.0.0 and, when the kernel has IPv6, on [::]
/// (transparent in tproxy mode: TPROXY hands them connections addressed to the pod).
pub fn bind_inbound(port: u16, interception: Interception) -> io::Result<Vec<DataListener>> {
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut listeners = vec![bind_data(v4, interception)?];
    match bind_data(
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        interception,
    ) {
        Ok(l) => listeners.push(l),
        Err(error) => tracing::debug!(%error, "No IPv6 inbound listener"),
    }
    Ok(listeners)
}

/// Binds the outbound port on 127.0.0.1 and, when the kernel has IPv6, on [::1].
pub fn bind_outbound(port: u16) -> io::Result<Vec<DataListener>> {
    let redirect = Interception::Redirect;
    let mut listeners = vec![bind_data(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        redirect,
    )?];
    match bind_data(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), redirect) {
        Ok(l) => listeners.push(l),
        Err(error) => tracing::debug!(%error, "No IPv6 outbound listener"),
    }
    Ok(listeners)
}

/// Accepts connections forever, one task each; over the limit, resets.
pub async fn serve(listener: DataListener, inbound: Arc<Proxy>) {
    accept_each(|| accept_unregistered(&listener), |stream, peer| {
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

/// One accepted connection, non-blocking and close-on-exec from accept4
/// itself, not registered with the runtime.
async fn accept_unregistered(
    listener: &DataListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|l| {
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            Ok(rustix::net::acceptfrom_with(l.get_ref(), flags)?)
        });
        let Ok(accepted) = accepted else {
            continue; // Would block: readiness is cleared, wait for the next.
        };
        let (fd, peer) = accepted?;
        let peer = peer
            .and_then(|p| SocketAddr::try_from(p).ok())
            .ok_or_else(|| io::Error::other("accepted a connection with no IP peer address"))?;
        return Ok((std::net::TcpStream::from(fd), peer));
    }
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
