//! One call on an `h2` stream: writes the request body while waiting for
//! the response headers, in the caller's task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::SendStream;
use http_body::Body;

use super::{OpenStream, RecvBody};

/// A sent request waiting for its response headers.
pub(crate) struct Exchange {
    response: h2::client::ResponseFuture,
    /// The rest of the request body, while there is some.
    pump: Option<Pump>,
    /// Counts the stream as open, for keepalive; moves to the response body.
    open: Option<OpenStream>,
}

impl Exchange {
    pub(super) fn new(
        response: h2::client::ResponseFuture,
        body: tonic::body::Body,
        stream: SendStream<Bytes>,
        end_of_stream: bool,
        open: Option<OpenStream>,
    ) -> Self {
        let mut pump = (!end_of_stream).then(|| Pump {
            body,
            stream,
            held: None,
            sent_data: false,
        });
        // Queue what the body has ready now (a unary request: all of it),
        // so it goes out with the HEADERS. Nothing waits on this context:
        // the caller polls again, with its own, before it can wait.
        if let Some(p) = &mut pump {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if p.poll_send(&mut cx).is_ready() {
                pump = None;
            }
        }
        Exchange {
            response,
            pump,
            open,
        }
    }

    /// Writes what it can of the body, then checks for the response
    /// headers. A body still streaming when they arrive is finished by a
    /// task of its own (a bidirectional stream keeps sending).
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<RecvBody>, h2::Error>> {
        if let Some(pump) = &mut self.pump {
            if pump.poll_send(cx).is_ready() {
                self.pump = None;
            }
        }
        let response = ready!(Pin::new(&mut self.response).poll(cx))?;
        if let Some(mut pump) = self.pump.take() {
            tokio::spawn(std::future::poll_fn(move |cx| pump.poll_send(cx)));
        }
        let open = self.open.take();
        Poll::Ready(Ok(response.map(|recv| RecvBody::new(recv, open))))
    }
}

/// Copies a request body into its `h2` stream, holding at most one chunk
/// beyond the stream's flow-control window (as hyper does): the first
/// chunk is queued at once, later ones wait for window.
struct Pump {
    body: tonic::body::Body,
    stream: SendStream<Bytes>,
    /// A chunk read from the body, waiting for window.
    held: Option<Bytes>,
    /// A chunk was queued already.
    sent_data: bool,
}

impl Pump {
    /// Ready when the body is fully queued, or sending failed (the
    /// response then reports why).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
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
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                if self.stream.send_data(data, false).is_err() {
                    return Poll::Ready(());
                }
                continue;
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return self.pending_unless_reset(cx),
                Poll::Ready(None) => {
                    let _ = self.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !self.sent_data => {
                        self.sent_data = true;
                        let end = self.body.is_end_stream();
                        if self.stream.send_data(data, end).is_err() || end {
                            return Poll::Ready(());
                        }
                    }
                    Ok(data) => self.held = Some(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = self.stream.send_trailers(trailers);
                        }
                        return Poll::Ready(());
                    }
                },
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(%status, "request body failed; cancelling the stream");
                    self.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
            }
        }
    }

    /// Pending, unless the server reset the stream (then the body is not
    /// wanted any more).
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.stream.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}
