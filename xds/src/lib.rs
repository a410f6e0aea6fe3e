//! xDS for waypost: the bootstrap, the XdsClient (one ADS stream per
//! management server per process), the `xds:///` resolver and the xDS
//! balancing policies (gRFC A27 and its successors).
//!
//! Work in progress (issue 17), each step tested against a scripted ADS
//! server: the bootstrap, the XdsClient, LDS/RDS/CDS/EDS decoding, the
//! `xds` resolver for targets whose routes lead to one cluster, and the
//! `xds_cluster_impl` policy (drops, circuit breaking). Call [`register`]
//! once before building an `xds:///` channel.

pub mod bootstrap;
pub mod client;
pub mod policy;
pub mod resolver;
pub mod resources;

pub use client::client_status;

/// Registers the `xds` resolver scheme (bootstrap from the environment)
/// and the xDS policies in the global registries. Idempotent.
pub fn register() {
    resolver::register();
    policy::register();
}
