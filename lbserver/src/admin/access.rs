//! Who may use the admin port, as axum middleware ([`origin_guard`],
//! [`read_guard`], [`write_guard`]):
//! - a request with an `Origin` header other than the admin's own
//!   (`http(s)://<Host>`) is refused with 403, whatever else it carries —
//!   a web page elsewhere cannot drive the balancer through a browser;
//! - with `admin_token_file` set, mutations (`POST /drain`, `/undrain`)
//!   need `Authorization: Bearer <token>` (401 otherwise, nothing changed),
//!   and so do reads when `admin_auth_reads = true`; `/healthz`, `/readyz`
//!   and the page itself (which holds no data) stay open;
//! - with `[tls]` and `client_ca_file`, a client certificate from that CA
//!   (verified in the TLS handshake) stands in for the token; a client
//!   may still connect without one (to read, or to use the token).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::AdminState;
use crate::listener::ConnectionInfo;

/// Who may use the admin endpoint.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token mutations need (`None`: none needed).
    pub token: Option<String>,
    /// Whether reads need the token too.
    pub auth_reads: bool,
    /// Whether client certificates are verified (`[tls]` with
    /// `client_ca_file`): one stands in for the token, and without a token
    /// mutations need one.
    pub client_certificates: bool,
    /// The listeners' TLS reloads, for `/metrics` (`None`: no TLS).
    pub tls: Option<Arc<waypost_balancer::tls::TlsStats>>,
}

/// The longest token a token file may hold.
const MAX_TOKEN_BYTES: u64 = 4096;

/// Reads an admin token file: its content without surrounding white
/// space; it must be 1 to 4096 bytes of visible ASCII.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut raw = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read: {e}"))?;
    if raw.len() as u64 > MAX_TOKEN_BYTES {
        return Err(format!("longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let text = String::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())?;
    parse_token(&text)
}

/// An admin token from text (a file's, an environment variable's): the
/// text without surrounding white space, 1 or more bytes of visible ASCII.
pub fn parse_token(text: &str) -> Result<String, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII (no spaces or control characters)".into());
    }
    Ok(token.to_owned())
}

/// Compares in time independent of where the inputs first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// Whether `request`'s connection has a verified client certificate,
    /// or the request carries the token, or neither is configured.
    fn authorized<B>(&self, request: &http::Request<B>) -> bool {
        let client = request.extensions().get::<Arc<ConnectionInfo>>();
        if client.is_some_and(|c| c.identity.is_some()) {
            return true;
        }
        let Some(token) = &self.token else {
            return !self.client_certificates;
        };
        // The scheme is case-insensitive (RFC 9110); the token is not.
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .is_some_and(|v| same_secret(&v[7..], token.as_bytes()))
    }
}

/// Whether the request comes from another origin than the admin's own: a
/// browser sends `Origin` on cross-origin requests (and on same-origin
/// POSTs, where it matches `http://<Host>`).
fn foreign_origin<B>(request: &http::Request<B>) -> bool {
    let Some(origin) = request.headers().get(http::header::ORIGIN) else {
        return false;
    };
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => {
            !(origin.strip_prefix("http://") == Some(host)
                || origin.strip_prefix("https://") == Some(host))
        }
        _ => true,
    }
}

/// What a refused request is told it needs.
fn unauthorized(access: &Access) -> Response {
    let needs = match (&access.token, access.client_certificates) {
        (Some(_), true) => {
            "this needs Authorization: Bearer <admin token>, or a client certificate\n"
        }
        (None, true) => "this needs a client certificate\n",
        _ => "this needs Authorization: Bearer <admin token>\n",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(http::header::WWW_AUTHENTICATE, "Bearer")],
        needs,
    )
        .into_response()
}

/// Refuses requests from other origins (403), on every route.
pub async fn origin_guard(request: Request, next: Next) -> Response {
    if foreign_origin(&request) {
        return (
            StatusCode::FORBIDDEN,
            "requests from other origins are refused\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// Lets reads through when they need no token, or carry it.
pub async fn read_guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if state.access.auth_reads && !state.access.authorized(&request) {
        return unauthorized(&state.access);
    }
    next.run(request).await
}

/// Lets mutations through only with the token or a client certificate,
/// and logs who drained by certificate.
pub async fn write_guard(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.access.authorized(&request) {
        return unauthorized(&state.access);
    }
    if let Some(identity) = request
        .extensions()
        .get::<Arc<ConnectionInfo>>()
        .and_then(|c| c.identity.as_ref())
    {
        tracing::info!(client = ?identity.common_name, uri = %request.uri(), "admin change by client certificate");
    }
    next.run(request).await
}
