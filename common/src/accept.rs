//! The one accept loop every listener runs, with backoff when the process
//! is out of descriptors or memory.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections forever and hands each to `handle`; every listener
/// of the proxy, the control plane and the injector runs this one loop
/// (through [`accept_each`]).
pub async fn accept_loop(listener: &TcpListener, handle: impl FnMut(TcpStream, SocketAddr)) {
    accept_each(|| listener.accept(), handle).await
}

/// The loop over any way of accepting (the proxy's data listeners accept
/// sockets the runtime has not registered yet). When accepting fails for
/// lack of resources (out of file descriptors or memory) it backs off,
/// 10 ms doubling to 1 s, instead of spinning: the pending connections wait
/// in the backlog until descriptors free up.
pub async fn accept_each<S, A>(mut accept: impl FnMut() -> A, mut handle: impl FnMut(S, SocketAddr))
where
    A: Future<Output = io::Result<(S, SocketAddr)>>,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match accept().await {
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
