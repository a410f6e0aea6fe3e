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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use waypost_balancer::picker::{Pick, PickInfo, Picker};
use waypost_balancer::policy::{Helper, Policy, PolicyBuilder, RandomIndex, thread_random};
use waypost_balancer::{SubchannelId, SubchannelState};
use waypost_resolver::{ResolveError, ResolverState};

use super::children::{ChildConfig, Children, child_policy};

use crate::resources::route::{HeaderMatch, HeaderMatcher, PathMatch, Route, RouteAction};

/// The policy's name, as gRPC's.
pub const NAME: &str = "xds_cluster_manager_experimental";

/// The route table as this policy's config takes it.
pub fn routes_json(routes: &[Route]) -> Value {
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
                },
                clusters,
                total,
                fail: text("fail").unwrap_or("no cluster to route to").into(),
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
        if let Ok(routes) = parse_routes(config.get("routes").unwrap_or(&Value::Null)) {
            self.routes = routes.into();
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
            waypost_balancer::policy::fail_resolution(error, helper);
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
        let draw = (self.random)(1_000_000) as u32;
        let Some(index) = self
            .routes
            .iter()
            .position(|r| r.route.matches(call.path, call.headers, draw))
        else {
            return Pick::Unavailable("no matching route".into());
        };
        let rule = &self.routes[index];
        if rule.total == 0 {
            return Pick::Unavailable(rule.fail.clone());
        }
        let point = (self.random)(rule.total as usize) as u64;
        let entry = rule
            .clusters
            .iter()
            .position(|(_, upto)| point < *upto)
            .expect("point below the total");
        match &self.targets[index][entry] {
            Some(child) => child.pick(call),
            None => Pick::Unavailable(
                format!("cluster {} is not available", rule.clusters[entry].0).into(),
            ),
        }
    }
}
