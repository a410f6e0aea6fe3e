//! Sending a call again when its connection failed before it left.
//!
//! A call handed to `h2` sits in its queue until the connection task
//! writes it. If the connection fails first (the server closed it a moment
//! ago, and we had not read that yet), the call never reached the server
//! and gRPC sends it again on another connection ("transparent retry").
//! `h2` cannot say which streams were written, so the connection's I/O
//! counts its writes: a call that failed with no write since it was queued
//! certainly never left. So does one refused by the server's GOAWAY (its
//! stream id is past the last one the server processed).
//!
//! To send it again we keep a copy of the head, paired by the exchange
//! with a body that was queued whole (a unary request); a streaming body
//! cannot be replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Successful writes to one connection's socket.
#[derive(Debug, Default)]
pub(crate) struct WriteCount(AtomicU64);

impl WriteCount {
    /// Counts one write.
    pub(crate) fn wrote(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// What it takes to send a call again.
pub(crate) struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    /// Taken from the request (`h2` drops them anyway).
    extensions: http::Extensions,
    writes: Arc<WriteCount>,
    writes_before: u64,
}

impl Replay {
    /// Copies the head of a request about to be sent (taking its
    /// extensions) and notes the connection's write count.
    pub(crate) fn new(parts: &mut http::request::Parts, writes: &Arc<WriteCount>) -> Self {
        Replay {
            writes_before: writes.get(),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: std::mem::take(&mut parts.extensions),
            writes: writes.clone(),
        }
    }

    /// Whether a call that failed with `error` certainly never reached the
    /// server.
    pub(crate) fn never_left(&self, error: &h2::Error) -> bool {
        (error.is_go_away() && error.is_remote())
            || (error.is_io() && self.writes.get() == self.writes_before)
    }

    /// The request again, with `data` as its whole body (empty: none).
    pub(crate) fn into_request(self, data: Bytes) -> http::Request<tonic::body::Body> {
        let body = if data.is_empty() {
            tonic::body::Body::empty()
        } else {
            tonic::body::Body::new(http_body_util::Full::new(data))
        };
        self.with_body(body)
    }

    /// The request again, with `body` (never given to `h2`).
    pub(crate) fn with_body(self, body: tonic::body::Body) -> http::Request<tonic::body::Body> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}
