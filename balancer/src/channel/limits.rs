//! Message size limits from the service config: `maxRequestMessageBytes`
//! and `maxResponseMessageBytes`.
//!
//! A gRPC message travels as a 5-byte prefix (a compressed flag and a
//! big-endian `u32` length) and then its bytes. [`FrameScanner`] reads the
//! prefixes in a byte stream cut anywhere, and reports the first message
//! longer than its limit. The channel puts one on each side of a call whose
//! method config sets a limit, as grpc-go does:
//!
//! - a request message over the limit fails the call with
//!   RESOURCE_EXHAUSTED before any of the message is sent (the stream is
//!   reset);
//! - a response message over the limit fails the call with
//!   RESOURCE_EXHAUSTED as soon as its prefix arrives — before its bytes
//!   are buffered anywhere — and the stream is reset.
//!
//! The length checked is the length on the wire (compressed, if the
//! message is).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::service_config::MethodConfig;

/// Reads the gRPC message prefixes in a byte stream and checks each
/// message's length against a limit.
#[derive(Debug, Clone)]
pub(crate) struct FrameScanner {
    limit: u64,
    /// The prefix read so far.
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl FrameScanner {
    pub(crate) fn new(limit: u64) -> Self {
        FrameScanner {
            limit,
            prefix: [0; 5],
            have: 0,
            remaining: 0,
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Reads the next bytes of the stream; an error for the first message
    /// longer than the limit (the scanner is then spent).
    pub(crate) fn scan(&mut self, data: &[u8]) -> Result<(), Oversized> {
        let whole = data.len();
        let mut data = data;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                data = &data[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            let prefix_at = if self.have == 0 {
                whole - data.len()
            } else {
                0
            };
            let take = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have == 5 {
                self.have = 0;
                let length = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                if length > self.limit {
                    return Err(Oversized {
                        length,
                        before: prefix_at,
                    });
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

/// A message over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Oversized {
    /// Its length.
    pub(crate) length: u64,
    /// How many bytes of the chunk scanned come before its prefix: the
    /// messages before it, which are within the limit and still delivered.
    pub(crate) before: usize,
}

/// Hands a gRPC byte stream's frames on up to the first message over the
/// limit, then fails. Messages before it are delivered first, even when
/// they share its chunk: the chunk is cut before its prefix and the
/// failure held back for the next poll.
#[derive(Debug)]
pub(crate) struct MessageGuard {
    scanner: FrameScanner,
    /// The failure, held back while the messages before it are handed on.
    held: Option<tonic::Status>,
    /// A message over the limit was found.
    spent: bool,
}

impl MessageGuard {
    pub(crate) fn new(limit: u64) -> Self {
        MessageGuard {
            scanner: FrameScanner::new(limit),
            held: None,
            spent: false,
        }
    }

    /// The failure held back for this poll, if there is one.
    pub(crate) fn take_held(&mut self) -> Option<tonic::Status> {
        self.held.take()
    }

    /// Whether a message over the limit was found (the stream's rest is
    /// not wanted).
    pub(crate) fn is_spent(&self) -> bool {
        self.spent
    }

    /// `frame` as it may be handed on: whole, cut before the first message
    /// over the limit (the failure is then held for the next poll), or the
    /// failure, made by `too_large(length, limit)`.
    pub(crate) fn pass(
        &mut self,
        frame: Frame<Bytes>,
        too_large: impl FnOnce(u64, u64) -> tonic::Status,
    ) -> Result<Frame<Bytes>, tonic::Status> {
        let Some(data) = frame.data_ref() else {
            return Ok(frame);
        };
        let Err(oversized) = self.scanner.scan(data) else {
            return Ok(frame);
        };
        self.spent = true;
        let status = too_large(oversized.length, self.scanner.limit());
        if oversized.before == 0 {
            return Err(status);
        }
        let before = data.slice(..oversized.before);
        self.held = Some(status);
        Ok(Frame::data(before))
    }
}

/// The limits of one call, shared by its request body, the call and its
/// response body. A request-side violation is recorded here, so the call
/// fails with it rather than with the stream reset it causes.
#[derive(Debug)]
pub(crate) struct CallLimits {
    request: Option<u64>,
    response: Option<u64>,
    violation: OnceLock<tonic::Status>,
}

impl CallLimits {
    /// The limits a method config sets, if it sets any.
    pub(crate) fn of(method: &MethodConfig) -> Option<Arc<CallLimits>> {
        let (request, response) = (
            method.max_request_message_bytes,
            method.max_response_message_bytes,
        );
        (request.is_some() || response.is_some()).then(|| {
            Arc::new(CallLimits {
                request,
                response,
                violation: OnceLock::new(),
            })
        })
    }

    /// The request body, checked against the request limit (if there is
    /// one).
    pub(crate) fn wrap_request(self: &Arc<Self>, body: tonic::body::Body) -> tonic::body::Body {
        match self.request {
            Some(limit) => tonic::body::Body::new(LimitedRequest {
                inner: body,
                guard: MessageGuard::new(limit),
                limits: self.clone(),
            }),
            None => body,
        }
    }

    /// How the call failed: the limit its request broke, if it broke one.
    pub(crate) fn violation(&self) -> Option<tonic::Status> {
        self.violation.get().cloned()
    }

    /// A guard for the response's messages, if they have a limit.
    pub(crate) fn response_guard(&self) -> Option<MessageGuard> {
        self.response.map(MessageGuard::new)
    }
}

/// The status of a response message over the limit.
pub(crate) fn response_too_large(length: u64, limit: u64) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "received a message larger than the method's maxResponseMessageBytes ({length} > {limit})"
    ))
}

/// A request body that fails at the first message over the limit, before
/// handing on any of its bytes, and records the failure for the call.
struct LimitedRequest {
    inner: tonic::body::Body,
    guard: MessageGuard,
    limits: Arc<CallLimits>,
}

impl Body for LimitedRequest {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if let Some(status) = this.guard.take_held() {
            return Poll::Ready(Some(Err(status)));
        }
        let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let limits = &this.limits;
        Poll::Ready(Some(this.guard.pass(frame, |length, limit| {
            let status = tonic::Status::resource_exhausted(format!(
                "trying to send a message larger than the method's maxRequestMessageBytes ({length} > {limit})"
            ));
            let _ = limits.violation.set(status.clone());
            status
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, length as usize));
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_however_the_stream_is_cut() {
        let stream: Vec<u8> = [0, 3, 10, 1, 10, 0].into_iter().flat_map(message).collect();
        for cut in 1..stream.len() {
            let mut scanner = FrameScanner::new(10);
            for piece in stream.chunks(cut) {
                assert_eq!(scanner.scan(piece), Ok(()), "cut every {cut}");
            }
        }
    }

    #[test]
    fn the_first_message_over_the_limit_is_reported_from_its_prefix() {
        let mut stream = message(10);
        stream.extend(message(11));
        for cut in 1..stream.len() {
            let mut scanner = FrameScanner::new(10);
            let failed = stream
                .chunks(cut)
                .find_map(|piece| scanner.scan(piece).err());
            assert_eq!(failed.map(|o| o.length), Some(11), "cut every {cut}");
        }
        // Only the prefix is needed.
        let mut scanner = FrameScanner::new(10);
        assert_eq!(
            scanner.scan(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(Oversized {
                length: u64::from(u32::MAX),
                before: 0
            })
        );
    }

    #[test]
    fn the_messages_before_an_oversized_one_are_counted_out() {
        let mut stream = message(3);
        stream.extend(message(2));
        stream.extend(message(11));
        let mut scanner = FrameScanner::new(10);
        assert_eq!(
            scanner.scan(&stream),
            Err(Oversized {
                length: 11,
                before: 8 + 7
            })
        );
        // A prefix begun in an earlier chunk: nothing of this one is before it.
        let mut scanner = FrameScanner::new(10);
        assert_eq!(scanner.scan(&stream[..17]), Ok(()));
        assert_eq!(
            scanner.scan(&stream[17..]),
            Err(Oversized {
                length: 11,
                before: 0
            })
        );
    }

    #[test]
    fn a_zero_limit_allows_only_empty_messages() {
        let mut scanner = FrameScanner::new(0);
        assert_eq!(scanner.scan(&message(0)), Ok(()));
        assert_eq!(scanner.scan(&message(1)).map_err(|o| o.length), Err(1));
    }

    #[test]
    fn limits_come_from_the_method_config() {
        assert!(CallLimits::of(&MethodConfig::default()).is_none());
        let limits = CallLimits::of(&MethodConfig {
            max_response_message_bytes: Some(5),
            ..MethodConfig::default()
        })
        .unwrap();
        let mut guard = limits.response_guard().unwrap();
        let mut over = vec![0, 0, 0, 0, 2, 1, 2];
        over.extend_from_slice(&[0, 0, 0, 0, 6]);
        let cut = guard
            .pass(Frame::data(Bytes::from(over)), |length, limit| {
                response_too_large(length, limit)
            })
            .unwrap();
        assert_eq!(
            cut.into_data().unwrap().len(),
            7,
            "the message before is kept"
        );
        assert!(guard.is_spent());
        let held = guard.take_held().unwrap();
        assert!(held.message().contains("(6 > 5)"), "{held:?}");
        assert!(limits.violation().is_none());
    }
}
