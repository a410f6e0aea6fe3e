//! `waypost serve` as an xDS management server: Aggregated Discovery
//! Service, State of the World, v3 — the protocol proxyless gRPC clients
//! (grpc-go, grpc-java, C-core, waypost's own `xds:///`) use to find their
//! backends — served from the same registry as grpclb, on the same port.
//!
//! A gRPC client given a bootstrap file pointing at `waypost serve` calls
//! `xds:///S` for a configured service `S`:
//!
//! ```json
//! {"xds_servers": [{"server_uri": "127.0.0.1:50050",
//!                   "channel_creds": [{"type": "insecure"}]}],
//!  "node": {"id": "orders-7"}}
//! ```
//!
//! The pieces: [`resources`] (the Listener, RouteConfiguration, Cluster and
//! ClusterLoadAssignment of a service, pure), [`encode`] (each resource
//! encoded once and shared by every stream), [`stream`] (one stream's
//! protocol state: subscriptions, ACKs, NACKs, what is due, pure),
//! [`clients`] (who is connected, what they ACKed and NACKed: `/status` and
//! `/metrics`) and [`service`] (the tonic service driving streams).

pub mod clients;
pub mod encode;
pub mod resources;
pub mod service;
pub mod stream;

/// The four resource types served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoints,
}

impl ResourceType {
    /// Every type, in the order clients ask for them.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Cluster,
        ResourceType::Endpoints,
    ];

    /// Its type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoints => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
        }
    }

    /// The type with this URL.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Its short name (`lds`, `rds`, `cds`, `eds`), for metrics and status.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Cluster => "cds",
            ResourceType::Endpoints => "eds",
        }
    }

    /// Whether every response carries every subscribed resource, so one
    /// left out does not exist (LDS, CDS); RDS and EDS responses carry only
    /// what changed.
    pub fn full_state(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A service's four resources, each encoded once per version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceResources {
    /// LDS `S`.
    pub listener: encode::EncodedResource,
    /// RDS `S`.
    pub route: encode::EncodedResource,
    /// CDS `S`.
    pub cluster: encode::EncodedResource,
    /// EDS `S`.
    pub endpoints: encode::EncodedResource,
}

impl ServiceResources {
    /// The resource of type `ty`.
    pub fn get(&self, ty: ResourceType) -> &encode::EncodedResource {
        match ty {
            ResourceType::Listener => &self.listener,
            ResourceType::Route => &self.route,
            ResourceType::Cluster => &self.cluster,
            ResourceType::Endpoints => &self.endpoints,
        }
    }
}
