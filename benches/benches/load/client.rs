//! The load generator: blocking sockets on plain threads, called on a thread
//! inside the client pod's namespace (threads it starts stay there too).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::app::{BULK, MSG};

const READ_BUFFER: usize = 256 * 1024;
const REQUEST: [u8; MSG] = [b'R'; MSG];
const BULK_REQUEST: [u8; MSG] = [BULK; MSG];
/// Bulk bytes read before the measured window starts (slow start, buffers).
const BULK_WARMUP: Duration = Duration::from_millis(100);
/// A phase gives up after this many failed connections per thread.
const MAX_ERRORS: u64 = 100;

/// What one phase measured on the client's side.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bytes read in the measured window.
    pub bytes: u64,
    /// Bytes read in all, warm-up included (what the relay moved).
    pub bytes_total: u64,
    /// Connections (short-connection phases) or exchanges (ping-pong) completed.
    pub count: u64,
    /// Failed connections or exchanges.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// The measured window.
    pub secs: f64,
    /// One latency per connection or exchange, in nanoseconds.
    pub latencies_ns: Vec<u32>,
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// `streams` connections download from the app for `length` (after a short
/// uncounted warm-up).
pub fn bulk(addr: SocketAddr, streams: usize, length: Duration) -> io::Result<Outcome> {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut stream = connect(addr)?;
        stream.write_all(&BULK_REQUEST)?;
        conns.push(stream);
    }
    let barrier = Barrier::new(streams);
    let results: Vec<io::Result<(u64, u64, Instant, Instant)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut stream| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut buffer = vec![0u8; READ_BUFFER];
                    barrier.wait();
                    let begin = Instant::now() + BULK_WARMUP;
                    let end = begin + length;
                    let (mut counted, mut total) = (0u64, 0u64);
                    loop {
                        let n = stream.read(&mut buffer)?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the bulk source closed",
                            ));
                        }
                        let now = Instant::now();
                        total += n as u64;
                        if now >= begin {
                            counted += n as u64;
                        }
                        if now >= end {
                            return Ok((counted, total, begin, now));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("panic"))))
            .collect()
    });
    let mut outcome = Outcome {
        count: streams as u64,
        ..Outcome::default()
    };
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for result in results {
        let (counted, total, begin, end) = result?;
        outcome.bytes += counted;
        outcome.bytes_total += total;
        first = Some(first.map_or(begin, |f| f.min(begin)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    if let (Some(first), Some(last)) = (first, last) {
        outcome.secs = (last - first).as_secs_f64();
    }
    Ok(outcome)
}

/// `concurrency` closed loops of: connect, 64-byte request, 64-byte reply,
/// close; for `length`. The latency runs from connect() to the reply.
pub fn short_connections(
    addr: SocketAddr,
    concurrency: usize,
    length: Duration,
) -> io::Result<Outcome> {
    let start = Instant::now();
    let deadline = start + length;
    let parts: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(move || {
                    let mut part = Outcome {
                        latencies_ns: Vec::with_capacity(1 << 16),
                        ..Outcome::default()
                    };
                    let mut reply = [0u8; MSG];
                    while Instant::now() < deadline && part.errors < MAX_ERRORS {
                        let t0 = Instant::now();
                        match one_exchange(addr, &mut reply) {
                            Ok(()) => {
                                part.latencies_ns.push(nanos(t0.elapsed()));
                                part.count += 1;
                            }
                            Err(e) => {
                                part.errors += 1;
                                part.first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                    part
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut outcome = Outcome {
        secs: start.elapsed().as_secs_f64(),
        ..Outcome::default()
    };
    for part in parts {
        outcome.count += part.count;
        outcome.errors += part.errors;
        if outcome.first_error.is_none() {
            outcome.first_error = part.first_error;
        }
        outcome.latencies_ns.extend(part.latencies_ns);
    }
    Ok(outcome)
}

fn one_exchange(addr: SocketAddr, reply: &mut [u8; MSG]) -> io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(&REQUEST)?;
    stream.read_exact(reply)
    // Dropped: the client closes first, as HTTP/1.0 clients do.
}

/// Request and reply on one open connection, back to back, for `length`.
pub fn ping_pong(addr: SocketAddr, length: Duration) -> io::Result<Outcome> {
    let mut stream = connect(addr)?;
    let mut reply = [0u8; MSG];
    // One exchange first: the connection is fully set up before timing.
    stream.write_all(&REQUEST)?;
    stream.read_exact(&mut reply)?;
    let start = Instant::now();
    let deadline = start + length;
    let mut outcome = Outcome {
        latencies_ns: Vec::with_capacity(1 << 17),
        ..Outcome::default()
    };
    loop {
        let t0 = Instant::now();
        stream.write_all(&REQUEST)?;
        stream.read_exact(&mut reply)?;
        let now = Instant::now();
        outcome.latencies_ns.push(nanos(now - t0));
        outcome.count += 1;
        if now >= deadline {
            break;
        }
    }
    outcome.secs = start.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The load generator's HTTP request: what a small API client sends.
const HTTP_REQUEST: &[u8] =
    b"GET /api/status HTTP/1.1\r\nHost: server\r\nUser-Agent: picket-load\r\nAccept: */*\r\n\r\n";

/// HTTP/1.1 keep-alive, as wrk runs it: `connections` kept-alive
/// connections driven by one thread (an event loop), each a closed loop of
/// a GET and its small response, for `length`. The latency runs from the
/// request's write to the response's last byte.
pub fn http_keep_alive(
    addr: SocketAddr,
    connections: usize,
    length: Duration,
) -> io::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            // One exchange first: every connection is set up before timing.
            http_exchange(&mut stream, &mut Vec::new()).await?;
            streams.push(stream);
        }
        let start = Instant::now();
        let deadline = start + length;
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|stream| tokio::spawn(http_loop(stream, deadline)))
            .collect();
        let mut outcome = Outcome::default();
        for task in tasks {
            let part = task.await.map_err(io::Error::other)?;
            outcome.count += part.count;
            outcome.errors += part.errors;
            if outcome.first_error.is_none() {
                outcome.first_error = part.first_error;
            }
            outcome.latencies_ns.extend(part.latencies_ns);
        }
        outcome.secs = start.elapsed().as_secs_f64();
        Ok(outcome)
    })
}

async fn http_loop(mut stream: tokio::net::TcpStream, deadline: Instant) -> Outcome {
    let mut part = Outcome {
        latencies_ns: Vec::with_capacity(1 << 15),
        ..Outcome::default()
    };
    let mut buffer = Vec::with_capacity(1024);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let exchange = tokio::time::timeout(
            Duration::from_secs(5),
            http_exchange(&mut stream, &mut buffer),
        );
        match exchange.await {
            Ok(Ok(())) => {
                part.latencies_ns.push(nanos(t0.elapsed()));
                part.count += 1;
            }
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no response within 5 s".to_string(),
                };
                part.errors += 1;
                part.first_error.get_or_insert(e);
                // The connection's framing is lost: stop this loop.
                break;
            }
        }
    }
    part
}

/// One GET and its whole response (head, then `Content-Length` bytes).
async fn http_exchange(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(HTTP_REQUEST).await?;
    buffer.clear();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(total) = http_response_length(buffer)? {
            if buffer.len() >= total {
                return if buffer.len() == total {
                    Ok(())
                } else {
                    Err(io::Error::other("more bytes than one response"))
                };
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed mid-response",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The length of the response at the start of `buffer` (head and body),
/// once its head is complete; a status other than 200 is an error.
fn http_response_length(buffer: &[u8]) -> io::Result<Option<usize>> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(io::Error::other)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(io::Error::other(format!(
            "unexpected status line {status:?}"
        )));
    }
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .ok_or_else(|| io::Error::other("no Content-Length"))?;
    Ok(Some(head_end + 4 + length))
}

/// Opens `n` connections, each with one exchange, and returns them open.
pub fn open_idle(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpStream>> {
    let mut reply = [0u8; MSG];
    (0..n)
        .map(|_| {
            let mut stream = connect(addr)?;
            stream.write_all(&REQUEST)?;
            stream.read_exact(&mut reply)?;
            Ok(stream)
        })
        .collect()
}

/// One exchange on a fresh connection: whether the path works end to end.
pub fn probe(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(&REQUEST)?;
    let mut reply = [0u8; MSG];
    stream.read_exact(&mut reply)
}
