//! Bytes both ways between the client and the app, until both sides close.
//!
//! A half-close propagates: when one side sends FIN, the other side's write
//! half is shut down and the opposite direction keeps flowing. An error on
//! either side ends the relay with an error; the caller resets both sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the client to the app.
    pub client_to_server: u64,
    /// From the app to the client.
    pub server_to_client: u64,
}

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to one side failed.
    #[error("{direction}: {source}")]
    Io {
        /// `client->server` or `server->client`.
        direction: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Nothing moved for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

const BUFFER: usize = 16 * 1024;

/// Relays until both directions have seen EOF, an error, or the idle timeout.
pub async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle_timeout: Option<Duration>,
) -> Result<Transferred, RelayError> {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let up = copy_half(
        &mut client_read,
        &mut server_write,
        "client->server",
        start,
        &last_activity,
    );
    let down = copy_half(
        &mut server_read,
        &mut client_write,
        "server->client",
        start,
        &last_activity,
    );
    let both = async { tokio::try_join!(up, down) };
    let (client_to_server, server_to_client) = match idle_timeout {
        None => both.await?,
        Some(limit) => {
            tokio::select! {
                result = both => result?,
                () = idle(limit, start, &last_activity) => return Err(RelayError::Idle(limit)),
            }
        }
    };
    Ok(Transferred {
        client_to_server,
        server_to_client,
    })
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    direction: &'static str,
    start: Instant,
    last_activity: &AtomicU64,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |source| RelayError::Io { direction, source };
    let mut buffer = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buffer).await.map_err(io)?;
        if n == 0 {
            // Propagate the half-close: the other side reads EOF, and may still reply.
            match writer.shutdown().await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {}
                Err(e) => return Err(io(e)),
            }
            return Ok(total);
        }
        writer.write_all(&buffer[..n]).await.map_err(io)?;
        total += n as u64;
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

async fn idle(limit: Duration, start: Instant, last_activity: &AtomicU64) {
    loop {
        let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = start + last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn half_close_propagates_and_the_reply_still_flows() {
        // client <-> (proxy_client | proxy_server) <-> app
        let (mut client, mut proxy_client) = pair().await;
        let (mut proxy_server, mut app) = pair().await;
        let relay =
            tokio::spawn(async move { relay(&mut proxy_client, &mut proxy_server, None).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "the app reads the bytes, then EOF");
        app.write_all(b"pong").await.unwrap();
        app.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pong");
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                client_to_server: 4,
                server_to_client: 4
            }
        );
    }

    #[tokio::test]
    async fn an_idle_relay_ends_after_the_timeout() {
        let (_client, mut proxy_client) = pair().await;
        let (mut proxy_server, _app) = pair().await;
        let start = Instant::now();
        let result = relay(
            &mut proxy_client,
            &mut proxy_server,
            Some(Duration::from_millis(200)),
        )
        .await;
        assert!(matches!(result, Err(RelayError::Idle(_))));
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
