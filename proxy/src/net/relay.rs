//! Bytes both ways between the client and the app, until both sides close.
//!
//! Adaptive: each direction starts with plain reads and writes through a
//! small buffer on the stack (a 64-byte request costs one recv and one send,
//! less than two splices and a pipe), and switches to zero-copy splice
//! (socket -> pipe -> socket, a pipe taken from the pool only while data is
//! in flight) once a read fills that buffer, the sign of a bulk transfer. So
//! an idle connection holds nothing but its sockets. Where splice is
//! unavailable (or no pipe can be had) a direction falls back to a plain copy
//! through a buffer that exists only while that copy runs.
//!
//! A half-close propagates: when one side sends FIN, the other side's write
//! half is shut down and the opposite direction keeps flowing; the second
//! direction to end leaves its FIN to the close that follows (one system
//! call fewer per connection). An error on
//! either side ends the relay with an error; the caller resets both sockets.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::pipe::{splice, SpliceFlags};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pipes::{Pipe, PipePool};

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
        source: io::Error,
    },
    /// Nothing moved for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// Counters of relayed bytes, added to as data moves (not only at close).
#[derive(Clone, Debug)]
pub struct RelayCounters {
    /// Client to app.
    pub client_to_server: prometheus::IntCounter,
    /// App to client.
    pub server_to_client: prometheus::IntCounter,
}

/// The process's pipe pool.
pub static PIPES: PipePool = PipePool::new();

const COPY_BUFFER: usize = 64 * 1024;

/// The buffer small reads go through before a direction switches to splice:
/// a read that fills it means more is waiting, and splice then pays.
pub const SMALL_READ: usize = 4 * 1024;

/// Relays until both directions have seen EOF, an error, or the idle timeout.
/// The caller closes both sockets as soon as it returns: the FIN of the
/// direction that ended last is sent by that close.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    idle_timeout: Option<Duration>,
    counters: &RelayCounters,
) -> Result<Transferred, RelayError> {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let up_activity = Activity {
        start,
        last: &last_activity,
        bytes: &counters.client_to_server,
    };
    let down_activity = Activity {
        start,
        last: &last_activity,
        bytes: &counters.server_to_client,
    };
    let activity = &up_activity;
    let ended = AtomicBool::new(false);
    let up = half(client, server, "client->server", &up_activity, &ended);
    let down = half(server, client, "server->client", &down_activity, &ended);
    let both = async { tokio::try_join!(up, down) };
    let (client_to_server, server_to_client) = match idle_timeout {
        None => both.await?,
        Some(limit) => {
            tokio::select! {
                result = both => result?,
                () = idle(limit, activity) => return Err(RelayError::Idle(limit)),
            }
        }
    };
    Ok(Transferred {
        client_to_server,
        server_to_client,
    })
}

struct Activity<'a> {
    start: Instant,
    last: &'a AtomicU64,
    bytes: &'a prometheus::IntCounter,
}

impl Activity<'_> {
    fn moved(&self, n: usize) {
        self.bytes.inc_by(n as u64);
        self.touch();
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// One direction: small reads first, then splice when possible, else copy;
/// then propagate the EOF.
async fn half(
    from: &TcpStream,
    to: &TcpStream,
    direction: &'static str,
    activity: &Activity<'_>,
    other_ended: &AtomicBool,
) -> Result<u64, RelayError> {
    let io = |source| RelayError::Io { direction, source };
    let (small, eof) = small_half(from, to, activity).await.map_err(io)?;
    let total = if eof {
        small
    } else {
        small
            + match splice_half(from, to, activity).await {
                Ok(total) => total,
                Err(SpliceError::Unsupported(moved)) => {
                    moved + copy_half(from, to, activity).await.map_err(io)?
                }
                Err(SpliceError::Io(e)) => return Err(io(e)),
            }
    };
    // The second direction to end needs no shutdown: the relay ends with
    // it, and closing `to` (whose peer has sent everything) sends the FIN.
    if other_ended.swap(true, Ordering::AcqRel) {
        return Ok(total);
    }
    // Propagate the half-close: the other side reads EOF, and may still reply.
    match SockRef::from(to).shutdown(Shutdown::Write) {
        Ok(()) => Ok(total),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(e) => Err(io(e)),
    }
}

/// Moves small reads with recv/send through a buffer on the stack, which is
/// never held across an await (a partial write moves the rest to the heap
/// for as long as it waits). Returns the bytes moved, and whether the
/// direction ended (EOF) rather than a read filling the buffer.
async fn small_half(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity<'_>,
) -> io::Result<(u64, bool)> {
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let (n, rest) = {
            let mut buffer = [0u8; SMALL_READ];
            let n = match from.try_read(&mut buffer) {
                Ok(0) => return Ok((total, true)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            if n < SMALL_READ {
                drained(from);
            }
            let sent = match to.try_write(&buffer[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            (n, (sent < n).then(|| buffer[sent..n].to_vec()))
        };
        if let Some(rest) = rest {
            write_all(to, &rest).await?;
        }
        total += n as u64;
        activity.moved(n);
        if n == SMALL_READ {
            return Ok((total, false));
        }
    }
}

/// After a short read the socket's receive queue is empty (a TCP recv
/// copies all that is queued, up to the buffer): forget its readiness
/// without the recv that would only answer EAGAIN, one system call per
/// read saved (nginx does the same with EPOLLRDHUP). Safe with tokio: new
/// data is a new edge, readiness set after it was observed is kept, and a
/// peer's FIN (read-closed) is never cleared, so EOF is still read.
fn drained(socket: &TcpStream) {
    let _ = socket.try_io(Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// Writes all of `bytes`, waiting for room.
async fn write_all(to: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        to.writable().await?;
        match to.try_write(&bytes[sent..]) {
            Ok(w) => sent += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

enum SpliceError {
    /// Splice cannot be used here; this many bytes were already moved.
    Unsupported(u64),
    Io(io::Error),
}

async fn splice_half(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity<'_>,
) -> Result<u64, SpliceError> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut total = 0u64;
    loop {
        from.readable().await.map_err(SpliceError::Io)?;
        let Ok(pipe) = PIPES.take() else {
            // No pipe to be had (fd or pipe budget exhausted): copy instead.
            return Err(SpliceError::Unsupported(total));
        };
        // Keep the pipe while the socket has data; give it back when it runs dry.
        loop {
            let filled = from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe.write, None, pipe.capacity, flags).map_err(io::Error::from)
            });
            match filled {
                Ok(0) => {
                    PIPES.give_back(pipe);
                    return Ok(total);
                }
                Ok(n) => {
                    drain(&pipe, n, to).await.map_err(SpliceError::Io)?;
                    total += n as u64;
                    activity.moved(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    PIPES.give_back(pipe);
                    break;
                }
                Err(e) if unsupported(&e) => {
                    PIPES.give_back(pipe);
                    return Err(SpliceError::Unsupported(total));
                }
                Err(e) => return Err(SpliceError::Io(e)),
            }
        }
    }
}

/// Moves `n` bytes out of the pipe into the socket, waiting for room.
async fn drain(pipe: &Pipe, mut n: usize, to: &TcpStream) -> io::Result<()> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    while n > 0 {
        let written = to.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, to, None, n, flags).map_err(io::Error::from)
        });
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => n -= w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP)
    )
}

/// The fallback: a plain copy through a buffer that lives only as long as the copy.
async fn copy_half(from: &TcpStream, to: &TcpStream, activity: &Activity<'_>) -> io::Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        write_all(to, &buffer[..n]).await?;
        total += n as u64;
        activity.moved(n);
    }
}

async fn idle(limit: Duration, activity: &Activity<'_>) {
    loop {
        let last = Duration::from_millis(activity.last.load(Ordering::Relaxed));
        let deadline = activity.start + last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn counters() -> RelayCounters {
        RelayCounters {
            client_to_server: prometheus::IntCounter::new("a", "a").unwrap(),
            server_to_client: prometheus::IntCounter::new("b", "b").unwrap(),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// client <-> (relay) <-> app, the relay running on its own task.
    async fn relayed() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<Result<Transferred, RelayError>>,
    ) {
        let (client, proxy_client) = pair().await;
        let (proxy_server, app) = pair().await;
        let relay =
            tokio::spawn(
                async move { relay(&proxy_client, &proxy_server, None, &counters()).await },
            );
        (client, app, relay)
    }

    /// Sends `data` from the client, then EOF; asserts the app reads it all, intact.
    async fn send_intact(mut client: TcpStream, app: &mut TcpStream, data: Vec<u8>) -> TcpStream {
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "the bytes arrive in order and intact");
        writer.await.unwrap()
    }

    #[tokio::test]
    async fn half_close_propagates_and_the_reply_still_flows() {
        // client <-> (proxy_client | proxy_server) <-> app
        let (mut client, proxy_client) = pair().await;
        let (proxy_server, mut app) = pair().await;
        let c = counters();
        let c2 = c.clone();
        let relay =
            tokio::spawn(async move { relay(&proxy_client, &proxy_server, None, &c2).await });
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
        assert_eq!((c.client_to_server.get(), c.server_to_client.get()), (4, 4));
    }

    #[tokio::test]
    async fn data_and_fin_queued_together_end_the_relay_after_a_short_read() {
        // The FIN is queued behind the data before the relay reads: its
        // short read forgets the readiness, and must still see the EOF.
        let (mut client, proxy_client) = pair().await;
        let (proxy_server, mut app) = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        app.shutdown().await.unwrap();
        let relayed = tokio::time::timeout(
            Duration::from_secs(10),
            relay(&proxy_client, &proxy_server, None, &counters()),
        )
        .await
        .expect("the relay saw both EOFs")
        .unwrap();
        assert_eq!(relayed.client_to_server, 10);
        // The caller closes both sockets: the last FIN comes with the close.
        drop((proxy_client, proxy_server));
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn bulk_data_arrives_intact_and_pipes_go_back_to_the_pool() {
        let (client, mut app, relay) = relayed().await;
        let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let _client = send_intact(client, &mut app, data).await;
        drop(app);
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.client_to_server, 8_000_000);
        assert!(PIPES.idle() >= 1, "the pipe went back to the pool");
    }

    #[tokio::test]
    async fn small_exchanges_take_no_pipe_and_a_bulk_transfer_switches_to_splice() {
        let (mut client, mut app, relay) = relayed().await;
        for round in 0..100u32 {
            let msg = format!("request {round:>4}");
            client.write_all(msg.as_bytes()).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            app.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg.as_bytes());
            app.write_all(b"ok").await.unwrap();
            let mut reply = [0u8; 2];
            client.read_exact(&mut reply).await.unwrap();
        }
        // A megabyte, then a small tail: intact whatever path each part took.
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
        let _client = send_intact(client, &mut app, data).await;
        drop(app);
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.client_to_server, 100 * 12 + 1_000_003);
        assert_eq!(moved.server_to_client, 200);
    }

    #[tokio::test]
    async fn the_relay_future_holds_no_buffer() {
        let (_client, proxy_client) = pair().await;
        let (proxy_server, _app) = pair().await;
        let c = counters();
        let future = relay(&proxy_client, &proxy_server, None, &c);
        let size = std::mem::size_of_val(&future);
        assert!(
            size < SMALL_READ,
            "the relay future is {size} bytes: a read buffer is held across an await"
        );
    }

    #[tokio::test]
    async fn an_idle_relay_ends_after_the_timeout() {
        let (_client, proxy_client) = pair().await;
        let (proxy_server, _app) = pair().await;
        let start = Instant::now();
        let result = relay(
            &proxy_client,
            &proxy_server,
            Some(Duration::from_millis(200)),
            &counters(),
        )
        .await;
        assert!(matches!(result, Err(RelayError::Idle(_))));
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
