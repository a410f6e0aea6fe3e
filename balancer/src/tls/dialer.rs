//! [`TlsDialer`]: TCP (or unix), then a TLS handshake verified for the
//! channel's name, ALPN `h2` required.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::pki_types::ServerName;
use waypost_resolver::Address;

use super::config::{ClientTlsConfig, TlsError};
use super::explain::explain;
use super::files::{Current, Reloader, TlsStats};
use crate::subchannel::{BoxedIo, DialFuture, Dialer};

/// Dials TLS connections for a channel; built by
/// [`ChannelBuilder::tls`](crate::ChannelBuilder::tls).
#[derive(Debug)]
pub struct TlsDialer {
    current: Arc<Current>,
    server_name: ServerName<'static>,
    _reloader: Option<Reloader>,
}

impl TlsDialer {
    /// A dialer verifying servers as `host` (the channel's authority host,
    /// unless the config names another). Loads the material now; files are
    /// then re-read in a task that ends with the dialer (so this must run
    /// inside a tokio runtime for file material).
    pub fn new(config: &ClientTlsConfig, host: &str) -> Result<TlsDialer, TlsError> {
        let name = config.domain_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        let (current, reloader) = super::files::start(config)?;
        Ok(TlsDialer {
            current,
            server_name,
            _reloader: reloader,
        })
    }

    /// How its material's reloads went.
    pub fn stats(&self) -> Arc<TlsStats> {
        self.current.stats.clone()
    }
}

impl Dialer for TlsDialer {
    fn dial(&self, address: &Address) -> DialFuture {
        let connector = tokio_rustls::TlsConnector::from(self.current.config.load_full());
        let name = self.server_name.clone();
        let address = address.clone();
        Box::pin(async move {
            let io = crate::subchannel::dial(&address).await?;
            let mut tls = connector.connect(name, io).await.map_err(explain)?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS: the server did not select ALPN h2, which gRPC over TLS needs",
                ));
            }
            // A TLS 1.3 server checks our certificate after the handshake
            // and says no with an alert at the first read: read the server's
            // first bytes (its HTTP/2 SETTINGS) here, so that failure is
            // explained too, then hand them on.
            let mut first = vec![0u8; 4096];
            let n = tls.read(&mut first).await.map_err(explain)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS: the server closed the connection right after the handshake",
                ));
            }
            first.truncate(n);
            let io: BoxedIo = Box::pin(Prefixed {
                first: Bytes::from(first),
                io: tls,
            });
            Ok(io)
        })
    }
}

/// A stream whose first bytes were already read.
struct Prefixed<T> {
    first: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.has_remaining() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
