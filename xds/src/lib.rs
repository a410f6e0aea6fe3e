//! xDS for waypost: the bootstrap, the XdsClient (one ADS stream per
//! management server per process), the `xds:///` resolver and the xDS
//! balancing policies (gRFC A27 and its successors).
//!
//! Work in progress (issue 17): the bootstrap is done; the rest lands in
//! steps, each tested against a scripted ADS server.

pub mod bootstrap;
pub mod client;
pub mod resolver;
pub mod resources;
