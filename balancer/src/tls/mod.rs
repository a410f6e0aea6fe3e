//! TLS for channels: [`ClientTlsConfig`], named and shaped like tonic's,
//! turned into a [`Dialer`](crate::Dialer) that every subchannel of a
//! channel uses — and its server side, [`ServerTlsConfig`] and
//! [`TlsAcceptor`], which `waypost serve` and `waypost::rpc` servers use.
//! One set of PEM files configures every part of waypost.
//!
//! - The name verified, and sent as SNI, is the channel's authority host
//!   (the target's host) unless [`ClientTlsConfig::domain_name`] overrides
//!   it — never the IP address the resolver returned, as in gRPC.
//! - ALPN `h2` is offered and required: a server that does not select it
//!   fails the handshake, saying so.
//! - Handshake failures are explained (unknown CA, name mismatch, expired
//!   certificate, client certificate required, ALPN missing, a plaintext
//!   server): the subchannel goes to TRANSIENT_FAILURE with that reason,
//!   and fail-fast calls fail UNAVAILABLE with it.
//! - [`ClientTlsConfig::from_files`] re-reads its PEM files on an interval
//!   (gRFC A29's file-watcher provider): new connections use new material,
//!   existing ones are untouched, and a half-written or invalid file keeps
//!   the last good material (logged and counted in [`TlsStats`]).
//!
//! ```no_run
//! use waypost_balancer::Channel;
//! use waypost_balancer::tls::{Certificate, ClientTlsConfig, Identity};
//!
//! # fn demo(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let tls = ClientTlsConfig::new()
//!     .ca_certificate(Certificate::from_pem(ca))
//!     .identity(Identity::from_pem(cert, key))
//!     .domain_name("movies.internal");
//! let channel = Channel::builder("dns:///movies.internal:443").tls(tls).build()?;
//! # let _ = channel; Ok(()) }
//! ```

mod config;
mod dialer;
mod explain;
mod files;
mod server;

pub use self::config::{Certificate, ClientTlsConfig, DEFAULT_REFRESH, Identity, TlsError};
pub use self::dialer::{ClientTlsStream, Explained, TlsDialer};
pub use self::files::TlsStats;
pub use self::server::{PeerIdentity, ServerTlsConfig, ServerTlsStream, TlsAcceptor};
