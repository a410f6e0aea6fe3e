//! The driver of one data connection after its handshake: a reader task
//! and a writer task around the socket, with heartbeats and the idle
//! timeout. Exchanges (`exchange.rs`) talk to it through two bounded
//! queues, so memory per connection is bounded by
//! `queue_frames × max_frame` in each direction.
//!
//! Rules (zrepl's good ideas, PROTOCOL.md §6):
//! - the writer sends HEARTBEAT only when it has written nothing for
//!   `heartbeat_interval`;
//! - the reader fails the connection when *nothing* (not even a heartbeat)
//!   arrived for `idle_timeout` while it was ready to receive — time spent
//!   waiting for our own application to make room does not count;
//! - a write that makes no progress fails only if nothing was received for
//!   `idle_timeout` either: a peer that sends heartbeats is slow, not dead.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::Inbound;
use crate::error::Error;
use crate::frame::{Decoder, Frame, FrameType, HEADER_LEN};

/// Timers and queue sizes of data connections.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// Send a HEARTBEAT after this long without writing (default 5 s).
    pub heartbeat_interval: Duration,
    /// Fail after this long without receiving anything (default 30 s; must
    /// be above `heartbeat_interval`).
    pub idle_timeout: Duration,
    /// Frames buffered per direction (default 4).
    pub queue_frames: usize,
    /// Bytes read from a body source per DATA frame (default 256 KiB,
    /// capped by the agreed frame limit).
    pub chunk_size: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            heartbeat_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            queue_frames: 4,
            chunk_size: 256 * 1024,
        }
    }
}

/// What the reader hands to the exchange layer: body-carrying frames
/// (REQUEST, RESPONSE, DATA, END, ERROR) or the connection's end.
#[derive(Debug)]
pub(crate) enum InFrame {
    Frame(Frame),
    Failed(Error),
}

/// State both tasks and the exchange layer share.
#[derive(Debug)]
pub(crate) struct Shared {
    start: Instant,
    /// Milliseconds since `start` of the last byte received.
    last_received: AtomicU64,
    /// The first failure; later ones are ignored.
    failure: Mutex<Option<Error>>,
    /// Fired when the peer sent CANCEL or RESET, or the connection failed:
    /// whoever sends a body on this connection stops.
    pub(crate) peer_cancelled: CancellationToken,
    /// The peer sent CANCEL.
    pub(crate) cancel_received: AtomicBool,
    /// We must send a CANCEL (the writer sends it ahead of queued frames).
    cancel_pending: AtomicBool,
    /// We sent or must send CANCEL: the connection is not reused.
    pub(crate) we_cancelled: AtomicBool,
    wake_writer: Notify,
    /// Set to make the writer send RESET and close.
    closing: CancellationToken,
    pub(crate) max_frame: u32,
    pub(crate) settings: ConnSettings,
    /// Both sides agreed on CRC-32 checksums of bodies.
    pub(crate) checksums: bool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn received(&self) {
        self.last_received.store(self.now_ms(), Ordering::Relaxed);
    }

    fn since_received(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_received.load(Ordering::Relaxed)),
        )
    }

    /// Records the connection's failure (first one wins) and stops
    /// everything sending on it.
    pub(crate) fn fail(&self, error: Error) {
        {
            let mut f = self.failure.lock();
            if f.is_none() {
                *f = Some(error);
            }
        }
        self.peer_cancelled.cancel();
        self.closing.cancel();
    }

    /// The failure, if any.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failure.lock().clone()
    }

    /// Asks the writer to send CANCEL: we stop receiving the peer's body.
    pub(crate) fn send_cancel(&self) {
        self.we_cancelled.store(true, Ordering::SeqCst);
        self.cancel_pending.store(true, Ordering::SeqCst);
        self.wake_writer.notify_one();
    }

    /// Whether an exchange on it ended with no cancel and no failure.
    pub(crate) fn reusable(&self) -> bool {
        self.failure.lock().is_none()
            && !self.peer_cancelled.is_cancelled()
            && !self.we_cancelled.load(Ordering::SeqCst)
    }

    /// Makes the writer send RESET and close.
    pub(crate) fn close(&self) {
        self.closing.cancel();
    }

    /// Completes once the connection is closing.
    pub(crate) async fn closed(&self) {
        self.closing.cancelled().await;
    }
}

/// One running data connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) tx: mpsc::Sender<Frame>,
    /// Lent to a [`crate::Body`] while one is being received.
    pub(crate) inbound: Option<Inbound>,
    pub(crate) shared: Arc<Shared>,
    _reader: tokio_util::task::AbortOnDropHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer sends what is queued, then RESET, then closes.
        self.shared.close();
    }
}

impl Conn {
    /// Starts the tasks on a handshaken byte stream.
    pub(crate) fn start<IO>(io: IO, max_frame: u32, checksums: bool, settings: ConnSettings) -> Conn
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let shared = Arc::new(Shared {
            start: Instant::now(),
            last_received: AtomicU64::new(0),
            failure: Mutex::new(None),
            peer_cancelled: CancellationToken::new(),
            cancel_pending: AtomicBool::new(false),
            cancel_received: AtomicBool::new(false),
            we_cancelled: AtomicBool::new(false),
            wake_writer: Notify::new(),
            closing: CancellationToken::new(),
            max_frame,
            checksums,
            settings: settings.clone(),
        });
        let (out_tx, out_rx) = mpsc::channel(settings.queue_frames.max(1));
        let (in_tx, in_rx) = mpsc::channel(settings.queue_frames.max(1));
        let reader = tokio::spawn(read_loop(read, in_tx, shared.clone()));
        tokio::spawn(write_loop(write, out_rx, shared.clone()));
        Conn {
            tx: out_tx,
            inbound: Some(Inbound {
                rx: in_rx,
                shared: shared.clone(),
            }),
            shared,
            _reader: tokio_util::task::AbortOnDropHandle::new(reader),
        }
    }
}

/// A reading connection quiet for this long frees its unused bulk buffers.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    tx: mpsc::Sender<InFrame>,
    shared: Arc<Shared>,
) {
    let mut decoder = Decoder::new(shared.max_frame);
    // Frames are cut from `buf` and handed on; when it runs out of room a
    // pooled allocation takes over (see `pool`), not a fresh one.
    let mut pool = crate::pool::ChunkPool::new();
    let mut buf = pool.take(64 * 1024);
    let idle = shared.settings.idle_timeout;
    loop {
        // Room for one more frame first: while our application is slow we
        // stop reading (TCP pushes back on the peer) and the idle clock
        // does not run.
        let Ok(permit) = tx.reserve().await else {
            return; // the exchange layer is gone
        };
        shared.received();
        let result = loop {
            match decoder.decode(&mut buf) {
                Err(e) => break Err(Error::Frame(e)),
                Ok(Some(frame)) => match frame.kind {
                    FrameType::Heartbeat => continue,
                    FrameType::Cancel => {
                        shared.cancel_received.store(true, Ordering::SeqCst);
                        shared.peer_cancelled.cancel();
                        continue;
                    }
                    FrameType::Reset => {
                        let reason = String::from_utf8_lossy(&frame.payload).into_owned();
                        break Err(Error::Reset(reason));
                    }
                    _ => break Ok(frame),
                },
                Ok(None) => {}
            }
            let wanted = match decoder.wanted(&buf) {
                Ok(n) => n,
                Err(e) => break Err(Error::Frame(e)),
            };
            // Room only for what the checked header allows.
            let needed = wanted.max(HEADER_LEN) - buf.len().min(wanted);
            if buf.capacity() - buf.len() < needed {
                let mut fresh = pool.take((buf.len() + needed).max(64 * 1024));
                fresh.extend_from_slice(&buf);
                buf = fresh;
            }
            // Between frames a read may wait long: if it did, the bulk
            // buffers are no longer needed.
            let between_frames = buf.is_empty().then(tokio::time::Instant::now);
            let read_result = tokio::time::timeout(idle, read.read_buf(&mut buf)).await;
            if between_frames.is_some_and(|t| t.elapsed() >= RELEASE_AFTER) {
                pool.release_unused();
            }
            match read_result {
                Err(_) => break Err(Error::Timeout(idle)),
                Ok(Err(e)) => break Err(Error::io(&e)),
                Ok(Ok(0)) => {
                    break Err(if buf.is_empty() {
                        Error::Closed
                    } else {
                        Error::Io {
                            kind: std::io::ErrorKind::UnexpectedEof,
                            message: format!(
                                "connection closed inside a frame ({} of {wanted} bytes)",
                                buf.len()
                            ),
                        }
                    });
                }
                Ok(Ok(_)) => shared.received(),
            }
        };
        match result {
            Ok(frame) => permit.send(InFrame::Frame(frame)),
            Err(error) => {
                shared.fail(error.clone());
                permit.send(InFrame::Failed(error));
                return;
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
) {
    let heartbeat = shared.settings.heartbeat_interval;
    let mut last_write = Instant::now();
    loop {
        let frame = if shared.cancel_pending.swap(false, Ordering::SeqCst) {
            Frame::empty(FrameType::Cancel)
        } else {
            tokio::select! {
                biased;
                _ = shared.closing.cancelled() => break,
                _ = shared.wake_writer.notified() => continue,
                frame = rx.recv() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
                _ = tokio::time::sleep_until(last_write + heartbeat) => Frame::empty(FrameType::Heartbeat),
            }
        };
        if let Err(e) = write_frame(&mut write, &frame, &shared).await {
            shared.fail(e);
            return;
        }
        last_write = Instant::now();
    }
    // Closing: what is queued goes out, then RESET, then FIN — bounded by
    // the idle timeout. A peer that broke the rules gets the reason in the
    // RESET before we close.
    if let Some(e @ (Error::Frame(_) | Error::Protocol(_) | Error::Integrity(_))) = shared.failure()
    {
        let mut reason = e.to_string();
        let mut cut = reason.len().min(1024).min(shared.max_frame as usize);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        let reset = Frame {
            kind: FrameType::Reset,
            flags: 0,
            payload: bytes::Bytes::from(reason),
        };
        let _ = tokio::time::timeout(shared.settings.heartbeat_interval, async {
            write_frame(&mut write, &reset, &shared).await?;
            write.shutdown().await.map_err(|e| Error::io(&e))
        })
        .await;
        return;
    }
    if shared.failure().is_none() {
        let flush = async {
            while let Ok(frame) = rx.try_recv() {
                write_frame(&mut write, &frame, &shared).await?;
            }
            write_frame(&mut write, &Frame::empty(FrameType::Reset), &shared).await?;
            write.shutdown().await.map_err(|e| Error::io(&e))
        };
        let _ = tokio::time::timeout(shared.settings.idle_timeout, flush).await;
    }
}

/// Writes one frame (header and payload in one vectored write where the
/// transport supports it). Fails when the write makes no progress *and*
/// nothing is received for the idle timeout.
async fn write_frame<W: AsyncWrite + Unpin>(
    write: &mut W,
    frame: &Frame,
    shared: &Shared,
) -> Result<(), Error> {
    let header = frame.header();
    let payload = &frame.payload[..];
    let total = HEADER_LEN + payload.len();
    let mut done = 0;
    let idle = shared.settings.idle_timeout;
    while done < total {
        let slices = if done < HEADER_LEN {
            [IoSlice::new(&header[done..]), IoSlice::new(payload)]
        } else {
            [
                IoSlice::new(&payload[done - HEADER_LEN..]),
                IoSlice::new(&[]),
            ]
        };
        let n = loop {
            match tokio::time::timeout(idle, write.write_vectored(&slices)).await {
                Ok(r) => break r.map_err(|e| Error::io(&e))?,
                // Stuck: fine while the peer keeps talking to us.
                Err(_) if shared.since_received() < idle => continue,
                Err(_) => return Err(Error::Timeout(idle)),
            }
        };
        if n == 0 {
            return Err(Error::Closed);
        }
        done += n;
    }
    write.flush().await.map_err(|e| Error::io(&e))
}
