//! The request path: pick a connection from the current picker snapshot and
//! send; queue for the next picker when none is usable, bounded by the
//! call's deadline.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::body::ChannelBody;
use super::retry::{ReplayBody, is_retryable, retry_delay, trailers_only_status};
use crate::picker::{CallOutcome, Pick, Routed};

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

/// Maps a transport failure to a gRPC status.
pub(crate) fn transport_status(error: &hyper::Error) -> tonic::Status {
    if error.is_canceled() {
        return tonic::Status::cancelled(format!("transport: {error}"));
    }
    tonic::Status::unavailable(format!("transport: {error}"))
}

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

pub(crate) async fn call(
    shared: Arc<Shared>,
    mut request: http::Request<tonic::body::Body>,
) -> Result<http::Response<ChannelBody>, tower::BoxError> {
    let method = shared.config.load().method(request.uri().path()).cloned();
    let wait_for_ready = request
        .extensions()
        .get::<WaitForReady>()
        .map(|w| w.0)
        .or(method.as_ref().and_then(|m| m.wait_for_ready))
        .unwrap_or(false);
    let caller_timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let timeout = match (caller_timeout, method.as_ref().and_then(|m| m.timeout)) {
        (Some(a), Some(b)) if b < a => {
            request
                .headers_mut()
                .insert("grpc-timeout", format_grpc_timeout(b));
            Some(b)
        }
        (None, Some(b)) => {
            request
                .headers_mut()
                .insert("grpc-timeout", format_grpc_timeout(b));
            Some(b)
        }
        (a, _) => a,
    };
    let deadline = timeout.map(|t| Instant::now() + t);

    // tonic sends path-only URIs; HTTP/2 needs the scheme and authority.
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(shared.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| tonic::Status::internal(format!("bad request URI: {e}")))?;

    let retry_policy = method.as_ref().and_then(|m| m.retry_policy.clone());
    let Some(policy) = retry_policy else {
        return attempt(&shared, request, wait_for_ready, deadline)
            .await
            .map_err(Into::into);
    };

    // With a retry policy: record the body, and send again on a retryable
    // failure before response headers.
    let (parts, body) = request.into_parts();
    let (body, replay) = ReplayBody::wrap(body);
    let mut body = Some(body);
    let mut retries = 0;
    loop {
        let request = rebuild(&parts, body.take().expect("a body for each attempt"));
        let outcome = attempt(&shared, request, wait_for_ready, deadline).await;
        let failed_code = match &outcome {
            Ok(response) => {
                trailers_only_status(response.headers()).filter(|c| *c != tonic::Code::Ok)
            }
            Err(status) => Some(status.code()),
        };
        let retry = failed_code.is_some_and(|code| is_retryable(&policy, code))
            && retries + 1 < policy.max_attempts;
        if !retry {
            return outcome.map_err(Into::into);
        }
        let Some(replayed) = replay.body() else {
            return outcome.map_err(Into::into);
        };
        retries += 1;
        shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        let delay = retry_delay(&policy, retries, rand::random::<f64>());
        if deadline.is_some_and(|d| Instant::now() + delay >= d) {
            return outcome.map_err(Into::into);
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

/// One attempt: pick a connection and send, queueing for the next picker
/// while none is usable (bounded by `deadline`).
async fn attempt(
    shared: &Shared,
    mut request: http::Request<tonic::body::Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
) -> Result<http::Response<ChannelBody>, tonic::Status> {
    let exceeded =
        || tonic::Status::deadline_exceeded("deadline exceeded while waiting for a connection");
    let mut generations: Option<watch::Receiver<u64>> = None;
    loop {
        let snapshot = shared.picker.load();
        let routed = match snapshot.picker.pick(request.uri().path()) {
            Pick::Connection(connection) => Ok(Routed {
                connection,
                header: None,
                tracker: None,
            }),
            Pick::Routed(routed) => Ok(routed),
            Pick::Drop(reason) => return Err(tonic::Status::unavailable(reason.to_string())),
            Pick::Unavailable(reason) if !wait_for_ready => {
                return Err(tonic::Status::unavailable(reason.to_string()));
            }
            Pick::Unavailable(reason) => Err(Some(reason)),
            Pick::Queue => Err(None),
        };
        let reason = match routed {
            Ok(Routed {
                connection,
                header,
                tracker,
            }) => {
                shared.counters.picks.fetch_add(1, Ordering::Relaxed);
                let added = header.map(|(name, value)| {
                    request.headers_mut().insert(name.clone(), value);
                    name
                });
                if let Some(tracker) = &tracker {
                    tracker.started();
                }
                let sent = connection.send(request);
                let response = match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                        Ok(response) => response,
                        Err(_) => {
                            if let Some(tracker) = &tracker {
                                tracker.finished(CallOutcome::Failed);
                            }
                            return Err(tonic::Status::deadline_exceeded("deadline exceeded"));
                        }
                    },
                    None => sent.await,
                };
                if let Some(tracker) = &tracker {
                    tracker.finished(match &response {
                        Ok(_) => CallOutcome::KnownReceived,
                        Err(error) if error.message().is_some() => CallOutcome::FailedToSend,
                        Err(_) => CallOutcome::Failed,
                    });
                }
                match response {
                    Ok(response) => return Ok(response.map(ChannelBody::new)),
                    Err(mut error) => match error.take_message() {
                        // Never sent: the connection was closing. Retry it
                        // transparently on the next picker, as gRPC does.
                        Some(mut unsent) => {
                            if let Some(name) = added {
                                unsent.headers_mut().remove(name);
                            }
                            shared
                                .counters
                                .transparent_retries
                                .fetch_add(1, Ordering::Relaxed);
                            request = unsent;
                            Some(Arc::from("the connection closed before the call was sent"))
                        }
                        None => return Err(transport_status(error.error())),
                    },
                }
            }
            Err(reason) => reason,
        };
        // Wait for the next picker. Subscribe, then re-check the generation,
        // so a picker published since our load is not missed.
        shared.counters.queued.fetch_add(1, Ordering::Relaxed);
        let rx = generations.get_or_insert_with(|| shared.generation.subscribe());
        if *rx.borrow_and_update() != snapshot.generation {
            continue;
        }
        let changed = rx.changed();
        let waited = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, changed).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(match reason {
                        Some(reason) => tonic::Status::deadline_exceeded(format!(
                            "{}; last error: {reason}",
                            exceeded().message()
                        )),
                        None => exceeded(),
                    });
                }
            },
            None => changed.await,
        };
        if waited.is_err() {
            return Err(tonic::Status::unavailable("the channel was closed"));
        }
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
