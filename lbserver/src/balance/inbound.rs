//! What one BalanceLoad client sends: its initial request (within a
//! deadline), then ClientStats reports, read at most one per half report
//! interval so HTTP/2 flow control holds a flooding client back at its own
//! end (nothing is dropped and nothing accumulates here).
//!
//! An [`Inbound`] is a stream of at most two [`Event`]s for its
//! connection: `Opened` once a valid initial request named a balanced
//! service, then `Ended`. The connection polls every stream's `Inbound`
//! in one set, and only the streams whose client sent something (or whose
//! timer fired) are polled.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Sleep;
use tonic::Status;
use waypost_proto::grpc::lb::v1::LoadBalanceRequest;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;

use super::frames::{FrameError, MessageReader};
use super::{MAX_NAME_BYTES, Shared};
use crate::registry::Service;

/// What a stream's client did.
#[derive(Debug)]
pub(crate) enum Event {
    /// Its initial request named this service, which numbered the
    /// client (for its subset and its reported rate).
    Opened(Arc<Service>, u64),
    /// Its side is over: with the status to end the stream with, or
    /// `None` to end it cleanly (the client finished or reset it).
    Ended(Option<Status>),
}

enum Phase {
    /// Waiting for the initial request; the timer is its deadline.
    Initial,
    /// Reading reports; the timer (when set) holds the next one back.
    Reports {
        service: Arc<Service>,
        client: u64,
    },
    Done,
}

/// The client side of one BalanceLoad stream.
pub(crate) struct Inbound {
    id: u32,
    recv: h2::RecvStream,
    reader: MessageReader,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
    shared: Arc<Shared>,
}

impl Inbound {
    pub(crate) fn new(id: u32, recv: h2::RecvStream, shared: Arc<Shared>) -> Inbound {
        Inbound {
            id,
            recv,
            reader: MessageReader::new(shared.max_request_bytes),
            phase: Phase::Initial,
            timer: Some(Box::pin(tokio::time::sleep(
                shared.options.initial_request_timeout,
            ))),
            shared,
        }
    }

    /// The next message from the client: `Ok(None)` when its side ended.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<LoadBalanceRequest>, Status>> {
        loop {
            match self.reader.next_message() {
                Ok(Some(bytes)) => return Poll::Ready(decode(bytes).map(Some)),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Err(frame_status(error))),
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    // The bytes are ours now (bounded by the reader): let
                    // the client send more.
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    if let Err(error) = self.reader.feed(chunk) {
                        return Poll::Ready(Err(frame_status(error)));
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Ok(None)),
                Poll::Ready(None) if self.reader.is_partial() => {
                    return Poll::Ready(Err(Status::internal("the stream ended inside a message")));
                }
                Poll::Ready(None) => return Poll::Ready(Ok(None)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn end(&mut self, status: Option<Status>) -> Poll<Option<(u32, Event)>> {
        self.phase = Phase::Done;
        self.timer = None;
        Poll::Ready(Some((self.id, Event::Ended(status))))
    }

    fn poll_initial(&mut self, cx: &mut Context<'_>) -> Poll<Option<(u32, Event)>> {
        let first = match self.poll_message(cx) {
            Poll::Ready(Ok(Some(first))) => first,
            Poll::Ready(Ok(None)) => {
                return self.end(Some(Status::invalid_argument(
                    "the stream ended before an initial request",
                )));
            }
            Poll::Ready(Err(status)) => return self.end(Some(status)),
            Poll::Pending => {
                let deadline = self.timer.as_mut().expect("set while waiting");
                if deadline.as_mut().poll(cx).is_ready() {
                    return self.end(Some(Status::deadline_exceeded(format!(
                        "no initial request within {:?}",
                        self.shared.options.initial_request_timeout
                    ))));
                }
                return Poll::Pending;
            }
        };
        let Some(LoadBalanceRequestType::InitialRequest(initial)) = first.load_balance_request_type
        else {
            return self.end(Some(Status::invalid_argument(
                "the first message must be an initial_request",
            )));
        };
        if initial.name.len() >= MAX_NAME_BYTES {
            return self.end(Some(Status::invalid_argument(format!(
                "the service name is {} bytes; it must be shorter than {MAX_NAME_BYTES}",
                initial.name.len()
            ))));
        }
        let Some(service) = self.shared.registry.find(&initial.name) else {
            return self.end(Some(Status::not_found(format!(
                "no service {:?} is balanced here",
                initial.name
            ))));
        };
        self.timer = None;
        let client = service
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.phase = Phase::Reports {
            service: service.clone(),
            client,
        };
        Poll::Ready(Some((self.id, Event::Opened(service, client))))
    }

    fn poll_reports(&mut self, cx: &mut Context<'_>) -> Poll<Option<(u32, Event)>> {
        loop {
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.timer = None;
            }
            match self.poll_message(cx) {
                Poll::Ready(Ok(Some(LoadBalanceRequest {
                    load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(stats)),
                }))) => {
                    let Phase::Reports { service, client } = &self.phase else {
                        unreachable!("called in the reports phase");
                    };
                    service.record_report(*client, &stats);
                    let half = service.config.client_stats_interval / 2;
                    self.timer = Some(Box::pin(tokio::time::sleep(half)));
                }
                Poll::Ready(Ok(Some(_))) => {
                    return self.end(Some(Status::invalid_argument(
                        "only client_stats may follow the initial request",
                    )));
                }
                Poll::Ready(Ok(None)) => return self.end(None),
                Poll::Ready(Err(status)) => return self.end(Some(status)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for Inbound {
    type Item = (u32, Event);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(u32, Event)>> {
        let this = &mut *self;
        match this.phase {
            Phase::Initial => this.poll_initial(cx),
            Phase::Reports { .. } => this.poll_reports(cx),
            Phase::Done => Poll::Ready(None),
        }
    }
}

fn decode(bytes: Bytes) -> Result<LoadBalanceRequest, Status> {
    prost::Message::decode(bytes)
        .map_err(|error| Status::internal(format!("failed to decode the request: {error}")))
}

/// gRPC's statuses for framing faults: an oversized message is
/// RESOURCE_EXHAUSTED (as grpc-go and C-core say), a compressed one
/// UNIMPLEMENTED (no compression is offered).
fn frame_status(error: FrameError) -> Status {
    match error {
        FrameError::TooLong { .. } => Status::resource_exhausted(error.to_string()),
        FrameError::Compressed => Status::unimplemented(error.to_string()),
    }
}
