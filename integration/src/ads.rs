//! A scripted xDS management server: `envoy.service.discovery.v3.
//! AggregatedDiscoveryService/StreamAggregatedResources` (State of the
//! World) on `127.0.0.1`, built on tonic and the `envoy-types` types.
//!
//! A test [`set`](AdsServer::set)s the current response of a resource type;
//! it goes to every open stream at once, to every new stream when that
//! stream first asks for the type — as a real server always sends its
//! current state on a new stream — and to a stream whose request changes
//! the names it asks for. Every request is recorded, ACKs and NACKs
//! included, and a test waits for one with [`AdsServer::wait_for_request`].
//! The server can be stopped (every stream cut, port closed) and restarted
//! on the same port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::ads::AdsServer;
//!
//! let server = AdsServer::start().await?;
//! let first = server
//!     .wait_for_request(|r| r.type_url.ends_with("Cluster"))
//!     .await;
//! println!("the client asked for {:?}", first.resource_names);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::HarnessError;

type Outbox = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;

#[derive(Default)]
struct State {
    /// The current response per type URL.
    current: BTreeMap<String, DiscoveryResponse>,
    /// Every request received, in order.
    requests: Vec<DiscoveryRequest>,
    /// Open streams by number: their outbox, and the names they last asked
    /// for per type.
    streams: BTreeMap<usize, (Outbox, BTreeMap<String, Vec<String>>)>,
    streams_opened: usize,
}

struct Inner {
    state: Mutex<State>,
    arrived: Notify,
    nonce: AtomicU64,
}

impl Inner {
    fn nonce(&self) -> String {
        format!("nonce-{}", self.nonce.fetch_add(1, Ordering::Relaxed))
    }
}

/// The scripted server. See the [module docs](self).
pub struct AdsServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdsServer {
    /// Starts on a free port of `127.0.0.1`.
    pub async fn start() -> Result<AdsServer, HarnessError> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let server = AdsServer {
            addr,
            inner: Arc::new(Inner {
                state: Mutex::default(),
                arrived: Notify::new(),
                nonce: AtomicU64::new(1),
            }),
            running: Mutex::new(None),
        };
        *server.running.lock() = Some(server.serve(listener));
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A bootstrap JSON pointing at this server (plaintext), for `node_id`.
    pub fn bootstrap_json(&self, node_id: &str) -> String {
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}], "node": {{"id": "{node_id}"}}}}"#,
            self.addr
        )
    }

    /// Makes `response` the current state of its type (its nonce is set
    /// here) and sends it to every stream that asked for the type.
    pub fn set(&self, mut response: DiscoveryResponse) {
        let mut state = self.inner.state.lock();
        state.streams.retain(|_, (outbox, _)| !outbox.is_closed());
        for (outbox, types) in state.streams.values() {
            if types.contains_key(&response.type_url) {
                response.nonce = self.inner.nonce();
                let _ = outbox.send(Ok(response.clone()));
            }
        }
        state.current.insert(response.type_url.clone(), response);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.inner.state.lock().requests.clone()
    }

    /// How many streams were opened in all.
    pub fn streams_opened(&self) -> usize {
        self.inner.state.lock().streams_opened
    }

    /// Waits (at most 10 s) for a request, received from now on or
    /// before, that satisfies `condition`; panics if none comes.
    pub async fn wait_for_request(
        &self,
        mut condition: impl FnMut(&DiscoveryRequest) -> bool,
    ) -> DiscoveryRequest {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.inner.arrived.notified();
            if let Some(found) = self.requests().into_iter().find(|r| condition(r)) {
                return found;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "no matching xDS request within 10 s; got {:#?}",
                    self.requests()
                );
            }
        }
    }

    /// Stops as if the process died: the port closes, every stream is cut.
    pub async fn stop(&self) {
        let task = self.running.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.inner.state.lock().streams.clear();
    }

    /// Starts again on the same port (keeping the current state).
    pub async fn restart(&self) -> Result<(), HarnessError> {
        let listener = bind(self.addr)?;
        *self.running.lock() = Some(self.serve(listener));
        Ok(())
    }

    /// The accept loop: it owns every connection task, so aborting it cuts
    /// them all (tonic's own server would leave them running).
    fn serve(&self, listener: tokio::net::TcpListener) -> JoinHandle<()> {
        let routes = tonic::service::Routes::new(AggregatedDiscoveryServiceServer::new(Ads {
            inner: self.inner.clone(),
        }))
        .prepare();
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let service = hyper_util::service::TowerToHyperService::new(routes.clone());
                        connections.spawn(async move {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(io, service)
                            .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        })
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        if let Some(task) = self.running.get_mut().take() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HarnessError> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(128)?)
}

struct Ads {
    inner: Arc<Inner>,
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut incoming = request.into_inner();
        let (outbox, responses) = mpsc::unbounded_channel();
        let index = {
            let mut state = self.inner.state.lock();
            state.streams_opened += 1;
            let index = state.streams_opened;
            state
                .streams
                .insert(index, (outbox.clone(), Default::default()));
            index
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            // Ends when the client's side ends (its connection cut, too).
            while let Ok(Some(request)) = incoming.message().await {
                let mut state = inner.state.lock();
                let type_url = request.type_url.clone();
                // A stream's first request of a type, and one that changes
                // the names asked for, get the current state (ACKs and
                // NACKs do not).
                let names = request.resource_names.clone();
                let changed = state
                    .streams
                    .get_mut(&index)
                    .map(|(_, types)| types.insert(type_url.clone(), names.clone()) != Some(names))
                    .unwrap_or(false);
                if changed && let Some(current) = state.current.get(&type_url) {
                    let mut response = current.clone();
                    response.nonce = inner.nonce();
                    let _ = outbox.send(Ok(response));
                }
                state.requests.push(request);
                drop(state);
                inner.arrived.notify_waiters();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(responses),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "this test server speaks State of the World only",
        ))
    }
}

/// Builders for the resources a test serves: the shapes a gRPC client
/// accepts (XDS.md), with the type URLs.
pub mod build {
    use std::net::SocketAddr;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
    };
    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, AggregatedConfigSource, ConfigSource, Locality, SocketAddress,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter,
    };
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};
    use prost::Message;

    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINTS: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

    fn any<M: Message>(type_url: &str, message: &M) -> Any {
        Any {
            type_url: type_url.into(),
            value: message.encode_to_vec(),
        }
    }

    /// A response of `type_url` at `version` holding `resources`.
    pub fn response<M: Message>(
        type_url: &str,
        version: &str,
        resources: &[M],
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            type_url: type_url.into(),
            resources: resources.iter().map(|r| any(type_url, r)).collect(),
            ..Default::default()
        }
    }

    fn ads() -> ConfigSource {
        ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }
    }

    /// API listener `name` with inline routes sending every call to
    /// `cluster`, and the router filter.
    pub fn api_listener(name: &str, cluster: &str) -> Listener {
        api_listener_hashing(name, cluster, None)
    }

    /// [`api_listener`] whose route hashes calls (for RING_HASH clusters) by
    /// the request header `hash_header`, when given.
    pub fn api_listener_hashing(name: &str, cluster: &str, hash_header: Option<&str>) -> Listener {
        use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
        use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
            Header, PolicySpecifier,
        };
        let hash_policy = hash_header
            .map(|header| HashPolicy {
                policy_specifier: Some(PolicySpecifier::Header(Header {
                    header_name: header.into(),
                    regex_rewrite: None,
                })),
                terminal: false,
            })
            .into_iter()
            .collect();
        let routes = RouteConfiguration {
            name: format!("{name}-routes"),
            virtual_hosts: vec![VirtualHost {
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(String::new())),
                        ..Default::default()
                    }),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                        hash_policy,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        api_listener_with_routes(name, routes)
    }

    /// An API listener `name` with these inline routes and the router
    /// filter.
    pub fn api_listener_with_routes(name: &str, routes: RouteConfiguration) -> Listener {
        let hcm = HttpConnectionManager {
            http_filters: vec![HttpFilter {
                name: "router".into(),
                config_type: Some(ConfigType::TypedConfig(Any {
                    type_url: ROUTER.into(),
                    value: Vec::new(),
                })),
                ..Default::default()
            }],
            route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
            ..Default::default()
        };
        Listener {
            name: name.into(),
            api_listener: Some(ApiListener {
                api_listener: Some(any(HCM, &hcm)),
            }),
            ..Default::default()
        }
    }

    /// EDS cluster `name` over ADS (round_robin).
    pub fn eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            ..Default::default()
        }
    }

    /// The assignment `name`: `addrs` in one locality (zone `z1`).
    pub fn assignment(name: &str, addrs: &[SocketAddr]) -> ClusterLoadAssignment {
        let healthy: Vec<(SocketAddr, bool)> = addrs.iter().map(|a| (*a, true)).collect();
        assignment_by_priority(name, &[&healthy])
    }

    /// The assignment `name` with one locality per priority (zone `p<N>`),
    /// each endpoint HEALTHY (true) or UNHEALTHY (false).
    pub fn assignment_by_priority(
        name: &str,
        priorities: &[&[(SocketAddr, bool)]],
    ) -> ClusterLoadAssignment {
        let localities: Vec<LocalitySpec<'_>> = priorities
            .iter()
            .enumerate()
            .map(|(priority, endpoints)| LocalitySpec {
                zone: if priorities.len() == 1 {
                    "z1".into()
                } else {
                    format!("p{priority}")
                },
                weight: 1,
                priority: priority as u32,
                endpoints,
            })
            .collect();
        assignment_of(name, &localities)
    }

    /// One locality of an assignment.
    #[derive(Debug, Clone)]
    pub struct LocalitySpec<'a> {
        /// Its zone.
        pub zone: String,
        /// Its weight.
        pub weight: u32,
        /// Its priority.
        pub priority: u32,
        /// Its endpoints, HEALTHY (true) or UNHEALTHY (false).
        pub endpoints: &'a [(SocketAddr, bool)],
    }

    /// The assignment `name` with these localities.
    pub fn assignment_of(name: &str, localities: &[LocalitySpec<'_>]) -> ClusterLoadAssignment {
        use envoy_types::pb::envoy::config::core::v3::HealthStatus;
        ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: localities
                .iter()
                .map(|spec| LocalityLbEndpoints {
                    locality: Some(Locality {
                        zone: spec.zone.clone(),
                        ..Default::default()
                    }),
                    priority: spec.priority,
                    load_balancing_weight: Some(UInt32Value { value: spec.weight }),
                    lb_endpoints: spec
                        .endpoints
                        .iter()
                        .map(|(addr, healthy)| LbEndpoint {
                            health_status: if *healthy {
                                HealthStatus::Healthy as i32
                            } else {
                                HealthStatus::Unhealthy as i32
                            },
                            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                                address: Some(Address {
                                    address: Some(AddressKind::SocketAddress(SocketAddress {
                                        address: addr.ip().to_string(),
                                        port_specifier: Some(PortSpecifier::PortValue(u32::from(
                                            addr.port(),
                                        ))),
                                        ..Default::default()
                                    })),
                                }),
                                ..Default::default()
                            })),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}
