//! The response body: a whole JSON document, or a watch stream fed by a task.
//!
//! A watch stream ends cleanly when its task finishes (timeout, server closing a slow watcher)
//! and with an error when the task was told to abort ([`super::ApiServer::drop_watches`]):
//! hyper then cuts the connection without the final chunk, as a dying server would.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, SizeHint};
use tokio::sync::mpsc;

/// How many encoded watch events may wait for the client before the task waits too.
const STREAM_BUFFER: usize = 64;

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<Bytes>,
        aborted: Arc<AtomicBool>,
    },
}

/// The producing side of a streaming body.
#[derive(Debug)]
pub(crate) struct StreamSender {
    tx: mpsc::Sender<Bytes>,
    aborted: Arc<AtomicBool>,
}

/// The error a watch body ends with when the stream is dropped on purpose.
#[derive(Debug, thiserror::Error)]
#[error("watch stream dropped by the test")]
pub(crate) struct Aborted;

impl Body {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    /// A streaming body and the sender that feeds it.
    pub(crate) fn channel() -> (Self, StreamSender) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let aborted = Arc::new(AtomicBool::new(false));
        let body = Body::Stream {
            rx,
            aborted: aborted.clone(),
        };
        (body, StreamSender { tx, aborted })
    }
}

impl StreamSender {
    /// Sends a chunk; false when the client has gone.
    pub(crate) async fn send(&self, bytes: Vec<u8>) -> bool {
        self.tx.send(Bytes::from(bytes)).await.is_ok()
    }

    /// Resolves when the client has gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Ends the stream with an error once the chunks already sent are delivered.
    pub(crate) fn abort(self) {
        self.aborted.store(true, Ordering::SeqCst);
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream { rx, aborted } => match rx.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Poll::Ready(None) if aborted.load(Ordering::SeqCst) => {
                    Poll::Ready(Some(Err(Aborted)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}
