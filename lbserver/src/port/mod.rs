//! The balancer port's HTTP/2 server: `h2` driven directly, one task per
//! connection.
//!
//! A balancer holds one long-lived stream per client and, on every list
//! change, sends each of them the same bytes. Served through hyper and
//! tonic, every stream costs its own task, body and encoder, and a change
//! wakes each of those tasks; here a connection's task serves all its
//! BalanceLoad streams itself ([`crate::balance`]): a change wakes it once
//! and it hands each stream the one encoded list. xDS's ADS streams live in
//! the connection's task too (`port/ads.rs`), each woken on its own when its
//! client or a service it follows has news. Other methods (an
//! UNIMPLEMENTED answer for unknown ones, the rest of the ADS service) go
//! to tonic's router (`port/forward.rs`), each stream in a task of its own, as
//! hyper would run it.
//!
//! ```text
//! listener ──► serve ──► one task per connection:
//!                         h2 accept ─┬─ BalanceLoad ─► BalanceStreams (this task)
//!                                    ├─ ADS ─────────► ServedAds set (this task)
//!                                    └─ other paths ─► forward ─► tonic Routes (a task each)
//!                         keepalive PINGs, GOAWAY on shutdown
//! ```
//!
//! Bounds: at most [`MAX_STREAMS`] concurrent streams per connection, 16
//! KiB of request headers, the HTTP/2 handshake within the listener's
//! handshake timeout, h2's limits on reset floods, and a PING every
//! [`Keepalive::interval`] that must be answered within
//! [`Keepalive::timeout`].

mod ads;
mod forward;
pub(crate) mod grpc;
mod keepalive;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::WatchStream;

use crate::balance::streams::BalanceStreams;
use crate::listener::Connection;

/// Concurrent streams a client may open on one connection.
pub const MAX_STREAMS: u32 = 10_000;

/// Server keepalive: how often the balancer PINGs each client, and how long
/// it waits for the answer before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// A PING is sent this long after the last one was answered (30 s).
    pub interval: Duration,
    /// A connection whose client does not answer a PING within this is
    /// closed (10 s).
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The largest header list a client may send.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// The per-stream receive window: requests are small (ClientStats, ADS
/// ACKs), and an unread stream can hold no more than this.
const STREAM_WINDOW: u32 = 128 * 1024;
/// The connection's receive window.
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// What every connection of the port uses.
pub(crate) struct Port {
    pub(crate) balance: Arc<crate::balance::Shared>,
    /// ADS.
    pub(crate) ads: crate::xds::service::AdsService,
    /// Every method other than BalanceLoad and ADS.
    pub(crate) routes: tonic::service::Routes,
    /// Ends every BalanceLoad stream with UNAVAILABLE when set.
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keepalive: Keepalive,
}

/// Serves the connections `connections` yields until `shutdown` fires (or
/// its sender drops); then stops accepting, sends every connection a
/// GOAWAY and waits for them to close. Dropping the future ends every
/// connection at once.
pub(crate) async fn serve(
    mut connections: mpsc::Receiver<Connection>,
    port: Port,
    shutdown: oneshot::Receiver<()>,
) {
    let port = Arc::new(port);
    let (closing, closing_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = connections.recv() => match accepted {
                Some(connection) => {
                    tasks.spawn(serve_connection(connection, port.clone(), closing_rx.clone()));
                }
                None => break,
            },
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(connections);
    closing.send_replace(true);
    while tasks.join_next().await.is_some() {}
}

fn builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    builder
}

async fn serve_connection(connection: Connection, port: Arc<Port>, closing: watch::Receiver<bool>) {
    let info = connection.info().clone();
    let handshake = builder().handshake::<_, Bytes>(connection);
    let mut h2 = match tokio::time::timeout(port.handshake_timeout, handshake).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(error)) => {
            tracing::debug!(remote = ?info.remote, %error, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(remote = ?info.remote, "HTTP/2 handshake timed out");
            return;
        }
    };
    let mut keepalive =
        keepalive::Pinger::new(h2.ping_pong().expect("taken once, here"), port.keepalive);
    let mut balance = BalanceStreams::new(port.balance.clone(), port.stopping.clone());
    let mut closing = WatchStream::new(closing);
    let mut going_away = false;
    let mut forwarded = JoinSet::new();
    let mut ads = FuturesUnordered::new();
    poll_fn(|cx| {
        if !going_away {
            while let Poll::Ready(next) = closing.poll_next_unpin(cx) {
                if next != Some(false) {
                    going_away = true;
                    h2.graceful_shutdown();
                    break;
                }
            }
        }
        loop {
            match h2.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let path = request.uri().path();
                    if path == crate::balance::PATH {
                        balance.accept(request, respond);
                    } else if path == crate::xds::service::PATH {
                        if let Some(served) = open_ads(&port.ads, request, respond) {
                            ads.push(served);
                        }
                    } else {
                        forwarded.spawn(forward::forward(
                            request,
                            respond,
                            port.routes.clone(),
                            info.clone(),
                        ));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(remote = ?info.remote, %error, "connection failed");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        balance.poll(cx);
        while let Poll::Ready(Some(())) = ads.poll_next_unpin(cx) {}
        while let Poll::Ready(Some(_)) = forwarded.poll_join_next(cx) {}
        if keepalive.poll_expired(cx).is_ready() {
            tracing::debug!(remote = ?info.remote, "keepalive PING unanswered; closing");
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

/// Starts an ADS stream: its response head, and its requests read by
/// tonic's decoder (within [`crate::xds::service::MAX_REQUEST_BYTES`]).
fn open_ads(
    service: &crate::xds::service::AdsService,
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Option<ads::ServedAds> {
    use tonic::codec::Codec;
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let status = tonic::Status::unimplemented(format!(
            "request compression {encoding:?} is not supported"
        ));
        let _ = grpc::trailers_only(&mut respond, &status);
        return None;
    }
    let decoder = waypost_proto::codec::SmallMessageCodec::<
        crate::xds::encode::Outgoing,
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest,
    >::default()
    .decoder();
    let inbound = tonic::Streaming::new_request(
        decoder,
        forward::RequestBody::new(request.into_body()),
        None,
        Some(crate::xds::service::MAX_REQUEST_BYTES),
    );
    let send = respond.send_response(grpc::response_head(), false).ok()?;
    Some(ads::ServedAds::new(service.open(inbound), send))
}
