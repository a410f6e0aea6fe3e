//! The request path: pick a connection from the current picker snapshot and
//! send; queue for the next picker when none is usable, bounded by the
//! call's deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::Ordering;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::body::ChannelBody;
use super::limits::CallLimits;
use super::retry::{ReplayBody, is_retryable, retry_delay};
use crate::credentials::CallCredentials;
use crate::metrics::{AttemptRecord, CallRecord, CountingBody};
use crate::picker::{CallOutcome, Pick};
use crate::service_config::RetryPolicy;
use crate::transport::{Exchange, Failure, SendError, status_of};

/// A request extension: `WaitForReady(true)` makes the call wait for a
/// READY connection instead of failing fast while the channel is in
/// TRANSIENT_FAILURE (it overrides the service config's `waitForReady`).
///
/// ```
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(waypost_balancer::WaitForReady(true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitForReady(pub bool);

/// Parses a `grpc-timeout` header value (`<1–8 digits><H|M|S|m|u|n>`):
/// the time a server has left before its caller's deadline.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(waypost_balancer::parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
/// assert_eq!(waypost_balancer::parse_grpc_timeout("soon"), None);
/// ```
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a `grpc-timeout` header value (milliseconds, rounded up).
fn format_grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis().max(1);
    let value = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&value).expect("digits and a unit are a valid header")
}

/// Looked up on every call: a ready-made name skips parsing and hashing a
/// string each time.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A call, checked and addressed, not yet sent.
struct Prepared {
    request: http::Request<tonic::body::Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
    retry_policy: Option<RetryPolicy>,
}

/// Applies the method config and the caller's deadline, and gives the
/// request the scheme and authority HTTP/2 needs.
fn prepare(
    shared: &Shared,
    mut request: http::Request<tonic::body::Body>,
) -> Result<Prepared, tonic::Status> {
    let config = shared.config.load();
    let method = config.method(request.uri().path());
    let selected = config
        .selector()
        .map(|s| s.select(request.uri().path(), request.headers()))
        .unwrap_or_default();
    let wait_for_ready = request
        .extensions()
        .get::<WaitForReady>()
        .map(|w| w.0)
        .or(method.and_then(|m| m.wait_for_ready))
        .unwrap_or(false);
    let caller_timeout = request
        .headers()
        .get(&GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let configured = selected.timeout.or(method.and_then(|m| m.timeout));
    let timeout = match (caller_timeout, configured) {
        (Some(a), Some(b)) if b < a => {
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT.clone(), format_grpc_timeout(b));
            Some(b)
        }
        (None, Some(b)) => {
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT.clone(), format_grpc_timeout(b));
            Some(b)
        }
        (a, _) => a,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let retry_policy = selected
        .retry_policy
        .or_else(|| method.and_then(|m| m.retry_policy.clone()));
    if let Some(decision) = selected.decision {
        request.extensions_mut().insert(decision);
    }
    if let Some(limits) = method.and_then(|m| CallLimits::of(m)) {
        let (parts, body) = request.into_parts();
        request = http::Request::from_parts(parts, limits.wrap_request(body));
        request.extensions_mut().insert(limits);
    }

    // tonic sends path-only URIs; HTTP/2 needs the scheme and authority.
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(shared.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| tonic::Status::internal(format!("bad request URI: {e}")))?;
    Ok(Prepared {
        request,
        wait_for_ready,
        deadline,
        retry_policy,
    })
}

type BoxedCall =
    Pin<Box<dyn Future<Output = Result<http::Response<ChannelBody>, tonic::Status>> + Send>>;

/// The future a [`Channel`](super::Channel) call returns.
///
/// The common call — the current picker has a connection for it and no
/// retry policy applies — is picked and handed to its connection before
/// this future is returned (a unary request is queued whole); polling it
/// writes any rest of the request body and waits for the response headers
/// (and the deadline, if there is one), all in the caller's task. A call that queues for a picker or
/// has a retry policy runs a boxed state machine instead.
pub struct ResponseFuture {
    state: Flight,
    /// The call's metrics, when the channel records them (handed to the
    /// response body, or recorded with the call's failure).
    record: Option<Box<CallRecord>>,
}

// `Sent` is the common state: boxing it would add an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Flight {
    /// Sent on a connection; waiting for the response headers.
    Sent(InFlight),
    /// Queued for a picker, or retrying.
    Slow(BoxedCall),
    /// Decided without sending (failed fast, dropped, bad request), or done.
    Failed(Option<tonic::Status>),
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            Flight::Sent(_) => "sent",
            Flight::Slow(_) => "queued or retrying",
            Flight::Failed(_) => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// Starts a call: prepares it and, on the common path, picks and sends.
pub(crate) fn start(
    shared: Arc<Shared>,
    request: http::Request<tonic::body::Body>,
) -> ResponseFuture {
    let record = shared
        .metrics
        .as_ref()
        .map(|m| CallRecord::start(m, request.uri().path()));
    let mut future = start_call(shared, request);
    future.record = record;
    future
}

fn start_call(shared: Arc<Shared>, request: http::Request<tonic::body::Body>) -> ResponseFuture {
    let prepared = match prepare(&shared, request) {
        Ok(prepared) => prepared,
        Err(status) => return ResponseFuture::done(status),
    };
    let Prepared {
        request,
        wait_for_ready,
        deadline,
        retry_policy,
    } = prepared;
    let credentials = crate::credentials::for_call(shared.credentials.as_ref(), &request);
    if let Some(policy) = retry_policy {
        let call = with_retries(
            shared,
            request,
            wait_for_ready,
            deadline,
            policy,
            credentials,
        );
        return ResponseFuture {
            state: Flight::Slow(Box::pin(call)),
            record: None,
        };
    }
    if !credentials.is_empty() {
        // Credentials are computed for each attempt, asynchronously.
        let call = attempt(shared, request, wait_for_ready, deadline, credentials);
        return ResponseFuture {
            state: Flight::Slow(Box::pin(call)),
            record: None,
        };
    }
    let state = match place(&shared, request, wait_for_ready, deadline) {
        Placed::Sent(flight) => Flight::Sent(flight),
        Placed::Failed(status) => Flight::Failed(Some(status)),
        Placed::Wait(waiting) => Flight::Slow(Box::pin(attempt_after(
            shared,
            wait_for_ready,
            deadline,
            waiting,
            Vec::new(),
        ))),
    };
    ResponseFuture {
        state,
        record: None,
    }
}

impl ResponseFuture {
    fn done(status: tonic::Status) -> Self {
        ResponseFuture {
            state: Flight::Failed(Some(status)),
            record: None,
        }
    }

    /// Hands the call's metrics to the response body, or records the
    /// call's failure.
    fn recorded(
        &mut self,
        mut result: Result<http::Response<ChannelBody>, tonic::Status>,
    ) -> Result<http::Response<ChannelBody>, tonic::Status> {
        if let Some(mut record) = self.record.take() {
            match &mut result {
                Ok(response) => match crate::metrics::status_in(response.headers()) {
                    // Trailers-only: the call ended with its headers.
                    Some(code) => record.status(code),
                    None => response.body_mut().set_call_record(record),
                },
                Err(status) => record.status(status.code()),
            }
        }
        result
    }

    fn poll_call(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<ChannelBody>, tonic::Status>> {
        let landed = match &mut self.state {
            Flight::Failed(status) => {
                let status = status
                    .take()
                    .unwrap_or_else(|| tonic::Status::internal("polled after completion"));
                return Poll::Ready(Err(status));
            }
            Flight::Slow(call) => return call.as_mut().poll(cx),
            Flight::Sent(flight) => std::task::ready!(flight.poll_landed(cx)),
        };
        match landed {
            Landed::Done(result) => {
                self.state = Flight::Failed(None);
                Poll::Ready(result)
            }
            Landed::Unsent(waiting) => {
                let Flight::Sent(flight) = &self.state else {
                    unreachable!("landed from the Sent state")
                };
                let call = attempt_after(
                    flight.shared.clone(),
                    flight.wait_for_ready,
                    flight.deadline,
                    waiting,
                    Vec::new(),
                );
                self.state = Flight::Slow(Box::pin(call));
                self.poll_call(cx)
            }
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ChannelBody>, tower::BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.poll_call(cx));
        let result = if self.record.is_some() {
            self.recorded(result)
        } else {
            result
        };
        Poll::Ready(result.map_err(Into::into))
    }
}

/// A call on its connection, waiting for the response headers.
struct InFlight {
    exchange: Exchange,
    /// The deadline's timer, once polled with a deadline.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    tracker: Option<Arc<dyn crate::picker::CallTracker>>,
    /// Tells the tracker when the call is over (moves into the body).
    end: crate::picker::CallEnd,
    /// The picker's header, removed again if the call must go elsewhere.
    added: Option<http::HeaderName>,
    /// The picker generation that placed it.
    generation: u64,
    shared: Arc<Shared>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
    /// The method's message size limits, if it has any.
    limits: Option<Arc<CallLimits>>,
}

/// What became of a call on its connection.
enum Landed {
    Done(Result<http::Response<ChannelBody>, tonic::Status>),
    /// The connection failed before the call left: send it again on a
    /// newer picker.
    Unsent(Waiting),
}

impl InFlight {
    fn poll_landed(&mut self, cx: &mut Context<'_>) -> Poll<Landed> {
        let response = match self.exchange.poll_response(cx) {
            Poll::Ready(response) => response,
            Poll::Pending => {
                // The timer is made on the first poll, inside the runtime
                // (`Service::call` may run outside one).
                if let (None, Some(deadline)) = (&self.timer, self.deadline) {
                    self.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
                }
                let expired = self
                    .timer
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                if let Some(tracker) = &self.tracker {
                    tracker.finished(CallOutcome::Failed);
                }
                self.end.record_code(tonic::Code::DeadlineExceeded);
                let status = tonic::Status::deadline_exceeded("deadline exceeded");
                return Poll::Ready(Landed::Done(Err(status)));
            }
        };
        if let Some(tracker) = &self.tracker {
            tracker.finished(match &response {
                Ok(_) => CallOutcome::KnownReceived,
                Err(Failure::Unsent(_)) => CallOutcome::FailedToSend,
                Err(Failure::Failed(_)) => CallOutcome::Failed,
            });
        }
        Poll::Ready(match response {
            Ok(response) => {
                let limits = self.limits.take();
                let mut end = std::mem::take(&mut self.end);
                // A trailers-only response carries its status here.
                end.record_status(response.headers());
                Landed::Done(Ok(response.map(|body| ChannelBody::new(body, limits, end))))
            }
            // A request message over its limit reset the stream: say so.
            Err(Failure::Failed(error)) => {
                let status = self
                    .limits
                    .as_ref()
                    .and_then(|l| l.violation())
                    .unwrap_or_else(|| status_of(&error));
                self.end.record_code(status.code());
                Landed::Done(Err(status))
            }
            Err(Failure::Unsent(request)) => Landed::Unsent({
                // The attempt is over; the call goes on in a new one.
                self.end.record_code(tonic::Code::Unavailable);
                self.end = Default::default();
                unsent(&self.shared, *request, self.added.take(), self.generation)
            }),
        })
    }
}

/// A call that never left its connection, to be sent again on a picker
/// newer than `generation` (transparent retry, as gRPC does).
fn unsent(
    shared: &Shared,
    mut request: http::Request<tonic::body::Body>,
    added: Option<http::HeaderName>,
    generation: u64,
) -> Waiting {
    if let Some(name) = added {
        request.headers_mut().remove(name);
    }
    shared
        .counters
        .transparent_retries
        .fetch_add(1, Ordering::Relaxed);
    Waiting {
        request,
        generation,
        reason: Some(Arc::from("the connection closed before the call was sent")),
        resend: true,
    }
}

/// A call waiting for a picker newer than `generation`.
struct Waiting {
    request: http::Request<tonic::body::Body>,
    generation: u64,
    /// Why the last picker could not place it, if it said.
    reason: Option<Arc<str>>,
    /// It was sent to a connection that closed before it left: the next
    /// placement is a new attempt (fresh credentials), not a wait.
    resend: bool,
}

/// Where the current picker puts a call.
// A return value that lives for one match: boxing `Wait` would only add an
// allocation to every queued call.
#[allow(clippy::large_enum_variant)]
enum Placed {
    Sent(InFlight),
    Failed(tonic::Status),
    Wait(Waiting),
}

/// Picks with the current picker and, if it gives a connection, sends.
fn place(
    shared: &Arc<Shared>,
    mut request: http::Request<tonic::body::Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
) -> Placed {
    let snapshot = shared.picker.load();
    let generation = snapshot.generation;
    let mut info = crate::picker::PickInfo::new(request.uri().path(), request.headers());
    info.decision = request
        .extensions()
        .get::<crate::service_config::CallDecision>();
    let routed = match snapshot.picker.pick(&info) {
        Pick::Ready(routed) => routed,
        Pick::Drop(reason) => {
            return Placed::Failed(tonic::Status::unavailable(reason.to_string()));
        }
        Pick::Unavailable(reason) if !wait_for_ready => {
            return Placed::Failed(tonic::Status::unavailable(reason.to_string()));
        }
        Pick::Unavailable(reason) => {
            return Placed::Wait(Waiting {
                request,
                generation,
                reason: Some(reason),
                resend: false,
            });
        }
        Pick::Queue => {
            return Placed::Wait(Waiting {
                request,
                generation,
                reason: None,
                resend: false,
            });
        }
    };
    drop(snapshot);
    shared.counters.picks.fetch_add(1, Ordering::Relaxed);
    let mut end = routed.begin();
    if let Some(metrics) = &shared.metrics {
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let method = metrics.method(request.uri().path());
        end.attempt = Some(AttemptRecord::start(metrics, method, sent.clone()));
        let (parts, body) = request.into_parts();
        request = http::Request::from_parts(parts, CountingBody::wrap(body, sent));
    }
    let added = routed.header.map(|(name, value)| {
        request.headers_mut().insert(name.clone(), value);
        name
    });
    let limits = request.extensions().get::<Arc<CallLimits>>().cloned();
    match routed.connection.send(request) {
        Ok(exchange) => Placed::Sent(InFlight {
            exchange,
            timer: None,
            end,
            tracker: routed.tracker,
            added,
            generation,
            shared: shared.clone(),
            wait_for_ready,
            deadline,
            limits,
        }),
        // Never sent: the connection was closing.
        Err(SendError::Unsent(request)) => {
            if let Some(tracker) = &routed.tracker {
                tracker.finished(CallOutcome::FailedToSend);
            }
            end.record_code(tonic::Code::Unavailable);
            Placed::Wait(unsent(shared, *request, added, generation))
        }
        Err(SendError::Failed(status)) => {
            if let Some(tracker) = &routed.tracker {
                tracker.finished(CallOutcome::Failed);
            }
            end.record_code(status.code());
            Placed::Failed(status)
        }
    }
}

/// A call with a retry policy: record the body, and send again on a
/// retryable failure before response headers.
async fn with_retries(
    shared: Arc<Shared>,
    request: http::Request<tonic::body::Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
    policy: RetryPolicy,
    credentials: Vec<Arc<dyn CallCredentials>>,
) -> Result<http::Response<ChannelBody>, tonic::Status> {
    let (parts, body) = request.into_parts();
    let (body, replay) = ReplayBody::wrap(body);
    let mut body = Some(body);
    let mut retries = 0;
    loop {
        let request = rebuild(&parts, body.take().expect("a body for each attempt"));
        let outcome = attempt(
            shared.clone(),
            request,
            wait_for_ready,
            deadline,
            credentials.clone(),
        )
        .await;
        let failed_code = match &outcome {
            Ok(response) => {
                crate::metrics::status_in(response.headers()).filter(|c| *c != tonic::Code::Ok)
            }
            Err(status) => Some(status.code()),
        };
        let retry = failed_code.is_some_and(|code| is_retryable(&policy, code))
            && retries + 1 < policy.max_attempts;
        if !retry {
            return outcome;
        }
        let Some(replayed) = replay.body() else {
            return outcome;
        };
        retries += 1;
        shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        let delay = retry_delay(&policy, retries, rand::random::<f64>());
        if deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return outcome;
        }
        tokio::time::sleep(delay).await;
        body = Some(replayed);
    }
}

/// A request with `parts` (cloned) and `body`.
fn rebuild(
    parts: &http::request::Parts,
    body: tonic::body::Body,
) -> http::Request<tonic::body::Body> {
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// One attempt: add the credentials' metadata, pick a connection and send,
/// queueing for the next picker while none is usable (bounded by
/// `deadline`).
async fn attempt(
    shared: Arc<Shared>,
    request: http::Request<tonic::body::Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
    credentials: Vec<Arc<dyn CallCredentials>>,
) -> Result<http::Response<ChannelBody>, tonic::Status> {
    let request = crate::credentials::apply(&credentials, shared.secure, request).await?;
    match place_and_land(&shared, request, wait_for_ready, deadline).await {
        Ok(outcome) => outcome,
        Err(waiting) => attempt_after(shared, wait_for_ready, deadline, waiting, credentials).await,
    }
}

/// Places the call on the current picker and, if sent, waits for it to
/// land: `Ok` with the outcome, or `Err` when it must wait for a newer
/// picker.
async fn place_and_land(
    shared: &Arc<Shared>,
    request: http::Request<tonic::body::Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
) -> Result<Result<http::Response<ChannelBody>, tonic::Status>, Waiting> {
    match place(shared, request, wait_for_ready, deadline) {
        Placed::Failed(status) => Ok(Err(status)),
        Placed::Wait(waiting) => Err(waiting),
        Placed::Sent(mut flight) => match std::future::poll_fn(|cx| flight.poll_landed(cx)).await {
            Landed::Done(outcome) => Ok(outcome),
            Landed::Unsent(waiting) => Err(waiting),
        },
    }
}

/// Waits for a picker newer than `waiting`'s, places the call on it, and
/// so on until it lands or fails (bounded by `deadline`).
async fn attempt_after(
    shared: Arc<Shared>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
    mut waiting: Waiting,
    credentials: Vec<Arc<dyn CallCredentials>>,
) -> Result<http::Response<ChannelBody>, tonic::Status> {
    let exceeded =
        || tonic::Status::deadline_exceeded("deadline exceeded while waiting for a connection");
    let mut generations: Option<watch::Receiver<u64>> = None;
    loop {
        // Wait for the next picker. Subscribe, then re-check the generation,
        // so a picker published since the call's pick is not missed.
        shared.counters.queued.fetch_add(1, Ordering::Relaxed);
        let rx = generations.get_or_insert_with(|| shared.generation.subscribe());
        if *rx.borrow_and_update() == waiting.generation {
            // The sender lives in `shared`, which this call holds: it never
            // closes. A closed channel publishes a picker that fails calls.
            let changed = async {
                let _ = rx.changed().await;
            };
            match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, changed).await {
                    Ok(()) => {}
                    Err(_) => {
                        return Err(match waiting.reason {
                            Some(reason) => tonic::Status::deadline_exceeded(format!(
                                "{}; last error: {reason}",
                                exceeded().message()
                            )),
                            None => exceeded(),
                        });
                    }
                },
                None => changed.await,
            }
        }
        // A transparent retry is a new attempt: fresh credentials. (A call
        // that only waited for a picker keeps the ones it has.)
        let request = if waiting.resend {
            crate::credentials::apply(&credentials, shared.secure, waiting.request).await?
        } else {
            waiting.request
        };
        waiting = match place_and_land(&shared, request, wait_for_ready, deadline).await {
            Ok(outcome) => return outcome,
            Err(next) => next,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let t = parse_grpc_timeout;
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(format_grpc_timeout(Duration::from_micros(10)), "1m");
        assert_eq!(format_grpc_timeout(Duration::from_millis(1500)), "1500m");
    }
}
