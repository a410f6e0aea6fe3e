//! `weighted_round_robin`'s configuration (gRFC A58), with gRPC's names and
//! defaults.

use std::time::Duration;

use serde_json::Value;

use crate::service_config::raw::ProtoDuration;

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

/// The JSON shape (types checked by serde; ranges below).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    enable_oob_load_report: Option<bool>,
    oob_reporting_period: Option<ProtoDuration>,
    blackout_period: Option<ProtoDuration>,
    weight_expiration_period: Option<ProtoDuration>,
    weight_update_period: Option<ProtoDuration>,
    error_utilization_penalty: Option<f64>,
}

/// Parses the config object. An unknown field or a bad value is an error.
pub fn parse(config: &Value) -> Result<WrrConfig, String> {
    let raw: Raw = crate::service_config::policy_config("weighted_round_robin", config)?;
    let d = WrrConfig::default();
    let or = |value: Option<ProtoDuration>, default: Duration| value.map_or(default, |v| v.0);
    let error_utilization_penalty = match raw.error_utilization_penalty {
        None => d.error_utilization_penalty,
        Some(p) if p.is_finite() && p >= 0.0 => p,
        Some(p) => {
            return Err(format!(
                "weighted_round_robin errorUtilizationPenalty must be a number ≥ 0, got {p}"
            ));
        }
    };
    Ok(WrrConfig {
        enable_oob_load_report: raw
            .enable_oob_load_report
            .unwrap_or(d.enable_oob_load_report),
        oob_reporting_period: or(raw.oob_reporting_period, d.oob_reporting_period),
        blackout_period: or(raw.blackout_period, d.blackout_period),
        weight_expiration_period: or(raw.weight_expiration_period, d.weight_expiration_period),
        weight_update_period: or(raw.weight_update_period, d.weight_update_period)
            .max(MIN_WEIGHT_UPDATE_PERIOD),
        error_utilization_penalty,
    })
}
