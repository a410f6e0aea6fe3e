//! CDS: the `Cluster` resource, checked as gRPC checks it (gRFC A27, A32,
//! A42, A48) and reduced to what the client uses.
//!
//! Accepted: `type: EDS` clusters whose `eds_cluster_config.eds_config` is
//! `ads` or `self`; `lb_policy` ROUND_ROBIN, RING_HASH (XX_HASH, ring sizes
//! up to 8M) or LEAST_REQUEST; the default-priority `max_requests` circuit
//! breaker (1024 when unset). Anything else is refused with the field named,
//! so the response is NACKed.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::xds::client::ads::{ResourceError, ResourceType, Value};

/// The type URL of CDS resources.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// CDS for the XdsClient.
pub static CDS: ResourceType = ResourceType {
    type_url: TYPE_URL,
    full_state: true,
    decode: decode_value,
};

/// gRPC's largest ring (A42).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// `max_requests` when no circuit breaker sets it (A32).
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;

/// How endpoints of the cluster are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPolicy {
    /// `round_robin`.
    RoundRobin,
    /// `ring_hash` with these ring sizes.
    RingHash {
        /// The smallest ring.
        min_ring_size: u64,
        /// The largest ring.
        max_ring_size: u64,
    },
    /// `least_request` with this many choices.
    LeastRequest {
        /// Endpoints compared per pick.
        choice_count: u32,
    },
}

impl ClusterPolicy {
    /// The policy's entry in a gRPC service config's `loadBalancingConfig`.
    pub fn service_config(&self) -> serde_json::Value {
        match self {
            ClusterPolicy::RoundRobin => serde_json::json!({"round_robin": {}}),
            ClusterPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => serde_json::json!({"ring_hash_experimental": {
                "minRingSize": min_ring_size, "maxRingSize": max_ring_size}}),
            ClusterPolicy::LeastRequest { choice_count } => {
                serde_json::json!({"least_request_experimental": {"choiceCount": choice_count}})
            }
        }
    }
}

/// A checked cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUpdate {
    /// The cluster's name.
    pub name: String,
    /// The EDS resource to ask for (the cluster's name when not set).
    pub eds_service_name: String,
    /// The endpoint-picking policy.
    pub policy: ClusterPolicy,
    /// At most this many calls in flight to the cluster.
    pub max_requests: u32,
    /// The cluster's outlier detection as gRPC's `outlier_detection`
    /// config (without `childPolicy`), when the cluster sets it (A50).
    pub outlier_detection: Option<serde_json::Value>,
}

fn refuse(name: &str, message: impl Into<String>) -> ResourceError {
    ResourceError {
        name: Some(name.to_owned()),
        message: message.into(),
    }
}

/// Decodes and checks one `Cluster`.
pub fn decode(any: &Any) -> Result<ClusterUpdate, ResourceError> {
    let cluster = Cluster::decode(any.value.as_slice()).map_err(|e| ResourceError {
        name: None,
        message: format!("can't decode Cluster: {e}"),
    })?;
    let name = cluster.name.clone();
    if name.is_empty() {
        return Err(ResourceError {
            name: None,
            message: "field:name error:empty".into(),
        });
    }
    match cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => {}
        Some(ClusterDiscoveryType::Type(t)) => {
            let kind = DiscoveryType::try_from(t)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_else(|_| t.to_string());
            return Err(refuse(
                &name,
                format!("field:type error:{kind} clusters are not supported (EDS only)"),
            ));
        }
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(refuse(
                &name,
                "field:cluster_type error:custom cluster types are not supported",
            ));
        }
        // STATIC is the proto default: not EDS.
        None => {
            return Err(refuse(
                &name,
                "field:type error:STATIC clusters are not supported (EDS only)",
            ));
        }
    }
    let eds = cluster.eds_cluster_config.as_ref();
    match eds
        .and_then(|e| e.eds_config.as_ref())
        .and_then(|c| c.config_source_specifier.as_ref())
    {
        Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) => {}
        _ => {
            return Err(refuse(
                &name,
                "field:eds_cluster_config.eds_config error:ConfigSource is not ads or self",
            ));
        }
    }
    let eds_service_name = eds
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let policy = match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::RoundRobin) => ClusterPolicy::RoundRobin,
        Ok(LbPolicy::RingHash) => {
            let config = match &cluster.lb_config {
                Some(LbConfig::RingHashLbConfig(config)) => Some(config),
                _ => None,
            };
            if config.is_some_and(|c| c.hash_function != 0) {
                return Err(refuse(
                    &name,
                    "field:ring_hash_lb_config.hash_function error:only XX_HASH is supported",
                ));
            }
            let min_ring_size = config
                .and_then(|c| c.minimum_ring_size.as_ref())
                .map_or(1024, |v| v.value);
            let max_ring_size = config
                .and_then(|c| c.maximum_ring_size.as_ref())
                .map_or(MAX_RING_SIZE, |v| v.value);
            if min_ring_size == 0 || max_ring_size > MAX_RING_SIZE || min_ring_size > max_ring_size
            {
                return Err(refuse(
                    &name,
                    "field:ring_hash_lb_config error:ring sizes must satisfy 0 < minimum ≤ maximum ≤ 8388608",
                ));
            }
            ClusterPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            }
        }
        Ok(LbPolicy::LeastRequest) => {
            let choice_count = match &cluster.lb_config {
                Some(LbConfig::LeastRequestLbConfig(config)) => {
                    config.choice_count.as_ref().map_or(2, |v| v.value)
                }
                _ => 2,
            };
            if choice_count < 2 {
                return Err(refuse(
                    &name,
                    "field:least_request_lb_config.choice_count error:must be at least 2",
                ));
            }
            ClusterPolicy::LeastRequest { choice_count }
        }
        _ => {
            return Err(refuse(
                &name,
                "field:lb_policy error:LB policy is not supported",
            ));
        }
    };
    let max_requests = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|b| b.thresholds.iter().find(|t| t.priority == 0))
        .and_then(|t| t.max_requests.as_ref())
        .map_or(DEFAULT_MAX_REQUESTS, |v| v.value);
    let outlier_detection = match &cluster.outlier_detection {
        None => None,
        Some(od) => Some(outlier_detection(od).map_err(|e| refuse(&name, e))?),
    };
    Ok(ClusterUpdate {
        name,
        eds_service_name,
        policy,
        max_requests,
        outlier_detection,
    })
}

/// A50's mapping of a cluster's `OutlierDetection` to gRPC's config.
fn outlier_detection(
    od: &envoy_types::pb::envoy::config::cluster::v3::OutlierDetection,
) -> Result<serde_json::Value, String> {
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    let at = "field:outlier_detection";
    let duration = |d: &Option<PbDuration>, field: &str| -> Result<Option<String>, String> {
        match d {
            None => Ok(None),
            Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => Err(format!(
                "{at}.{field} error:must be a non-negative duration"
            )),
            Some(d) => Ok(Some(format!("{}.{:09}s", d.seconds, d.nanos))),
        }
    };
    let percent = |v: &Option<UInt32Value>, field: &str| -> Result<Option<u32>, String> {
        match v {
            Some(v) if v.value > 100 => Err(format!("{at}.{field} error:must be at most 100")),
            Some(v) => Ok(Some(v.value)),
            None => Ok(None),
        }
    };
    let number = |v: &Option<UInt32Value>| v.as_ref().map(|v| v.value);
    let mut config = serde_json::Map::new();
    for (key, value) in [
        ("interval", duration(&od.interval, "interval")?),
        (
            "baseEjectionTime",
            duration(&od.base_ejection_time, "base_ejection_time")?,
        ),
        (
            "maxEjectionTime",
            duration(&od.max_ejection_time, "max_ejection_time")?,
        ),
    ] {
        if let Some(value) = value {
            config.insert(key.into(), value.into());
        }
    }
    if let Some(p) = percent(&od.max_ejection_percent, "max_ejection_percent")? {
        config.insert("maxEjectionPercent".into(), p.into());
    }
    // Success-rate ejection unless enforcing_success_rate is 0 (it
    // defaults to 100).
    let enforcing = percent(&od.enforcing_success_rate, "enforcing_success_rate")?.unwrap_or(100);
    if enforcing > 0 {
        let mut rate = serde_json::Map::new();
        rate.insert("enforcementPercentage".into(), enforcing.into());
        for (key, value) in [
            ("stdevFactor", number(&od.success_rate_stdev_factor)),
            ("minimumHosts", number(&od.success_rate_minimum_hosts)),
            ("requestVolume", number(&od.success_rate_request_volume)),
        ] {
            if let Some(value) = value {
                rate.insert(key.into(), value.into());
            }
        }
        config.insert("successRateEjection".into(), rate.into());
    }
    // Failure-percentage ejection only when enforcing_failure_percentage
    // is set and not 0.
    let enforcing = percent(
        &od.enforcing_failure_percentage,
        "enforcing_failure_percentage",
    )?
    .unwrap_or(0);
    if enforcing > 0 {
        let mut failure = serde_json::Map::new();
        failure.insert("enforcementPercentage".into(), enforcing.into());
        if let Some(t) = percent(
            &od.failure_percentage_threshold,
            "failure_percentage_threshold",
        )? {
            failure.insert("threshold".into(), t.into());
        }
        for (key, value) in [
            ("minimumHosts", number(&od.failure_percentage_minimum_hosts)),
            (
                "requestVolume",
                number(&od.failure_percentage_request_volume),
            ),
        ] {
            if let Some(value) = value {
                failure.insert(key.into(), value.into());
            }
        }
        config.insert("failurePercentageEjection".into(), failure.into());
    }
    Ok(serde_json::Value::Object(config))
}

fn decode_value(any: &Any) -> Result<(String, Value), ResourceError> {
    let update = decode(any)?;
    Ok((update.name.clone(), Arc::new(update)))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, circuit_breakers};
    use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource};
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;

    /// An EDS cluster over ADS, as a management server sends it.
    pub(crate) fn eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                service_name: String::new(),
            }),
            ..Default::default()
        }
    }

    fn any(cluster: &Cluster) -> Any {
        Any {
            type_url: TYPE_URL.into(),
            value: cluster.encode_to_vec(),
        }
    }

    #[test]
    fn an_eds_cluster_over_ads_is_taken_with_its_policy_and_breaker() {
        let mut cluster = eds_cluster("orders");
        cluster.lb_policy = LbPolicy::LeastRequest as i32;
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_requests: Some(UInt32Value { value: 50 }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let update = decode(&any(&cluster)).unwrap();
        assert_eq!(update.eds_service_name, "orders");
        assert_eq!(
            update.policy,
            ClusterPolicy::LeastRequest { choice_count: 2 }
        );
        assert_eq!(update.max_requests, 50);
        assert_eq!(
            update.policy.service_config(),
            serde_json::json!({"least_request_experimental": {"choiceCount": 2}})
        );
    }

    #[test]
    fn outlier_detection_maps_as_a50_says() {
        use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
        use envoy_types::pb::google::protobuf::Duration as PbDuration;
        let mut cluster = eds_cluster("od");
        cluster.outlier_detection = Some(OutlierDetection {
            interval: Some(PbDuration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            enforcing_failure_percentage: Some(UInt32Value { value: 100 }),
            failure_percentage_threshold: Some(UInt32Value { value: 50 }),
            failure_percentage_request_volume: Some(UInt32Value { value: 10 }),
            ..Default::default()
        });
        let update = decode(&any(&cluster)).unwrap();
        assert_eq!(
            update.outlier_detection,
            Some(serde_json::json!({
                "interval": "1.500000000s",
                "failurePercentageEjection": {"enforcementPercentage": 100, "threshold": 50, "requestVolume": 10}
            }))
        );
        // The gRPC policy takes it.
        let mut config = update.outlier_detection.unwrap();
        config["childPolicy"] = serde_json::json!([{"round_robin": {}}]);
        assert!(
            crate::PolicyRegistry::global()
                .get("outlier_detection_experimental")
                .unwrap()
                .validate(&config)
                .is_ok(),
            "{config}"
        );
        // Defaults: success-rate ejection on, failure percentage off.
        cluster.outlier_detection = Some(OutlierDetection::default());
        let update = decode(&any(&cluster)).unwrap();
        assert_eq!(
            update.outlier_detection,
            Some(serde_json::json!({"successRateEjection": {"enforcementPercentage": 100}}))
        );
        cluster.outlier_detection = Some(OutlierDetection {
            max_ejection_percent: Some(UInt32Value { value: 101 }),
            ..Default::default()
        });
        assert!(
            decode(&any(&cluster))
                .unwrap_err()
                .message
                .contains("max_ejection_percent")
        );
    }

    #[test]
    fn what_grpc_refuses_is_refused_with_the_field_named() {
        let mut maglev = eds_cluster("m");
        maglev.lb_policy = LbPolicy::Maglev as i32;
        let mut dns = eds_cluster("d");
        dns.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
        let mut not_ads = eds_cluster("p");
        not_ads.eds_cluster_config = None;
        for (cluster, expected) in [
            (maglev, "field:lb_policy error:LB policy is not supported"),
            (
                dns,
                "field:type error:LOGICAL_DNS clusters are not supported",
            ),
            (not_ads, "ConfigSource is not ads or self"),
        ] {
            let error = decode(&any(&cluster)).unwrap_err();
            assert_eq!(error.name.as_deref(), Some(cluster.name.as_str()));
            assert!(error.message.contains(expected), "{}", error.message);
        }
        let garbage = Any {
            type_url: TYPE_URL.into(),
            value: vec![0xff; 8],
        };
        assert_eq!(decode(&garbage).unwrap_err().name, None);
    }
}
