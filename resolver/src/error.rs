//! Why a target could not be resolved.

use std::sync::Arc;

use crate::target::TargetError;

/// What kind of DNS failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsErrorKind {
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// The name exists but has no A/AAAA records.
    NoRecords,
    /// The server did not answer in time.
    Timeout,
    /// Anything else (refused, malformed answer, I/O).
    Other,
}

/// Why resolution failed. Cheap to clone: consumers keep it next to the
/// last good state.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The target is malformed.
    #[error("bad target: {0}")]
    Target(#[from] TargetError),
    /// No resolver is registered for the scheme, and no `dns` fallback is.
    #[error("no resolver registered for scheme {scheme:?}")]
    NoResolver {
        /// The scheme.
        scheme: String,
    },
    /// The scheme is one waypost provides but only on request (it is never
    /// taken for a DNS name instead).
    #[error("the {scheme:?} scheme is not registered: {how}")]
    NotRegistered {
        /// The scheme.
        scheme: String,
        /// How to register it.
        how: &'static str,
    },
    /// The resolver cannot serve this form of target.
    #[error("{scheme}: {reason}")]
    Unsupported {
        /// The scheme.
        scheme: String,
        /// What is missing or not allowed.
        reason: String,
    },
    /// A DNS lookup failed.
    #[error("dns lookup of {host} failed: {message}")]
    Dns {
        /// The name looked up.
        host: String,
        /// The kind of failure.
        kind: DnsErrorKind,
        /// The resolver library's message.
        message: String,
    },
    /// The DNS TXT service config is malformed; the previous one is kept.
    #[error("bad service config in DNS TXT record: {reason}")]
    ServiceConfig {
        /// What is wrong with it.
        reason: String,
    },
    /// etcd could not be reached, or a list or watch failed.
    #[error("etcd: {message}")]
    Etcd {
        /// What failed.
        message: String,
    },
    /// An etcd value under the service prefix did not parse and was skipped.
    #[error("skipped etcd key {key:?}: {reason}")]
    BadEtcdValue {
        /// The key.
        key: String,
        /// Why its value was rejected.
        reason: String,
    },
    /// An error from a resolver outside this crate.
    #[error(transparent)]
    Custom(Arc<dyn std::error::Error + Send + Sync>),
}

impl ResolveError {
    /// Wraps an error from a custom resolver.
    pub fn custom(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ResolveError::Custom(Arc::new(error))
    }
}
