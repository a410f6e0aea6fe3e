//! Accepting connections within bounds, for both of the balancer's ports.
//!
//! - At most [`ConnectionLimits::max_connections`] connections are open at
//!   once per listener; past that the server stops accepting (the kernel's
//!   backlog holds the rest) until one closes.
//! - A connection must send its first bytes within
//!   [`ConnectionLimits::handshake_timeout`], or it is closed: a silent or
//!   half-open client cannot hold a slot forever.
//! - Accept errors never spin a core: running out of file descriptors (or
//!   memory) pauses accepting for [`RESOURCE_PAUSE`], as hyper-util and
//!   tonic advise; errors about one connection are skipped.
//! - With a [`TlsAcceptor`], each connection's TLS handshake runs in its
//!   own task (a slow client never holds up `accept`), holds its slot, and
//!   must finish within the handshake timeout; the client's verified
//!   certificate, if any, comes with the [`Connection`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use waypost_lbserver::config::ConnectionLimits;
//! use waypost_lbserver::listener::incoming;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let mut connections = incoming(listener, ConnectionLimits::default(), None);
//! while let Some(connection) = connections.recv().await {
//!     // serve `connection` (AsyncRead + AsyncWrite) …
//!     # drop(connection);
//! }
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use waypost_balancer::tls::{PeerIdentity, ServerTlsStream, TlsAcceptor};

use crate::config::ConnectionLimits;

/// How long accepting pauses after the process ran out of file
/// descriptors or memory.
pub const RESOURCE_PAUSE: Duration = Duration::from_millis(100);

/// An accepted connection: holds its slot under the connection limit, and
/// fails its reads if its first bytes do not arrive in time.
#[derive(Debug)]
pub struct Limited {
    io: TcpStream,
    first_bytes: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Limited {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit, handshake_timeout: Duration) -> Limited {
        Limited {
            io,
            first_bytes: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
            _slot: slot,
        }
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.first_bytes {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
                Poll::Ready(_) => {}
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent nothing within the handshake timeout",
                        )));
                    }
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Limited {
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

/// An accepted connection, after its TLS handshake when the listener has
/// TLS.
#[derive(Debug)]
pub struct Connection {
    io: Io,
    info: ConnectionInfo,
}

#[derive(Debug)]
enum Io {
    Plain(Limited),
    Tls(Box<ServerTlsStream<Limited>>),
}

/// What a server learns about a connection's client (tonic handlers find
/// it in the request's extensions).
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The client certificate it presented, verified against the client
    /// CAs (only with TLS and `client_ca_file`).
    pub identity: Option<PeerIdentity>,
}

impl Connection {
    /// The client's address and certificate.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

macro_rules! both {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        both!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        both!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        both!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }
}

/// Accepts connections from `listener` within `limits`, with a TLS
/// handshake each when `tls` is given. The accepting task ends when the
/// receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> mpsc::Receiver<Connection> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, limits, tls, tx));
    rx
}

/// The TLS handshake of one connection, within the handshake timeout;
/// passed on when it succeeds.
async fn handshake(
    connection: Limited,
    remote: Option<std::net::SocketAddr>,
    acceptor: TlsAcceptor,
    timeout: Duration,
    tx: mpsc::Sender<Connection>,
) {
    let stream = match tokio::time::timeout(timeout, acceptor.accept(connection)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(?remote, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(?remote, "TLS handshake timed out");
            return;
        }
    };
    let identity = PeerIdentity::of(&stream);
    let _ = tx
        .send(Connection {
            io: Io::Tls(Box::new(stream)),
            info: ConnectionInfo { remote, identity },
        })
        .await;
}

async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Connection>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Out of descriptors, accept fails ten times a second: say so once a
    // minute, not every time.
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = tx.closed() => return,
        };
        let stream = loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            match accepted {
                Ok((stream, _)) => break stream,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // EMFILE, ENFILE, ENOMEM, ENOBUFS…: retrying at once
                    // would spin; wait for descriptors to be freed.
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(%error, pause = ?RESOURCE_PAUSE, "accept failed; pausing (said once a minute)");
                        warned = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(RESOURCE_PAUSE).await;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let remote = stream.peer_addr().ok();
        let limited = Limited::new(stream, slot, limits.handshake_timeout);
        match &tls {
            Some(acceptor) => {
                tokio::spawn(handshake(
                    limited,
                    remote,
                    acceptor.clone(),
                    limits.handshake_timeout,
                    tx.clone(),
                ));
            }
            None => {
                let plain = Connection {
                    io: Io::Plain(limited),
                    info: ConnectionInfo {
                        remote,
                        identity: None,
                    },
                };
                if tx.send(plain).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Errors about the one connection being accepted, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits(max: usize, timeout_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            handshake_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener, limits(10, 100), None);
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut server_side = accepted.recv().await.unwrap();
        let mut buf = [0u8; 8];
        let error = server_side.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_talking_connection_is_not_timed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener, limits(10, 100), None);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server_side = accepted.recv().await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        server_side.read_exact(&mut buf).await.unwrap();
        // Long after the timeout, reads still wait for data.
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.write_all(b"!").await.unwrap();
        let mut one = [0u8; 1];
        server_side.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"!");
    }

    #[tokio::test]
    async fn past_the_limit_connections_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener, limits(2, 10_000), None);
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let _c3 = TcpStream::connect(addr).await.unwrap();
        let first = accepted.recv().await.unwrap();
        let _second = accepted.recv().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), accepted.recv()).await;
        assert!(third.is_err(), "a third connection was accepted");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await;
        assert!(third.unwrap().is_some());
    }
}
