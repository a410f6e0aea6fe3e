//! ADS streams served from their connection's task, like BalanceLoad's:
//! each stream's [`AdsResponses`] (its requests, its subscriptions, what
//! is due) is polled in the connection's set of ADS streams — woken on
//! its own when its client sends or a service it follows changes, but
//! with no task, body or encoder of its own. A response is framed once
//! (its shared resource encodings copied behind this stream's header) and
//! written within the stream's window; the next one is not asked for
//! until it is out, so a client that stops reading holds one response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::StreamExt;
use h2::SendStream;
use tonic::Status;

use super::grpc::{poll_send, trailers};
use crate::balance::frames;
use crate::xds::service::AdsResponses;

/// One ADS stream's sending side, run to its end.
pub(super) struct ServedAds {
    responses: AdsResponses,
    send: SendStream<Bytes>,
    unsent: Option<Bytes>,
}

impl ServedAds {
    pub(super) fn new(responses: AdsResponses, send: SendStream<Bytes>) -> ServedAds {
        ServedAds {
            responses,
            send,
            unsent: None,
        }
    }

    fn finish(&mut self, status: &Status) -> Poll<()> {
        let _ = self.send.send_trailers(trailers(status));
        Poll::Ready(())
    }
}

impl Future for ServedAds {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.send.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if ready!(poll_send(&mut this.send, &mut this.unsent, cx)).is_err() {
                return Poll::Ready(());
            }
            match ready!(this.responses.poll_next_unpin(cx)) {
                Some(Ok(response)) => this.unsent = Some(frames::encode(&response)),
                Some(Err(status)) => return this.finish(&status),
                None => return this.finish(&Status::ok("")),
            }
        }
    }
}
