//! [`TlsDialer`]: TCP (or unix), then a TLS handshake verified for the
//! channel's name, ALPN `h2` required.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::SignatureScheme;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::sign::CertifiedKey;
use waypost_resolver::Address;

use super::config::{ClientTlsConfig, TlsError};
use super::explain::{explain, explain_after_handshake};
use super::files::{Current, Reloader, TlsStats};
use crate::subchannel::{BoxedIo, DialFuture, Dialer};

/// Dials TLS connections for a channel; built by
/// [`ChannelBuilder::tls`](crate::ChannelBuilder::tls).
#[derive(Debug, Clone)]
pub struct TlsDialer {
    current: Arc<Current<tokio_rustls::rustls::ClientConfig>>,
    server_name: ServerName<'static>,
    _reloader: Option<Arc<Reloader>>,
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
        let super::files::Watched { current, reloader } = super::files::start(config)?;
        Ok(TlsDialer {
            current,
            server_name,
            _reloader: reloader,
        })
    }

    /// A handle for a dial future (the reloader stays with the dialer).
    fn clone_handle(&self) -> TlsDialer {
        TlsDialer {
            current: self.current.clone(),
            server_name: self.server_name.clone(),
            _reloader: None,
        }
    }

    /// How its material's reloads went.
    pub fn stats(&self) -> Arc<TlsStats> {
        self.current.stats.clone()
    }
}

impl TlsDialer {
    /// The handshake on a connected `io`, with the material as it is now:
    /// the server verified for the dialer's name, and one of the offered
    /// ALPN protocols selected. Errors name their cause, and so do the
    /// stream's later ones (a TLS 1.3 server refuses a client certificate
    /// only at the first read).
    pub fn connect<IO>(
        &self,
        io: IO,
    ) -> impl Future<Output = io::Result<Explained<ClientTlsStream<IO>>>> + Send + 'static
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut config = self.current.config.load_full();
        // Without a client certificate, note whether the server asks for
        // one: a TLS 1.3 server that requires it closes the connection
        // after the handshake, and the alert saying why can be lost to a
        // reset — the note still explains the failure.
        let asked = Arc::new(AtomicBool::new(false));
        if !config.client_auth_cert_resolver.has_certs() {
            let mut noting = (*config).clone();
            noting.client_auth_cert_resolver = Arc::new(NoteCertificateRequest(asked.clone()));
            config = Arc::new(noting);
        }
        let name = self.server_name.clone();
        async move {
            let offered = !config.alpn_protocols.is_empty();
            let wanted = config
                .alpn_protocols
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, io)
                .await
                .map_err(explain)?;
            if offered && tls.get_ref().1.alpn_protocol().is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "TLS: the server did not select ALPN {wanted}, which this connection needs"
                    ),
                ));
            }
            Ok(Explained {
                inner: tls,
                certificate_requested: asked.load(Ordering::Relaxed),
            })
        }
    }
}

/// A client without a certificate that records whether the server asked
/// for one.
#[derive(Debug)]
struct NoteCertificateRequest(Arc<AtomicBool>);

impl ResolvesClientCert for NoteCertificateRequest {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

impl Dialer for TlsDialer {
    fn dial(&self, address: &Address) -> DialFuture {
        let address = address.clone();
        let dialer = self.clone_handle();
        Box::pin(async move {
            let io = crate::subchannel::dial(&address).await?;
            let tls = dialer.connect(io).await?;
            // HTTP/2 keeps only the text of I/O errors: they are worded.
            let io: BoxedIo = Box::pin(tls);
            Ok(io)
        })
    }
}

/// A client-side TLS connection.
pub type ClientTlsStream<IO> = tokio_rustls::client::TlsStream<IO>;

/// A TLS stream whose I/O errors name their TLS cause.
#[derive(Debug)]
pub struct Explained<T> {
    inner: T,
    /// The server asked for a client certificate we did not have.
    certificate_requested: bool,
}

impl<T> Explained<T> {
    /// The TLS stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn explain(&self, error: io::Error) -> io::Error {
        explain_after_handshake(error, self.certificate_requested)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Explained<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_read(cx, buf)
            .map_err(|e| self.explain(e))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Explained<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner)
            .poll_write(cx, buf)
            .map_err(|e| self.explain(e))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(|e| self.explain(e))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_shutdown(cx)
            .map_err(|e| self.explain(e))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner)
            .poll_write_vectored(cx, bufs)
            .map_err(|e| self.explain(e))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
