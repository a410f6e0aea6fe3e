//! Bodies: the byte stream one side of an exchange sends (DATA frames, then
//! END or an error trailer) and the [`Body`] the other side reads it from.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

use crate::conn::{InFrame, Shared};
use crate::error::Error;
use crate::frame::{self, End, ErrorAssembler, Frame, FrameType};

/// What a body's sender reads its bytes from.
pub type Source = Box<dyn AsyncRead + Send + Unpin>;

/// The receiving half of a connection, lent to a [`Body`] for one body and
/// handed back at its clean end.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) rx: mpsc::Receiver<InFrame>,
    pub(crate) shared: Arc<Shared>,
}

impl Inbound {
    /// The next body-carrying frame, or the connection's failure.
    pub(crate) async fn next(&mut self) -> Result<Frame, Error> {
        match self.rx.recv().await {
            Some(InFrame::Frame(frame)) => Ok(frame),
            Some(InFrame::Failed(e)) => Err(e),
            None => Err(self.shared.failure().unwrap_or(Error::Closed)),
        }
    }
}

/// Called with the inbound half when the body ends: `true` after a clean
/// END or trailer, `false` when it was dropped early (the peer was sent
/// CANCEL and will end its body with a CANCELLED trailer, which the
/// callee should drain before closing).
type OnEnd = Box<dyn FnOnce(Inbound, bool) + Send>;

/// A body arriving from the peer: a [`Stream`] of [`Bytes`] (no copies)
/// and an [`AsyncRead`].
///
/// It ends with `None` (or EOF) when the peer's END arrived and its byte
/// count (and CRC-32, when agreed) matched; with an error when the peer
/// sent an error trailer (`Error::Status`) or the connection failed.
/// Dropping it before the end sends CANCEL: the peer stops sending and
/// its handler sees the cancellation.
pub struct Body {
    inbound: Option<Inbound>,
    on_end: Option<OnEnd>,
    state: State,
    received: u64,
    crc: Option<crc32fast::Hasher>,
    error: ErrorAssembler,
    /// Bytes taken off the stream but not yet read through `AsyncRead`.
    leftover: Bytes,
    /// The connection, to send CANCEL when dropped early.
    shared: Option<Arc<Shared>>,
}

enum State {
    Streaming,
    Done,
    Failed(Error),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Body {
    pub(crate) fn new(inbound: Inbound, on_end: OnEnd) -> Body {
        let crc = inbound.shared.checksums.then(crc32fast::Hasher::new);
        Body {
            shared: Some(inbound.shared.clone()),
            inbound: Some(inbound),
            on_end: Some(on_end),
            state: State::Streaming,
            received: 0,
            crc,
            error: ErrorAssembler::default(),
            leftover: Bytes::new(),
        }
    }

    /// An already finished, empty body.
    pub(crate) fn empty() -> Body {
        Body {
            inbound: None,
            shared: None,
            on_end: None,
            state: State::Done,
            received: 0,
            crc: None,
            error: ErrorAssembler::default(),
            leftover: Bytes::new(),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next chunk, `None` at a clean end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, Error>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Reads the whole body into memory, refusing more than `limit` bytes.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, Error> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            if all.len() + chunk.len() > limit {
                return Err(Error::Protocol(format!("body larger than {limit} bytes")));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match &self.state {
                State::Done => return Poll::Ready(None),
                State::Failed(e) => return Poll::Ready(Some(Err(e.clone()))),
                State::Streaming => {}
            }
            let Some(inbound) = self.inbound.as_mut() else {
                self.state = State::Failed(Error::Closed);
                continue;
            };
            let result = match ready!(inbound.rx.poll_recv(cx)) {
                Some(InFrame::Frame(frame)) => Ok(frame),
                Some(InFrame::Failed(e)) => Err(e),
                None => Err(inbound.shared.failure().unwrap_or(Error::Closed)),
            };
            match self.on_frame(result) {
                Some(out) => return Poll::Ready(Some(out)),
                None => continue,
            }
        }
    }

    /// Applies one frame; `Some` when the caller gets something.
    fn on_frame(&mut self, result: Result<Frame, Error>) -> Option<Result<Bytes, Error>> {
        let frame = match result {
            Ok(frame) => frame,
            Err(e) => return Some(Err(self.fail(e))),
        };
        if self.error.in_progress() && frame.kind != FrameType::Error {
            return Some(Err(self.fail(Error::Protocol(
                "error trailer interrupted by another frame".into(),
            ))));
        }
        match frame.kind {
            FrameType::Data => {
                self.received += frame.payload.len() as u64;
                if let Some(crc) = &mut self.crc {
                    crc.update(&frame.payload);
                }
                Some(Ok(frame.payload))
            }
            FrameType::End => {
                let end = match End::decode(frame.flags, frame.payload) {
                    Ok(end) => end,
                    Err(e) => return Some(Err(self.fail(e.into()))),
                };
                if end.bytes != self.received {
                    return Some(Err(self.fail(Error::Integrity(format!(
                        "END says {} bytes, {} arrived",
                        end.bytes, self.received
                    )))));
                }
                if let (Some(want), Some(crc)) = (end.crc32, self.crc.take()) {
                    let got = crc.finalize();
                    if want != got {
                        return Some(Err(self.fail(Error::Integrity(format!(
                            "CRC-32 mismatch: END says {want:08x}, data gives {got:08x}"
                        )))));
                    }
                }
                self.state = State::Done;
                if let (Some(inbound), Some(on_end)) = (self.inbound.take(), self.on_end.take()) {
                    on_end(inbound, true);
                }
                None
            }
            FrameType::Error => match self.error.push(frame.flags, &frame.payload) {
                Ok(None) => None,
                Ok(Some((code, message))) => {
                    // A clean end of the exchange in this direction.
                    let error = Error::Status {
                        code: tonic::Code::from_i32(code),
                        message,
                    };
                    self.state = State::Failed(error.clone());
                    if let (Some(inbound), Some(on_end)) = (self.inbound.take(), self.on_end.take())
                    {
                        on_end(inbound, true);
                    }
                    Some(Err(error))
                }
                Err(e) => Some(Err(self.fail(e.into()))),
            },
            other => Some(Err(
                self.fail(Error::Protocol(format!("{other:?} frame inside a body")))
            )),
        }
    }

    fn fail(&mut self, error: Error) -> Error {
        if let Some(inbound) = &self.inbound {
            inbound.shared.fail(error.clone());
        }
        self.state = State::Failed(error.clone());
        error
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if matches!(self.state, State::Streaming) {
            if let Some(shared) = &self.shared {
                shared.send_cancel();
            }
            if let (Some(inbound), Some(on_end)) = (self.inbound.take(), self.on_end.take()) {
                on_end(inbound, false);
            }
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl AsyncRead for Body {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.leftover.is_empty() {
            match ready!(this.poll_chunk(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(chunk)) => this.leftover = chunk,
            }
        }
        let n = this.leftover.len().min(buf.remaining());
        buf.put_slice(&this.leftover[..n]);
        this.leftover.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Sends `source` as this direction's body: DATA frames of at most
/// `chunk_size` (and the agreed frame limit), then END with the byte count
/// (and CRC-32 when agreed). A read error becomes an error trailer
/// (`UNKNOWN` with the error's text). Stops with `CancelledByPeer` when
/// the receiver cancels.
pub(crate) async fn send(
    tx: &mpsc::Sender<Frame>,
    shared: &Shared,
    source: Option<Source>,
) -> Result<u64, Error> {
    let mut sent = 0u64;
    let mut crc = shared.checksums.then(crc32fast::Hasher::new);
    if let Some(mut source) = source {
        let chunk = shared
            .settings
            .chunk_size
            .clamp(1, shared.max_frame as usize);
        let mut pool = crate::pool::ChunkPool::new();
        loop {
            let mut buf = pool.take(chunk);
            let mut limited = (&mut buf).limit(chunk);
            let read = tokio::select! {
                biased;
                _ = shared.peer_cancelled.cancelled() => return Err(stop(tx, shared).await),
                _ = shared.closed() => return Err(cancelled(shared)),
                read = source.read_buf(&mut limited) => read,
            };
            let n = match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let message = format!("the sender's source failed: {e}");
                    send_error(tx, shared, tonic::Code::Unknown, &message).await?;
                    return Err(Error::Status {
                        code: tonic::Code::Unknown,
                        message,
                    });
                }
            };
            let data = buf.freeze();
            if let Some(crc) = &mut crc {
                crc.update(&data);
            }
            sent += n as u64;
            push(
                tx,
                shared,
                Frame {
                    kind: FrameType::Data,
                    flags: 0,
                    payload: data,
                },
            )
            .await?;
        }
    }
    let (flags, payload) = End {
        bytes: sent,
        crc32: crc.map(crc32fast::Hasher::finalize),
    }
    .encode();
    push(
        tx,
        shared,
        Frame {
            kind: FrameType::End,
            flags,
            payload,
        },
    )
    .await?;
    Ok(sent)
}

/// Ends a body the receiver cancelled with a CANCELLED trailer, so the
/// receiver can drain up to it; returns why the sender stopped.
async fn stop(tx: &mpsc::Sender<Frame>, shared: &Shared) -> Error {
    let why = cancelled(shared);
    if why == Error::CancelledByPeer {
        let _ = send_error(
            tx,
            shared,
            tonic::Code::Cancelled,
            "cancelled by the receiver",
        )
        .await;
    }
    why
}

/// Drains a body this side dropped early, up to the peer's END or trailer
/// (bounded by the idle timeout). Returns whether the connection is back
/// at an exchange boundary.
pub(crate) async fn drain(inbound: &mut Inbound) -> bool {
    let bound = inbound.shared.settings.idle_timeout;
    let run = async {
        loop {
            match inbound.next().await {
                Ok(frame) if frame.kind == FrameType::Data => {}
                Ok(frame) if frame.kind == FrameType::End => return true,
                Ok(frame) if frame.kind == FrameType::Error => {
                    if frame.flags & frame::FLAG_MORE == 0 {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    };
    tokio::time::timeout(bound, run).await.unwrap_or(false)
}

/// Why a sender had to stop: the peer's CANCEL wins over the connection
/// failure that usually follows it.
fn cancelled(shared: &Shared) -> Error {
    if shared
        .cancel_received
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Error::CancelledByPeer;
    }
    shared.failure().unwrap_or(Error::CancelledByPeer)
}

/// Queues one frame for the writer.
pub(crate) async fn push(
    tx: &mpsc::Sender<Frame>,
    shared: &Shared,
    frame: Frame,
) -> Result<(), Error> {
    tokio::select! {
        biased;
        _ = shared.peer_cancelled.cancelled() => Err(cancelled(shared)),
        sent = tx.send(frame) => sent.map_err(|_| cancelled(shared)),
    }
}

/// Sends an error trailer, split over as many frames as it needs.
pub(crate) async fn send_error(
    tx: &mpsc::Sender<Frame>,
    shared: &Shared,
    code: tonic::Code,
    message: &str,
) -> Result<(), Error> {
    for (flags, payload) in frame::encode_error(code as i32, message, shared.max_frame) {
        tx.send(Frame {
            kind: FrameType::Error,
            flags,
            payload,
        })
        .await
        .map_err(|_| shared.failure().unwrap_or(Error::Closed))?;
    }
    Ok(())
}
