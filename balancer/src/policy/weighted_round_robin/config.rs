//! `weighted_round_robin`'s configuration (gRFC A58), with gRPC's names and
//! defaults.

use std::time::Duration;

use serde_json::Value;

use crate::service_config::parse_duration;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WrrConfig {
    /// Load reports from the out-of-band stream instead of from each
    /// call's trailers.
    pub enable_oob_load_report: bool,
    /// The out-of-band reporting interval asked of backends.
    pub oob_reporting_period: Duration,
    /// An endpoint's weight is used only after it has reported this long.
    pub blackout_period: Duration,
    /// A weight not refreshed for this long is no longer used.
    pub weight_expiration_period: Duration,
    /// How often weights are recomputed (at least every 100 ms).
    pub weight_update_period: Duration,
    /// How much errors count as load: utilization + eps/qps × this.
    pub error_utilization_penalty: f64,
}

/// The shortest weight update period; shorter ones are raised to it.
pub const MIN_WEIGHT_UPDATE_PERIOD: Duration = Duration::from_millis(100);

impl Default for WrrConfig {
    fn default() -> Self {
        WrrConfig {
            enable_oob_load_report: false,
            oob_reporting_period: Duration::from_secs(10),
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
        }
    }
}

fn duration(value: &Value, field: &str) -> Result<Duration, String> {
    value.as_str().and_then(parse_duration).ok_or_else(|| {
        format!("weighted_round_robin {field} must be a duration like \"10s\", got {value}")
    })
}

/// Parses the config object. An unknown field or a bad value is an error.
pub fn parse(config: &Value) -> Result<WrrConfig, String> {
    let mut parsed = WrrConfig::default();
    let fields = match config {
        Value::Null => return Ok(parsed),
        Value::Object(fields) => fields,
        other => {
            return Err(format!(
                "weighted_round_robin config must be an object, got {other}"
            ));
        }
    };
    for (name, value) in fields {
        match name.as_str() {
            "enableOobLoadReport" => {
                parsed.enable_oob_load_report = value.as_bool().ok_or_else(|| {
                    format!(
                        "weighted_round_robin enableOobLoadReport must be a boolean, got {value}"
                    )
                })?;
            }
            "oobReportingPeriod" => parsed.oob_reporting_period = duration(value, name)?,
            "blackoutPeriod" => parsed.blackout_period = duration(value, name)?,
            "weightExpirationPeriod" => parsed.weight_expiration_period = duration(value, name)?,
            "weightUpdatePeriod" => {
                parsed.weight_update_period = duration(value, name)?.max(MIN_WEIGHT_UPDATE_PERIOD);
            }
            "errorUtilizationPenalty" => {
                parsed.error_utilization_penalty = value
                    .as_f64()
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| {
                        format!(
                            "weighted_round_robin errorUtilizationPenalty must be a number ≥ 0, got {value}"
                        )
                    })?;
            }
            other => return Err(format!("weighted_round_robin has no field {other:?}")),
        }
    }
    Ok(parsed)
}
