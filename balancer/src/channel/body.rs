//! The response body of a [`Channel`](super::Channel) call: the HTTP/2
//! stream's body with transport failures mapped to gRPC statuses (a
//! backend that dies mid-response fails the call with UNAVAILABLE, as gRPC
//! specifies), and messages checked against the method's
//! `maxResponseMessageBytes`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::limits::{CallLimits, FrameScanner, response_too_large};
use crate::transport::{RecvBody, status_of};

/// The body of a response received through a waypost channel.
///
/// `ChannelBody::default()` is an empty body (what tonic's interceptors
/// answer with when an interceptor rejects a call before it is sent).
#[derive(Debug, Default)]
pub struct ChannelBody {
    /// `None` for the empty body, and once a message broke the limit.
    inner: Option<RecvBody>,
    /// The call's limits, when its method config sets any.
    limits: Option<Arc<CallLimits>>,
    /// Checks response messages, when they have a limit.
    scanner: Option<FrameScanner>,
    /// A message over the limit, reported once the ones before it are
    /// handed on.
    failed: Option<tonic::Status>,
}

impl ChannelBody {
    pub(crate) fn new(inner: RecvBody, limits: Option<Arc<CallLimits>>) -> Self {
        ChannelBody {
            inner: Some(inner),
            scanner: limits.as_ref().and_then(|l| l.response_scanner()),
            limits,
            failed: None,
        }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if let Some(status) = this.failed.take() {
            return Poll::Ready(Some(Err(status)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                // A request message over its limit reset the stream: say so.
                let violation = this.limits.as_ref().and_then(|l| l.violation());
                return Poll::Ready(Some(Err(violation.unwrap_or_else(|| status_of(&error)))));
            }
            None => return Poll::Ready(None),
        };
        let (Some(scanner), Some(data)) = (&mut this.scanner, frame.data_ref()) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(oversized) = scanner.scan(data) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let status = response_too_large(oversized.length, scanner.limit());
        // Dropping the stream resets it: the rest is not wanted.
        this.inner = None;
        if oversized.before == 0 {
            return Poll::Ready(Some(Err(status)));
        }
        // The messages before it are delivered; the call fails next.
        let before = data.slice(..oversized.before);
        this.failed = Some(status);
        Poll::Ready(Some(Ok(Frame::data(before))))
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
