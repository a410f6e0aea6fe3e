//! What a resolver produces: endpoints, a service config and attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where to connect for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Address {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A unix domain socket path.
    Unix(PathBuf),
    /// A Linux abstract unix socket name (without the leading NUL).
    UnixAbstract(String),
    /// `host:port` for the connector to resolve itself (`passthrough`).
    Unresolved(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::UnixAbstract(name) => write!(f, "unix-abstract:{name}"),
            Address::Unresolved(host_port) => f.write_str(host_port),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

/// One backend: one or more addresses (tried in order) and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The addresses of this endpoint; usually one.
    pub addresses: Vec<Address>,
    /// Metadata attached by the resolver (e.g. the `Metadata` of an etcd
    /// registration), or `None`.
    pub metadata: Option<serde_json::Value>,
}

impl Endpoint {
    /// An endpoint with one address and no metadata.
    pub fn new(address: impl Into<Address>) -> Self {
        Endpoint {
            addresses: vec![address.into()],
            metadata: None,
        }
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// A look-aside (grpclb) balancer found by the resolver, e.g. through DNS
/// SRV `_grpclb._tcp.<host>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BalancerAddress {
    /// Where the balancer listens.
    pub addr: SocketAddr,
    /// Its host name (the SRV target), for the `:authority` of calls to it.
    pub server_name: String,
}

/// One complete resolution result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolverState {
    /// The backends.
    pub endpoints: Vec<Endpoint>,
    /// The service config JSON chosen for this client, if the resolver
    /// supplies one; the balancer parses it.
    pub service_config: Option<serde_json::Value>,
    /// Look-aside balancers, for the `grpclb` policy.
    pub balancer_addresses: Vec<BalancerAddress>,
    /// Other resolver-specific attributes.
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl ResolverState {
    /// A state with these endpoints and nothing else.
    pub fn from_endpoints(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        ResolverState {
            endpoints: endpoints.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Every address of every endpoint, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &Address> {
        self.endpoints.iter().flat_map(|e| e.addresses.iter())
    }

    /// The JSON form printed by `waypost resolve`: one entry per address.
    pub fn to_json(&self) -> serde_json::Value {
        let endpoints: Vec<_> = self
            .endpoints
            .iter()
            .flat_map(|e| {
                e.addresses.iter().map(
                    move |a| serde_json::json!({ "addr": a.to_string(), "metadata": e.metadata }),
                )
            })
            .collect();
        let balancers: Vec<_> = self
            .balancer_addresses
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        serde_json::json!({
            "endpoints": endpoints,
            "service_config": self.service_config,
            "balancer_addresses": balancers,
        })
    }
}
