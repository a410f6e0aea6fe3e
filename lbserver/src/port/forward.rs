//! A stream for any method but BalanceLoad, run through tonic's router:
//! the request's body is read from `h2` (each chunk's window given back as
//! it is taken), and the response's body is written within the stream's
//! flow-control window, then its trailers. A client that resets the stream
//! ends the handler (its response body is dropped).

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::Service;

use super::grpc::poll_send;
use crate::listener::ConnectionInfo;

/// Runs one request through `routes` and sends its response.
pub(super) async fn forward(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    mut routes: tonic::service::Routes,
    info: ConnectionInfo,
) {
    let (mut parts, recv) = request.into_parts();
    parts.extensions.insert(info);
    let request = Request::from_parts(parts, RequestBody::new(recv));
    let response = match routes.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    let Ok(send) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return;
    };
    if !end {
        pipe(body, send).await;
    }
}

/// Writes `body` to `send`: DATA within the window, then trailers (or an
/// empty DATA frame that ends the stream).
async fn pipe(body: tonic::body::Body, mut send: SendStream<Bytes>) {
    let mut body = pin!(body);
    let mut unsent: Option<Bytes> = None;
    poll_fn(|cx| {
        loop {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if ready!(poll_send(&mut send, &mut unsent, cx)).is_err() {
                return Poll::Ready(());
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            unsent = Some(data);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = send.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(error)) => {
                    tracing::debug!(%error, "response body failed");
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                None => {
                    let _ = send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    })
    .await;
}

/// A request's body read from `h2`, each chunk's window given back as it
/// is taken.
pub(super) struct RequestBody {
    recv: RecvStream,
    data_done: bool,
}

impl RequestBody {
    pub(super) fn new(recv: RecvStream) -> RequestBody {
        RequestBody {
            recv,
            data_done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
