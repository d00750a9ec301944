//! The clients' live connections: opened with blocking connects inside a
//! client pod's namespace (sockets stay there), then driven by tokio, one
//! task per connection.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// How long one echo exchange may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// How a connection awaited for its reset ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// ECONNRESET, at this instant.
    Reset(Instant),
    /// An orderly close (EOF), at this instant: not what a denied connection should see.
    Closed(Instant),
    /// Data arrived: nothing should have been sent.
    Data,
    /// Another error.
    Error(ErrorKind),
    /// Nothing happened before the deadline.
    Timeout,
}

/// Opens `n` connections from `netns` to `to` (the kernel completes each
/// handshake: the proxy has accepted it by the time the echo check runs).
pub fn open(rt: &Runtime, netns: &str, to: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let streams = picket_lab::in_netns(netns, || -> io::Result<Vec<std::net::TcpStream>> {
        (0..n)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect()
    })?
    .with_context(|| format!("connecting from {netns} to {to}"))?;
    let _entered = rt.enter();
    streams
        .into_iter()
        .map(|s| TcpStream::from_std(s).context("registering a socket with tokio"))
        .collect()
}

/// One exchange on every connection; returns the connections and how many
/// did not echo (with the first failure).
pub fn echo_all(rt: &Runtime, streams: Vec<TcpStream>) -> (Vec<TcpStream>, usize, Option<String>) {
    rt.block_on(async {
        let mut set = JoinSet::new();
        for (i, mut s) in streams.into_iter().enumerate() {
            set.spawn(async move {
                let r = echo(&mut s, i as u64).await;
                (s, r)
            });
        }
        let mut alive = Vec::new();
        let (mut failed, mut first) = (0, None);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((s, Ok(()))) => alive.push(s),
                Ok((_, Err(e))) => {
                    failed += 1;
                    first.get_or_insert_with(|| e.to_string());
                }
                Err(e) => {
                    failed += 1;
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
        (alive, failed, first)
    })
}

async fn echo(s: &mut TcpStream, n: u64) -> io::Result<()> {
    let out = n.to_be_bytes();
    let mut back = [0u8; 8];
    tokio::time::timeout(ECHO_TIMEOUT, async {
        s.write_all(&out).await?;
        s.read_exact(&mut back).await?;
        Ok::<_, io::Error>(())
    })
    .await
    .map_err(|_| io::Error::new(ErrorKind::TimedOut, "no echo in 5 s"))??;
    if back != out {
        return Err(io::Error::other("echoed something else"));
    }
    Ok(())
}

/// Starts one task per connection awaiting its first read; the tasks are
/// polled (armed) by the time this returns.
pub fn await_endings(
    rt: &Runtime,
    streams: Vec<TcpStream>,
    deadline: Instant,
) -> Result<JoinSet<Ending>> {
    let mut set = JoinSet::new();
    let (armed_tx, mut armed_rx) = tokio::sync::mpsc::channel::<()>(streams.len().max(1));
    for mut s in streams {
        let armed = armed_tx.clone();
        set.spawn_on(
            async move {
                let mut buf = [0u8; 64];
                // Register interest before saying we are armed: wait for
                // readability once, which is pending on an idle connection.
                let read = s.read(&mut buf);
                tokio::pin!(read);
                let first = poll_once(&mut read).await;
                let _ = armed.send(()).await;
                let result = match first {
                    Some(r) => r,
                    None => match tokio::time::timeout_at(deadline.into(), read).await {
                        Ok(r) => r,
                        Err(_) => return Ending::Timeout,
                    },
                };
                match result {
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        Ending::Reset(Instant::now())
                    }
                    Err(e) => Ending::Error(e.kind()),
                    Ok(0) => Ending::Closed(Instant::now()),
                    Ok(_) => Ending::Data,
                }
            },
            rt.handle(),
        );
    }
    drop(armed_tx);
    let n = set.len();
    rt.block_on(async {
        for _ in 0..n {
            armed_rx
                .recv()
                .await
                .context("a connection task ended before it was armed")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(set)
}

/// Polls a future once: `Some(output)` if it is ready, `None` if pending
/// (its waker is then registered, so a later event is not missed).
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Waits for every task of [`await_endings`].
pub fn collect(rt: &Runtime, mut set: JoinSet<Ending>) -> Result<Vec<Ending>> {
    rt.block_on(async {
        let mut out = Vec::with_capacity(set.len());
        while let Some(joined) = set.join_next().await {
            out.push(joined.context("a connection task panicked")?);
        }
        Ok(out)
    })
}

/// Polls until a fresh connection from `netns` echoes (the proxy allows
/// it), for at most `timeout`; returns how long that took.
pub fn wait_allowed(netns: &str, to: SocketAddr, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let ok = picket_lab::in_netns(netns, || -> io::Result<()> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"probe!!!")?;
            let mut back = [0u8; 8];
            s.read_exact(&mut back)?;
            Ok(())
        })?
        .is_ok();
        if ok {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < timeout,
            "connections from {netns} still refused after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
