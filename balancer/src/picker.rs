//! Pickers: immutable snapshots that choose a connection for each call.
//!
//! A policy publishes a new picker whenever the set of usable connections
//! changes; the channel swaps it in atomically. A pick loads the current
//! snapshot and chooses, taking no lock and allocating nothing.

use std::sync::Arc;

use crate::sequence::Sequence;
use crate::subchannel::Connection;

/// How a call ended, for a [`CallTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The request never left the client (the call is then re-picked).
    FailedToSend,
    /// Response headers arrived: the backend received the call.
    KnownReceived,
    /// It failed after being sent, before any response.
    Failed,
}

/// Observes the calls a picker routes (grpclb's ClientStats,
/// least_request's outstanding counts).
pub trait CallTracker: Send + Sync + 'static {
    /// The call was sent to the routed connection.
    fn started(&self);
    /// How the call landed: response headers arrived, or it failed first.
    fn finished(&self, outcome: CallOutcome);
    /// The call is over: its response was read to the end, or it failed,
    /// or it was cancelled (dropped). Once per [`CallTracker::started`].
    /// `succeeded`: whether it ended with status OK; `None` when that is
    /// not known (cancelled, or a consumer that does not say).
    fn ended(&self, succeeded: Option<bool>) {
        let _ = succeeded;
    }
    /// The call's trailers arrived (or a trailers-only response's
    /// headers), for trackers that read what backends report there
    /// (weighted_round_robin's ORCA load reports). Before
    /// [`CallTracker::ended`].
    fn trailers(&self, trailers: &http::HeaderMap) {
        let _ = trailers;
    }
}

/// Tells a call's tracker that the call ended, and how, when dropped: the
/// channel keeps it with the call (in its response body once headers
/// arrived) and records the call's status in it.
#[derive(Default)]
pub struct CallEnd {
    tracker: Option<Arc<dyn CallTracker>>,
    succeeded: Option<bool>,
    /// The attempt's metrics, when the channel records them.
    pub(crate) attempt: Option<Box<crate::metrics::AttemptRecord>>,
}

impl CallEnd {
    /// Records whether the call ended with status OK.
    pub fn record(&mut self, succeeded: bool) {
        self.succeeded = Some(succeeded);
    }

    /// Records the call's status code.
    pub(crate) fn record_code(&mut self, code: tonic::Code) {
        self.record(code == tonic::Code::Ok);
        if let Some(attempt) = &mut self.attempt {
            attempt.status(code);
        }
    }

    /// Records the status in `headers` (`grpc-status`), if they carry one
    /// (they are then trailers, and the tracker sees them); returns it.
    pub(crate) fn record_status(&mut self, headers: &http::HeaderMap) -> Option<tonic::Code> {
        let status = headers.get(&crate::metrics::GRPC_STATUS)?;
        self.record(status.as_bytes() == b"0");
        if let Some(tracker) = &self.tracker {
            tracker.trailers(headers);
        }
        let code = crate::metrics::status_of(status).unwrap_or(tonic::Code::Unknown);
        if let Some(attempt) = &mut self.attempt {
            attempt.status(code);
        }
        Some(code)
    }

    /// Counts a chunk of the response body for the attempt's metrics.
    pub(crate) fn received(&mut self, chunk: &[u8]) {
        if let Some(attempt) = &mut self.attempt {
            attempt.received(chunk);
        }
    }
}

impl std::fmt::Debug for CallEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEnd")
            .field("succeeded", &self.succeeded)
            .finish_non_exhaustive()
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.ended(self.succeeded);
        }
    }
}

/// Where a call goes: a READY connection, plus what the call must carry
/// and who watches it. Every consumer of a pick — a gRPC call, a
/// `waypost::rpc` data call — gets all three.
#[derive(Clone)]
pub struct Routed {
    /// Where to send the call.
    pub connection: Connection,
    /// A header to add (grpclb's `lb-token`).
    pub header: Option<(http::HeaderName, http::HeaderValue)>,
    /// Told when the call starts and ends.
    pub tracker: Option<Arc<dyn CallTracker>>,
}

impl Routed {
    /// The call goes to `connection` as it is (no header, no tracker).
    pub fn to(connection: Connection) -> Routed {
        Routed {
            connection,
            header: None,
            tracker: None,
        }
    }
}

impl Routed {
    /// Tells the tracker the call starts; the returned guard tells it the
    /// call ended when dropped.
    pub fn begin(&self) -> CallEnd {
        if let Some(tracker) = &self.tracker {
            tracker.started();
        }
        CallEnd {
            tracker: self.tracker.clone(),
            succeeded: None,
            attempt: None,
        }
    }
}

impl From<Connection> for Routed {
    fn from(connection: Connection) -> Routed {
        Routed::to(connection)
    }
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("connection", &self.connection)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// What a picker decided for one call.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Send the call on this connection, with its header and tracker.
    Ready(Routed),
    /// No connection is usable yet: wait for the next picker.
    Queue,
    /// Fail the call with UNAVAILABLE and this message — unless it is
    /// wait-for-ready, in which case it waits for the next picker.
    Unavailable(Arc<str>),
    /// Fail the call with UNAVAILABLE and this message even if it is
    /// wait-for-ready (e.g. a grpclb drop).
    Drop(Arc<str>),
}

/// What a picker is told about a call: its path and its request headers
/// (`ring_hash` hashes one of them).
#[derive(Debug, Clone, Copy)]
pub struct PickInfo<'a> {
    /// `/package.Service/Method`.
    pub path: &'a str,
    /// The call's request headers (its metadata).
    pub headers: &'a http::HeaderMap,
    /// What the service config's [`CallConfigSelector`] decided for the
    /// call, if it has one.
    ///
    /// [`CallConfigSelector`]: crate::service_config::CallConfigSelector
    pub decision: Option<&'a crate::service_config::CallDecision>,
}

static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> =
    std::sync::LazyLock::new(http::HeaderMap::new);

impl<'a> PickInfo<'a> {
    /// A call to `path` with these request headers.
    pub fn new(path: &'a str, headers: &'a http::HeaderMap) -> PickInfo<'a> {
        PickInfo {
            path,
            headers,
            decision: None,
        }
    }

    /// The selector's decision for this call, as a `T` (`None`: there is
    /// none, or it is of another type).
    pub fn decision<T: std::any::Any>(&self) -> Option<&T> {
        self.decision.and_then(|d| d.0.downcast_ref::<T>())
    }

    /// A call to `path` without request headers.
    pub fn path(path: &'a str) -> PickInfo<'a> {
        PickInfo {
            path,
            decision: None,
            headers: &NO_HEADERS,
        }
    }
}

/// Chooses a connection for a call. Implementations are immutable
/// snapshots: a new state means a new picker.
pub trait Picker: Send + Sync + 'static {
    /// Picks for `call`.
    fn pick(&self, call: &PickInfo<'_>) -> Pick;
}

/// Queues every call (no connection yet).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueuePicker;

impl Picker for QueuePicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        Pick::Queue
    }
}

/// Fails every call with UNAVAILABLE (wait-for-ready calls wait).
#[derive(Debug, Clone)]
pub struct FailPicker(pub Arc<str>);

impl Picker for FailPicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        Pick::Unavailable(self.0.clone())
    }
}

/// Fails every call with UNAVAILABLE "channel closed", wait-for-ready
/// included: what a channel publishes when its last handle is dropped, so
/// calls still waiting end (grpc-go's `ErrClientConnClosing`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClosedPicker;

impl Picker for ClosedPicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        Pick::Drop("channel closed".into())
    }
}

/// Always the same connection (`pick_first`).
#[derive(Debug, Clone)]
pub struct SinglePicker(pub Connection);

impl Picker for SinglePicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        Pick::Ready(Routed::to(self.0.clone()))
    }
}

/// Round-robin over READY connections (`round_robin`).
#[derive(Debug)]
pub struct RoundRobinPicker {
    ready: Arc<[Connection]>,
    sequence: Sequence,
}

impl RoundRobinPicker {
    /// A picker over `ready`, which must not be empty, starting at a random
    /// place, as gRPC's round_robin does (so clients do not all begin with
    /// the same backend).
    pub fn new(ready: Vec<Connection>) -> Self {
        let start = rand::random_range(0..ready.len().max(1));
        Self::starting_at(ready, start)
    }

    /// A picker over `ready`, which must not be empty, whose first pick on
    /// each thread is `ready[start % len]`.
    pub fn starting_at(ready: Vec<Connection>, start: usize) -> Self {
        assert!(!ready.is_empty(), "a round-robin picker needs a connection");
        RoundRobinPicker {
            ready: ready.into(),
            sequence: Sequence::new(start),
        }
    }
}

impl Picker for RoundRobinPicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        let index = self.sequence.next() % self.ready.len();
        Pick::Ready(Routed::to(self.ready[index].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subchannel::SubchannelId;

    fn picker(n: u64) -> RoundRobinPicker {
        let ready = (1..=n)
            .map(|i| {
                let address = format!("10.0.0.{i}:443").parse().unwrap();
                Connection::fake(SubchannelId(i), waypost_resolver::Address::Tcp(address))
            })
            .collect();
        RoundRobinPicker::starting_at(ready, 0)
    }

    fn picked(picker: &RoundRobinPicker) -> u64 {
        match picker.pick(&PickInfo::path("/s/m")) {
            Pick::Ready(routed) => routed.connection.id().0,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_channels_used_in_turn_on_one_thread_each_rotate_over_all_their_backends() {
        // One counter per thread shared by every picker once sent each of
        // these channels' calls to a single backend.
        let (a, b) = (picker(2), picker(2));
        let mut seen_a = Vec::new();
        let mut seen_b = Vec::new();
        for _ in 0..4 {
            seen_a.push(picked(&a));
            seen_b.push(picked(&b));
        }
        assert_eq!(seen_a, [1, 2, 1, 2]);
        assert_eq!(seen_b, [1, 2, 1, 2]);
    }
}
