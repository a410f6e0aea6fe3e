//! The route table in the cluster manager's config: waypost's own JSON
//! form of an xDS RouteConfiguration's routes for one virtual host,
//! written by the xDS resolver ([`routes_json`]) and read back by the
//! cluster manager (`parse`), both through serde.
//!
//! ```json
//! [{"prefix": "/movies.v1.", "caseSensitive": true,
//!   "headers": [{"name": "x-user", "exact": "ann", "invert": false, "ignoreCase": false}],
//!   "timeoutNanos": 2000000000,
//!   "clusters": [["a", 80], ["b", 20]]},
//!  {"prefix": "", "fail": "matched a non-forwarding route"}]
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cluster_manager::NAME;
use crate::service_config::RetryPolicy;
use crate::xds::resources::route::{HeaderMatch, HeaderMatcher, PathMatch, Route, RouteAction};

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RouteJson {
    #[serde(flatten)]
    path: PathJson,
    #[serde(default = "yes")]
    case_sensitive: bool,
    #[serde(default)]
    headers: Vec<HeaderJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fraction_per_million: Option<u64>,
    /// The call's timeout: the route's `max_stream_duration`, else the
    /// listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_nanos: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<RetryJson>,
    /// Clusters and their weights; none: calls the route matches fail.
    #[serde(default)]
    clusters: Vec<(String, u64)>,
    /// Why calls the route matches fail, when it has no clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fail: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum PathJson {
    Prefix(String),
    Path(String),
    AnchoredRegex(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderJson {
    name: String,
    #[serde(flatten)]
    matcher: MatchJson,
    #[serde(default)]
    invert: bool,
    #[serde(default)]
    ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum MatchJson {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Present(bool),
    Range(i64, i64),
    AnchoredRegex(String),
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryJson {
    max_attempts: u32,
    initial_backoff_nanos: u64,
    max_backoff_nanos: u64,
    backoff_multiplier: f64,
    codes: Vec<i32>,
}

impl From<&RetryPolicy> for RetryJson {
    fn from(retry: &RetryPolicy) -> RetryJson {
        RetryJson {
            max_attempts: retry.max_attempts,
            initial_backoff_nanos: nanos(retry.initial_backoff),
            max_backoff_nanos: nanos(retry.max_backoff),
            backoff_multiplier: retry.backoff_multiplier,
            codes: retry
                .retryable_status_codes
                .iter()
                .map(|c| *c as i32)
                .collect(),
        }
    }
}

impl From<&RetryJson> for RetryPolicy {
    fn from(retry: &RetryJson) -> RetryPolicy {
        RetryPolicy {
            max_attempts: retry.max_attempts,
            initial_backoff: Duration::from_nanos(retry.initial_backoff_nanos),
            max_backoff: Duration::from_nanos(retry.max_backoff_nanos),
            backoff_multiplier: retry.backoff_multiplier,
            retryable_status_codes: retry.codes.iter().map(|c| tonic::Code::from(*c)).collect(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The route table as the cluster manager's config takes it; each route's
/// timeout is its `max_stream_duration`, else `default_timeout` (the
/// listener's).
pub fn routes_json(routes: &[Route], default_timeout: Option<Duration>) -> Value {
    let table: Vec<RouteJson> = routes
        .iter()
        .map(|route| to_json(route, default_timeout))
        .collect();
    serde_json::to_value(table).expect("a route table is plain data")
}

fn to_json(route: &Route, default_timeout: Option<Duration>) -> RouteJson {
    let path = match &route.path {
        PathMatch::Prefix(p) => PathJson::Prefix(p.clone()),
        PathMatch::Path(p) => PathJson::Path(p.clone()),
        PathMatch::Regex(r) => PathJson::AnchoredRegex(r.as_str().to_owned()),
    };
    let headers = route
        .headers
        .iter()
        .map(|h| HeaderJson {
            name: h.name.clone(),
            matcher: match &h.matcher {
                HeaderMatch::Exact(v) => MatchJson::Exact(v.clone()),
                HeaderMatch::Prefix(v) => MatchJson::Prefix(v.clone()),
                HeaderMatch::Suffix(v) => MatchJson::Suffix(v.clone()),
                HeaderMatch::Contains(v) => MatchJson::Contains(v.clone()),
                HeaderMatch::Present(v) => MatchJson::Present(*v),
                HeaderMatch::Range(s, e) => MatchJson::Range(*s, *e),
                HeaderMatch::Regex(r) => MatchJson::AnchoredRegex(r.as_str().to_owned()),
            },
            invert: h.invert,
            ignore_case: h.ignore_case,
        })
        .collect();
    let (clusters, fail) = match &route.action {
        RouteAction::Cluster(c) => (vec![(c.clone(), 1)], None),
        RouteAction::Weighted(w) => (
            w.iter()
                .map(|(c, weight)| (c.clone(), u64::from(*weight)))
                .collect(),
            None,
        ),
        RouteAction::NonForwarding => (Vec::new(), Some("matched a non-forwarding route")),
        RouteAction::Unsupported => (
            Vec::new(),
            Some("matched route does not have a supported route action type"),
        ),
    };
    RouteJson {
        path,
        case_sensitive: route.case_sensitive,
        headers,
        fraction_per_million: route.fraction_per_million.map(u64::from),
        timeout_nanos: route.max_stream_duration.or(default_timeout).map(nanos),
        retry: route.retry_policy.as_ref().map(RetryJson::from),
        clusters,
        fail: fail.map(str::to_owned),
    }
}

/// One route as the picker runs it.
#[derive(Debug, Clone)]
pub(super) struct RouteRule {
    pub(super) route: Route,
    /// (cluster, cumulative weight) for a weighted draw; empty: fail.
    pub(super) clusters: Vec<(String, u64)>,
    pub(super) total: u64,
    pub(super) fail: std::sync::Arc<str>,
    /// The call's timeout.
    pub(super) timeout: Option<Duration>,
}

fn anchored(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{NAME}: bad regex: {e}"))
}

/// The route table's routes as the picker runs them (regular expressions
/// compiled).
pub(super) fn parse(table: &[RouteJson]) -> Result<Vec<RouteRule>, String> {
    table.iter().map(rule).collect()
}

fn rule(entry: &RouteJson) -> Result<RouteRule, String> {
    let path = match &entry.path {
        PathJson::Prefix(p) => PathMatch::Prefix(p.clone()),
        PathJson::Path(p) => PathMatch::Path(p.clone()),
        PathJson::AnchoredRegex(r) => PathMatch::Regex(anchored(r)?),
    };
    let headers = entry
        .headers
        .iter()
        .map(|h| {
            let matcher = match &h.matcher {
                MatchJson::Exact(v) => HeaderMatch::Exact(v.clone()),
                MatchJson::Prefix(v) => HeaderMatch::Prefix(v.clone()),
                MatchJson::Suffix(v) => HeaderMatch::Suffix(v.clone()),
                MatchJson::Contains(v) => HeaderMatch::Contains(v.clone()),
                MatchJson::Present(v) => HeaderMatch::Present(*v),
                MatchJson::Range(s, e) => HeaderMatch::Range(*s, *e),
                MatchJson::AnchoredRegex(r) => HeaderMatch::Regex(anchored(r)?),
            };
            Ok(HeaderMatcher {
                name: h.name.clone(),
                matcher,
                invert: h.invert,
                ignore_case: h.ignore_case,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut clusters = Vec::with_capacity(entry.clusters.len());
    let mut total = 0u64;
    for (name, weight) in &entry.clusters {
        total = total.saturating_add(*weight);
        clusters.push((name.clone(), total));
    }
    Ok(RouteRule {
        route: Route {
            path,
            case_sensitive: entry.case_sensitive,
            headers,
            fraction_per_million: entry.fraction_per_million.map(|f| f.min(1_000_000) as u32),
            action: RouteAction::Unsupported,
            max_stream_duration: None,
            hash_policies: Vec::new(),
            retry_policy: entry.retry.as_ref().map(RetryPolicy::from),
        },
        clusters,
        total,
        fail: entry
            .fail
            .as_deref()
            .unwrap_or("no cluster to route to")
            .into(),
        timeout: entry.timeout_nanos.map(Duration::from_nanos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_round_trips_through_its_json() {
        let json = serde_json::json!([
            {"prefix": "/a.", "caseSensitive": false,
             "headers": [
                 {"name": "x-user", "exact": "ann", "invert": true, "ignoreCase": true},
                 {"name": "x-n", "range": [1, 10]},
                 {"name": "x-p", "present": true}],
             "fractionPerMillion": 500000, "timeoutNanos": 1500000000,
             "retry": {"maxAttempts": 3, "initialBackoffNanos": 10, "maxBackoffNanos": 100,
                       "backoffMultiplier": 2.0, "codes": [14]},
             "clusters": [["a", 80], ["b", 20]]},
            {"anchoredRegex": "/b\\..*", "clusters": [["b", 1]]},
            {"path": "/c.C/M", "fail": "matched a non-forwarding route"}
        ]);
        let table: Vec<RouteJson> = serde_json::from_value(json.clone()).unwrap();
        let rules = parse(&table).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].clusters, [("a".into(), 80), ("b".into(), 100)]);
        assert_eq!(rules[0].total, 100);
        assert!(!rules[0].route.case_sensitive);
        assert!(rules[0].route.headers[0].invert);
        assert_eq!(rules[0].timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            rules[0]
                .route
                .retry_policy
                .as_ref()
                .unwrap()
                .retryable_status_codes,
            [tonic::Code::Unavailable]
        );
        assert!(rules[1].route.case_sensitive, "case sensitive unless said");
        assert!(matches!(rules[1].route.path, PathMatch::Regex(_)));
        assert_eq!(&*rules[2].fail, "matched a non-forwarding route");
        assert!(rules[2].clusters.is_empty());
        // What the resolver writes for these rules reads back the same.
        let again: Vec<RouteJson> =
            serde_json::from_value(serde_json::to_value(&table).unwrap()).unwrap();
        assert_eq!(again, table);
    }

    #[test]
    fn a_route_without_a_path_matcher_or_with_a_bad_regex_is_refused() {
        let no_path: Result<Vec<RouteJson>, _> =
            serde_json::from_value(serde_json::json!([{"clusters": [["a", 1]]}]));
        assert!(no_path.is_err());
        let table: Vec<RouteJson> =
            serde_json::from_value(serde_json::json!([{"anchoredRegex": "(", "clusters": []}]))
                .unwrap();
        let error = parse(&table).unwrap_err();
        assert!(error.contains("bad regex"), "{error}");
    }
}
