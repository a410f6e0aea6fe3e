//! Durations as waypost's configurations write them — one parser for the
//! gRPC service config (protobuf JSON) and the balancer's TOML.
//!
//! Protobuf JSON, which gRPC's service config and the xDS bootstrap use, is
//! decimal seconds with an `s` suffix and at most nanosecond precision:
//! `"10s"`, `"1.5s"`, `"0.000000001s"`. Configurations written by people
//! (`waypost serve`'s TOML) may also use whole milliseconds, minutes or
//! hours: `"500ms"`, `"2m"`, `"1h"` ([`DurationForms::WithUnits`]).
//!
//! ```
//! use std::time::Duration;
//! use waypost_resolver::duration::{DurationForms, parse_duration};
//!
//! assert_eq!(parse_duration("1.5s", DurationForms::ProtobufJson), Ok(Duration::from_millis(1500)));
//! assert!(parse_duration("500ms", DurationForms::ProtobufJson).is_err());
//! assert_eq!(parse_duration("500ms", DurationForms::WithUnits), Ok(Duration::from_millis(500)));
//! ```

use std::time::Duration;

/// Which forms a duration may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationForms {
    /// Protobuf JSON only: `"1.5s"`.
    ProtobufJson,
    /// Protobuf JSON, or a whole number of `ms`, `m` or `h`.
    WithUnits,
}

/// Why a duration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not one of the forms allowed.
    #[error("not a duration like {0}")]
    Shape(&'static str),
    /// Too many seconds to count.
    #[error("too long")]
    TooLong,
}

/// Parses `text` in one of `forms`.
pub fn parse_duration(text: &str, forms: DurationForms) -> Result<Duration, DurationError> {
    let shape = DurationError::Shape(match forms {
        DurationForms::ProtobufJson => "\"1.5s\"",
        DurationForms::WithUnits => "\"10s\", \"1.5s\", \"500ms\", \"2m\" or \"1h\"",
    });
    if let Some(seconds) = text.strip_suffix('s')
        && !seconds.ends_with('m')
    {
        let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || fraction.len() > 9 || !digits(fraction) {
            return Err(shape);
        }
        let secs: u64 = whole.parse().map_err(|_| DurationError::TooLong)?;
        let nanos: u32 = if fraction.is_empty() {
            0
        } else {
            format!("{fraction:0<9}").parse().map_err(|_| shape)?
        };
        return Ok(Duration::new(secs, nanos));
    }
    if forms == DurationForms::ProtobufJson {
        return Err(shape);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or(shape)?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(shape),
    };
    if number.is_empty() {
        return Err(shape);
    }
    let n: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
    let millis = n
        .checked_mul(millis_per_unit)
        .ok_or(DurationError::TooLong)?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_json_durations() {
        let json = |t| parse_duration(t, DurationForms::ProtobufJson);
        assert_eq!(json("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(json("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert_eq!(json("10s"), Ok(Duration::from_secs(10)));
        for bad in [
            "1",
            "s",
            "-1s",
            "1.s5",
            "1.0000000001s",
            "1e3s",
            "",
            "500ms",
            "2m",
            ".5s",
        ] {
            assert!(json(bad).is_err(), "{bad}");
        }
        assert_eq!(json("18446744073709551616s"), Err(DurationError::TooLong));
    }

    #[test]
    fn durations_with_units() {
        let units = |t| parse_duration(t, DurationForms::WithUnits);
        assert_eq!(units("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(units("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(units("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(units("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "ms", "10", "10x", "-1s", "1.5m", "1.5ms", "10 s"] {
            assert!(units(bad).is_err(), "{bad}");
        }
        assert_eq!(units("18446744073709551615h"), Err(DurationError::TooLong));
    }
}
