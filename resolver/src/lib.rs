//! Name resolution for waypost: target URIs, a resolver plugin API and the
//! built-in resolvers.
//!
//! A [`ResolverRegistry`] turns a target string into a running resolver and
//! hands back a [`Resolution`], whose updates carry the current
//! [`ResolverState`] (endpoints, service config, grpclb balancer addresses)
//! and the latest error, if any. Dropping the resolution stops the
//! resolver's tasks.
//!
//! | scheme | resolver |
//! |---|---|
//! | `dns` (and no scheme, or an unknown one) | [`dns`]: A/AAAA with TTL refresh, SRV `_grpclb._tcp`, TXT `_grpc_config` (feature `dns`) |
//! | `etcd` | [`etcd`]: grpc-go's etcd naming format, list + watch (feature `etcd`) |
//! | `passthrough` | the endpoint, unresolved, for the connector |
//! | `unix`, `unix-abstract` | a unix socket path or abstract name |
//! | `ipv4`, `ipv6` | literal address lists |
//! | anything you register | your [`ResolverBuilder`], e.g. a [`ManualResolver`] |
//!
//! ```
//! use waypost_resolver::ResolverRegistry;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut resolution = ResolverRegistry::global().resolve("ipv4:127.0.0.1:50051,127.0.0.2").unwrap();
//! let update = resolution.first().await;
//! let addrs: Vec<String> = update.state.unwrap().addresses().map(|a| a.to_string()).collect();
//! assert_eq!(addrs, ["127.0.0.1:50051", "127.0.0.2:443"]);
//! # }
//! ```

pub mod backoff;
mod builtin;
#[cfg(feature = "dns")]
pub mod dns;
pub mod duration;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod manual;
mod publish;
mod registry;
mod state;
mod target;

pub use builtin::{
    DEFAULT_PORT, IpResolverBuilder, PassthroughResolverBuilder, UnixResolverBuilder,
};
pub use error::{DnsErrorKind, ResolveError};
pub use manual::ManualResolver;
pub use publish::{Publisher, Resolution, ResolverEnded, ResolverUpdate};
pub use registry::{ResolverBuilder, ResolverRegistry};
pub use state::{Address, BalancerAddress, Endpoint, ResolverState};
pub use target::{Host, Quoted, Target, TargetError, parse_host_port};
