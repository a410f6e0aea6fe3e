//! A subchannel's HTTP/2 client: the `h2` crate driven directly.
//!
//! hyper's HTTP/2 client costs every call two task spawns (one that waits
//! for the response, one that writes the request body) and a channel hop to
//! its connection task. Here a call is handed to `h2` in the caller's own
//! task: the request head and the first body chunk are queued at once (a
//! unary request is complete before the call's future is first polled),
//! the rest of the body is written while the caller waits for the response
//! headers, and only a body still streaming when the headers arrive gets a
//! task of its own. The connection itself runs in one task, [`drive`],
//! which also sends the keepalive PINGs.
//!
//! ```text
//! caller task: Sender::send ──► h2 stream (HEADERS + DATA queued)
//!              Exchange::poll_response ──► body pump, then response headers
//! connection task: drive ──► h2::client::Connection + keepalive PINGs
//! ```

mod body;
mod exchange;
mod frames;
mod keepalive;
mod replay;
mod watched_io;

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::oneshot;

pub(crate) use body::RecvBody;
pub(crate) use exchange::{Exchange, Failure};
pub(crate) use keepalive::{LastRead, TransportError};
use keepalive::{OpenStream, StreamCount};
use replay::Replay;
pub(crate) use replay::WriteCount;

use crate::subchannel::BoxedIo;
pub(crate) use frames::{GoAway, Preface};
pub(crate) use watched_io::Sightings;
use watched_io::WatchedIo;

/// Per-stream flow-control window we advertise (as hyper's client does:
/// the HTTP/2 default of 64 KiB throttles bulk streams).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection flow-control window we advertise.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// The largest header list we accept from a server.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Most bytes buffered for sending per stream.
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Streams we may open before the server's SETTINGS say how many it takes.
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// Keepalive settings of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    /// Ping after this long without reading anything.
    pub(crate) time: Duration,
    /// Close the connection if a PING is not acknowledged within this.
    pub(crate) timeout: Duration,
    /// Also ping while no stream is open.
    pub(crate) permit_without_stream: bool,
}

/// Starts HTTP/2 on `io`: returns the sender, the connection's driver (to
/// be spawned; it resolves when the connection ends) and receivers that say
/// what the server's first frame was and when it sent a GOAWAY. Firing
/// `drain` (or dropping its sender) lets the connection close once its
/// streams are done.
pub(crate) async fn handshake(
    io: BoxedIo,
    keepalive: Option<Keepalive>,
    drain: oneshot::Receiver<()>,
) -> io::Result<(
    Sender,
    impl Future<Output = Result<(), TransportError>> + Send + 'static,
    Sightings,
)> {
    let last_read = keepalive.map(|_| Arc::new(LastRead::new()));
    let writes = Arc::new(WriteCount::default());
    let (io, sightings) = WatchedIo::new(io, last_read.clone(), writes.clone());
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| io::Error::other(format!("HTTP/2 handshake: {e}")))?;
    let streams = keepalive
        .filter(|k| !k.permit_without_stream)
        .map(|_| Arc::new(StreamCount::default()));
    let pinger = match (keepalive, last_read) {
        (Some(settings), Some(last_read)) => Some(keepalive::Pinger {
            settings,
            last_read,
            streams: streams.clone(),
        }),
        _ => None,
    };
    let driver = keepalive::drive(connection, pinger, send.clone(), drain);
    Ok((
        Sender {
            send,
            streams,
            writes,
        },
        driver,
        sightings,
    ))
}

/// Opens streams on one connection. Cheap to share; each call clones the
/// underlying `h2` handle.
pub(crate) struct Sender {
    send: SendRequest<Bytes>,
    /// Open streams, counted only when keepalive needs to know.
    streams: Option<Arc<StreamCount>>,
    /// Writes to the socket, to tell whether a failed call ever left.
    writes: Arc<WriteCount>,
}

/// Why a call was not sent.
pub(crate) enum SendError {
    /// The connection is closed or going away and the call never left:
    /// it may be sent again elsewhere.
    /// (Boxed: this is the rare path.)
    Unsent(Box<http::Request<tonic::body::Body>>),
    /// `h2` refused the request (e.g. malformed headers).
    Failed(tonic::Status),
}

impl Sender {
    /// Opens a stream for `request` and queues its head and, if ready, the
    /// first body chunk. Never waits.
    pub(crate) fn send(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<Exchange, SendError> {
        let mut send = self.send.clone();
        // A fresh handle has no stream of its own pending, so this only
        // reports a connection that failed or received GOAWAY — before the
        // request is given away.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Err(_)) = send.poll_ready(&mut cx) {
            return Err(SendError::Unsent(Box::new(request)));
        }
        // Noted before the stream exists: if the connection fails with no
        // write since, the call never left and can go elsewhere.
        let (mut parts, body) = request.into_parts();
        let replay = Replay::new(&mut parts, &self.writes);
        let end_of_stream = http_body::Body::is_end_stream(&body);
        match send.send_request(http::Request::from_parts(parts, ()), end_of_stream) {
            Ok((response, stream)) => {
                let open = self.streams.as_ref().map(StreamCount::open);
                Ok(Exchange::new(
                    response,
                    body,
                    stream,
                    end_of_stream,
                    open,
                    replay,
                ))
            }
            // The connection went away (GOAWAY, or failed) between the
            // check above and now — another thread read it: the stream was
            // never opened, so the call may go elsewhere.
            Err(e) if e.is_go_away() || e.is_io() => {
                Err(SendError::Unsent(Box::new(replay.with_body(body))))
            }
            Err(e) => Err(SendError::Failed(status_of(&e))),
        }
    }
}

/// The gRPC status for an HTTP/2 failure (gRPC's HTTP/2 mapping: a stream
/// reset maps by its error code; a connection that failed or went away is
/// UNAVAILABLE).
pub(crate) fn status_of(error: &h2::Error) -> tonic::Status {
    use h2::Reason;
    use tonic::Code;
    let code = if error.is_go_away() || error.is_io() {
        Code::Unavailable
    } else {
        match error.reason() {
            Some(Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(Reason::CANCEL) => Code::Cancelled,
            Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            // Other stream resets, and misuse on our side (e.g. a
            // connection-specific header in the request).
            _ => Code::Internal,
        }
    };
    tonic::Status::new(code, format!("transport: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_map_to_grpc_codes() {
        let reset = |reason| status_of(&h2::Error::from(reason)).code();
        assert_eq!(reset(h2::Reason::CANCEL), tonic::Code::Cancelled);
        assert_eq!(reset(h2::Reason::REFUSED_STREAM), tonic::Code::Unavailable);
        assert_eq!(
            reset(h2::Reason::ENHANCE_YOUR_CALM),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(reset(h2::Reason::PROTOCOL_ERROR), tonic::Code::Internal);
    }
}
