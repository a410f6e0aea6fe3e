//! What one call and one attempt record, as guards that record when
//! dropped: a call or attempt that ends without a status (its caller gave
//! up) ends CANCELLED.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf as _;
use http_body::{Body, Frame, SizeHint};

use super::{ChannelMetrics, Ended, MethodHandle, PayloadCounter};

/// `grpc-status`, as a header name made once (looking a `&str` up parses
/// it into one on every call).
pub(crate) static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The status in `headers` (trailers, or a trailers-only response's
/// headers), if they carry a readable one.
pub(crate) fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    status_of(headers.get(&GRPC_STATUS)?)
}

/// A `grpc-status` value as a code, if it is a number.
pub(crate) fn status_of(value: &http::HeaderValue) -> Option<tonic::Code> {
    let code: i32 = std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()?;
    Some(tonic::Code::from_i32(code))
}

/// One call, from `Service::call` to its status.
#[derive(Debug)]
pub(crate) struct CallRecord {
    channel: Arc<ChannelMetrics>,
    method: Arc<MethodHandle>,
    started: Instant,
    status: Option<tonic::Code>,
}

impl CallRecord {
    pub(crate) fn start(channel: &Arc<ChannelMetrics>, path: &str) -> Box<CallRecord> {
        Box::new(CallRecord {
            method: channel.method(path),
            channel: channel.clone(),
            started: Instant::now(),
            status: None,
        })
    }

    /// The call's status (the first one given counts).
    pub(crate) fn status(&mut self, code: tonic::Code) {
        self.status.get_or_insert(code);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.channel.call_ended(&Ended {
            method: &self.method,
            status: self.status.unwrap_or(tonic::Code::Cancelled),
            seconds: self.started.elapsed().as_secs_f64(),
        });
    }
}

/// One attempt, from its pick to its status.
#[derive(Debug)]
pub(crate) struct AttemptRecord {
    channel: Arc<ChannelMetrics>,
    method: Arc<MethodHandle>,
    started: Instant,
    status: Option<tonic::Code>,
    sent: Arc<AtomicU64>,
    received: PayloadCounter,
}

impl AttemptRecord {
    /// Starts an attempt of a call to `method`; `sent` is where its
    /// request body counts what it sends ([`CountingBody`]).
    pub(crate) fn start(
        channel: &Arc<ChannelMetrics>,
        method: Arc<MethodHandle>,
        sent: Arc<AtomicU64>,
    ) -> Box<AttemptRecord> {
        channel.attempt_started(&method);
        Box::new(AttemptRecord {
            channel: channel.clone(),
            method,
            started: Instant::now(),
            status: None,
            sent,
            received: PayloadCounter::default(),
        })
    }

    /// The attempt's status (the first one given counts).
    pub(crate) fn status(&mut self, code: tonic::Code) {
        self.status.get_or_insert(code);
    }

    /// Counts a chunk of the response body.
    pub(crate) fn received(&mut self, chunk: &[u8]) {
        self.received.feed(chunk);
    }
}

impl Drop for AttemptRecord {
    fn drop(&mut self) {
        self.channel.attempt_ended(
            &Ended {
                method: &self.method,
                status: self.status.unwrap_or(tonic::Code::Cancelled),
                seconds: self.started.elapsed().as_secs_f64(),
            },
            self.sent.load(Ordering::Relaxed),
            self.received.payload_bytes(),
        );
    }
}

/// A request body that counts the message payload bytes it yields.
pub(crate) struct CountingBody {
    inner: tonic::body::Body,
    counter: PayloadCounter,
    out: Arc<AtomicU64>,
}

impl CountingBody {
    /// `body`, counting into `out`.
    pub(crate) fn wrap(body: tonic::body::Body, out: Arc<AtomicU64>) -> tonic::body::Body {
        tonic::body::Body::new(CountingBody {
            inner: body,
            counter: PayloadCounter::default(),
            out,
        })
    }
}

impl Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.counter.feed(data.chunk());
            this.out
                .store(this.counter.payload_bytes(), Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
