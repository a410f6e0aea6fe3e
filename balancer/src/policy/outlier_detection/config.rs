//! `outlier_detection_experimental`'s configuration (gRFC A50), with
//! gRPC's names and defaults.

use std::time::Duration;

use serde_json::Value;

use crate::service_config::parse_duration;

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

fn duration(value: &Value, field: &str) -> Result<Duration, String> {
    value.as_str().and_then(parse_duration).ok_or_else(|| {
        format!("outlier_detection {field} must be a duration like \"10s\", got {value}")
    })
}

fn number(value: &Value, field: &str, max: Option<u64>) -> Result<u32, String> {
    match value.as_u64() {
        Some(n) if max.is_none_or(|m| n <= m) && n <= u64::from(u32::MAX) => Ok(n as u32),
        _ => Err(format!(
            "outlier_detection {field} must be a whole number{}, got {value}",
            max.map(|m| format!(" up to {m}")).unwrap_or_default()
        )),
    }
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("outlier_detection {field} must be an object, got {value}"))
}

/// Parses the config; `known` says whether a child policy name is
/// registered. An unknown field, a bad value or no usable child policy is
/// an error.
pub fn parse(config: &Value, known: &dyn Fn(&str) -> bool) -> Result<OutlierConfig, String> {
    let fields = object(config, "config")?;
    let mut parsed = OutlierConfig {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 10,
        success_rate: None,
        failure_percentage: None,
        child: (String::new(), Value::Null),
    };
    let mut child = None;
    for (name, value) in fields {
        match name.as_str() {
            "interval" => parsed.interval = duration(value, name)?,
            "baseEjectionTime" => parsed.base_ejection_time = duration(value, name)?,
            "maxEjectionTime" => parsed.max_ejection_time = duration(value, name)?,
            "maxEjectionPercent" => parsed.max_ejection_percent = number(value, name, Some(100))?,
            "successRateEjection" => {
                let mut rate = SuccessRate {
                    stdev_factor: 1900,
                    enforcement_percentage: 100,
                    minimum_hosts: 5,
                    request_volume: 100,
                };
                for (k, v) in object(value, name)? {
                    let field = format!("successRateEjection.{k}");
                    match k.as_str() {
                        "stdevFactor" => rate.stdev_factor = number(v, &field, None)?,
                        "enforcementPercentage" => {
                            rate.enforcement_percentage = number(v, &field, Some(100))?
                        }
                        "minimumHosts" => rate.minimum_hosts = number(v, &field, None)?,
                        "requestVolume" => rate.request_volume = number(v, &field, None)?,
                        _ => return Err(format!("outlier_detection has no field {field:?}")),
                    }
                }
                parsed.success_rate = Some(rate);
            }
            "failurePercentageEjection" => {
                let mut failure = FailurePercentage {
                    threshold: 85,
                    enforcement_percentage: 100,
                    minimum_hosts: 5,
                    request_volume: 50,
                };
                for (k, v) in object(value, name)? {
                    let field = format!("failurePercentageEjection.{k}");
                    match k.as_str() {
                        "threshold" => failure.threshold = number(v, &field, Some(100))?,
                        "enforcementPercentage" => {
                            failure.enforcement_percentage = number(v, &field, Some(100))?
                        }
                        "minimumHosts" => failure.minimum_hosts = number(v, &field, None)?,
                        "requestVolume" => failure.request_volume = number(v, &field, None)?,
                        _ => return Err(format!("outlier_detection has no field {field:?}")),
                    }
                }
                parsed.failure_percentage = Some(failure);
            }
            "childPolicy" => {
                let list = value.as_array().ok_or_else(|| {
                    format!("outlier_detection childPolicy must be a list, got {value}")
                })?;
                // The first entry whose policy is registered, as gRPC picks.
                child = list.iter().find_map(|entry| {
                    let (name, config) = entry.as_object()?.iter().next()?;
                    known(name).then(|| (name.clone(), config.clone()))
                });
                if child.is_none() {
                    return Err("outlier_detection childPolicy names no known policy".into());
                }
            }
            other => return Err(format!("outlier_detection has no field {other:?}")),
        }
    }
    parsed.child = child.ok_or("outlier_detection needs a childPolicy")?;
    Ok(parsed)
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
