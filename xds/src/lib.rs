//! xDS for waypost: the bootstrap, the XdsClient (one ADS stream per
//! management server per process), the `xds:///` resolver and the xDS
//! balancing policies (gRFC A27 and its successors).
//!
//! Work in progress (issue 17), each step tested against a scripted ADS
//! server and real backends: the bootstrap, the XdsClient, LDS/RDS/CDS/EDS
//! checking, the `xds` resolver and the policy tree (cluster manager with
//! per-call routing, cluster_impl, priority, outlier detection,
//! weighted_target). Call [`register`] once before building an `xds:///`
//! channel.

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
