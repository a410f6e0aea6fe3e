//! Transports: TCP and unix listeners, dialing, optional TLS, and what a
//! handler learns about its peer.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
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

pub use waypost_balancer::tls::PeerIdentity;

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

/// The ALPN protocol waypost-rpc offers and accepts over TLS: its
/// connections start with their own handshake, not HTTP/2, so they do not
/// claim `h2`.
pub const ALPN: &str = "waypost-rpc";

/// A server's TLS acceptor from the shared configuration, with ALPN
/// [`ALPN`].
pub(crate) fn acceptor(
    config: &waypost_balancer::tls::ServerTlsConfig,
) -> io::Result<waypost_balancer::tls::TlsAcceptor> {
    waypost_balancer::tls::TlsAcceptor::new(&config.clone().alpn_protocols(&[ALPN]))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The handshake on an accepted connection, and the client's identity.
pub(crate) async fn accept(
    acceptor: &waypost_balancer::tls::TlsAcceptor,
    io: BoxedIo,
) -> io::Result<(BoxedIo, Option<PeerIdentity>)> {
    let stream = acceptor.accept(io).await?;
    let identity = PeerIdentity::of(&stream);
    Ok((Box::pin(stream), identity))
}
