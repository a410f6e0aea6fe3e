//! xDS for waypost — the `xds` feature of `waypost-balancer`, under its
//! own name: the bootstrap, the XdsClient (one ADS stream per management
//! server per process), the `xds:///` resolver and the xDS balancing
//! policies (gRFC A27 and its successors). They live in the balancer crate
//! so that a channel registers the `xds` scheme by itself (the policies
//! implement the balancer's traits, so the balancer could not depend on a
//! separate crate); nothing needs calling.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // GRPC_XDS_BOOTSTRAP=/etc/grpc/bootstrap.json
//! let channel = waypost_balancer::Channel::builder("xds:///orders").build()?;
//! # drop(channel); Ok(()) }
//! ```

pub use waypost_balancer::xds::*;
