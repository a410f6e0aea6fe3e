//! Transports: TCP and unix listeners, dialing, optional TLS, and what a
//! handler learns about its peer.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use waypost_balancer::BoxedIo;
use waypost_resolver::Address;

/// Who is on the other end of a connection. gRPC handlers find it in the
/// request's extensions (`request.extensions().get::<PeerInfo>()`), data
/// handlers in [`crate::DataRequest::peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address as text (`127.0.0.1:5000`, `unix`).
    pub remote: String,
    /// The identity from its TLS client certificate, if it sent one.
    pub identity: Option<PeerIdentity>,
}

/// The identity in a verified TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// The subject alternative DNS names.
    pub dns_names: Vec<String>,
    /// The certificate (DER).
    pub certificate: Vec<u8>,
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket (the path is removed when the listener is dropped).
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds TCP (`127.0.0.1:0` for a free port).
    pub async fn tcp(addr: &str) -> io::Result<Listener> {
        Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?))
    }

    /// Binds a unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> io::Result<Listener> {
        let path = path.into();
        Ok(Listener::Unix(tokio::net::UnixListener::bind(&path)?, path))
    }

    /// The address clients dial.
    pub fn address(&self) -> io::Result<Address> {
        Ok(match self {
            Listener::Tcp(l) => Address::Tcp(l.local_addr()?),
            Listener::Unix(_, path) => Address::Unix(path.clone()),
        })
    }

    pub(crate) async fn accept(&self) -> io::Result<(BoxedIo, String)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Box::pin(stream), remote.to_string()))
            }
            Listener::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                Ok((Box::pin(stream), format!("unix:{}", path.display())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A server-side connection after the handshake, as tonic sees it.
pub(crate) struct ServerIo {
    pub(crate) io: BoxedIo,
    pub(crate) peer: PeerInfo,
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}

/// Server-side TLS: a rustls configuration (set a client-certificate
/// verifier on it to require or accept client certificates).
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

#[cfg(feature = "tls")]
impl ServerTls {
    /// From a rustls server configuration.
    pub fn new(config: Arc<tokio_rustls::rustls::ServerConfig>) -> ServerTls {
        ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        }
    }

    pub(crate) async fn accept(&self, io: BoxedIo) -> io::Result<(BoxedIo, Option<PeerIdentity>)> {
        let stream = self.acceptor.accept(io).await?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| identity_of(cert.as_ref()));
        Ok((Box::pin(stream), identity))
    }
}

/// Reads the subject CN and DNS names of a DER certificate.
#[cfg(feature = "tls")]
fn identity_of(der: &[u8]) -> PeerIdentity {
    use x509_parser::prelude::*;
    let mut identity = PeerIdentity {
        common_name: None,
        dns_names: Vec::new(),
        certificate: der.to_vec(),
    };
    if let Ok((_, cert)) = X509Certificate::from_der(der) {
        identity.common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    identity.dns_names.push((*dns).to_owned());
                }
            }
        }
    }
    identity
}

/// Client-side TLS: a rustls configuration (with a client certificate if
/// the server wants one) and the name to verify the server against.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

#[cfg(feature = "tls")]
impl ClientTls {
    /// From a rustls client configuration and the server's name.
    pub fn new(
        config: Arc<tokio_rustls::rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<ClientTls, tokio_rustls::rustls::pki_types::InvalidDnsNameError> {
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name: tokio_rustls::rustls::pki_types::ServerName::try_from(server_name)?
                .to_owned(),
        })
    }

    pub(crate) async fn connect(&self, io: BoxedIo) -> io::Result<BoxedIo> {
        let stream = self.connector.connect(self.server_name.clone(), io).await?;
        Ok(Box::pin(stream))
    }
}

/// Without the `tls` feature: a type that cannot be built.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub enum ServerTls {}

/// Without the `tls` feature: a type that cannot be built.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub enum ClientTls {}

#[cfg(not(feature = "tls"))]
impl ServerTls {
    pub(crate) async fn accept(&self, _io: BoxedIo) -> io::Result<(BoxedIo, Option<PeerIdentity>)> {
        match *self {}
    }
}

#[cfg(not(feature = "tls"))]
impl ClientTls {
    pub(crate) async fn connect(&self, _io: BoxedIo) -> io::Result<BoxedIo> {
        match *self {}
    }
}
