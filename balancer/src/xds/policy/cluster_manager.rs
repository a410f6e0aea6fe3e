//! `xds_cluster_manager_experimental`: one child policy per cluster, and a
//! picker that routes each call — by path, headers and weights, as the
//! route table says (gRFC A28) — to its cluster's child.
//!
//! gRPC splits this between a config selector (routing, in the resolver)
//! and the cluster manager (children); waypost's pickers see each call's
//! path and headers, so the manager's picker does both: the route table
//! comes in the config, in waypost's own JSON form ([`routes_json`]), and
//! each child gets the endpoints whose metadata names its cluster.
//!
//! ```json
//! {"xds_cluster_manager_experimental": {
//!     "routes": [{"prefix": "", "clusters": [["a", 80], ["b", 20]]}],
//!     "children": {"a": {"childPolicy": [{"round_robin": {}}]},
//!                  "b": {"childPolicy": [{"round_robin": {}}]}}}}
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::service_config::{CallConfig, CallConfigSelector, CallDecision, RetryPolicy};
use parking_lot::Mutex;

use crate::picker::{Pick, PickInfo, Picker};
use crate::policy::{Helper, Policy, PolicyBuilder, RandomIndex, thread_random};
use crate::{SubchannelId, SubchannelState};
use serde_json::{Value, json};
use waypost_resolver::{ResolveError, ResolverState};

use super::children::{ChildConfig, Children, child_policy};

use crate::xds::resources::route::{HeaderMatch, HeaderMatcher, PathMatch, Route, RouteAction};

/// The policy's name, as gRPC's.
pub const NAME: &str = "xds_cluster_manager_experimental";

/// The route table as this policy's config takes it; each route's timeout
/// is its `max_stream_duration`, else `default_timeout` (the listener's).
pub fn routes_json(routes: &[Route], default_timeout: Option<Duration>) -> Value {
    Value::Array(
        routes
            .iter()
            .map(|route| {
                let mut entry = serde_json::Map::new();
                match &route.path {
                    PathMatch::Prefix(p) => entry.insert("prefix".into(), json!(p)),
                    PathMatch::Path(p) => entry.insert("path".into(), json!(p)),
                    PathMatch::Regex(r) => entry.insert("anchoredRegex".into(), json!(r.as_str())),
                };
                entry.insert("caseSensitive".into(), json!(route.case_sensitive));
                let headers: Vec<Value> = route
                    .headers
                    .iter()
                    .map(|h| {
                        let (kind, value) = match &h.matcher {
                            HeaderMatch::Exact(v) => ("exact", json!(v)),
                            HeaderMatch::Prefix(v) => ("prefix", json!(v)),
                            HeaderMatch::Suffix(v) => ("suffix", json!(v)),
                            HeaderMatch::Contains(v) => ("contains", json!(v)),
                            HeaderMatch::Present(v) => ("present", json!(v)),
                            HeaderMatch::Range(s, e) => ("range", json!([s, e])),
                            HeaderMatch::Regex(r) => ("anchoredRegex", json!(r.as_str())),
                        };
                        json!({"name": h.name, kind: value, "invert": h.invert, "ignoreCase": h.ignore_case})
                    })
                    .collect();
                entry.insert("headers".into(), Value::Array(headers));
                if let Some(f) = route.fraction_per_million {
                    entry.insert("fractionPerMillion".into(), json!(f));
                }
                if let Some(timeout) = route.max_stream_duration.or(default_timeout) {
                    entry.insert("timeoutNanos".into(), json!(timeout.as_nanos() as u64));
                }
                if let Some(retry) = &route.retry_policy {
                    entry.insert("retry".into(), json!(RetryJson::from(retry)));
                }
                match &route.action {
                    RouteAction::Cluster(c) => entry.insert("clusters".into(), json!([[c, 1]])),
                    RouteAction::Weighted(w) => entry.insert("clusters".into(), json!(w)),
                    RouteAction::NonForwarding => {
                        entry.insert("fail".into(), json!("matched a non-forwarding route"))
                    }
                    RouteAction::Unsupported => entry.insert(
                        "fail".into(),
                        json!("matched route does not have a supported route action type"),
                    ),
                };
                Value::Object(entry)
            })
            .collect(),
    )
}

/// One route as the picker runs it.
#[derive(Debug, Clone)]
struct RouteRule {
    route: Route,
    /// (cluster, cumulative weight) for a weighted draw; empty: fail.
    clusters: Vec<(String, u64)>,
    total: u64,
    fail: Arc<str>,
    /// The call's timeout (the route's `max_stream_duration`, else the
    /// listener's).
    timeout: Option<Duration>,
}

/// A route's retry policy inside this policy's config.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
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
            initial_backoff_nanos: retry.initial_backoff.as_nanos() as u64,
            max_backoff_nanos: retry.max_backoff.as_nanos() as u64,
            backoff_multiplier: retry.backoff_multiplier,
            codes: retry
                .retryable_status_codes
                .iter()
                .map(|c| *c as i32)
                .collect(),
        }
    }
}

fn parse_retry(value: &Value) -> Option<RetryPolicy> {
    let retry: RetryJson = serde_json::from_value(value.clone()).ok()?;
    Some(RetryPolicy {
        max_attempts: retry.max_attempts,
        initial_backoff: Duration::from_nanos(retry.initial_backoff_nanos),
        max_backoff: Duration::from_nanos(retry.max_backoff_nanos),
        backoff_multiplier: retry.backoff_multiplier,
        retryable_status_codes: retry.codes.into_iter().map(tonic::Code::from).collect(),
    })
}

/// The route tables parsed last (a few, for processes with several xDS
/// channels), shared by the per-call selector and the policy built from
/// the same config, so a call's route choice made by one is the other's
/// picker's too. (A table not found here is parsed again: the picker then
/// matches calls itself.)
static RECENT: LazyLock<Mutex<VecDeque<ParsedRoutes>>> = LazyLock::new(Mutex::default);

/// How many route tables [`RECENT`] keeps.
const RECENT_TABLES: usize = 16;

/// A route table's JSON and its parse.
type ParsedRoutes = (Value, Arc<[RouteRule]>);

fn parse_routes_shared(value: &Value) -> Result<Arc<[RouteRule]>, String> {
    let mut recent = RECENT.lock();
    if let Some((_, routes)) = recent.iter().find(|(json, _)| json == value) {
        return Ok(routes.clone());
    }
    let routes: Arc<[RouteRule]> = parse_routes(value)?.into();
    if recent.len() == RECENT_TABLES {
        recent.pop_front();
    }
    recent.push_back((value.clone(), routes.clone()));
    Ok(routes)
}

fn anchored(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{NAME}: bad regex: {e}"))
}

fn parse_routes(value: &Value) -> Result<Vec<RouteRule>, String> {
    let list = value
        .as_array()
        .ok_or(format!("{NAME}: routes must be a list"))?;
    list.iter()
        .map(|entry| {
            let text = |key: &str| entry.get(key).and_then(Value::as_str);
            let path = if let Some(p) = text("prefix") {
                PathMatch::Prefix(p.to_owned())
            } else if let Some(p) = text("path") {
                PathMatch::Path(p.to_owned())
            } else if let Some(r) = text("anchoredRegex") {
                PathMatch::Regex(anchored(r)?)
            } else {
                return Err(format!("{NAME}: a route without a path matcher"));
            };
            let mut headers = Vec::new();
            for h in entry
                .get("headers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = h
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let s = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_owned);
                let matcher = if let Some(v) = s("exact") {
                    HeaderMatch::Exact(v)
                } else if let Some(v) = s("prefix") {
                    HeaderMatch::Prefix(v)
                } else if let Some(v) = s("suffix") {
                    HeaderMatch::Suffix(v)
                } else if let Some(v) = s("contains") {
                    HeaderMatch::Contains(v)
                } else if let Some(v) = h.get("present").and_then(Value::as_bool) {
                    HeaderMatch::Present(v)
                } else if let Some([a, b]) =
                    h.get("range").and_then(Value::as_array).map(Vec::as_slice)
                {
                    HeaderMatch::Range(a.as_i64().unwrap_or(0), b.as_i64().unwrap_or(0))
                } else if let Some(r) = s("anchoredRegex") {
                    HeaderMatch::Regex(anchored(&r)?)
                } else {
                    return Err(format!("{NAME}: a header matcher without a comparison"));
                };
                headers.push(HeaderMatcher {
                    name,
                    matcher,
                    invert: h.get("invert").and_then(Value::as_bool).unwrap_or(false),
                    ignore_case: h
                        .get("ignoreCase")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                });
            }
            let mut clusters = Vec::new();
            let mut total = 0u64;
            for c in entry
                .get("clusters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = c
                    .get(0)
                    .and_then(Value::as_str)
                    .ok_or(format!("{NAME}: a cluster entry needs a name"))?;
                total += c.get(1).and_then(Value::as_u64).unwrap_or(0);
                clusters.push((name.to_owned(), total));
            }
            Ok(RouteRule {
                route: Route {
                    path,
                    case_sensitive: entry
                        .get("caseSensitive")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                    headers,
                    fraction_per_million: entry
                        .get("fractionPerMillion")
                        .and_then(Value::as_u64)
                        .map(|f| f.min(1_000_000) as u32),
                    action: RouteAction::Unsupported,
                    max_stream_duration: None,
                    hash_policies: Vec::new(),
                    retry_policy: entry.get("retry").and_then(parse_retry),
                },
                clusters,
                total,
                fail: text("fail").unwrap_or("no cluster to route to").into(),
                timeout: entry
                    .get("timeoutNanos")
                    .and_then(Value::as_u64)
                    .map(Duration::from_nanos),
            })
        })
        .collect()
}

pub(crate) struct ClusterManagerBuilder;

impl PolicyBuilder for ClusterManagerBuilder {
    fn name(&self) -> &str {
        NAME
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        parse_routes(config.get("routes").unwrap_or(&Value::Null))?;
        config
            .get("children")
            .and_then(Value::as_object)
            .map(|_| ())
            .ok_or(format!("{NAME}: children must be an object"))
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(ClusterManager::new(thread_random()))
    }

    fn call_config(&self, config: &Value) -> Option<Arc<dyn CallConfigSelector>> {
        let routes = parse_routes_shared(config.get("routes").unwrap_or(&Value::Null)).ok()?;
        Some(Arc::new(RouteSelector {
            routes,
            random: thread_random(),
        }))
    }
}

/// A call's route and cluster, chosen once by the [`RouteSelector`] (with
/// the route's timeout and retry policy) and followed by the picker.
#[derive(Debug)]
struct RouteChoice {
    routes: Arc<[RouteRule]>,
    /// The matching route, or `None`: none matched.
    route: Option<usize>,
    /// The cluster entry drawn within it.
    entry: usize,
}

/// Chooses each call's route (A28: path, headers, runtime fraction) and
/// cluster, giving the channel the route's timeout and retry policy.
struct RouteSelector {
    routes: Arc<[RouteRule]>,
    random: RandomIndex,
}

impl std::fmt::Debug for RouteSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSelector")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

/// The route a call to `path` with `headers` takes, and the cluster entry
/// drawn within it.
fn choose(
    routes: &[RouteRule],
    random: &RandomIndex,
    path: &str,
    headers: &http::HeaderMap,
) -> (Option<usize>, usize) {
    let draw = random(1_000_000) as u32;
    let Some(index) = routes
        .iter()
        .position(|r| r.route.matches(path, headers, draw))
    else {
        return (None, 0);
    };
    let rule = &routes[index];
    if rule.total == 0 {
        return (Some(index), 0);
    }
    let point = random(rule.total as usize) as u64;
    let entry = rule
        .clusters
        .iter()
        .position(|(_, upto)| point < *upto)
        .expect("point below the total");
    (Some(index), entry)
}

impl CallConfigSelector for RouteSelector {
    fn select(&self, path: &str, headers: &http::HeaderMap) -> CallConfig {
        let (route, entry) = choose(&self.routes, &self.random, path, headers);
        let rule = route.map(|i| &self.routes[i]);
        CallConfig {
            timeout: rule.and_then(|r| r.timeout),
            retry_policy: rule.and_then(|r| r.route.retry_policy.clone()),
            decision: Some(CallDecision(Arc::new(RouteChoice {
                routes: self.routes.clone(),
                route,
                entry,
            }))),
        }
    }
}

/// The policy. See the [module docs](self).
pub struct ClusterManager {
    routes: Arc<[RouteRule]>,
    children: Children,
    random: RandomIndex,
}

impl ClusterManager {
    /// A manager drawing weighted choices from `random`.
    pub fn new(random: RandomIndex) -> ClusterManager {
        ClusterManager {
            routes: Arc::from(Vec::new()),
            children: Children::default(),
            random,
        }
    }

    fn publish(&self, helper: &mut dyn Helper) {
        helper.update_picker(
            self.children.aggregate(),
            Arc::new(RoutingPicker {
                routes: self.routes.clone(),
                targets: self
                    .routes
                    .iter()
                    .map(|rule| {
                        rule.clusters
                            .iter()
                            .map(|(name, _)| {
                                self.children.children.get(name).map(|c| c.picker.clone())
                            })
                            .collect()
                    })
                    .collect(),
                random: self.random.clone(),
            }),
        );
    }
}

impl Policy for ClusterManager {
    fn resolver_update(&mut self, state: &ResolverState, config: &Value, helper: &mut dyn Helper) {
        if let Ok(routes) = parse_routes_shared(config.get("routes").unwrap_or(&Value::Null)) {
            self.routes = routes;
        }
        let wanted: BTreeMap<String, ChildConfig> = config
            .get("children")
            .and_then(Value::as_object)
            .map(|children| {
                children
                    .iter()
                    .map(|(name, child)| (name.clone(), child_policy(child.get("childPolicy"))))
                    .collect()
            })
            .unwrap_or_default();
        self.children.update(&wanted, state, "cluster", helper);
        self.publish(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.children.children.is_empty() {
            crate::policy::fail_resolution(error, helper);
            return;
        }
        self.children.resolver_error(error, helper);
        self.publish(helper);
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        if self.children.subchannel_update(id, state, helper) {
            self.publish(helper);
        }
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        if self.children.timer(token, helper) {
            self.publish(helper);
        }
    }
}

/// Routes each call to its cluster's child picker.
struct RoutingPicker {
    routes: Arc<[RouteRule]>,
    /// Per route, per cluster entry: that cluster's child picker (`None`:
    /// no such child), looked up once here instead of per call.
    targets: Vec<Vec<Option<Arc<dyn Picker>>>>,
    random: RandomIndex,
}

impl Picker for RoutingPicker {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        // The selector's choice when it chose from this very table, else
        // a choice of our own.
        let (route, entry) = match call.decision::<RouteChoice>() {
            Some(choice) if Arc::ptr_eq(&choice.routes, &self.routes) => {
                (choice.route, choice.entry)
            }
            _ => choose(&self.routes, &self.random, call.path, call.headers),
        };
        let Some(index) = route else {
            return Pick::Unavailable("no matching route".into());
        };
        let rule = &self.routes[index];
        if rule.total == 0 {
            return Pick::Unavailable(rule.fail.clone());
        }
        match &self.targets[index][entry] {
            Some(child) => child.pick(call),
            None => Pick::Unavailable(
                format!("cluster {} is not available", rule.clusters[entry].0).into(),
            ),
        }
    }
}
