//! The four xDS resources `waypost serve` publishes for a service `S`, as
//! pure functions of its configuration and backends.
//!
//! Names are chosen so a gRPC client's `xds:///S` works unchanged: the
//! Listener `S` (an API listener whose HttpConnectionManager ends in the
//! router filter, with the routes inline or by RDS), the RouteConfiguration
//! `S` (one virtual host for `S` and `S:*`, every call to cluster `S`), the
//! Cluster `S` (EDS over ADS) and the ClusterLoadAssignment `S`.
//!
//! ```
//! use waypost_lbserver::config::ServiceConfig;
//! use waypost_lbserver::xds::resources::cluster;
//!
//! let movies = ServiceConfig::new("movies", "127.0.0.1:50061");
//! assert_eq!(cluster(&movies).name, "movies");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, HealthStatus, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    Header, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;

use crate::assign::{BackendView, effective_weight};
use crate::config::{ListPolicy, ServiceConfig};

/// The drop category of `drop_fraction` (clients name it in their error).
pub const DROP_CATEGORY: &str = "waypost";

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

fn any<M: Message>(type_url: &str, message: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: message.encode_to_vec(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// The API listener `S`: the routes inline, or by RDS with `xds_rds`.
pub fn listener(service: &ServiceConfig) -> Listener {
    let route_specifier = if service.xds_rds {
        RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: service.name.clone(),
        })
    } else {
        RouteSpecifier::RouteConfig(route_configuration(service))
    };
    let manager = HttpConnectionManager {
        http_filters: vec![HttpFilter {
            name: "router".into(),
            config_type: Some(ConfigType::TypedConfig(Any {
                type_url: ROUTER.into(),
                value: Vec::new(),
            })),
            ..Default::default()
        }],
        route_specifier: Some(route_specifier),
        ..Default::default()
    };
    Listener {
        name: service.name.clone(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(HCM, &manager)),
        }),
        ..Default::default()
    }
}

/// The routes of `S`: one virtual host for `S` and `S:*` whose one route
/// sends every call to cluster `S` (hashing `hash_header` for ring_hash).
pub fn route_configuration(service: &ServiceConfig) -> RouteConfiguration {
    let hash_policy = service
        .hash_header
        .iter()
        .map(|header| HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: header.clone(),
                regex_rewrite: None,
            })),
            terminal: false,
        })
        .collect();
    RouteConfiguration {
        name: service.name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: service.name.clone(),
            domains: vec![service.name.clone(), format!("{}:*", service.name)],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(service.name.clone())),
                    hash_policy,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The cluster `S`: endpoints by EDS over ADS; RING_HASH for ring_hash,
/// ROUND_ROBIN otherwise (weights travel as locality weights, which every
/// gRPC client honours; see [`assignment`]).
pub fn cluster(service: &ServiceConfig) -> Cluster {
    let lb_policy = match service.policy {
        ListPolicy::RingHash => LbPolicy::RingHash,
        ListPolicy::RoundRobin | ListPolicy::Weighted | ListPolicy::Subset => LbPolicy::RoundRobin,
    };
    Cluster {
        name: service.name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: service.name.clone(),
        }),
        lb_policy: lb_policy as i32,
        ..Default::default()
    }
}

/// An assignment and what it listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The resource.
    pub resource: ClusterLoadAssignment,
    /// The backends it lists as HEALTHY: next time, those of them that are
    /// draining are listed once as DRAINING (then left out).
    pub listed: BTreeSet<SocketAddr>,
    /// Whether it lists any backend as DRAINING (so a follow-up without
    /// them is due).
    pub shows_draining: bool,
}

/// The locality key: region, zone, sub-zone.
type LocalityKey = (String, String, String);

/// An endpoint as listed: address, weight, health.
type Listed = (SocketAddr, u32, HealthStatus);

/// The assignment `S` from the service's backends.
///
/// Healthy, undrained backends are HEALTHY; a draining one that
/// `previously_listed` held is DRAINING for this one update, then left out;
/// unhealthy ones are left out. Localities come from each backend's region
/// and zone, each locality weighted by the sum of its endpoints' weights;
/// priorities are the backends' priorities renumbered without gaps (gRPC
/// rejects gaps). A `weighted` service puts every backend in its own
/// locality (sub-zone = its address) weighted by its effective weight —
/// gRPC's ROUND_ROBIN ignores endpoint weights but every client honours
/// locality weights — and also sets each endpoint's weight.
/// `drop_fraction` becomes a drop overload of category
/// [`DROP_CATEGORY`], in parts per million.
pub fn assignment(
    service: &ServiceConfig,
    backends: &[BackendView],
    drop_fraction: f64,
    previously_listed: &BTreeSet<SocketAddr>,
) -> Assignment {
    let weighted = service.policy == ListPolicy::Weighted;
    let mut listed = BTreeSet::new();
    let mut shows_draining = false;
    // priority → locality → endpoints
    let mut tree: BTreeMap<u32, BTreeMap<LocalityKey, Vec<Listed>>> = BTreeMap::new();
    for backend in backends {
        let status = match (backend.healthy, backend.draining) {
            (true, false) => HealthStatus::Healthy,
            (true, true) if previously_listed.contains(&backend.addr) => HealthStatus::Draining,
            _ => continue,
        };
        if status == HealthStatus::Healthy {
            listed.insert(backend.addr);
        } else {
            shows_draining = true;
        }
        let weight = if weighted {
            effective_weight(backend.weight, backend.load)
        } else {
            1
        };
        let sub_zone = if weighted {
            backend.addr.to_string()
        } else {
            String::new()
        };
        let place = &backend.placement;
        tree.entry(place.priority)
            .or_default()
            .entry((place.region.clone(), place.zone.clone(), sub_zone))
            .or_default()
            .push((backend.addr, weight, status));
    }
    let endpoints = tree
        .into_values()
        .enumerate()
        .flat_map(|(priority, localities)| {
            localities
                .into_iter()
                .map(
                    move |((region, zone, sub_zone), endpoints)| LocalityLbEndpoints {
                        locality: Some(Locality {
                            region,
                            zone,
                            sub_zone,
                        }),
                        load_balancing_weight: Some(UInt32Value {
                            value: endpoints.iter().map(|(_, w, _)| *w).sum::<u32>().max(1),
                        }),
                        priority: priority as u32,
                        lb_endpoints: endpoints
                            .into_iter()
                            .map(|(addr, weight, status)| {
                                lb_endpoint(addr, weighted.then_some(weight), status)
                            })
                            .collect(),
                        ..Default::default()
                    },
                )
        })
        .collect();
    let drop_overloads = if drop_fraction > 0.0 {
        vec![DropOverload {
            category: DROP_CATEGORY.into(),
            drop_percentage: Some(FractionalPercent {
                numerator: (drop_fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u32,
                denominator: DenominatorType::Million as i32,
            }),
        }]
    } else {
        Vec::new()
    };
    Assignment {
        resource: ClusterLoadAssignment {
            cluster_name: service.name.clone(),
            endpoints,
            policy: Some(Policy {
                drop_overloads,
                ..Default::default()
            }),
            ..Default::default()
        },
        listed,
        shows_draining,
    }
}

fn lb_endpoint(addr: SocketAddr, weight: Option<u32>, status: HealthStatus) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: status as i32,
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::Placement;

    fn backend(port: u16, zone: &str, priority: u32) -> BackendView {
        BackendView {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            healthy: true,
            draining: false,
            weight: 1,
            load: 0.0,
            placement: Placement {
                region: "r".into(),
                zone: zone.into(),
                priority,
            },
        }
    }

    fn ports(locality: &LocalityLbEndpoints) -> Vec<u32> {
        locality
            .lb_endpoints
            .iter()
            .map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(Endpoint {
                    address:
                        Some(Address {
                            address: Some(AddressKind::SocketAddress(s)),
                        }),
                    ..
                })) => match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => p,
                    _ => panic!("no port"),
                },
                _ => panic!("no address"),
            })
            .collect()
    }

    #[test]
    fn localities_by_zone_weighted_by_their_endpoints_and_priorities_without_gaps() {
        let service = ServiceConfig::new("s", "x");
        let mut unhealthy = backend(5, "a", 0);
        unhealthy.healthy = false;
        let backends = [
            backend(1, "a", 2),
            backend(2, "a", 2),
            backend(3, "b", 2),
            backend(4, "c", 7),
            unhealthy,
        ];
        let out = assignment(&service, &backends, 0.0, &BTreeSet::new());
        let localities = &out.resource.endpoints;
        assert_eq!(localities.len(), 3);
        let summary: Vec<(String, u32, u32, Vec<u32>)> = localities
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().zone.clone(),
                    l.priority,
                    l.load_balancing_weight.as_ref().unwrap().value,
                    ports(l),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a".into(), 0, 2, vec![1, 2]),
                ("b".into(), 0, 1, vec![3]),
                ("c".into(), 1, 1, vec![4]),
            ]
        );
        assert_eq!(out.listed.len(), 4);
        assert!(out.resource.policy.unwrap().drop_overloads.is_empty());
    }

    #[test]
    fn a_weighted_service_gives_each_backend_its_own_weighted_locality() {
        let mut service = ServiceConfig::new("s", "x");
        service.policy = ListPolicy::Weighted;
        let mut heavy = backend(1, "a", 0);
        heavy.weight = 3;
        let out = assignment(
            &service,
            &[heavy, backend(2, "a", 0)],
            0.0,
            &BTreeSet::new(),
        );
        let weights: Vec<(String, u32)> = out
            .resource
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().sub_zone.clone(),
                    l.load_balancing_weight.as_ref().unwrap().value,
                )
            })
            .collect();
        assert_eq!(
            weights,
            [("127.0.0.1:1".into(), 3), ("127.0.0.1:2".into(), 1)]
        );
        let endpoint_weight = out.resource.endpoints[0].lb_endpoints[0]
            .load_balancing_weight
            .as_ref()
            .unwrap()
            .value;
        assert_eq!(endpoint_weight, 3);
    }

    #[test]
    fn a_drained_backend_is_draining_once_then_gone() {
        let service = ServiceConfig::new("s", "x");
        let mut drained = backend(1, "a", 0);
        let first = assignment(
            &service,
            &[drained.clone(), backend(2, "a", 0)],
            0.0,
            &BTreeSet::new(),
        );
        assert!(first.listed.contains(&drained.addr));
        drained.draining = true;
        let second = assignment(
            &service,
            &[drained.clone(), backend(2, "a", 0)],
            0.0,
            &first.listed,
        );
        let statuses: Vec<i32> = second.resource.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| e.health_status)
            .collect();
        assert_eq!(
            statuses,
            [HealthStatus::Draining as i32, HealthStatus::Healthy as i32]
        );
        assert!(second.shows_draining);
        let third = assignment(
            &service,
            &[drained, backend(2, "a", 0)],
            0.0,
            &second.listed,
        );
        assert_eq!(ports(&third.resource.endpoints[0]), [2]);
        assert!(!third.shows_draining);
    }

    #[test]
    fn drop_fraction_is_parts_per_million() {
        let service = ServiceConfig::new("s", "x");
        let out = assignment(&service, &[backend(1, "", 0)], 0.25, &BTreeSet::new());
        let drop = &out.resource.policy.unwrap().drop_overloads[0];
        assert_eq!(drop.category, DROP_CATEGORY);
        let percentage = drop.drop_percentage.as_ref().unwrap();
        assert_eq!(percentage.numerator, 250_000);
        assert_eq!(percentage.denominator, DenominatorType::Million as i32);
    }

    #[test]
    fn ring_hash_clusters_and_hashing_routes() {
        let mut service = ServiceConfig::new("s", "x");
        service.policy = ListPolicy::RingHash;
        service.hash_header = Some("x-user".into());
        assert_eq!(cluster(&service).lb_policy, LbPolicy::RingHash as i32);
        let routes = route_configuration(&service);
        let host = &routes.virtual_hosts[0];
        assert_eq!(host.domains, ["s", "s:*"]);
        let Some(Action::Route(action)) = &host.routes[0].action else {
            panic!("no route action");
        };
        assert_eq!(action.hash_policy.len(), 1);
        service.xds_rds = true;
        let manager = listener(&service)
            .api_listener
            .unwrap()
            .api_listener
            .unwrap();
        let manager = HttpConnectionManager::decode(manager.value.as_slice()).unwrap();
        assert!(
            matches!(manager.route_specifier, Some(RouteSpecifier::Rds(r)) if r.route_config_name == "s")
        );
    }
}
