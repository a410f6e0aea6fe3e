//! `xds_cluster_manager_experimental`: one child policy per cluster, and a
//! picker that routes each call — by path, headers and weights, as the
//! route table says (gRFC A28) — to its cluster's child.
//!
//! gRPC splits this between a config selector (routing, in the resolver)
//! and the cluster manager (children); waypost's pickers see each call's
//! path and headers, so the manager's picker does both: the route table
//! comes in the config, in waypost's own JSON form
//! ([`route_table::routes_json`]), and
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

use crate::service_config::{CallConfig, CallConfigSelector, CallDecision};
use parking_lot::Mutex;

use crate::picker::{Pick, PickInfo, Picker};
use crate::policy::{Helper, Policy, PolicyBuilder, RandomIndex, thread_random};
use crate::{SubchannelId, SubchannelState};
use serde_json::Value;
use waypost_resolver::{ResolveError, ResolverState};

use super::children::{ChildConfig, Children, child_policy};

use super::route_table::{self, RouteJson, RouteRule};

/// The policy's name, as gRPC's.
pub const NAME: &str = "xds_cluster_manager_experimental";

/// This policy's config: the route table ([`route_table`]'s form) and
/// a child policy per cluster.
#[derive(Debug, Default, serde::Deserialize)]
struct Config {
    routes: Vec<RouteJson>,
    children: BTreeMap<String, ChildJson>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChildJson {
    #[serde(default)]
    child_policy: Option<Value>,
}

fn parse_config(config: &Value) -> Result<Config, String> {
    crate::service_config::policy_config(NAME, config)
}

/// The route tables parsed last (a few, for processes with several xDS
/// channels), shared by the per-call selector and the policy built from
/// the same config, so a call's route choice made by one is the other's
/// picker's too. (A table not found here is parsed again: the picker then
/// matches calls itself.)
static RECENT: LazyLock<Mutex<VecDeque<ParsedRoutes>>> = LazyLock::new(Mutex::default);

/// How many route tables [`RECENT`] keeps.
const RECENT_TABLES: usize = 16;

/// A route table and its rules.
type ParsedRoutes = (Vec<RouteJson>, Arc<[RouteRule]>);

fn routes_shared(table: &[RouteJson]) -> Result<Arc<[RouteRule]>, String> {
    let mut recent = RECENT.lock();
    if let Some((_, routes)) = recent.iter().find(|(seen, _)| seen.as_slice() == table) {
        return Ok(routes.clone());
    }
    let routes: Arc<[RouteRule]> = route_table::parse(table)?.into();
    if recent.len() == RECENT_TABLES {
        recent.pop_front();
    }
    recent.push_back((table.to_vec(), routes.clone()));
    Ok(routes)
}

pub(crate) struct ClusterManagerBuilder;

impl PolicyBuilder for ClusterManagerBuilder {
    fn name(&self) -> &str {
        NAME
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        route_table::parse(&parse_config(config)?.routes).map(drop)
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(ClusterManager::new(thread_random()))
    }

    fn call_config(&self, config: &Value) -> Option<Arc<dyn CallConfigSelector>> {
        let routes = routes_shared(&parse_config(config).ok()?.routes).ok()?;
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
        let config = parse_config(config).unwrap_or_default();
        if let Ok(routes) = routes_shared(&config.routes) {
            self.routes = routes;
        }
        let wanted: BTreeMap<String, ChildConfig> = config
            .children
            .into_iter()
            .map(|(name, child)| (name, child_policy(child.child_policy.as_ref())))
            .collect();
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
