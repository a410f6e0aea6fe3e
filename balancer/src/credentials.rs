//! Per-call credentials: metadata computed for each attempt of a call, like
//! grpc-go's `PerRPCCredentials`.
//!
//! A channel applies its own ([`ChannelBuilder::call_credentials`]) and a
//! call's ([`PerCallCredentials`] in the request's extensions) to every
//! attempt — the first, each retry, and each transparent retry — so a token
//! that changed in between is the one sent. Credentials that require
//! transport security are refused on a plaintext channel: the call fails
//! UNAVAILABLE, saying why, and nothing is sent.
//!
//! ```no_run
//! use std::sync::Arc;
//! use waypost_balancer::Channel;
//! use waypost_balancer::credentials::{BearerToken, TokenFile};
//!
//! # fn demo(tls: waypost_balancer::ClientTlsConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Channel::builder("dns:///movies.internal:443")
//!     .tls(tls)
//!     .call_credentials(Arc::new(TokenFile::new("/run/secrets/movies-token")))
//!     .build()?;
//! // Or per call:
//! let mut request = tonic::Request::new(());
//! request.extensions_mut().insert(waypost_balancer::credentials::PerCallCredentials(
//!     Arc::new(BearerToken::new("s3cret")?),
//! ));
//! # let _ = channel; Ok(()) }
//! ```
//!
//! [`ChannelBuilder::call_credentials`]: crate::ChannelBuilder::call_credentials

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;

/// What credentials are told about the call they are for.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// `https://<authority>/<package.Service>`, as gRPC's credentials get
    /// it (`http://` on a plaintext channel).
    pub service_url: &'a str,
    /// The method's name (`GetMovie`).
    pub method: &'a str,
}

/// The metadata for one attempt, or why there is none (the call fails with
/// that status).
pub type CredentialsFuture =
    Pin<Box<dyn Future<Output = Result<Vec<(HeaderName, HeaderValue)>, tonic::Status>> + Send>>;

/// Computes metadata for each attempt of a call.
pub trait CallCredentials: std::fmt::Debug + Send + Sync + 'static {
    /// The metadata to add to an attempt of `call` (replacing any of the
    /// same name).
    fn metadata(&self, call: &CallInfo<'_>) -> CredentialsFuture;

    /// Whether these may only be sent over TLS (default: yes).
    fn requires_transport_security(&self) -> bool {
        true
    }
}

/// A request extension: credentials for this call, applied after the
/// channel's.
#[derive(Clone, Debug)]
pub struct PerCallCredentials(pub Arc<dyn CallCredentials>);

static AUTHORIZATION: HeaderName = http::header::AUTHORIZATION;

/// `authorization: Bearer <token>`, the same on every call.
#[derive(Clone)]
pub struct BearerToken {
    value: HeaderValue,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bearer token must be visible ASCII without spaces")]
pub struct InvalidToken;

fn bearer(token: &str) -> Result<HeaderValue, InvalidToken> {
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidToken);
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

impl BearerToken {
    /// A fixed token.
    pub fn new(token: impl AsRef<str>) -> Result<BearerToken, InvalidToken> {
        Ok(BearerToken {
            value: bearer(token.as_ref())?,
        })
    }
}

impl CallCredentials for BearerToken {
    fn metadata(&self, _call: &CallInfo<'_>) -> CredentialsFuture {
        let header = (AUTHORIZATION.clone(), self.value.clone());
        Box::pin(std::future::ready(Ok(vec![header])))
    }
}

/// `authorization: Bearer <token>` with the token read from a file, read
/// again whenever the file changes (its modification time or length), so
/// a rotated token is used from the next attempt on.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, HeaderValue)>>,
}

/// What tells a file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
}

impl TokenFile {
    /// Reads the token from `path` (surrounding white space ignored).
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    fn current(&self) -> Result<HeaderValue, tonic::Status> {
        let unavailable = |why: String| {
            tonic::Status::unavailable(format!("token file {}: {why}", self.path.display()))
        };
        let metadata = std::fs::metadata(&self.path).map_err(|e| unavailable(e.to_string()))?;
        let stamp = FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
        };
        if let Some((seen, value)) = &*self.cached.lock()
            && *seen == stamp
        {
            return Ok(value.clone());
        }
        if stamp.len > 64 * 1024 {
            return Err(unavailable("longer than 64 KiB".into()));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| unavailable(e.to_string()))?;
        let value = bearer(&text).map_err(|e| unavailable(e.to_string()))?;
        *self.cached.lock() = Some((stamp, value.clone()));
        Ok(value)
    }
}

impl CallCredentials for TokenFile {
    fn metadata(&self, _call: &CallInfo<'_>) -> CredentialsFuture {
        let header = self
            .current()
            .map(|value| vec![(AUTHORIZATION.clone(), value)]);
        Box::pin(std::future::ready(header))
    }
}

/// The credentials that apply to a call: the channel's, then the call's.
pub(crate) fn for_call(
    channel: Option<&Arc<dyn CallCredentials>>,
    request: &http::Request<tonic::body::Body>,
) -> Vec<Arc<dyn CallCredentials>> {
    let per_call = request
        .extensions()
        .get::<PerCallCredentials>()
        .map(|c| c.0.clone());
    channel.cloned().into_iter().chain(per_call).collect()
}

/// Adds every credential's metadata to `request` (one attempt's worth), or
/// fails: over plaintext for credentials that require TLS, or with the
/// status a credential returned.
pub(crate) async fn apply(
    credentials: &[Arc<dyn CallCredentials>],
    secure: bool,
    mut request: http::Request<tonic::body::Body>,
) -> Result<http::Request<tonic::body::Body>, tonic::Status> {
    if credentials.is_empty() {
        return Ok(request);
    }
    let path = request.uri().path().to_owned();
    let (service, method) = path
        .trim_start_matches('/')
        .rsplit_once('/')
        .unwrap_or(("", path.as_str()));
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let scheme = if secure { "https" } else { "http" };
    let service_url = format!("{scheme}://{authority}/{service}");
    let call = CallInfo {
        service_url: &service_url,
        method,
    };
    for credential in credentials {
        if credential.requires_transport_security() && !secure {
            return Err(tonic::Status::unavailable(
                "call credentials that require transport security are not sent over a plaintext channel (ChannelBuilder::tls)",
            ));
        }
        for (name, value) in credential.metadata(&call).await? {
            request.headers_mut().insert(name, value);
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_header_safe() {
        assert!(BearerToken::new("abc.DEF-123").is_ok());
        for bad in ["", "two words", "line\nbreak", "é"] {
            assert_eq!(BearerToken::new(bad).unwrap_err(), InvalidToken, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let file = TokenFile::new(&path);
        let call = CallInfo {
            service_url: "https://a/s",
            method: "m",
        };
        let value = |v: Vec<(HeaderName, HeaderValue)>| v[0].1.to_str().unwrap().to_owned();
        assert_eq!(value(file.metadata(&call).await.unwrap()), "Bearer first");
        std::fs::write(&path, "second-token\n").unwrap();
        assert_eq!(
            value(file.metadata(&call).await.unwrap()),
            "Bearer second-token"
        );
        std::fs::remove_file(&path).unwrap();
        let status = file.metadata(&call).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
