//! Knowing when the server has really spoken HTTP/2.
//!
//! The HTTP/2 client handshake returns as soon as our preface is written, so a
//! peer that accepts TCP but never answers (or is not an HTTP/2 server)
//! would look connected. [`SettingsSniffer`] watches the first bytes the
//! server sends: per RFC 9113 its connection preface is a SETTINGS frame
//! (type 0x4). The subchannel only reports READY once that frame header has
//! been read. After that it is a pass-through that counts successful
//! writes (so a failed call can tell whether it ever left) and, with
//! keepalive on, notes when the connection last read anything.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::sync::oneshot;

use crate::transport::{LastRead, WriteCount};

/// What the server's first frame header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preface {
    /// A SETTINGS frame: the peer speaks HTTP/2.
    Settings,
    /// Something else: not an HTTP/2 server.
    NotHttp2,
}

/// Classifies the first 9 bytes the server sent.
pub(crate) fn classify(header: &[u8; 9]) -> Preface {
    // length (3 bytes), type (1), flags (1), stream id (4): a preface SETTINGS
    // frame has type 0x4, no ACK flag, and stream 0.
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if header[3] == 0x4 && header[4] & 0x1 == 0 && stream == 0 {
        Preface::Settings
    } else {
        Preface::NotHttp2
    }
}

pub(crate) struct SettingsSniffer<T> {
    inner: T,
    seen: [u8; 9],
    filled: usize,
    report: Option<oneshot::Sender<Preface>>,
    last_read: Option<Arc<LastRead>>,
    writes: Arc<WriteCount>,
}

impl<T> SettingsSniffer<T> {
    pub(crate) fn new(
        inner: T,
        last_read: Option<Arc<LastRead>>,
        writes: Arc<WriteCount>,
    ) -> (Self, oneshot::Receiver<Preface>) {
        let (tx, rx) = oneshot::channel();
        (
            SettingsSniffer {
                inner,
                seen: [0; 9],
                filled: 0,
                report: Some(tx),
                last_read,
                writes,
            },
            rx,
        )
    }

    fn observe(&mut self, bytes: &[u8]) {
        if self.report.is_none() {
            return;
        }
        let take = (9 - self.filled).min(bytes.len());
        self.seen[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
        self.filled += take;
        if self.filled == 9 {
            if let Some(report) = self.report.take() {
                let _ = report.send(classify(&self.seen));
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsSniffer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) {
            if let Some(last_read) = &self.last_read {
                last_read.touch();
            }
            if self.report.is_some() {
                let new = buf.filled()[before..].to_vec();
                self.observe(&new);
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsSniffer<T> {
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

    #[test]
    fn only_a_settings_frame_on_stream_zero_counts() {
        assert_eq!(classify(&[0, 0, 6, 4, 0, 0, 0, 0, 0]), Preface::Settings);
        assert_eq!(
            classify(&[0, 0, 0, 4, 1, 0, 0, 0, 0]),
            Preface::NotHttp2,
            "a SETTINGS ACK is not a preface"
        );
        assert_eq!(classify(&[0, 0, 0, 4, 0, 0, 0, 0, 1]), Preface::NotHttp2);
        assert_eq!(classify(b"HTTP/1.1 "), Preface::NotHttp2);
    }

    #[tokio::test]
    async fn the_preface_is_reported_even_when_split_across_reads() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut sniffer, seen) = SettingsSniffer::new(client, None, Default::default());
        server.write_all(&[0, 0, 0, 4]).await.unwrap();
        let mut buf = [0u8; 4];
        sniffer.read_exact(&mut buf).await.unwrap();
        server.write_all(&[0, 0, 0, 0, 0, 9, 9]).await.unwrap();
        let mut rest = [0u8; 7];
        sniffer.read_exact(&mut rest).await.unwrap();
        assert_eq!(seen.await.unwrap(), Preface::Settings);
        assert_eq!(rest, [0, 0, 0, 0, 0, 9, 9], "bytes pass through unchanged");
    }
}
