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

use super::limits::{CallLimits, MessageGuard, response_too_large};
use crate::metrics::CallRecord;
use crate::picker::CallEnd;
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
    guard: Option<MessageGuard>,
    /// Tells the pick's tracker the call is over: dropped at the end of
    /// the stream, on an error, or with the body.
    end: Option<CallEnd>,
    /// The call's metrics, when the channel records them: recorded at the
    /// end of the stream, on an error, or with the body.
    call: Option<Box<CallRecord>>,
}

impl ChannelBody {
    pub(crate) fn new(inner: RecvBody, limits: Option<Arc<CallLimits>>, end: CallEnd) -> Self {
        ChannelBody {
            inner: Some(inner),
            guard: limits.as_ref().and_then(|l| l.response_guard()),
            limits,
            end: Some(end),
            call: None,
        }
    }

    /// Records the call's metrics when the response ends.
    pub(crate) fn set_call_record(&mut self, record: Box<CallRecord>) {
        self.call = Some(record);
    }

    /// The call's end: `code` for its metrics (the attempt's are in `end`).
    fn finish(&mut self, code: tonic::Code) {
        if let Some(end) = &mut self.end {
            end.record_code(code);
        }
        self.end = None;
        if let Some(mut call) = self.call.take() {
            call.status(code);
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
        if let Some(status) = this.guard.as_mut().and_then(MessageGuard::take_held) {
            // Metrics only: a message over the limit is the client's own
            // refusal, not the backend's failure (the tracker is not told).
            if let Some(attempt) = this.end.as_mut().and_then(|e| e.attempt.as_mut()) {
                attempt.status(status.code());
            }
            if let Some(mut call) = this.call.take() {
                call.status(status.code());
            }
            return Poll::Ready(Some(Err(status)));
        }
        let Some(inner) = this.inner.as_mut() else {
            this.end = None;
            this.call = None;
            return Poll::Ready(None);
        };
        let frame = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                // A request message over its limit reset the stream: say so.
                let violation = this.limits.as_ref().and_then(|l| l.violation());
                let status = violation.unwrap_or_else(|| status_of(&error));
                this.finish(status.code());
                return Poll::Ready(Some(Err(status)));
            }
            None => {
                // Ended without trailers: gRPC calls that a protocol error.
                if this.call.is_some() {
                    this.finish(tonic::Code::Unknown);
                }
                this.end = None;
                return Poll::Ready(None);
            }
        };
        if let Some(trailers) = frame.trailers_ref() {
            let code = match &mut this.end {
                Some(end) => end.record_status(trailers),
                None => None,
            };
            if let Some(mut call) = this.call.take() {
                let code = code.or_else(|| crate::metrics::status_in(trailers));
                call.status(code.unwrap_or(tonic::Code::Unknown));
            }
        } else if let (Some(data), Some(end)) = (frame.data_ref(), &mut this.end) {
            end.received(data);
        }
        let Some(guard) = &mut this.guard else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let passed = guard.pass(frame, response_too_large);
        if guard.is_spent() {
            // Dropping the stream resets it: the rest is not wanted.
            this.inner = None;
        }
        Poll::Ready(Some(passed))
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
