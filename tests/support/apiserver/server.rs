//! The listener: accepts TCP connections, completes TLS, and serves HTTP/1.1 with hyper.
//!
//! Async, on the server's own runtime thread (started by [`super::ApiServerBuilder::start`]).
//! Also where connection faults act: refused connections are reset at accept, and
//! [`super::ApiServer::drop_connections`] closes every open connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::{http, Shared};

/// A client that does not finish its TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` changes.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.faults.refuse.load(Ordering::SeqCst) {
            // Reset at once: the client sees ECONNRESET, as near to "refused" as an
            // accepted socket gets.
            let _ = tcp.set_zero_linger();
            drop(tcp);
            tracing::debug!(%peer, "Connection refused by fault injection");
            continue;
        }
        let drops = shared.faults.connection_drops.subscribe();
        tokio::spawn(serve_connection(
            tcp,
            acceptor.clone(),
            shared.clone(),
            drops,
        ));
    }
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut drops: watch::Receiver<u64>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    // A request that arrives on this connection after a drop was asked for,
    // before the select below has closed it, must not be served: the
    // service's error makes hyper close the connection, as an outage would.
    let generation = *drops.borrow_and_update();
    let dropped = drops.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let is_dropped = *dropped.borrow() != generation;
        async move {
            if is_dropped {
                return Err(std::io::Error::other(
                    "connection dropped by fault injection",
                ));
            }
            http::handle(shared, req)
                .await
                .map_err(|never| match never {})
        }
    });
    let connection = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "Connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket mid-whatever.
        _ = drops.changed() => tracing::debug!("Connection dropped by fault injection"),
    }
}
