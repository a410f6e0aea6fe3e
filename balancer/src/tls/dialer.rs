//! [`TlsDialer`]: TCP (or unix), then a TLS handshake verified for the
//! channel's name, ALPN `h2` required.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::pki_types::ServerName;
use waypost_resolver::Address;

use super::config::{ClientTlsConfig, TlsError};
use super::explain::{explain, explain_after_handshake};
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
            let tls = connector.connect(name, io).await.map_err(explain)?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS: the server did not select ALPN h2, which gRPC over TLS needs",
                ));
            }
            // A TLS 1.3 server checks our certificate after the handshake
            // and says no with an alert at the first read: errors from here
            // on are worded too (HTTP/2 keeps only their text).
            let io: BoxedIo = Box::pin(Explained(tls));
            Ok(io)
        })
    }
}

/// A TLS stream whose I/O errors name their TLS cause.
struct Explained<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for Explained<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map_err(explain_after_handshake)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Explained<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_write(cx, buf)
            .map_err(explain_after_handshake)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0)
            .poll_flush(cx)
            .map_err(explain_after_handshake)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0)
            .poll_shutdown(cx)
            .map_err(explain_after_handshake)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_write_vectored(cx, bufs)
            .map_err(explain_after_handshake)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
