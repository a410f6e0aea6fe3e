//! xDS for waypost: the bootstrap, the XdsClient (one ADS stream per
//! management server per process), the `xds:///` resolver and the xDS
//! balancing policies (gRFC A27 and its successors). Feature `xds` (on in
//! the `waypost` crate by default).
//!
//! Nothing to call: the xDS policies are in the global policy registry
//! from the start, and the `xds` scheme (bootstrap from
//! `GRPC_XDS_BOOTSTRAP` or `GRPC_XDS_BOOTSTRAP_CONFIG`) joins the global
//! resolver registry when the first channel is built — unless another
//! resolver took the scheme first.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // GRPC_XDS_BOOTSTRAP=/etc/grpc/bootstrap.json
//! let channel = waypost_balancer::Channel::builder("xds:///orders").build()?;
//! # drop(channel); Ok(()) }
//! ```

pub mod bootstrap;
pub mod client;
pub mod policy;
pub mod resolver;
pub mod resources;

pub use client::client_status;

/// Registers the `xds` resolver scheme (bootstrap from the environment)
/// in the global resolver registry, replacing any other. Building a channel
/// does this by itself (without replacing); call it only to take the
/// scheme back from another resolver.
pub fn register() {
    resolver::register();
}

/// Registers the `xds` scheme unless some resolver has it already; once
/// per process, when the first channel is built.
pub(crate) fn register_default() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if waypost_resolver::ResolverRegistry::global()
            .get("xds")
            .is_none()
        {
            resolver::register();
        }
    });
}
