//! `outlier_detection_experimental`'s configuration (gRFC A50), with
//! gRPC's names and defaults.

use std::time::Duration;

use serde_json::Value;

/// Success-rate ejection: endpoints whose success rate is far below the
/// mean.
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRate {
    /// Ejected below mean − stdev × `stdev_factor` / 1000.
    pub stdev_factor: u32,
    /// The chance (in %) that an outlier is ejected.
    pub enforcement_percentage: u32,
    /// At least this many endpoints with enough calls, or nothing happens.
    pub minimum_hosts: u32,
    /// Calls an endpoint needs in an interval to count.
    pub request_volume: u32,
}

/// Failure-percentage ejection: endpoints failing more than `threshold` %.
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePercentage {
    /// Ejected above this failure percentage.
    pub threshold: u32,
    /// The chance (in %) that an outlier is ejected.
    pub enforcement_percentage: u32,
    /// At least this many endpoints with enough calls, or nothing happens.
    pub minimum_hosts: u32,
    /// Calls an endpoint needs in an interval to count.
    pub request_volume: u32,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// How often outliers are looked for.
    pub interval: Duration,
    /// An ejection lasts this × the endpoint's ejection count…
    pub base_ejection_time: Duration,
    /// …at most this (or the base, if larger).
    pub max_ejection_time: Duration,
    /// Never more than this share (in %) of endpoints ejected at once.
    pub max_ejection_percent: u32,
    /// Success-rate ejection, when configured.
    pub success_rate: Option<SuccessRate>,
    /// Failure-percentage ejection, when configured.
    pub failure_percentage: Option<FailurePercentage>,
    /// The child policy's name and config.
    pub child: (String, Value),
}

/// The JSON shapes (types checked by serde; ranges and the child below).
mod raw {
    use crate::service_config::raw::ProtoDuration;
    use serde_json::{Map, Value};

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct Config {
        pub(super) interval: Option<ProtoDuration>,
        pub(super) base_ejection_time: Option<ProtoDuration>,
        pub(super) max_ejection_time: Option<ProtoDuration>,
        pub(super) max_ejection_percent: Option<u32>,
        pub(super) success_rate_ejection: Option<SuccessRate>,
        pub(super) failure_percentage_ejection: Option<FailurePercentage>,
        pub(super) child_policy: Option<Vec<Map<String, Value>>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct SuccessRate {
        pub(super) stdev_factor: Option<u32>,
        pub(super) enforcement_percentage: Option<u32>,
        pub(super) minimum_hosts: Option<u32>,
        pub(super) request_volume: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct FailurePercentage {
        pub(super) threshold: Option<u32>,
        pub(super) enforcement_percentage: Option<u32>,
        pub(super) minimum_hosts: Option<u32>,
        pub(super) request_volume: Option<u32>,
    }
}

/// A percentage field: at most 100.
fn percent(value: Option<u32>, default: u32, field: &str) -> Result<u32, String> {
    match value {
        None => Ok(default),
        Some(n) if n <= 100 => Ok(n),
        Some(n) => Err(format!(
            "outlier_detection {field} must be a whole number up to 100, got {n}"
        )),
    }
}

/// Parses the config; `known` says whether a child policy name is
/// registered. An unknown field, a bad value or no usable child policy is
/// an error.
pub fn parse(config: &Value, known: &dyn Fn(&str) -> bool) -> Result<OutlierConfig, String> {
    if !config.is_object() {
        return Err(format!(
            "outlier_detection config must be an object, got {config}"
        ));
    }
    let raw: raw::Config = crate::service_config::policy_config("outlier_detection", config)?;
    let success_rate = raw
        .success_rate_ejection
        .map(|r| -> Result<SuccessRate, String> {
            Ok(SuccessRate {
                stdev_factor: r.stdev_factor.unwrap_or(1900),
                enforcement_percentage: percent(
                    r.enforcement_percentage,
                    100,
                    "successRateEjection.enforcementPercentage",
                )?,
                minimum_hosts: r.minimum_hosts.unwrap_or(5),
                request_volume: r.request_volume.unwrap_or(100),
            })
        })
        .transpose()?;
    let failure_percentage = raw
        .failure_percentage_ejection
        .map(|f| -> Result<FailurePercentage, String> {
            Ok(FailurePercentage {
                threshold: percent(f.threshold, 85, "failurePercentageEjection.threshold")?,
                enforcement_percentage: percent(
                    f.enforcement_percentage,
                    100,
                    "failurePercentageEjection.enforcementPercentage",
                )?,
                minimum_hosts: f.minimum_hosts.unwrap_or(5),
                request_volume: f.request_volume.unwrap_or(50),
            })
        })
        .transpose()?;
    let list = raw
        .child_policy
        .ok_or("outlier_detection needs a childPolicy")?;
    // The first entry whose policy is registered, as gRPC picks.
    let child = list
        .iter()
        .find_map(|entry| {
            let (name, config) = entry.iter().next()?;
            known(name).then(|| (name.clone(), config.clone()))
        })
        .ok_or("outlier_detection childPolicy names no known policy")?;
    Ok(OutlierConfig {
        interval: raw.interval.map_or(Duration::from_secs(10), |d| d.0),
        base_ejection_time: raw
            .base_ejection_time
            .map_or(Duration::from_secs(30), |d| d.0),
        max_ejection_time: raw
            .max_ejection_time
            .map_or(Duration::from_secs(300), |d| d.0),
        max_ejection_percent: percent(raw.max_ejection_percent, 10, "maxEjectionPercent")?,
        success_rate,
        failure_percentage,
        child,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn known(name: &str) -> bool {
        name == "round_robin"
    }

    #[test]
    fn defaults_and_fields() {
        let c = parse(
            &json!({"interval": "0.5s", "failurePercentageEjection": {"threshold": 50},
                    "childPolicy": [{"unknown_policy": {}}, {"round_robin": {}}]}),
            &known,
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.base_ejection_time, Duration::from_secs(30));
        assert_eq!(c.max_ejection_percent, 10);
        assert_eq!(c.success_rate, None);
        let f = c.failure_percentage.unwrap();
        assert_eq!(
            (
                f.threshold,
                f.enforcement_percentage,
                f.minimum_hosts,
                f.request_volume
            ),
            (50, 100, 5, 50)
        );
        assert_eq!(c.child.0, "round_robin");
    }

    #[test]
    fn what_is_wrong_is_refused() {
        for bad in [
            json!({}),
            json!({"childPolicy": [{"nope": {}}]}),
            json!({"childPolicy": [{"round_robin": {}}], "interval": 10}),
            json!({"childPolicy": [{"round_robin": {}}], "maxEjectionPercent": 101}),
            json!({"childPolicy": [{"round_robin": {}}], "failurePercentageEjection": {"threshold": 101}}),
            json!({"childPolicy": [{"round_robin": {}}], "successRateEjection": {"stdev": 1}}),
            json!({"childPolicy": [{"round_robin": {}}], "ejection": true}),
        ] {
            assert!(parse(&bad, &known).is_err(), "{bad} was accepted");
        }
    }
}
