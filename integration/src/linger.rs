//! A TCP stream that closes the way a careful server does: when dropped,
//! it shuts its sending side (the peer reads a clean end) and reads what
//! the peer still sends until the peer closes too (at most
//! [`LINGER`]), instead of closing at once.
//!
//! Closing a socket that has unread bytes makes the kernel answer with a
//! RST, which can destroy the end of a response still on its way to the
//! peer. hyper's HTTP/2 server closes that way after a graceful shutdown
//! when the client's last WINDOW_UPDATE or PING ACK is still unread, so a
//! test backend that recycles connections would now and then cut a call it
//! had fully answered. gRPC C-core servers do not; with this, neither do
//! the harness's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The longest a dropped stream waits for its peer to close.
pub const LINGER: Duration = Duration::from_secs(2);

/// See the module docs.
#[derive(Debug)]
pub struct LingeringStream {
    inner: Option<TcpStream>,
}

impl LingeringStream {
    /// Wraps an accepted stream.
    pub fn new(stream: TcpStream) -> Self {
        LingeringStream {
            inner: Some(stream),
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &TcpStream {
        self.inner.as_ref().expect("present until dropped")
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(
            self.get_mut()
                .inner
                .as_mut()
                .expect("present until dropped"),
        )
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let (Some(mut stream), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.get_ref().is_write_vectored()
    }
}

impl tonic::transport::server::Connected for LingeringStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}
