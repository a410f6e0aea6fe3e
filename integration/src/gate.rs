//! An I/O wrapper that can be frozen: while frozen, reads, writes and
//! flushes stay pending (the peer sees a live TCP connection that never
//! answers), and they resume when the gate opens again.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared open/frozen switch for any number of [`GatedIo`]s.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    frozen: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Gate {
    pub(crate) fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
        if !frozen {
            for waker in std::mem::take(&mut *self.wakers.lock()) {
                waker.wake();
            }
        }
    }

    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_frozen() {
            return Poll::Ready(());
        }
        let mut wakers = self.wakers.lock();
        // Re-check under the lock: `set_frozen(false)` drains after storing.
        if !self.is_frozen() {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// `T` behind a [`Gate`].
#[derive(Debug)]
pub(crate) struct GatedIo<T> {
    inner: T,
    gate: Arc<Gate>,
}

impl<T> GatedIo<T> {
    pub(crate) fn new(inner: T, gate: Arc<Gate>) -> Self {
        GatedIo { inner, gate }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GatedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.gate.poll_open(cx));
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GatedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.gate.poll_open(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.gate.poll_open(cx));
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.gate.poll_open(cx));
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn frozen_io_waits_until_opened() {
        let gate = Arc::new(Gate::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut gated = GatedIo::new(a, gate.clone());
        b.write_all(b"hi").await.unwrap();

        gate.set_frozen(true);
        let mut buf = [0u8; 2];
        let read = tokio::spawn(async move {
            gated.read_exact(&mut buf).await.unwrap();
            buf
        });
        tokio::task::yield_now().await;
        assert!(!read.is_finished(), "a frozen read must not complete");

        gate.set_frozen(false);
        assert_eq!(&read.await.unwrap(), b"hi");
    }
}
