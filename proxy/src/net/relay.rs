//! Bytes both ways between the client and the app, until both sides close.
//!
//! Adaptive: each direction starts with plain reads and writes through a
//! small buffer on the stack (a 64-byte request costs one recv and one send,
//! less than two splices and a pipe), and switches to zero-copy splice
//! (socket -> pipe -> socket, a pipe taken from the pool only while data is
//! in flight) once a read fills that buffer, the sign of a bulk transfer,
//! and back to small reads once a splice moves less than that buffer holds
//! (the bulk is over). So an idle connection holds nothing but its sockets. Where splice is
//! unavailable (or no pipe can be had) a direction falls back to a plain copy
//! through a buffer that exists only while that copy runs.
//!
//! A half-close propagates: when one side sends FIN, the other side's write
//! half is shut down and the opposite direction keeps flowing; the second
//! direction to end leaves its FIN to the close that follows (one system
//! call fewer per connection). An error on
//! either side ends the relay with an error; the caller resets both sockets.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use rustix::net::{RecvFlags, SendFlags};
use rustix::pipe::{splice, SpliceFlags};
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

const SPLICE_FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// Relays until both directions have seen EOF, an error, or the idle timeout.
/// The caller closes both sockets as soon as it returns: the FIN of the
/// direction that ended last is sent by that close.
///
/// One hand-written future for both directions, polled through each
/// socket's own readiness (`poll_read_ready`, `poll_write_ready`): no
/// per-await waiter nodes, nothing polled that was not woken, and a few
/// dozen bytes of state per idle connection.
pub fn relay<'a>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    idle_timeout: Option<Duration>,
    counters: &'a RelayCounters,
) -> Relay<'a> {
    Relay {
        client,
        server,
        up: Half::new(&counters.client_to_server),
        down: Half::new(&counters.server_to_client),
        idle: idle_timeout.map(|limit| Box::new(Idle::new(limit))),
    }
}

/// The relay of one connection (see [`relay`]).
#[derive(Debug)]
pub struct Relay<'a> {
    client: &'a TcpStream,
    server: &'a TcpStream,
    /// Client to app.
    up: Half<'a>,
    /// App to client.
    down: Half<'a>,
    /// The idle timeout, when one is set (boxed: most relays have none).
    idle: Option<Box<Idle>>,
}

impl Future for Relay<'_> {
    type Output = Result<Transferred, RelayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (client, server) = (this.client, this.server);
        let io = |direction| move |source| RelayError::Io { direction, source };
        // Each half learns whether the other has already ended: the first
        // to end passes its half-close on, the second leaves it to the close.
        let up = this
            .up
            .poll(cx, client, server, this.down.reached_eof())
            .map_err(io("client->server"))?;
        let down = this
            .down
            .poll(cx, server, client, this.up.reached_eof())
            .map_err(io("server->client"))?;
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(Transferred {
                client_to_server: this.up.total,
                server_to_client: this.down.total,
            }));
        }
        if let Some(idle) = &mut this.idle {
            if this.up.moved || this.down.moved {
                idle.last = Instant::now();
                this.up.moved = false;
                this.down.moved = false;
            }
            if idle.poll_expired(cx).is_ready() {
                return Poll::Ready(Err(RelayError::Idle(idle.limit)));
            }
        }
        Poll::Pending
    }
}

/// One direction: its state and what it moved.
#[derive(Debug)]
struct Half<'a> {
    state: State,
    total: u64,
    /// Whether bytes moved since the idle timer last looked.
    moved: bool,
    bytes: &'a prometheus::IntCounter,
}

#[derive(Debug)]
enum State {
    /// recv/send through a buffer on the stack; `pending` holds what a
    /// short write left, on the heap, for as long as it waits for room.
    Small { pending: Option<Pending> },
    /// Zero-copy: socket -> pipe -> socket, the pipe taken from the pool
    /// while data is in flight (`in_pipe` bytes not yet written out). A
    /// splice that moved less than the small buffer holds means the bulk
    /// is over: once the pipe is empty the direction goes back to small
    /// reads (`then_small`), so a kept-alive connection that carried one
    /// large response pays recv/send again for its small messages.
    Splice {
        pipe: Option<Pipe>,
        in_pipe: usize,
        then_small: bool,
    },
    /// The fallback where splice cannot be used: a buffer that lives only
    /// as long as this copy.
    Copy {
        buffer: Box<[u8]>,
        start: usize,
        end: usize,
    },
    /// EOF read; the half-close is yet to be passed on.
    Eof,
    /// Ended.
    Done,
}

/// Bytes read but not yet written, and where to go once they are.
#[derive(Debug)]
struct Pending {
    bytes: Box<[u8]>,
    sent: usize,
    /// The read that left them filled the small buffer: splice next.
    then_splice: bool,
}

impl<'a> Half<'a> {
    fn new(bytes: &'a prometheus::IntCounter) -> Self {
        Self {
            state: State::Small { pending: None },
            total: 0,
            moved: false,
            bytes,
        }
    }

    fn reached_eof(&self) -> bool {
        matches!(self.state, State::Eof | State::Done)
    }

    fn count(&mut self, n: usize) {
        self.total += n as u64;
        self.bytes.inc_by(n as u64);
        self.moved = true;
    }

    /// Moves what `from` has to `to` until one would block (Pending) or
    /// the direction ends (Ready).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        other_ended: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Small { pending: Some(p) } => {
                    while p.sent < p.bytes.len() {
                        p.sent += ready!(poll_send(cx, to, &p.bytes[p.sent..]))?;
                    }
                    self.state = if p.then_splice {
                        State::splice()
                    } else {
                        State::Small { pending: None }
                    };
                }
                State::Small { pending: None } => {
                    ready!(from.poll_read_ready(cx))?;
                    // Uninitialised: recv fills it, and only what it filled is read.
                    let mut buffer = [MaybeUninit::<u8>::uninit(); SMALL_READ];
                    let buffer = &mut buffer;
                    let read = from.try_io(Interest::READABLE, move || {
                        rustix::net::recv(from, buffer, RecvFlags::empty())
                            .map(|((data, _), _)| &*data)
                            .map_err(io::Error::from)
                    });
                    let data = match read {
                        Ok([]) => {
                            self.state = State::Eof;
                            continue;
                        }
                        Ok(data) => data,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let n = data.len();
                    let full = n == SMALL_READ;
                    if !full {
                        drained(from);
                    }
                    let sent = match try_send(to, data) {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    self.count(n);
                    if sent < n {
                        self.state = State::Small {
                            pending: Some(Pending {
                                bytes: data[sent..].into(),
                                sent: 0,
                                then_splice: full,
                            }),
                        };
                    } else if full {
                        self.state = State::splice();
                    }
                }
                State::Splice {
                    pipe,
                    in_pipe,
                    then_small,
                } => {
                    if let Some(p) = pipe.as_ref().filter(|_| *in_pipe > 0) {
                        let written = ready!(poll_splice_out(cx, p, *in_pipe, to))?;
                        *in_pipe -= written;
                        continue;
                    }
                    if *then_small {
                        give_back(pipe);
                        self.state = State::Small { pending: None };
                        continue;
                    }
                    if pipe.is_none() {
                        ready!(from.poll_read_ready(cx))?;
                        match PIPES.take() {
                            Ok(p) => *pipe = Some(p),
                            // No pipe to be had (fd or pipe budget exhausted): copy instead.
                            Err(_) => {
                                self.state = State::copy();
                                continue;
                            }
                        }
                    }
                    let Some(p) = pipe.as_ref() else { continue };
                    let filled = from.try_io(Interest::READABLE, || {
                        splice(from, None, &p.write, None, p.capacity, SPLICE_FLAGS)
                            .map_err(io::Error::from)
                    });
                    match filled {
                        Ok(0) => {
                            give_back(pipe);
                            self.state = State::Eof;
                        }
                        Ok(n) => {
                            *in_pipe = n;
                            *then_small = n < SMALL_READ;
                            self.count(n);
                        }
                        // Dry: the pipe goes back until the socket has data again.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => give_back(pipe),
                        Err(e) if unsupported(&e) => {
                            give_back(pipe);
                            self.state = State::copy();
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                State::Copy { buffer, start, end } => {
                    if start < end {
                        *start += ready!(poll_send(cx, to, &buffer[*start..*end]))?;
                        continue;
                    }
                    ready!(from.poll_read_ready(cx))?;
                    match from.try_read(buffer) {
                        Ok(0) => self.state = State::Eof,
                        Ok(n) => {
                            (*start, *end) = (0, n);
                            self.count(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                State::Eof => {
                    self.state = State::Done;
                    // The second direction to end needs no shutdown: the
                    // relay ends with it, and closing `to` (whose peer has
                    // sent everything) sends the FIN.
                    if other_ended {
                        return Poll::Ready(Ok(()));
                    }
                    // Propagate the half-close: the other side reads EOF,
                    // and may still reply.
                    return Poll::Ready(
                        match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
                            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                            _ => Ok(()),
                        },
                    );
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl State {
    fn splice() -> Self {
        State::Splice {
            pipe: None,
            in_pipe: 0,
            then_small: false,
        }
    }

    fn copy() -> Self {
        State::Copy {
            buffer: vec![0u8; COPY_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

fn give_back(pipe: &mut Option<Pipe>) {
    if let Some(p) = pipe.take() {
        PIPES.give_back(p);
    }
}

/// One send, without waiting (MSG_NOSIGNAL: a closed peer is an error, not a signal).
fn try_send(to: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        rustix::net::send(to, bytes, SendFlags::NOSIGNAL).map_err(io::Error::from)
    })
}

/// Sends some of `bytes` once `to` has room.
fn poll_send(cx: &mut Context<'_>, to: &TcpStream, bytes: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(to.poll_write_ready(cx))?;
        match try_send(to, bytes) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(w) => return Poll::Ready(Ok(w)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Moves up to `n` bytes out of the pipe into `to` once it has room.
fn poll_splice_out(
    cx: &mut Context<'_>,
    pipe: &Pipe,
    n: usize,
    to: &TcpStream,
) -> Poll<io::Result<usize>> {
    loop {
        let written = to.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, to, None, n, SPLICE_FLAGS).map_err(io::Error::from)
        });
        match written {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(w) => return Poll::Ready(Ok(w)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(to.poll_write_ready(cx))?,
            Err(e) => return Poll::Ready(Err(e)),
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

fn unsupported(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP)
    )
}

/// The idle timeout: a timer re-armed from the last activity when it fires.
#[derive(Debug)]
struct Idle {
    limit: Duration,
    last: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(limit: Duration) -> Self {
        let last = Instant::now();
        Self {
            limit,
            last,
            sleep: Box::pin(tokio::time::sleep_until((last + limit).into())),
        }
    }

    /// Ready once nothing has moved for the limit.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let deadline = self.last + self.limit;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline.into());
        }
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

    type Relayed = (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<Result<Transferred, RelayError>>,
    );

    /// client <-> (relay) <-> app, the relay running on its own task.
    async fn relayed() -> Relayed {
        relayed_with(None).await
    }

    /// The same, with 16 KiB socket buffers between the relay and the app:
    /// the relay's writes soon wait for room.
    async fn relayed_into_small_buffers() -> Relayed {
        relayed_with(Some(16 * 1024)).await
    }

    async fn relayed_with(app_buffers: Option<usize>) -> Relayed {
        let (client, proxy_client) = pair().await;
        let (proxy_server, app) = pair().await;
        if let Some(size) = app_buffers {
            socket2::SockRef::from(&proxy_server)
                .set_send_buffer_size(size)
                .unwrap();
            socket2::SockRef::from(&app)
                .set_recv_buffer_size(size)
                .unwrap();
        }
        let relay =
            tokio::spawn(
                async move { relay(&proxy_client, &proxy_server, None, &counters()).await },
            );
        (client, app, relay)
    }

    /// The app answers after the client's EOF, then closes its side too;
    /// the client reads the whole answer.
    async fn reply_after_the_half_close(app: &mut TcpStream, client: &mut TcpStream, reply: &[u8]) {
        app.write_all(reply).await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, reply);
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
        reply_after_the_half_close(&mut app, &mut client, b"pong").await;
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
    async fn a_slow_reader_gets_every_byte_in_order_whatever_the_write_sizes() {
        // The app reads a kilobyte at a time through small socket buffers:
        // the relay's writes wait for room, on the small path and on splice.
        let (client, mut app, relay) = relayed_into_small_buffers().await;
        let sizes = [1usize, 100, 3000, 4096, 5000, 70_000];
        let mut data = Vec::new();
        for (i, size) in sizes.iter().cycle().take(12).enumerate() {
            data.extend((0..*size).map(|j| ((i * 7 + j) % 251) as u8));
        }
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            let mut client = client;
            let mut at = 0;
            for size in sizes.iter().cycle() {
                let end = (at + size).min(data.len());
                client.write_all(&data[at..end]).await.unwrap();
                at = end;
                if at == data.len() {
                    break;
                }
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::with_capacity(expected.len());
        let mut chunk = [0u8; 1024];
        loop {
            let n = app.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            tokio::task::yield_now().await;
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrive in order and intact");
        let _client = writer.await.unwrap();
        drop(app);
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.client_to_server, expected.len() as u64);
    }

    #[tokio::test]
    async fn a_direction_goes_back_to_small_reads_once_its_bulk_is_over() {
        // A large response, then small exchanges on the same connection
        // (an HTTP keep-alive client), the relay driven in this task so
        // that its state can be read afterwards.
        let (mut client, proxy_client) = pair().await;
        let (proxy_server, mut app) = pair().await;
        let c = counters();
        let mut relay = relay(&proxy_client, &proxy_server, None, &c);
        let exchanges = async {
            let large = vec![7u8; 1 << 20];
            app.write_all(&large).await.unwrap();
            let mut got = vec![0u8; large.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == large);
            for _ in 0..10 {
                let mut message = [0u8; 4];
                client.write_all(b"ping").await.unwrap();
                app.read_exact(&mut message).await.unwrap();
                app.write_all(b"pong").await.unwrap();
                client.read_exact(&mut message).await.unwrap();
                assert_eq!(&message, b"pong");
            }
        };
        tokio::select! {
            result = &mut relay => panic!("the relay ended early: {result:?}"),
            () = exchanges => {}
        }
        assert!(
            matches!(relay.down.state, State::Small { pending: None }),
            "after the bulk, small messages go by recv/send again: {:?}",
            relay.down.state
        );
        assert_eq!(relay.down.total, (1 << 20) + 40);
        assert_eq!(relay.up.total, 40);
    }

    #[tokio::test]
    async fn small_reads_that_find_the_app_full_wait_for_room_and_arrive_intact() {
        // Messages below the small buffer, each read on its own (the client
        // yields to the relay between them), while the app reads nothing
        // and its buffers are small: the small path's sends come up short
        // and the rest waits on the heap for room.
        let (mut client, mut app, relay) = relayed_into_small_buffers().await;
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let message: Vec<u8> = (0..1000u32).map(|j| ((i + j) % 253) as u8).collect();
            client.write_all(&message).await.unwrap();
            expected.extend(message);
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrive in order and intact");
        drop(app);
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(moved.client_to_server, 200_000);
    }

    #[tokio::test]
    async fn the_copy_fallback_moves_bytes_both_ways_and_passes_the_half_close_on() {
        // Where splice cannot be used (or no pipe can be had), both
        // directions copy through a buffer.
        let (client, proxy_client) = pair().await;
        let (proxy_server, mut app) = pair().await;
        let c = counters();
        let relay = tokio::spawn(async move {
            let mut relay = relay(&proxy_client, &proxy_server, None, &c);
            relay.up.state = State::copy();
            relay.down.state = State::copy();
            relay.await
        });
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let mut client = send_intact(client, &mut app, data).await;
        reply_after_the_half_close(&mut app, &mut client, b"copied back").await;
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                client_to_server: 300_000,
                server_to_client: 11
            }
        );
    }

    #[tokio::test]
    async fn the_relay_future_holds_no_buffer() {
        let (_client, proxy_client) = pair().await;
        let (proxy_server, _app) = pair().await;
        let c = counters();
        let future = relay(&proxy_client, &proxy_server, None, &c);
        let size = std::mem::size_of_val(&future);
        // 152 bytes measured (debug): two directions' states and four references.
        assert!(
            size <= 256,
            "the relay future is {size} bytes: a buffer or a timer is held inline"
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
