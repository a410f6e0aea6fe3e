//! One call on an `h2` stream: writes the request body while waiting for
//! the response headers, in the caller's task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::SendStream;
use http_body::Body;

use super::{OpenStream, RecvBody, Replay};

/// A sent request waiting for its response headers.
pub(crate) struct Exchange {
    response: h2::client::ResponseFuture,
    /// The rest of the request body, while there is some.
    pump: Option<Pump>,
    /// Counts the stream as open, for keepalive; moves to the response body.
    open: Option<OpenStream>,
    /// A copy to send elsewhere if the connection fails before the call
    /// leaves, with the whole body (only for a body queued whole at once).
    replay: Option<(Replay, Bytes)>,
}

/// Why a call ended without response headers.
pub(crate) enum Failure {
    /// The connection failed before the call left: it can be sent again.
    /// (Boxed: this is the rare path.)
    Unsent(Box<http::Request<tonic::body::Body>>),
    /// The call failed.
    Failed(h2::Error),
}

impl Exchange {
    pub(super) fn new(
        response: h2::client::ResponseFuture,
        body: tonic::body::Body,
        stream: SendStream<Bytes>,
        end_of_stream: bool,
        open: Option<OpenStream>,
        replay: Replay,
    ) -> Self {
        let mut pump = (!end_of_stream).then(|| Pump {
            body,
            stream,
            held: None,
            first: None,
            more: false,
            whole: false,
        });
        // Queue what the body has ready now (a unary request: all of it),
        // so it goes out with the HEADERS. Nothing waits on this context:
        // the caller polls again, with its own, before it can wait.
        let mut replay_body = end_of_stream.then(Bytes::new);
        if let Some(p) = &mut pump {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if p.poll_send(&mut cx).is_ready() {
                // Whole in hand — even if queuing it failed because the
                // connection's GOAWAY was read meanwhile (then the call
                // never left, and is sent elsewhere).
                if p.whole {
                    replay_body = Some(p.first.take().unwrap_or_default());
                }
                pump = None;
            }
        }
        let replay = replay_body.map(|data| (replay, data));
        Exchange {
            response,
            pump,
            open,
            replay,
        }
    }

    /// Writes what it can of the body, then checks for the response
    /// headers. A body still streaming when they arrive is finished by a
    /// task of its own (a bidirectional stream keeps sending).
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<RecvBody>, Failure>> {
        if let Some(pump) = &mut self.pump
            && pump.poll_send(cx).is_ready()
        {
            self.pump = None;
        }
        let response = match ready!(Pin::new(&mut self.response).poll(cx)) {
            Ok(response) => response,
            Err(error) => {
                let again = self
                    .replay
                    .take()
                    .filter(|(replay, _)| replay.never_left(&error))
                    .map(|(replay, data)| replay.into_request(data));
                return Poll::Ready(Err(match again {
                    Some(request) => Failure::Unsent(Box::new(request)),
                    None => Failure::Failed(error),
                }));
            }
        };
        let mut rest = None;
        if let Some(mut pump) = self.pump.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(std::future::poll_fn(move |cx| pump.poll_send(cx).map(drop)));
                }
                // Polled outside a runtime: reading the response body
                // writes the rest of the request instead.
                Err(_) => rest = Some(pump),
            }
        }
        let open = self.open.take();
        Poll::Ready(Ok(response.map(|recv| RecvBody::new(recv, open, rest))))
    }
}

/// Copies a request body into its `h2` stream, holding at most one chunk
/// beyond the stream's flow-control window (as hyper does): the first
/// chunk is queued at once, later ones wait for window.
pub(super) struct Pump {
    body: tonic::body::Body,
    stream: SendStream<Bytes>,
    /// A chunk read from the body, waiting for window.
    held: Option<Bytes>,
    /// The first chunk queued (a copy, for [`Replay`]).
    first: Option<Bytes>,
    /// More than one chunk, or trailers: not replayable.
    more: bool,
    /// The body ended after at most one chunk (`first`): it can be sent
    /// again whole, whether or not queuing it succeeded.
    whole: bool,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump").finish_non_exhaustive()
    }
}

impl Pump {
    /// Ready when the body is fully queued (`true`), or sending failed
    /// (`false`; the response then reports why).
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            if let Some(data) = self.held.take() {
                self.stream.reserve_capacity(1);
                if self.stream.capacity() == 0 {
                    match self.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            self.held = Some(data);
                            return self.pending_unless_reset(cx);
                        }
                        Poll::Ready(Some(Ok(_))) => {
                            self.held = Some(data);
                            continue;
                        }
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(false),
                    }
                }
                if self.stream.send_data(data, false).is_err() {
                    return Poll::Ready(false);
                }
                continue;
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return self.pending_unless_reset(cx),
                Poll::Ready(None) => {
                    self.whole = !self.more;
                    return Poll::Ready(self.stream.send_data(Bytes::new(), true).is_ok());
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if self.first.is_none() && !self.more => {
                        self.first = Some(data.clone());
                        let end = self.body.is_end_stream();
                        self.whole = end;
                        if self.stream.send_data(data, end).is_err() {
                            // Was that all of it? Then it can go elsewhere
                            // whole (nothing more is sent here either way).
                            if !end {
                                let rest = Pin::new(&mut self.body).poll_frame(cx);
                                self.whole = matches!(rest, Poll::Ready(None));
                            }
                            return Poll::Ready(false);
                        }
                        if end {
                            return Poll::Ready(true);
                        }
                    }
                    Ok(data) => {
                        self.more = true;
                        self.held = Some(data);
                    }
                    Err(frame) => {
                        self.more = true;
                        let sent = match frame.into_trailers() {
                            Ok(trailers) => self.stream.send_trailers(trailers).is_ok(),
                            Err(_) => true,
                        };
                        return Poll::Ready(sent);
                    }
                },
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(%status, "request body failed; cancelling the stream");
                    self.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(false);
                }
            }
        }
    }

    /// Pending, unless the server reset the stream (then the body is not
    /// wanted any more).
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        match self.stream.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}
