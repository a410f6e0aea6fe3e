//! The test harness: real servers for waypost's tests, started on loopback.
//!
//! - [`etcd::EtcdServer`]: a real `etcd` process on free ports with a
//!   temporary data directory; stopped on drop, even when the test process
//!   dies; restartable on the same data for fault tests.
//! - [`backend::Backend`]: real tonic servers serving `movies.v1` and
//!   `grpc.health.v1`, which can be stopped, restarted on the same port, made
//!   to hang, and have their health flipped.
//! - [`dns::DnsServer`]: an in-process authoritative DNS server whose A,
//!   AAAA, SRV and TXT records a test changes while it runs.
//! - [`tls_backend::TlsBackend`]: a tonic server with tonic's own TLS
//!   (optionally mTLS) that records its callers' certificate names;
//!   [`pki::TestPki`] makes the certificates.
//! - [`ads::AdsServer`]: a scripted xDS management server (ADS, State of
//!   the World) that records every request and sends what a test gives it.
//! - [`grpcio::GrpcioBackends`]: gRPC C-core servers (Python grpcio) with
//!   any channel arguments, e.g. a `max_connection_age`.
//! - [`browser::Browser`]: Debian's headless Chromium driven through
//!   `chromedriver` (W3C WebDriver over HTTP): load a page, find and click
//!   elements, type, run a script, take a screenshot.
//!
//! This crate depends only on `waypost-proto` and outside crates, so every
//! waypost crate can use it as a dev-dependency without a cycle. Tests that
//! span crates live in `integration/tests/`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::backend::start_backends;
//!
//! let backends = start_backends(3).await?;
//! for b in &backends {
//!     println!("{} listens on {}", b.name(), b.addr());
//! }
//! # Ok(()) }
//! ```

pub mod ads;
pub mod backend;
pub mod browser;
pub mod dns;
pub mod etcd;
mod gate;
pub mod grpcio;
pub mod linger;
pub mod pki;
pub mod proxy;
pub mod tls_backend;

/// Why a harness server could not be started or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A socket or process operation failed.
    #[error("harness I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A DNS name or record was malformed.
    #[error("harness DNS: {0}")]
    Dns(#[from] hickory_server::proto::ProtoError),
    /// etcd could not be found or did not start.
    #[error("harness etcd: {0}")]
    Etcd(String),
    /// Another implementation's peer (grpcio, grpc-go) could not be run.
    #[error("harness peer: {0}")]
    Peer(String),
}
