//! A read-ahead beneath TLS. rustls reads its socket at most 4 KiB at a
//! time, so a stream of 16 KiB records costs four or five `read`s per
//! record. Under a bulk transfer this layer reads the socket
//! [`READ_AHEAD`] at a time and serves rustls from memory; while the
//! traffic is small (a read does not fill what was asked) it reads straight
//! into the caller's buffer and holds no buffer at all, so an idle
//! connection costs nothing here. Writes pass through.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read-ahead buffer, while a direction moves bulk.
pub const READ_AHEAD: usize = 64 * 1024;

/// A read smaller than this ends the read-ahead once its bytes are served.
const SMALL_READ: usize = 4096;

/// `S`, read ahead while its reads come in full.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Empty (no allocation) unless reading ahead.
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The last fill was small: free the buffer once it is drained.
    release: bool,
}

// === impl ReadAhead ===

impl<S> ReadAhead<S> {
    /// `inner`, without a buffer until a read comes in full.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            release: false,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The socket (bytes read ahead and not yet served are dropped).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether a buffer is held now.
    pub fn is_reading_ahead(&self) -> bool {
        self.buf.capacity() > 0
    }

    /// Serves buffered bytes into `dst`; frees the buffer when it is
    /// drained after a small fill.
    fn serve(&mut self, dst: &mut ReadBuf<'_>) {
        let n = dst.remaining().min(self.end - self.start);
        dst.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end && self.release {
            self.buf = Vec::new();
            self.release = false;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            this.serve(dst);
            return Poll::Ready(Ok(()));
        }
        if this.buf.is_empty() {
            // Small traffic: straight into the caller's buffer.
            let before = dst.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, dst))?;
            if dst.filled().len() > before && dst.remaining() == 0 {
                // It came in full: more is probably waiting.
                this.buf = vec![0; READ_AHEAD];
            }
            return Poll::Ready(Ok(()));
        }
        let mut ahead = ReadBuf::new(&mut this.buf);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let n = ahead.filled().len();
        if n == 0 {
            // The end of the stream.
            this.buf = Vec::new();
            return Poll::Ready(Ok(()));
        }
        this.start = 0;
        this.end = n;
        this.release = n < SMALL_READ;
        this.serve(dst);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_hold_no_buffer_and_full_ones_read_ahead_until_traffic_is_small_again() {
        let (mut far, near) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(near);
        let mut buf = [0u8; 4096];

        far.write_all(b"ping").await.unwrap();
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(!reader.is_reading_ahead(), "a small read allocates nothing");

        // Bulk: a read fills the 4 KiB asked, the next ones come from the buffer.
        let bulk: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        far.write_all(&bulk).await.unwrap();
        let mut got = Vec::new();
        while got.len() < bulk.len() {
            let n = reader.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if got.len() == 4096 {
                assert!(
                    reader.is_reading_ahead(),
                    "a full read starts reading ahead"
                );
            }
        }
        assert_eq!(got, bulk, "every byte, in order");

        // Small again: once the small fill is served, the buffer is freed.
        far.write_all(b"pong").await.unwrap();
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert!(
            !reader.is_reading_ahead(),
            "the buffer is freed when traffic is small"
        );

        // The end of the stream passes through, and writes go to the socket.
        reader.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        far.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(far);
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
    }
}
