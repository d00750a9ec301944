//! The inbound listeners and their accept loops.
//!
//! The listeners bind the wildcard address: REDIRECT rewrites the destination
//! to the incoming interface's address, never loopback.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::conn::Inbound;
use super::orig_dst::reset;
use super::ClientAddr;

/// Binds a TCP listener with the options a proxy wants.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit it: one setsockopt per listener, not per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Binds the inbound port on 0.0.0.0 and, when the kernel has IPv6, on [::].
pub fn bind_inbound(port: u16) -> io::Result<Vec<TcpListener>> {
    let mut listeners = vec![bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?];
    match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(l) => listeners.push(l),
        Err(error) => tracing::debug!(%error, "No IPv6 inbound listener"),
    }
    Ok(listeners)
}

/// Accepts connections forever, one task each; over the limit, resets.
pub async fn serve(listener: TcpListener, inbound: Arc<Inbound>) {
    accept_loop(&listener, |stream, peer| {
        if inbound.active.load(Ordering::Relaxed) >= inbound.limits.max_connections {
            inbound
                .metrics
                .refused
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

/// Accepts connections forever and hands each to `handle`; every listener
/// of the proxy (inbound and admin) runs this one loop. When accepting fails
/// for lack of resources (out of file descriptors or memory) it backs off,
/// 10 ms doubling to 1 s, instead of spinning: the pending connections wait
/// in the backlog until descriptors free up.
pub async fn accept_loop(listener: &TcpListener, mut handle: impl FnMut(TcpStream, SocketAddr)) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                handle(stream, peer);
            }
            Err(error) => {
                let resources = matches!(
                    error.raw_os_error(),
                    Some(
                        libc_errno::EMFILE
                            | libc_errno::ENFILE
                            | libc_errno::ENOBUFS
                            | libc_errno::ENOMEM
                    )
                );
                if resources {
                    tracing::warn!(%error, ?backoff, "Accept failed for lack of resources; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    // A connection that went away before it was accepted, and the like.
                    tracing::debug!(%error, "Accept failed");
                }
            }
        }
    }
}

/// The errno values that mean "out of resources" on accept.
mod libc_errno {
    pub const EMFILE: i32 = rustix::io::Errno::MFILE.raw_os_error();
    pub const ENFILE: i32 = rustix::io::Errno::NFILE.raw_os_error();
    pub const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();
    pub const ENOMEM: i32 = rustix::io::Errno::NOMEM.raw_os_error();
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
