//! The socket under a subchannel's HTTP/2 connection, watched.
//!
//! The HTTP/2 client handshake returns as soon as our preface is written, so
//! a peer that accepts TCP but never answers (or is not an HTTP/2 server)
//! would look connected; and `h2` tells nobody that a GOAWAY arrived until
//! the connection has closed, which a graceful server delays until its
//! last stream ends. [`WatchedIo`] reads the server's frames as they pass
//! ([`FrameReader`]) and reports the first one — the subchannel is READY
//! only once it was SETTINGS — and the first GOAWAY, so the subchannel
//! stops offering the connection at once. It also counts successful writes
//! (so a failed call can tell whether it ever left) and, with keepalive on,
//! notes when the connection last read anything.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::frames::{FrameReader, GoAway, Preface, Seen};
use super::{LastRead, WriteCount};

/// Where [`WatchedIo`] reports what it saw.
#[derive(Debug)]
pub(crate) struct Sightings {
    /// The server's first frame.
    pub(crate) preface: oneshot::Receiver<Preface>,
    /// The server's first GOAWAY (never, if the connection ends without).
    pub(crate) go_away: oneshot::Receiver<GoAway>,
}

pub(crate) struct WatchedIo<T> {
    inner: T,
    reader: FrameReader,
    preface: Option<oneshot::Sender<Preface>>,
    go_away: Option<oneshot::Sender<GoAway>>,
    last_read: Option<Arc<LastRead>>,
    writes: Arc<WriteCount>,
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(
        inner: T,
        last_read: Option<Arc<LastRead>>,
        writes: Arc<WriteCount>,
    ) -> (Self, Sightings) {
        let (preface_tx, preface) = oneshot::channel();
        let (go_away_tx, go_away) = oneshot::channel();
        (
            WatchedIo {
                inner,
                reader: FrameReader::new(),
                preface: Some(preface_tx),
                go_away: Some(go_away_tx),
                last_read,
                writes,
            },
            Sightings { preface, go_away },
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) {
            let this = &mut *self;
            if let Some(last_read) = &this.last_read {
                last_read.touch();
            }
            if !this.reader.is_done() {
                let (preface, go_away) = (&mut this.preface, &mut this.go_away);
                this.reader
                    .read(&buf.filled()[before..], |seen| match seen {
                        Seen::Preface(p) => {
                            if let Some(tx) = preface.take() {
                                let _ = tx.send(p);
                            }
                        }
                        Seen::GoAway(g) => {
                            if let Some(tx) = go_away.take() {
                                let _ = tx.send(g);
                            }
                        }
                    });
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = result {
            self.writes.wrote();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = result {
            self.writes.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_preface_and_a_goaway_are_reported_and_the_bytes_pass_unchanged() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut watched, sightings) = WatchedIo::new(client, None, Default::default());
        server.write_all(&[0, 0, 0, 4]).await.unwrap();
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.unwrap();
        server.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
        let mut rest = [0u8; 5];
        watched.read_exact(&mut rest).await.unwrap();
        assert_eq!(sightings.preface.await.unwrap(), Preface::Settings);
        assert_eq!(rest, [0, 0, 0, 0, 0], "bytes pass through unchanged");

        let go_away = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0];
        server.write_all(&go_away).await.unwrap();
        let mut read = [0u8; 17];
        watched.read_exact(&mut read).await.unwrap();
        assert_eq!(read, go_away);
        assert_eq!(
            sightings.go_away.await.unwrap(),
            GoAway {
                last_stream_id: 5,
                code: 0
            }
        );
    }
}
