//! The buffered relay, for connections the sidecar must read (mTLS: no
//! splice through TLS). Each direction copies through a buffer that fits
//! its traffic: [`SMALL`] while reads come in short, [`LARGE`] once a read
//! fills the buffer (bulk: a quarter of the system calls, and TLS writes
//! four records at once), back to small when a read comes in short. A
//! direction waiting for bytes holds no buffer at all unless its last read
//! came in full, so an idle connection costs no copy buffers.
//!
//! As `tokio::io::copy_bidirectional`: each direction ends with a shutdown
//! of its writer once its reader is done, and the relay ends when both are.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A direction's buffer while its reads come in short.
pub const SMALL: usize = 4 * 1024;
/// A direction's buffer once a read fills it.
pub const LARGE: usize = 64 * 1024;

/// One direction's state.
#[derive(Debug, Default)]
struct Half {
    /// Empty (no allocation) while waiting, unless `full`.
    buf: Vec<u8>,
    /// The bytes read and not yet written are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// The last read filled its buffer: more is probably coming.
    full: bool,
    /// Bytes written since the last flush.
    unflushed: bool,
    /// The reader ended.
    eof: bool,
    /// The writer was shut down: this direction is over.
    done: bool,
    moved: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.end {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.moved += n as u64;
                self.unflushed = true;
                continue;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let size = if self.full { LARGE } else { SMALL };
            if self.buf.len() != size {
                self.buf = vec![0; size];
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    if !self.full {
                        // Waiting: hold nothing.
                        self.buf = Vec::new();
                    }
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(result) => result?,
            }
            let n = read.filled().len();
            (self.pos, self.end) = (0, n);
            if n == 0 {
                self.eof = true;
                self.buf = Vec::new();
            } else {
                self.full = n == size;
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions are done;
/// the bytes moved each way (a to b, b to a).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Relay {
        a,
        b,
        a_to_b: Half::default(),
        b_to_a: Half::default(),
    }
    .await
}

struct Relay<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Half,
    b_to_a: Half,
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let up = this
            .a_to_b
            .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))?;
        let down = this
            .b_to_a
            .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok((this.a_to_b.moved, this.b_to_a.moved)))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bulk_and_small_messages_pass_both_ways_and_half_closes_carry() {
        let (mut client, mut near) = tokio::io::duplex(256 * 1024);
        let (mut far, mut server) = tokio::io::duplex(256 * 1024);
        let relay = tokio::spawn(async move { copy_bidirectional(&mut near, &mut far).await });

        client.write_all(b"ping").await.unwrap();
        let mut small = [0u8; 4];
        server.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"pong");

        let bulk: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let sent = bulk.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, bulk, "every byte, in order, then the half-close");
        let mut client = writer.await.unwrap();
        // The other direction still flows after the half-close.
        server.write_all(b"after").await.unwrap();
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"after");
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (4 + bulk.len() as u64, 4 + 5));
    }

    #[test]
    fn a_direction_waiting_after_short_reads_holds_no_buffer_and_bulk_grows_it() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut from, mut reader) = tokio::io::duplex(256 * 1024);
        // A small pipe to the sink: the copy waits on its writes mid-bulk.
        let (mut writer, mut sink) = tokio::io::duplex(16 * 1024);
        let mut half = Half::default();
        let mut poll =
            |half: &mut Half| half.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut writer));
        assert!(poll(&mut half).is_pending());
        assert_eq!(half.buf.capacity(), 0, "idle: no buffer");

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(from.write_all(b"hello")).unwrap();
        assert!(poll(&mut half).is_pending());
        assert_eq!(half.buf.capacity(), 0, "after a short read: none");

        rt.block_on(from.write_all(&vec![9u8; 200_000])).unwrap();
        assert!(poll(&mut half).is_pending(), "the sink is full");
        assert_eq!(
            half.buf.len(),
            LARGE,
            "full reads: the large buffer, held mid-bulk"
        );
        let mut drained = vec![0u8; 200_005];
        rt.block_on(async {
            let mut n = 0;
            while n < drained.len() {
                n += sink.read(&mut drained[n..]).await.unwrap();
                let _ = poll(&mut half);
            }
        });
        assert_eq!(&drained[..5], b"hello");
        rt.block_on(from.write_all(b"x")).unwrap();
        assert!(poll(&mut half).is_pending());
        assert_eq!(half.buf.capacity(), 0, "short again: the buffer is freed");
        assert_eq!(half.moved, 200_006);
    }
}
