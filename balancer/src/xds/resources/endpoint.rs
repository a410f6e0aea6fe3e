//! EDS: the `ClusterLoadAssignment` resource, checked as gRPC checks it
//! (gRFC A27) and reduced to what the client uses: localities by priority
//! with their weights, endpoints with their weights and health, and drops.
//!
//! Rules: a locality without a weight (or weight 0) is skipped; priorities
//! must run from 0 without a gap; a locality appears once per priority; an
//! endpoint is an IP socket address with a port, appears once in the
//! resource, and has a weight ≥ 1 (1 when unset); a priority's locality
//! weights must sum to at most 2³²−1. Endpoints whose health is neither
//! HEALTHY nor UNKNOWN are kept but marked unusable.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::xds::client::ads::{ResourceError, ResourceType, Value};

/// The type URL of EDS resources.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// EDS for the XdsClient.
pub static EDS: ResourceType = ResourceType {
    type_url: TYPE_URL,
    full_state: false,
    decode: decode_value,
};

/// A locality's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalityName {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

impl std::fmt::Display for LocalityName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{region={}, zone={}, sub_zone={}}}",
            self.region, self.zone, self.sub_zone
        )
    }
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its weight within its locality (≥ 1).
    pub weight: u32,
    /// HEALTHY or UNKNOWN: calls may go to it.
    pub usable: bool,
}

/// One locality of one priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityEndpoints {
    /// Its name.
    pub locality: LocalityName,
    /// Its weight among its priority's localities (≥ 1).
    pub weight: u32,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
}

/// A drop category: this share of calls fails UNAVAILABLE
/// `EDS-configured drop: <category>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    /// The category.
    pub category: String,
    /// Dropped calls per million.
    pub per_million: u32,
}

/// A checked assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointsUpdate {
    /// The resource's (EDS service) name.
    pub name: String,
    /// Localities by priority, 0 (the most preferred) first.
    pub priorities: Vec<Vec<LocalityEndpoints>>,
    /// The drops, in order.
    pub drops: Vec<Drop>,
}

fn refuse(name: &str, message: impl Into<String>) -> ResourceError {
    ResourceError {
        name: Some(name.to_owned()),
        message: message.into(),
    }
}

fn locality_name(locality: Option<&Locality>) -> LocalityName {
    locality.map_or_else(LocalityName::default, |l| LocalityName {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.sub_zone.clone(),
    })
}

/// Decodes and checks one `ClusterLoadAssignment`.
pub fn decode(any: &Any) -> Result<EndpointsUpdate, ResourceError> {
    let assignment =
        ClusterLoadAssignment::decode(any.value.as_slice()).map_err(|e| ResourceError {
            name: None,
            message: format!("can't decode ClusterLoadAssignment: {e}"),
        })?;
    let name = assignment.cluster_name.clone();
    if name.is_empty() {
        return Err(ResourceError {
            name: None,
            message: "field:cluster_name error:empty".into(),
        });
    }
    let mut priorities: Vec<Vec<LocalityEndpoints>> = Vec::new();
    let mut addresses = BTreeSet::new();
    for (i, group) in assignment.endpoints.iter().enumerate() {
        let at = format!("field:endpoints[{i}]");
        let weight = group.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        if weight == 0 {
            continue; // gRPC skips localities without a weight.
        }
        let locality = locality_name(group.locality.as_ref());
        let priority = group.priority as usize;
        if priority > assignment.endpoints.len() {
            return Err(refuse(
                &name,
                format!("{at}.priority error:priority {priority} leaves a gap"),
            ));
        }
        if priorities.len() <= priority {
            priorities.resize_with(priority + 1, Vec::new);
        }
        if priorities[priority].iter().any(|l| l.locality == locality) {
            return Err(refuse(
                &name,
                format!("{at}.locality error:duplicate locality {locality} in priority {priority}"),
            ));
        }
        let mut endpoints = Vec::with_capacity(group.lb_endpoints.len());
        for (j, lb_endpoint) in group.lb_endpoints.iter().enumerate() {
            let at = format!("{at}.lb_endpoints[{j}]");
            let socket = match &lb_endpoint.host_identifier {
                Some(HostIdentifier::Endpoint(endpoint)) => endpoint
                    .address
                    .as_ref()
                    .and_then(|a| a.address.as_ref())
                    .and_then(|a| match a {
                        AddressKind::SocketAddress(s) => Some(s),
                        _ => None,
                    }),
                _ => None,
            }
            .ok_or_else(|| {
                refuse(
                    &name,
                    format!("{at}.endpoint.address error:not a socket address"),
                )
            })?;
            let ip: IpAddr = socket.address.parse().map_err(|_| {
                refuse(
                    &name,
                    format!(
                        "{at}.endpoint.address error:{:?} is not an IP address",
                        socket.address
                    ),
                )
            })?;
            let port = match socket.port_specifier {
                Some(PortSpecifier::PortValue(port)) => u16::try_from(port).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                refuse(
                    &name,
                    format!("{at}.endpoint.address.port_value error:missing or above 65535"),
                )
            })?;
            let address = SocketAddr::new(ip, port);
            if !addresses.insert(address) {
                return Err(refuse(
                    &name,
                    format!("{at} error:duplicate endpoint address {address}"),
                ));
            }
            let weight = lb_endpoint
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value);
            if weight == 0 {
                return Err(refuse(
                    &name,
                    format!("{at}.load_balancing_weight error:must be at least 1"),
                ));
            }
            let health =
                HealthStatus::try_from(lb_endpoint.health_status).unwrap_or(HealthStatus::Unknown);
            endpoints.push(EndpointInfo {
                address,
                weight,
                usable: matches!(health, HealthStatus::Healthy | HealthStatus::Unknown),
            });
        }
        priorities[priority].push(LocalityEndpoints {
            locality,
            weight,
            endpoints,
        });
    }
    if let Some(gap) = priorities.iter().position(Vec::is_empty) {
        return Err(refuse(
            &name,
            format!(
                "field:endpoints error:priority {gap} has no locality (priorities must have no gaps)"
            ),
        ));
    }
    for (priority, localities) in priorities.iter().enumerate() {
        let total: u64 = localities.iter().map(|l| u64::from(l.weight)).sum();
        if total > u64::from(u32::MAX) {
            return Err(refuse(
                &name,
                format!(
                    "field:endpoints error:priority {priority}'s locality weights sum to {total}, above 4294967295"
                ),
            ));
        }
    }
    let mut drops = Vec::new();
    if let Some(policy) = &assignment.policy {
        for (i, drop) in policy.drop_overloads.iter().enumerate() {
            let percent = drop.drop_percentage.as_ref().ok_or_else(|| {
                refuse(
                    &name,
                    format!(
                        "field:policy.drop_overloads[{i}].drop_percentage error:field not present"
                    ),
                )
            })?;
            let scale = match DenominatorType::try_from(percent.denominator) {
                Ok(DenominatorType::Hundred) => 10_000,
                Ok(DenominatorType::TenThousand) => 100,
                Ok(DenominatorType::Million) => 1,
                Err(_) => {
                    return Err(refuse(
                        &name,
                        format!(
                            "field:policy.drop_overloads[{i}].drop_percentage.denominator error:unknown"
                        ),
                    ));
                }
            };
            drops.push(Drop {
                category: drop.category.clone(),
                per_million: percent.numerator.saturating_mul(scale).min(1_000_000),
            });
        }
    }
    Ok(EndpointsUpdate {
        name,
        priorities,
        drops,
    })
}

fn decode_value(any: &Any) -> Result<(String, Value), ResourceError> {
    let update = decode(any)?;
    Ok((update.name.clone(), Arc::new(update)))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload;
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;

    fn endpoint(ip: &str, port: u32, health: HealthStatus) -> LbEndpoint {
        LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            health_status: health as i32,
            ..Default::default()
        }
    }

    fn locality(
        zone: &str,
        weight: Option<u32>,
        priority: u32,
        endpoints: Vec<LbEndpoint>,
    ) -> LocalityLbEndpoints {
        LocalityLbEndpoints {
            locality: Some(Locality {
                zone: zone.into(),
                ..Default::default()
            }),
            lb_endpoints: endpoints,
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            priority,
            ..Default::default()
        }
    }

    fn any(assignment: &ClusterLoadAssignment) -> Any {
        Any {
            type_url: TYPE_URL.into(),
            value: assignment.encode_to_vec(),
        }
    }

    fn assignment(localities: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "orders".into(),
            endpoints: localities,
            ..Default::default()
        }
    }

    #[test]
    fn priorities_localities_health_and_drops() {
        let mut cla = assignment(vec![
            locality(
                "a",
                Some(3),
                0,
                vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy)],
            ),
            locality(
                "b",
                Some(1),
                0,
                vec![endpoint("10.0.0.2", 80, HealthStatus::Unhealthy)],
            ),
            locality(
                "c",
                None,
                0,
                vec![endpoint("10.0.0.3", 80, HealthStatus::Healthy)],
            ),
            locality(
                "d",
                Some(1),
                1,
                vec![endpoint("::1", 80, HealthStatus::Unknown)],
            ),
        ]);
        cla.policy = Some(Policy {
            drop_overloads: vec![DropOverload {
                category: "waypost".into(),
                drop_percentage: Some(FractionalPercent {
                    numerator: 25,
                    denominator: DenominatorType::Hundred as i32,
                }),
            }],
            ..Default::default()
        });
        let update = decode(&any(&cla)).unwrap();
        assert_eq!(update.priorities.len(), 2);
        let zones: Vec<&str> = update.priorities[0]
            .iter()
            .map(|l| l.locality.zone.as_str())
            .collect();
        assert_eq!(zones, ["a", "b"], "a locality without a weight is skipped");
        assert_eq!(update.priorities[0][0].weight, 3);
        assert!(update.priorities[0][0].endpoints[0].usable);
        assert!(
            !update.priorities[0][1].endpoints[0].usable,
            "UNHEALTHY is not used"
        );
        assert!(
            update.priorities[1][0].endpoints[0].usable,
            "UNKNOWN is used"
        );
        assert_eq!(
            update.priorities[1][0].endpoints[0].address,
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            update.drops,
            [Drop {
                category: "waypost".into(),
                per_million: 250_000
            }]
        );
    }

    #[test]
    fn what_grpc_refuses_is_refused() {
        let gap = assignment(vec![locality(
            "a",
            Some(1),
            1,
            vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy)],
        )]);
        let duplicate_address = assignment(vec![
            locality(
                "a",
                Some(1),
                0,
                vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy)],
            ),
            locality(
                "b",
                Some(1),
                0,
                vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy)],
            ),
        ]);
        let duplicate_locality = assignment(vec![
            locality(
                "a",
                Some(1),
                0,
                vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy)],
            ),
            locality(
                "a",
                Some(1),
                0,
                vec![endpoint("10.0.0.2", 80, HealthStatus::Healthy)],
            ),
        ]);
        let hostname = assignment(vec![locality(
            "a",
            Some(1),
            0,
            vec![endpoint("backend.internal", 80, HealthStatus::Healthy)],
        )]);
        let big_port = assignment(vec![locality(
            "a",
            Some(1),
            0,
            vec![endpoint("10.0.0.1", 70000, HealthStatus::Healthy)],
        )]);
        let heavy = assignment(vec![
            locality(
                "a",
                Some(u32::MAX),
                0,
                vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy)],
            ),
            locality(
                "b",
                Some(1),
                0,
                vec![endpoint("10.0.0.2", 80, HealthStatus::Healthy)],
            ),
        ]);
        for (cla, expected) in [
            (gap, "gap"),
            (duplicate_address, "duplicate endpoint address 10.0.0.1:80"),
            (duplicate_locality, "duplicate locality"),
            (hostname, "is not an IP address"),
            (big_port, "port_value"),
            (heavy, "above 4294967295"),
        ] {
            let error = decode(&any(&cla)).unwrap_err();
            assert_eq!(error.name.as_deref(), Some("orders"));
            assert!(error.message.contains(expected), "{}", error.message);
        }
    }
}
