//! The connection task: polls the `h2` connection and, with keepalive on,
//! PINGs the server after `time` without reading anything, closing the
//! connection when a PING is not acknowledged within `timeout` (gRPC's
//! client keepalive).

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Keepalive;

/// When the connection last read bytes: written by the I/O wrapper on
/// every read, read by the keepalive timer.
#[derive(Debug)]
pub(crate) struct LastRead {
    origin: Instant,
    /// Milliseconds after `origin`.
    millis: AtomicU64,
}

impl LastRead {
    pub(crate) fn new() -> Self {
        LastRead {
            origin: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    /// Records a read now.
    pub(crate) fn touch(&self) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(millis, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.origin + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// Counts a connection's open streams, for keepalive without
/// `permit_without_stream`.
#[derive(Debug, Default)]
pub(crate) struct StreamCount(AtomicUsize);

impl StreamCount {
    /// Counts one stream until the returned guard drops.
    pub(crate) fn open(self: &Arc<Self>) -> OpenStream {
        self.0.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counted open stream (see [`StreamCount::open`]).
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<StreamCount>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// An HTTP/2 or I/O failure, or a GOAWAY with an error code.
    #[error("{0}")]
    H2(#[from] h2::Error),
    /// A keepalive PING was not acknowledged in time.
    #[error("keepalive PING not acknowledged within {0:?}")]
    KeepaliveTimeout(Duration),
}

/// What the keepalive side of [`drive`] needs.
pub(crate) struct Pinger {
    pub(crate) settings: Keepalive,
    pub(crate) last_read: Arc<LastRead>,
    /// Open streams; `None` when PINGs go out without streams too.
    pub(crate) streams: Option<Arc<StreamCount>>,
}

/// Runs the connection until it ends, with keepalive PINGs if `pinger` is
/// set. `probe` is a handle on the same connection, used to tell why it
/// ended. When `drain` fires (or its sender is dropped) the owner is gone:
/// the probe is let go, so the connection closes gracefully once its
/// streams have ended and no one else holds a handle.
pub(crate) async fn drive<T>(
    connection: h2::client::Connection<T, Bytes>,
    pinger: Option<Pinger>,
    probe: SendRequest<Bytes>,
    mut drain: oneshot::Receiver<()>,
) -> Result<(), TransportError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut probe = Some(probe);
    let mut running = pin!(run(connection, pinger));
    let result = loop {
        tokio::select! {
            result = &mut running => break result,
            _ = &mut drain, if probe.is_some() => probe = None,
        }
    };
    result.map_err(|e| match &mut probe {
        Some(probe) => prefer_go_away(e, probe),
        None => e,
    })
}

/// A server that sends GOAWAY and closes at once often makes our next
/// write fail; the GOAWAY (e.g. ENHANCE_YOUR_CALM, "too_many_pings") is
/// the reason worth reporting, and `h2` keeps it as the connection's error.
fn prefer_go_away(error: TransportError, probe: &mut SendRequest<Bytes>) -> TransportError {
    match error {
        TransportError::H2(e) if e.is_io() => {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match probe.poll_ready(&mut cx) {
                std::task::Poll::Ready(Err(away)) if away.is_go_away() => TransportError::H2(away),
                _ => TransportError::H2(e),
            }
        }
        other => other,
    }
}

async fn run<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    pinger: Option<Pinger>,
) -> Result<(), TransportError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(pinger) = pinger else {
        return Ok(connection.await?);
    };
    let Some(mut ping_pong) = connection.ping_pong() else {
        return Ok(connection.await?);
    };
    let Keepalive { time, timeout, .. } = pinger.settings;
    let mut connection = pin!(connection);
    loop {
        let due = pinger.last_read.at() + time;
        if due > Instant::now() {
            tokio::select! {
                ended = &mut connection => return Ok(ended?),
                () = tokio::time::sleep_until(due) => continue,
            }
        }
        if pinger.streams.as_ref().is_some_and(|s| s.get() == 0) {
            // Dormant: no PINGs without a stream; look again after `time`.
            tokio::select! {
                ended = &mut connection => return Ok(ended?),
                () = tokio::time::sleep(time) => continue,
            }
        }
        ping_pong.send_ping(h2::Ping::opaque())?;
        tokio::select! {
            ended = &mut connection => return Ok(ended?),
            pong = std::future::poll_fn(|cx| ping_pong.poll_pong(cx)) => { pong?; }
            () = tokio::time::sleep(timeout) => return Err(TransportError::KeepaliveTimeout(timeout)),
        }
    }
}
