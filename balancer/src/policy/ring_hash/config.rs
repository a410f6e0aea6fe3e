//! `ring_hash_experimental`'s configuration (gRFC A42, A76), checked as
//! gRPC checks it.

use serde_json::Value;

/// The largest ring a configuration may ask for (A42: values above 8M are
/// refused).
pub const MAX_RING_SIZE_BOUND: u64 = 8 * 1024 * 1024;

/// The local cap both ring sizes are clamped to (A42's default cap).
pub const RING_SIZE_CAP: u64 = 4096;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingHashConfig {
    /// At least this many ring entries (after the cap).
    pub min_ring_size: u64,
    /// At most this many (after the cap).
    pub max_ring_size: u64,
    /// The request header whose value is hashed (A76), lower case; `None`:
    /// every call gets a random hash.
    pub request_hash_header: Option<http::HeaderName>,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            min_ring_size: 1024,
            max_ring_size: 4096,
            request_hash_header: None,
        }
    }
}

/// The JSON shape (types checked by serde; ranges below).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    min_ring_size: Option<u64>,
    max_ring_size: Option<u64>,
    request_hash_header: Option<String>,
}

/// Parses `{minRingSize, maxRingSize, requestHashHeader}`; an unknown
/// field or a value out of range is an error.
pub fn parse(config: &Value) -> Result<RingHashConfig, String> {
    let raw: Raw = crate::service_config::policy_config("ring_hash", config)?;
    let defaults = RingHashConfig::default();
    let size = |name: &str, value: Option<u64>, default: u64| -> Result<u64, String> {
        match value {
            None => Ok(default),
            Some(n) if (1..=MAX_RING_SIZE_BOUND).contains(&n) => Ok(n),
            Some(n) => Err(format!(
                "ring_hash {name} must be a whole number from 1 to {MAX_RING_SIZE_BOUND}, got {n}"
            )),
        }
    };
    let mut parsed = RingHashConfig {
        min_ring_size: size("minRingSize", raw.min_ring_size, defaults.min_ring_size)?,
        max_ring_size: size("maxRingSize", raw.max_ring_size, defaults.max_ring_size)?,
        request_hash_header: None,
    };
    if let Some(text) = raw.request_hash_header.filter(|t| !t.is_empty()) {
        let header = http::HeaderName::from_bytes(text.as_bytes())
            .map_err(|_| format!("ring_hash requestHashHeader {text:?} is not a header name"))?;
        if header.as_str().ends_with("-bin") {
            return Err(format!(
                "ring_hash requestHashHeader {text:?} is a binary header"
            ));
        }
        parsed.request_hash_header = Some(header);
    }
    if parsed.min_ring_size > parsed.max_ring_size {
        return Err(format!(
            "ring_hash minRingSize {} is greater than maxRingSize {}",
            parsed.min_ring_size, parsed.max_ring_size
        ));
    }
    parsed.min_ring_size = parsed.min_ring_size.min(RING_SIZE_CAP);
    parsed.max_ring_size = parsed.max_ring_size.min(RING_SIZE_CAP);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_caps_and_the_header() {
        assert_eq!(parse(&json!({})).unwrap(), RingHashConfig::default());
        let c = parse(
            &json!({"minRingSize": 10, "maxRingSize": 100000, "requestHashHeader": "X-User"}),
        )
        .unwrap();
        assert_eq!((c.min_ring_size, c.max_ring_size), (10, RING_SIZE_CAP));
        assert_eq!(c.request_hash_header.unwrap().as_str(), "x-user");
        assert_eq!(
            parse(&json!({"requestHashHeader": ""}))
                .unwrap()
                .request_hash_header,
            None
        );
    }

    #[test]
    fn what_grpc_refuses_is_refused() {
        for bad in [
            json!({"minRingSize": 0}),
            json!({"maxRingSize": 8388609}),
            json!({"minRingSize": 20, "maxRingSize": 10}),
            json!({"minRingSize": "10"}),
            json!({"requestHashHeader": "x-data-bin"}),
            json!({"requestHashHeader": "not a header"}),
            json!({"requestHashHeader": 5}),
            json!({"ringSize": 10}),
            json!([]),
        ] {
            assert!(parse(&bad).is_err(), "{bad} was accepted");
        }
    }
}
