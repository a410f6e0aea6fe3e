//! A response body read straight from an `h2` stream: DATA frames, then
//! trailers, with each chunk's flow-control window given back as it is
//! handed on.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::OpenStream;
use super::exchange::Pump;

/// The body of a response on a waypost subchannel.
#[derive(Debug)]
pub(crate) struct RecvBody {
    recv: h2::RecvStream,
    /// All DATA has been read; trailers (if any) are next.
    data_done: bool,
    /// Counts the stream as open while the body is read (for keepalive).
    _open: Option<OpenStream>,
    /// The rest of a streaming request whose response came first, when no
    /// runtime was there to give it a task: written as this body is read.
    request: Option<Pump>,
}

impl RecvBody {
    pub(super) fn new(
        recv: h2::RecvStream,
        open: Option<OpenStream>,
        request: Option<Pump>,
    ) -> Self {
        RecvBody {
            recv,
            data_done: false,
            _open: open,
            request,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if let Some(request) = &mut self.request
            && request.poll_send(cx).is_ready()
        {
            self.request = None;
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The caller has the bytes: let the server send more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
