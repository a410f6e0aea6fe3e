//! waypost: gRPC name resolution and load balancing for Rust.
//!
//! A tonic client gets a channel from a target URI such as
//! `dns:///orders.internal:50051` or `etcd:///orders`, and every call is spread
//! over healthy backends by a policy chosen in the gRPC service config. This
//! facade re-exports waypost's crates:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`proto`] | `waypost-proto` | `grpc.lb.v1`, `grpc.health.v1`, `movies.v1` and a health server |
//! | [`resolver`] | `waypost-resolver` | target URIs, the resolver plugin API, `dns` (feature `dns`), `etcd` and registration (feature `etcd`), `passthrough`, `unix`, `ipv4`/`ipv6`, `manual` |
//! | [`balancer`] (and [`Channel`] at the root) | `waypost-balancer` | subchannels, `pick_first`, `round_robin`, the policy plugin API, service config, health checking, retries, the `Channel` |
//! | [`rpc`] | `waypost-rpc` | gRPC control calls and framed bulk-data connections on one endpoint, TLS from the same configuration |
//!
//! The look-aside balancer server and the bulk-data RPC crates join this
//! table as they land; the README's feature table says what works today.
//!
//! ```
//! use waypost::proto::health::HealthReporter;
//! use waypost::proto::grpc::health::v1::health_check_response::ServingStatus;
//!
//! // Every waypost backend can expose grpc.health.v1 in two lines.
//! let (reporter, _service) = HealthReporter::new();
//! reporter.set("movies.v1.MoviesService", ServingStatus::Serving);
//! ```

pub use waypost_balancer as balancer;
/// gRPC's client metrics (A66, A94) for Prometheus and OpenTelemetry.
pub use waypost_balancer::metrics;
pub use waypost_balancer::tls::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
pub use waypost_balancer::{Channel, ConnectivityState, WaitForReady};
pub use waypost_proto as proto;
pub use waypost_resolver as resolver;
pub use waypost_rpc as rpc;
/// xDS: `xds:///name` channels fed by an xDS management server (feature
/// `xds`, on by default; the first channel registers the scheme). See the
/// README's xDS section for what is supported.
#[cfg(feature = "xds")]
pub use waypost_xds as xds;

/// Compiles the README's Rust examples as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
