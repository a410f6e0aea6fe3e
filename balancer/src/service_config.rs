//! The gRPC service config: which policy balances, and per-method settings.
//!
//! ```
//! use waypost_balancer::service_config::ServiceConfig;
//! use waypost_balancer::PolicyRegistry;
//!
//! let json = serde_json::json!({
//!     "loadBalancingConfig": [{"weird_policy": {}}, {"round_robin": {}}],
//!     "methodConfig": [{"name": [{"service": "movies.v1.MoviesService"}], "waitForReady": true, "timeout": "1.5s"}]
//! });
//! let config = ServiceConfig::parse(&json, PolicyRegistry::global()).unwrap();
//! assert_eq!(config.policy_name(), "round_robin"); // the first known policy wins
//! let method = config.method("/movies.v1.MoviesService/GetMovie").unwrap();
//! assert_eq!(method.wait_for_ready, Some(true));
//! assert_eq!(method.timeout, Some(std::time::Duration::from_millis(1500)));
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::policy::PolicyRegistry;

/// Why a service config was rejected (the channel keeps its previous one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service config: {0}")]
pub struct ServiceConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ServiceConfigError> {
    Err(ServiceConfigError(message.into()))
}

/// A retry policy from a method config.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (2 to 5; more is capped at 5).
    pub max_attempts: u32,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// Backoff growth per attempt.
    pub backoff_multiplier: f64,
    /// The status codes that may be retried.
    pub retryable_status_codes: Vec<tonic::Code>,
}

/// A call's settings chosen from the call itself — its path and headers —
/// rather than from the method name alone: xDS routes, each with its own
/// timeout (`max_stream_duration`) and retry policy (gRFC A31, A44). A
/// top-level policy provides one for its config
/// ([`PolicyBuilder::call_config`](crate::policy::PolicyBuilder::call_config));
/// the channel asks it once per call, before picking, and its choices
/// override the method config's. What it decides for the picker (e.g. the
/// route and cluster) travels in [`CallConfig::decision`].
pub trait CallConfigSelector: Send + Sync + std::fmt::Debug {
    /// The settings for a call to `path` with these request headers.
    fn select(&self, path: &str, headers: &http::HeaderMap) -> CallConfig;
}

/// What a [`CallConfigSelector`] chose for one call.
#[derive(Debug, Clone, Default)]
pub struct CallConfig {
    /// The call's deadline, unless the caller's is sooner (overrides the
    /// method config's `timeout`).
    pub timeout: Option<Duration>,
    /// Its retry policy (overrides the method config's).
    pub retry_policy: Option<RetryPolicy>,
    /// A choice for the picker, which finds it with
    /// [`PickInfo::decision`](crate::picker::PickInfo::decision).
    pub decision: Option<CallDecision>,
}

/// A selector's choice for one call, handed to the picker through the
/// request's extensions.
#[derive(Clone)]
pub struct CallDecision(pub Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for CallDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallDecision(..)")
    }
}

/// Settings for the methods a `methodConfig` entry names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodConfig {
    /// Calls wait for a READY connection instead of failing fast.
    pub wait_for_ready: Option<bool>,
    /// The default deadline of a call (a shorter one from the caller wins).
    pub timeout: Option<Duration>,
    /// The largest request message, in bytes: a call trying to send a
    /// larger one fails with RESOURCE_EXHAUSTED before it goes out.
    pub max_request_message_bytes: Option<u64>,
    /// The largest response message, in bytes: a call receiving a larger
    /// one fails with RESOURCE_EXHAUSTED when its length prefix arrives.
    pub max_response_message_bytes: Option<u64>,
    /// How to retry.
    pub retry_policy: Option<RetryPolicy>,
}

/// A parsed service config.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    policy: Option<(String, Value)>,
    /// Chooses settings per call, when the top-level policy has one (see
    /// [`CallConfigSelector`]).
    selector: Option<Arc<dyn CallConfigSelector>>,
    /// Method configs by `/service/method`, `/service/` and `` (default).
    methods: HashMap<String, Arc<MethodConfig>>,
    /// `healthCheckConfig.serviceName`, when client-side health checking is on.
    pub health_check_service: Option<String>,
}

impl ServiceConfig {
    /// Parses `json`, choosing the first policy in `loadBalancingConfig`
    /// that `policies` knows (or the deprecated `loadBalancingPolicy`).
    /// Unknown fields are ignored, as gRPC's parsers ignore them; a field
    /// of the wrong type is an error naming its path
    /// (`methodConfig[0].timeout: …`).
    pub fn parse(
        json: &Value,
        policies: &PolicyRegistry,
    ) -> Result<ServiceConfig, ServiceConfigError> {
        if !json.is_object() {
            return err("not a JSON object");
        }
        let root: raw::Root = serde_path_to_error::deserialize(json)
            .map_err(|e| ServiceConfigError(format!("{}: {}", e.path(), e.inner())))?;
        let mut config = ServiceConfig {
            policy: parse_policy(&root, policies)?,
            ..Default::default()
        };
        for (i, entry) in root.method_config.into_iter().flatten().enumerate() {
            let (names, method) = method_config(entry)
                .map_err(|e| ServiceConfigError(format!("methodConfig[{i}]: {}", e.0)))?;
            for name in names {
                if config
                    .methods
                    .insert(name.clone(), method.clone())
                    .is_some()
                {
                    return err(format!("methodConfig[{i}]: duplicate name {name:?}"));
                }
            }
        }
        if let Some(health) = root.health_check_config {
            config.health_check_service = Some(health.service_name.unwrap_or_default());
        }
        if let Some((name, policy_config)) = &config.policy {
            config.selector = policies
                .get(name)
                .and_then(|builder| builder.call_config(policy_config));
        }
        Ok(config)
    }

    /// The per-call selector of the chosen policy, if it has one.
    pub fn selector(&self) -> Option<&Arc<dyn CallConfigSelector>> {
        self.selector.as_ref()
    }

    /// The chosen policy's name (`pick_first` by default).
    pub fn policy_name(&self) -> &str {
        self.policy
            .as_ref()
            .map(|(n, _)| n.as_str())
            .unwrap_or("pick_first")
    }

    /// The chosen policy's config object (`{}` by default).
    pub fn policy_config(&self) -> Value {
        self.policy
            .as_ref()
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    /// The method config for a call path `/service/method`: an exact match,
    /// else the service's, else the default.
    pub fn method(&self, path: &str) -> Option<&Arc<MethodConfig>> {
        if self.methods.is_empty() {
            return None;
        }
        if let Some(m) = self.methods.get(path) {
            return Some(m);
        }
        let service = path.rfind('/').map(|i| &path[..=i]).unwrap_or("");
        self.methods.get(service).or_else(|| self.methods.get(""))
    }
}

fn parse_policy(
    root: &raw::Root,
    policies: &PolicyRegistry,
) -> Result<Option<(String, Value)>, ServiceConfigError> {
    if let Some(list) = &root.load_balancing_config {
        for (i, entry) in list.iter().enumerate() {
            if entry.len() != 1 {
                return err(format!(
                    "loadBalancingConfig[{i}] must have exactly one key"
                ));
            }
            let (name, policy_config) = entry.iter().next().expect("one key");
            if let Some(builder) = policies.get(name) {
                let policy_config = if policy_config.is_null() {
                    Value::Object(Map::new())
                } else {
                    policy_config.clone()
                };
                builder
                    .validate(&policy_config)
                    .map_err(ServiceConfigError)?;
                return Ok(Some((name.clone(), policy_config)));
            }
        }
        if !list.is_empty() {
            return err("loadBalancingConfig names no policy this client knows");
        }
    }
    match &root.load_balancing_policy {
        None => Ok(None),
        Some(name) => {
            let name = name.to_ascii_lowercase();
            if policies.get(&name).is_some() {
                Ok(Some((name, Value::Object(Map::new()))))
            } else {
                err(format!("unknown loadBalancingPolicy {name:?}"))
            }
        }
    }
}

/// A `methodConfig` entry's names (`/service/method`, `/service/`, or ``
/// for the default) and settings.
fn method_config(
    entry: raw::MethodConfig,
) -> Result<(Vec<String>, Arc<MethodConfig>), ServiceConfigError> {
    if entry.name.is_empty() {
        return err("name must be a non-empty list");
    }
    let mut names = Vec::new();
    for name in entry.name {
        let service = name.service.unwrap_or_default();
        let method = name.method.unwrap_or_default();
        if service.is_empty() && !method.is_empty() {
            return err("a name has a method but no service");
        }
        names.push(match (service.is_empty(), method.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!("/{service}/"),
            (false, false) => format!("/{service}/{method}"),
        });
    }
    let method = MethodConfig {
        wait_for_ready: entry.wait_for_ready,
        timeout: entry.timeout.map(|d| d.0),
        max_request_message_bytes: entry.max_request_message_bytes.map(|n| n.0),
        max_response_message_bytes: entry.max_response_message_bytes.map(|n| n.0),
        retry_policy: entry.retry_policy.map(retry_policy).transpose()?,
    };
    Ok((names, Arc::new(method)))
}

/// A retry policy, checked as gRFC A6 asks.
fn retry_policy(retry: raw::RetryPolicy) -> Result<RetryPolicy, ServiceConfigError> {
    let required = |field: &str| ServiceConfigError(format!("retryPolicy.{field} is required"));
    let max_attempts = retry.max_attempts.ok_or_else(|| required("maxAttempts"))?.0;
    if max_attempts < 2 {
        return err("retryPolicy.maxAttempts must be at least 2");
    }
    let initial_backoff = retry
        .initial_backoff
        .ok_or_else(|| required("initialBackoff"))?
        .0;
    let max_backoff = retry.max_backoff.ok_or_else(|| required("maxBackoff"))?.0;
    if initial_backoff.is_zero() || max_backoff.is_zero() {
        return err("retryPolicy backoffs must be positive");
    }
    let backoff_multiplier = match retry.backoff_multiplier {
        Some(m) if m > 0.0 && m.is_finite() => m,
        _ => return err("retryPolicy.backoffMultiplier must be a positive number"),
    };
    if retry.retryable_status_codes.is_empty() {
        return err("retryPolicy.retryableStatusCodes must be a non-empty list");
    }
    Ok(RetryPolicy {
        max_attempts: max_attempts.min(5) as u32,
        initial_backoff,
        max_backoff,
        backoff_multiplier,
        retryable_status_codes: retry
            .retryable_status_codes
            .into_iter()
            .map(|c| c.0)
            .collect(),
    })
}

/// The service config's JSON, as serde reads it (field types checked
/// here; meaning checked by the functions above).
pub(crate) mod raw {
    use std::time::Duration;

    use serde::Deserialize;
    use serde::de::{self, Deserializer, Visitor};
    use serde_json::{Map, Value};

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Root {
        #[serde(default)]
        pub(super) load_balancing_config: Option<Vec<Map<String, Value>>>,
        #[serde(default)]
        pub(super) load_balancing_policy: Option<String>,
        #[serde(default)]
        pub(super) method_config: Option<Vec<MethodConfig>>,
        #[serde(default)]
        pub(super) health_check_config: Option<HealthCheckConfig>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct HealthCheckConfig {
        #[serde(default)]
        pub(super) service_name: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct MethodConfig {
        #[serde(default)]
        pub(super) name: Vec<Name>,
        #[serde(default)]
        pub(super) wait_for_ready: Option<bool>,
        #[serde(default)]
        pub(super) timeout: Option<ProtoDuration>,
        #[serde(default)]
        pub(super) max_request_message_bytes: Option<ProtoU64>,
        #[serde(default)]
        pub(super) max_response_message_bytes: Option<ProtoU64>,
        #[serde(default)]
        pub(super) retry_policy: Option<RetryPolicy>,
    }

    #[derive(Debug, Deserialize)]
    pub(super) struct Name {
        #[serde(default)]
        pub(super) service: Option<String>,
        #[serde(default)]
        pub(super) method: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct RetryPolicy {
        #[serde(default)]
        pub(super) max_attempts: Option<ProtoU64>,
        #[serde(default)]
        pub(super) initial_backoff: Option<ProtoDuration>,
        #[serde(default)]
        pub(super) max_backoff: Option<ProtoDuration>,
        #[serde(default)]
        pub(super) backoff_multiplier: Option<f64>,
        #[serde(default)]
        pub(super) retryable_status_codes: Vec<StatusCode>,
    }

    /// A protobuf JSON duration (`"1.5s"`).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct ProtoDuration(pub(crate) Duration);

    impl<'de> Deserialize<'de> for ProtoDuration {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            super::parse_duration(&text)
                .map(ProtoDuration)
                .ok_or_else(|| {
                    de::Error::custom(format!("{text:?} is not a duration like \"1.5s\""))
                })
        }
    }

    /// A protobuf JSON unsigned 64-bit integer: a number, or a string of
    /// digits (how protobuf JSON writes 64-bit integers).
    #[derive(Debug)]
    pub(super) struct ProtoU64(pub(super) u64);

    impl<'de> Deserialize<'de> for ProtoU64 {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = ProtoU64;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a non-negative integer, or one as a string")
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<ProtoU64, E> {
                    Ok(ProtoU64(n))
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<ProtoU64, E> {
                    u64::try_from(n)
                        .map(ProtoU64)
                        .map_err(|_| E::custom(format!("{n} is negative")))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<ProtoU64, E> {
                    s.parse()
                        .map(ProtoU64)
                        .map_err(|_| E::custom(format!("{s:?} is not an integer")))
                }
            }
            deserializer.deserialize_any(V)
        }
    }

    /// A status code by name (`"UNAVAILABLE"`, any case) or number (`14`).
    #[derive(Debug)]
    pub(super) struct StatusCode(pub(super) tonic::Code);

    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    impl<'de> Deserialize<'de> for StatusCode {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = StatusCode;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a status code name or number")
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<StatusCode, E> {
                    if n < 17 {
                        Ok(StatusCode(tonic::Code::from_i32(n as i32)))
                    } else {
                        Err(E::custom(format!("unknown status code {n}")))
                    }
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<StatusCode, E> {
                    Err(E::custom(format!("unknown status code {n}")))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<StatusCode, E> {
                    NAMES
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(s))
                        .map(|n| StatusCode(tonic::Code::from_i32(n as i32)))
                        .ok_or_else(|| E::custom(format!("unknown status code {s:?}")))
                }
            }
            deserializer.deserialize_any(V)
        }
    }
}

/// A policy's config object read as `T` (`null` is `T::default()`): a
/// field of the wrong type, or one `T` does not know when it denies
/// unknown fields, is an error naming `policy` and the field's path.
pub(crate) fn policy_config<T>(policy: &str, config: &Value) -> Result<T, String>
where
    T: serde::de::DeserializeOwned + Default,
{
    match config {
        Value::Null => Ok(T::default()),
        Value::Object(_) => serde_path_to_error::deserialize(config)
            .map_err(|e| format!("{policy} {}: {}", e.path(), e.inner())),
        other => Err(format!("{policy} config must be an object, got {other}")),
    }
}

/// Parses a protobuf JSON duration: decimal seconds with an `s` suffix
/// (the one parser [`waypost_resolver::duration`] has, in that form).
pub fn parse_duration(text: &str) -> Option<Duration> {
    use waypost_resolver::duration::{DurationForms, parse_duration};
    parse_duration(text, DurationForms::ProtobufJson).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ServiceConfig, ServiceConfigError> {
        ServiceConfig::parse(&v, PolicyRegistry::global())
    }

    #[test]
    fn policy_selection() {
        assert_eq!(parse(json!({})).unwrap().policy_name(), "pick_first");
        assert_eq!(
            parse(json!({"loadBalancingPolicy":"ROUND_ROBIN"}))
                .unwrap()
                .policy_name(),
            "round_robin"
        );
        let c = parse(json!({"loadBalancingConfig":[{"xds":{}},{"pick_first":{"shuffleAddressList":true}}],"loadBalancingPolicy":"round_robin"})).unwrap();
        assert_eq!(c.policy_name(), "pick_first");
        assert_eq!(c.policy_config(), json!({"shuffleAddressList":true}));
        assert!(
            parse(json!({"loadBalancingConfig":[{"xds":{}}]}))
                .unwrap_err()
                .0
                .contains("no policy this client knows")
        );
        assert!(
            parse(json!({"loadBalancingConfig":[{"pick_first":{"shuffleAddressList":1}}]}))
                .is_err()
        );
        assert!(parse(json!({"loadBalancingConfig":[{"a":{},"b":{}}]})).is_err());
        assert!(parse(json!({"loadBalancingPolicy":"nope"})).is_err());
    }

    #[test]
    fn method_configs_match_exact_then_service_then_default() {
        let c = parse(json!({"methodConfig":[
            {"name":[{"service":"s","method":"m"}],"timeout":"1s"},
            {"name":[{"service":"s"}],"timeout":"2s"},
            {"name":[{}],"waitForReady":true}
        ]}))
        .unwrap();
        assert_eq!(
            c.method("/s/m").unwrap().timeout,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            c.method("/s/other").unwrap().timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(c.method("/t/x").unwrap().wait_for_ready, Some(true));
    }

    #[test]
    fn retry_policies_parse_and_validate() {
        let c = parse(
            json!({"methodConfig":[{"name":[{"service":"s"}],"retryPolicy":{
            "maxAttempts":9,"initialBackoff":"0.1s","maxBackoff":"1s","backoffMultiplier":2,
            "retryableStatusCodes":["UNAVAILABLE", 4]}}]}),
        )
        .unwrap();
        let retry = c.method("/s/m").unwrap().retry_policy.clone().unwrap();
        assert_eq!(retry.max_attempts, 5, "capped at 5");
        assert_eq!(retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(
            retry.retryable_status_codes,
            vec![tonic::Code::Unavailable, tonic::Code::DeadlineExceeded]
        );
        for bad in [
            json!({"maxAttempts":1,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}),
            json!({"maxAttempts":2,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":0,"retryableStatusCodes":["UNAVAILABLE"]}),
            json!({"maxAttempts":2,"initialBackoff":"1s","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["NOPE"]}),
            json!({"maxAttempts":2,"initialBackoff":"1","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}),
        ] {
            assert!(
                parse(json!({"methodConfig":[{"name":[{"service":"s"}],"retryPolicy":bad}]}))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_configs_are_rejected_with_reasons() {
        for (bad, needle) in [
            (json!([]), "not a JSON object"),
            (json!({"methodConfig":{}}), "methodConfig: invalid type"),
            (json!({"methodConfig":[{"name":[]}]}), "non-empty list"),
            (
                json!({"methodConfig":[{"name":[{"method":"m"}]}]}),
                "no service",
            ),
            (
                json!({"methodConfig":[{"name":[{"service":"s"}],"waitForReady":"yes"}]}),
                "waitForReady",
            ),
            (
                json!({"methodConfig":[{"name":[{"service":"s"}]},{"name":[{"service":"s"}]}]}),
                "duplicate",
            ),
            (
                json!({"healthCheckConfig":{"serviceName":1}}),
                "serviceName",
            ),
            (
                json!({"methodConfig":[{"name":[{"service":"s"}],"timeout":"1"}]}),
                "methodConfig[0].timeout: \"1\" is not a duration",
            ),
            (
                json!({"methodConfig":[{"name":[{"service":"s"}],"maxRequestMessageBytes":-1}]}),
                "methodConfig[0].maxRequestMessageBytes: -1 is negative",
            ),
            (
                json!({"methodConfig":[{"name":[{"service":"s"}],"retryPolicy":{"retryableStatusCodes":["NOPE"]}}]}),
                "methodConfig[0].retryPolicy.retryableStatusCodes[0]: unknown status code \"NOPE\"",
            ),
            (
                json!({"loadBalancingConfig":[1]}),
                "loadBalancingConfig[0]: invalid type",
            ),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert!(e.0.contains(needle), "{bad}: {e}");
        }
        assert_eq!(
            parse(json!({"healthCheckConfig":{"serviceName":"x"}}))
                .unwrap()
                .health_check_service
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn durations_are_protobuf_json_only() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), None);
    }
}
