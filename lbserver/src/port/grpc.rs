//! gRPC's response heads and trailers on `h2`, and writing a message
//! within a stream's flow-control window.

use std::task::{Context, Poll};

use bytes::Bytes;
use h2::SendStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Response};
use tonic::Status;

/// `200` with `content-type: application/grpc`.
pub(crate) fn response_head() -> Response<()> {
    let mut response = Response::new(());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The trailers that end a stream with `status`.
pub(crate) fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    let _ = status.add_header(&mut map);
    map
}

/// Answers a stream with its status alone (gRPC's trailers-only response).
pub(crate) fn trailers_only(
    respond: &mut SendResponse<Bytes>,
    status: &Status,
) -> Result<(), h2::Error> {
    let mut response = response_head();
    response.headers_mut().extend(trailers(status));
    respond.send_response(response, true).map(drop)
}

/// Hands `unsent` to h2 as the stream's window allows (never more than
/// the window: nothing piles up in h2's buffer). Ready with `Ok` once all
/// of it is handed over, with an error when the stream is gone.
pub(crate) fn poll_send(
    send: &mut SendStream<Bytes>,
    unsent: &mut Option<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), h2::Error>> {
    while let Some(data) = unsent {
        send.reserve_capacity(data.len());
        let capacity = send.capacity();
        if capacity == 0 {
            match send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(h2::Error::from(h2::Reason::STREAM_CLOSED)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let chunk = data.split_to(capacity.min(data.len()));
        if data.is_empty() {
            *unsent = None;
        }
        send.send_data(chunk, false)?;
    }
    Poll::Ready(Ok(()))
}
