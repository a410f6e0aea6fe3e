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
    pub fn parse(
        json: &Value,
        policies: &PolicyRegistry,
    ) -> Result<ServiceConfig, ServiceConfigError> {
        let Value::Object(root) = json else {
            return err("not a JSON object");
        };
        let mut config = ServiceConfig {
            policy: parse_policy(root, policies)?,
            ..Default::default()
        };

        match root.get("methodConfig") {
            None | Some(Value::Null) => {}
            Some(Value::Array(entries)) => {
                for (i, entry) in entries.iter().enumerate() {
                    let (names, method) = parse_method_config(entry)
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
            }
            Some(_) => return err("methodConfig is not a list"),
        }

        match root.get("healthCheckConfig") {
            None | Some(Value::Null) => {}
            Some(Value::Object(health)) => match health.get("serviceName") {
                None => config.health_check_service = Some(String::new()),
                Some(Value::String(name)) => config.health_check_service = Some(name.clone()),
                Some(_) => return err("healthCheckConfig.serviceName is not a string"),
            },
            Some(_) => return err("healthCheckConfig is not an object"),
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
    root: &Map<String, Value>,
    policies: &PolicyRegistry,
) -> Result<Option<(String, Value)>, ServiceConfigError> {
    if let Some(list) = root.get("loadBalancingConfig") {
        let Value::Array(list) = list else {
            return err("loadBalancingConfig is not a list");
        };
        for (i, entry) in list.iter().enumerate() {
            let Value::Object(entry) = entry else {
                return err(format!("loadBalancingConfig[{i}] is not an object"));
            };
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
    match root.get("loadBalancingPolicy") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => {
            let name = name.to_ascii_lowercase();
            if policies.get(&name).is_some() {
                Ok(Some((name, Value::Object(Map::new()))))
            } else {
                err(format!("unknown loadBalancingPolicy {name:?}"))
            }
        }
        Some(_) => err("loadBalancingPolicy is not a string"),
    }
}

fn parse_method_config(
    entry: &Value,
) -> Result<(Vec<String>, Arc<MethodConfig>), ServiceConfigError> {
    let Value::Object(entry) = entry else {
        return err("not an object");
    };
    let mut names = Vec::new();
    match entry.get("name") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for name in list {
                let Value::Object(name) = name else {
                    return err("a name is not an object");
                };
                let service = opt_str(name, "service")?.unwrap_or_default();
                let method = opt_str(name, "method")?.unwrap_or_default();
                if service.is_empty() && !method.is_empty() {
                    return err("a name has a method but no service");
                }
                names.push(match (service.is_empty(), method.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!("/{service}/"),
                    (false, false) => format!("/{service}/{method}"),
                });
            }
        }
        _ => return err("name must be a non-empty list"),
    }
    let method = MethodConfig {
        wait_for_ready: match entry.get("waitForReady") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return err("waitForReady is not a boolean"),
        },
        timeout: opt_duration(entry, "timeout")?,
        max_request_message_bytes: opt_u64(entry, "maxRequestMessageBytes")?,
        max_response_message_bytes: opt_u64(entry, "maxResponseMessageBytes")?,
        retry_policy: match entry.get("retryPolicy") {
            None | Some(Value::Null) => None,
            Some(Value::Object(retry)) => Some(parse_retry(retry)?),
            Some(_) => return err("retryPolicy is not an object"),
        },
    };
    Ok((names, Arc::new(method)))
}

fn parse_retry(retry: &Map<String, Value>) -> Result<RetryPolicy, ServiceConfigError> {
    let max_attempts = opt_u64(retry, "maxAttempts")?.ok_or(ServiceConfigError(
        "retryPolicy.maxAttempts is required".into(),
    ))?;
    if max_attempts < 2 {
        return err("retryPolicy.maxAttempts must be at least 2");
    }
    let initial_backoff = opt_duration(retry, "initialBackoff")?.ok_or(ServiceConfigError(
        "retryPolicy.initialBackoff is required".into(),
    ))?;
    let max_backoff = opt_duration(retry, "maxBackoff")?.ok_or(ServiceConfigError(
        "retryPolicy.maxBackoff is required".into(),
    ))?;
    if initial_backoff.is_zero() || max_backoff.is_zero() {
        return err("retryPolicy backoffs must be positive");
    }
    let backoff_multiplier = match retry.get("backoffMultiplier") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|m| m > 0.0) => {
            n.as_f64().expect("checked")
        }
        _ => return err("retryPolicy.backoffMultiplier must be a positive number"),
    };
    let codes = match retry.get("retryableStatusCodes") {
        Some(Value::Array(codes)) if !codes.is_empty() => codes,
        _ => return err("retryPolicy.retryableStatusCodes must be a non-empty list"),
    };
    let mut retryable_status_codes = Vec::new();
    for code in codes {
        retryable_status_codes.push(parse_code(code)?);
    }
    Ok(RetryPolicy {
        max_attempts: max_attempts.min(5) as u32,
        initial_backoff,
        max_backoff,
        backoff_multiplier,
        retryable_status_codes,
    })
}

/// A status code given by name (`"UNAVAILABLE"`) or number (`14`).
fn parse_code(code: &Value) -> Result<tonic::Code, ServiceConfigError> {
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
    let number = match code {
        Value::String(name) => NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)),
        Value::Number(n) => n.as_u64().filter(|n| *n < 17).map(|n| n as usize),
        _ => None,
    };
    match number {
        Some(n) => Ok(tonic::Code::from_i32(n as i32)),
        None => err(format!("unknown status code {code}")),
    }
}

fn opt_str(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ServiceConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => err(format!("{key} is not a string")),
    }
}

fn opt_u64(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, ServiceConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(ServiceConfigError(format!(
            "{key} is not a non-negative integer"
        ))),
        // Protobuf JSON writes 64-bit integers as strings.
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ServiceConfigError(format!("{key} is not an integer"))),
        Some(_) => err(format!("{key} is not an integer")),
    }
}

fn opt_duration(
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<Duration>, ServiceConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_duration(s)
            .map(Some)
            .ok_or(ServiceConfigError(format!(
                "{key} {s:?} is not a duration like \"1.5s\""
            ))),
        Some(_) => err(format!("{key} is not a duration string")),
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
            (json!({"methodConfig":{}}), "not a list"),
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
