//! The response body of a [`Channel`](super::Channel) call: the HTTP/2
//! stream's body with transport failures mapped to gRPC statuses (a
//! backend that dies mid-response fails the call with UNAVAILABLE, as gRPC
//! specifies).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::transport::{RecvBody, status_of};

/// The body of a response received through a waypost channel.
///
/// `ChannelBody::default()` is an empty body (what tonic's interceptors
/// answer with when an interceptor rejects a call before it is sent).
#[derive(Debug, Default)]
pub struct ChannelBody {
    /// `None` for the empty body.
    inner: Option<RecvBody>,
}

impl ChannelBody {
    pub(crate) fn new(inner: RecvBody) -> Self {
        ChannelBody { inner: Some(inner) }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        Pin::new(inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(|e| status_of(&e))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
