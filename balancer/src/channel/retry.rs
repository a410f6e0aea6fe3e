//! Retries by the service config's `retryPolicy`, and the replay buffer
//! they need.
//!
//! A call with a retry policy has its request body recorded as it is sent,
//! up to [`MAX_REPLAY_BYTES`]. When an attempt fails with a listed status
//! code before any response headers arrived — a transport failure, or a
//! Trailers-Only response — and the body was recorded whole, the call is
//! sent again after a randomised exponential backoff, at most
//! `maxAttempts` times in all and never past the call's deadline. Once
//! response headers arrive the call is committed and never retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::Mutex;

use crate::service_config::RetryPolicy;

/// The most request bytes kept for replay; a larger call is not retried.
pub const MAX_REPLAY_BYTES: usize = 256 * 1024;

/// How far recording a body got.
#[derive(Debug)]
enum Recording {
    /// Still being sent; the frames so far.
    Open { frames: Vec<Bytes>, len: usize },
    /// Sent whole: can be replayed.
    Complete(Bytes),
    /// Too large, or carried trailers: cannot be replayed.
    Abandoned,
}

/// A request body that records what it sends.
pub(crate) struct ReplayBody {
    /// Frames read ahead by [`ReplayBody::wrap`], sent before `inner`'s.
    prefix: VecDeque<Frame<Bytes>>,
    /// How the body failed while read ahead, reported after `prefix`.
    failed: Option<tonic::Status>,
    inner: tonic::body::Body,
    recording: Arc<Mutex<Recording>>,
}

/// The handle to read a recording back.
#[derive(Clone)]
pub(crate) struct Replay {
    recording: Arc<Mutex<Recording>>,
}

impl ReplayBody {
    /// Wraps `inner` for replay. What the body can produce right now (all
    /// of a unary request) is read at once, so it can always be replayed
    /// even if a connection dies before sending it; a streaming body is
    /// recorded as it is sent.
    pub(crate) fn wrap(mut inner: tonic::body::Body) -> (tonic::body::Body, Replay) {
        let mut prefix = VecDeque::new();
        let mut len = 0;
        let mut replayable = true;
        let mut failed = None;
        loop {
            match inner.frame().now_or_never() {
                Some(Some(Ok(frame))) => {
                    match frame.data_ref() {
                        Some(data) if len + data.len() <= MAX_REPLAY_BYTES => len += data.len(),
                        _ => replayable = false,
                    }
                    prefix.push_back(frame);
                }
                Some(None) if replayable => {
                    // The whole body, now: send and replay from the same bytes.
                    let mut all = BytesMut::with_capacity(len);
                    for frame in &prefix {
                        all.extend_from_slice(
                            frame.data_ref().expect("only data frames are replayable"),
                        );
                    }
                    let bytes = all.freeze();
                    let recording = Arc::new(Mutex::new(Recording::Complete(bytes.clone())));
                    return (
                        tonic::body::Body::new(http_body_util::Full::new(bytes)),
                        Replay { recording },
                    );
                }
                Some(Some(Err(status))) => {
                    replayable = false;
                    failed = Some(status);
                    break;
                }
                // Ended (not replayable), or not ready yet: stream on.
                Some(None) | None => break,
            }
        }
        let recorded: Vec<Bytes> = prefix
            .iter()
            .filter_map(|f| f.data_ref().cloned())
            .collect();
        let state = if replayable {
            Recording::Open {
                frames: recorded,
                len,
            }
        } else {
            Recording::Abandoned
        };
        let recording = Arc::new(Mutex::new(state));
        let body = ReplayBody {
            prefix,
            failed,
            inner,
            recording: recording.clone(),
        };
        (tonic::body::Body::new(body), Replay { recording })
    }
}

impl Replay {
    /// A fresh body with the recorded bytes, if the body was sent whole.
    pub(crate) fn body(&self) -> Option<tonic::body::Body> {
        match &*self.recording.lock() {
            Recording::Complete(bytes) => Some(tonic::body::Body::new(http_body_util::Full::new(
                bytes.clone(),
            ))),
            _ => None,
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(status) = self.failed.take() {
            return Poll::Ready(Some(Err(status)));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut recording = self.recording.lock();
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Recording::Open { frames, len } = &mut *recording {
                    match frame.data_ref() {
                        Some(data) if *len + data.len() <= MAX_REPLAY_BYTES => {
                            *len += data.len();
                            frames.push(data.clone());
                        }
                        _ => *recording = Recording::Abandoned,
                    }
                }
            }
            Poll::Ready(None) => {
                if let Recording::Open { frames, len } = &mut *recording {
                    let mut all = BytesMut::with_capacity(*len);
                    for frame in frames.drain(..) {
                        all.extend_from_slice(&frame);
                    }
                    *recording = Recording::Complete(all.freeze());
                }
            }
            Poll::Ready(Some(Err(_))) => *recording = Recording::Abandoned,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `policy` retries `code`.
pub(crate) fn is_retryable(policy: &RetryPolicy, code: tonic::Code) -> bool {
    policy.retryable_status_codes.contains(&code)
}

/// The delay before retry number `retry` (1 for the first), with
/// `unit_random` in `[0, 1)`: uniform in `[0, min(initial × multiplierⁿ⁻¹, max))`
/// as gRPC specifies.
pub(crate) fn retry_delay(policy: &RetryPolicy, retry: u32, unit_random: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(64) as i32;
    let ceiling = (policy.initial_backoff.as_secs_f64() * policy.backoff_multiplier.powi(exponent))
        .min(policy.max_backoff.as_secs_f64());
    Duration::from_secs_f64(ceiling * unit_random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            backoff_multiplier: 2.0,
            retryable_status_codes: vec![tonic::Code::Unavailable],
        }
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = policy();
        assert_eq!(retry_delay(&p, 1, 1.0), Duration::from_millis(100));
        assert_eq!(retry_delay(&p, 2, 1.0), Duration::from_millis(200));
        assert_eq!(retry_delay(&p, 3, 1.0), Duration::from_millis(300));
        assert_eq!(retry_delay(&p, 9, 0.5), Duration::from_millis(150));
        assert_eq!(retry_delay(&p, 1, 0.0), Duration::ZERO);
        assert!(is_retryable(&p, tonic::Code::Unavailable));
        assert!(!is_retryable(&p, tonic::Code::Internal));
    }

    #[tokio::test]
    async fn a_ready_body_can_be_replayed_before_it_is_sent() {
        let inner = tonic::body::Body::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
        let (body, replay) = ReplayBody::wrap(inner);
        assert!(replay.body().is_some(), "read whole up front");
        drop(body);
        let again = replay.body().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(again, Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn a_streaming_body_is_recorded_as_it_is_sent() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, tonic::Status>>(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let inner = tonic::body::Body::new(http_body_util::StreamBody::new(stream));
        let (body, replay) = ReplayBody::wrap(inner);
        assert!(
            replay.body().is_none(),
            "nothing to replay before it was sent"
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"hel"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"lo"))))
            .await
            .unwrap();
        drop(tx);
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, Bytes::from_static(b"hello"));
        let again = replay.body().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(again, Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_kept() {
        let big = Bytes::from(vec![7u8; MAX_REPLAY_BYTES + 1]);
        let (body, replay) =
            ReplayBody::wrap(tonic::body::Body::new(http_body_util::Full::new(big)));
        body.collect().await.unwrap();
        assert!(replay.body().is_none());
    }

    #[tokio::test]
    async fn a_body_that_fails_while_read_ahead_still_fails() {
        let frames = futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"kept"))),
            Err(tonic::Status::resource_exhausted("too big")),
        ]);
        let (mut body, replay) = ReplayBody::wrap(tonic::body::Body::new(
            http_body_util::StreamBody::new(frames),
        ));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "kept");
        let failed = body.frame().await.unwrap().unwrap_err();
        assert_eq!(failed.code(), tonic::Code::ResourceExhausted);
        assert!(replay.body().is_none());
    }

    #[test]
    fn trailers_only_statuses_are_read_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(crate::metrics::status_in(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            crate::metrics::status_in(&headers),
            Some(tonic::Code::Unavailable)
        );
    }
}
