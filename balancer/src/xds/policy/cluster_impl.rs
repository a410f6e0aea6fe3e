//! `xds_cluster_impl_experimental`: what EDS and CDS add on top of a
//! cluster's endpoint-picking policy (gRFC A27, A32) — drops and circuit
//! breaking — wrapped around any child policy.
//!
//! - Drops: for each category in order, a call is dropped with chance
//!   `requestsPerMillion` / 10⁶ and fails UNAVAILABLE
//!   `EDS-configured drop: <category>`, before any pick.
//! - Circuit breaking: at most `maxConcurrentRequests` calls (default
//!   1024) in flight through the cluster; a call over it fails UNAVAILABLE
//!   `circuit breaker drop` — counted from the call's start until it is
//!   over, without locks.
//!
//! ```json
//! {"xds_cluster_impl_experimental": {
//!     "cluster": "orders", "maxConcurrentRequests": 1024,
//!     "dropCategories": [{"category": "lb", "requestsPerMillion": 250000}],
//!     "childPolicy": [{"round_robin": {}}]}}
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::ConnectivityState;
use crate::picker::{CallOutcome, CallTracker, Pick, PickInfo, Picker};
use crate::policy::{
    Helper, Policy, PolicyBuilder, PolicyEvents, PolicyRegistry, RandomIndex, thread_random,
};
use crate::{SubchannelHandle, SubchannelId, SubchannelState};
use serde_json::Value;
use waypost_resolver::{Address, ResolveError, ResolverState};

/// The policy's name, as gRPC's.
pub const NAME: &str = "xds_cluster_impl_experimental";
/// `maxConcurrentRequests` when not given (A32).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 1024;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterImplConfig {
    /// The cluster (for messages).
    pub cluster: String,
    /// At most this many calls in flight.
    pub max_concurrent_requests: u32,
    /// (category, dropped calls per million), in order.
    pub drops: Vec<(String, u32)>,
    /// The child policy's name and config.
    pub child: (String, Value),
}

/// The JSON shapes (types checked by serde; ranges and the child below).
mod raw {
    use serde_json::{Map, Value};

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct Config {
        pub(super) cluster: Option<String>,
        pub(super) max_concurrent_requests: Option<u32>,
        pub(super) drop_categories: Option<Vec<Drop>>,
        pub(super) child_policy: Option<Vec<Map<String, Value>>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Drop {
        pub(super) category: String,
        pub(super) requests_per_million: u32,
    }
}

/// Parses the config; `known` says whether a policy name is registered.
pub fn parse(config: &Value, known: &dyn Fn(&str) -> bool) -> Result<ClusterImplConfig, String> {
    if !config.is_object() {
        return Err(format!("{NAME} config must be an object, got {config}"));
    }
    let raw: raw::Config = crate::service_config::policy_config(NAME, config)?;
    let mut drops = Vec::new();
    for drop in raw.drop_categories.unwrap_or_default() {
        if drop.requests_per_million > 1_000_000 {
            return Err(format!("{NAME} requestsPerMillion must be 0 to 1000000"));
        }
        drops.push((drop.category, drop.requests_per_million));
    }
    let child = raw
        .child_policy
        .iter()
        .flatten()
        .find_map(|entry| {
            let (name, config) = entry.iter().next()?;
            known(name).then(|| (name.clone(), config.clone()))
        })
        .ok_or_else(|| format!("{NAME} has no usable childPolicy"))?;
    Ok(ClusterImplConfig {
        cluster: raw.cluster.unwrap_or_default(),
        max_concurrent_requests: raw
            .max_concurrent_requests
            .unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS),
        drops,
        child,
    })
}

pub(crate) struct ClusterImplBuilder;

impl PolicyBuilder for ClusterImplBuilder {
    fn name(&self) -> &str {
        NAME
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        parse(config, &|name| PolicyRegistry::global().get(name).is_some()).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(ClusterImpl::new(thread_random()))
    }
}

/// Counts a cluster's calls in flight; the tracker of calls whose child
/// picker has none of its own (no allocation per call then).
#[derive(Debug, Default)]
struct InFlight(AtomicU32);

impl CallTracker for InFlight {
    fn started(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, _outcome: CallOutcome) {}

    fn ended(&self, _succeeded: Option<bool>) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tracker of a call through the cluster: counts it in flight, and
/// passes everything on to the child picker's own tracker.
struct Counted {
    in_flight: Arc<InFlight>,
    inner: Option<Arc<dyn CallTracker>>,
}

impl CallTracker for Counted {
    fn started(&self) {
        self.in_flight.0.fetch_add(1, Ordering::Relaxed);
        if let Some(inner) = &self.inner {
            inner.started();
        }
    }

    fn finished(&self, outcome: CallOutcome) {
        if let Some(inner) = &self.inner {
            inner.finished(outcome);
        }
    }

    fn ended(&self, succeeded: Option<bool>) {
        self.in_flight.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(inner) = &self.inner {
            inner.ended(succeeded);
        }
    }

    fn trailers(&self, trailers: &http::HeaderMap) {
        if let Some(inner) = &self.inner {
            inner.trailers(trailers);
        }
    }
}

/// The child's picker behind drops and the circuit breaker.
struct Guarded {
    child: Arc<dyn Picker>,
    drops: Arc<[(Arc<str>, u32)]>,
    max: u32,
    in_flight: Arc<InFlight>,
    random: RandomIndex,
}

impl Picker for Guarded {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        for (message, per_million) in self.drops.iter() {
            if *per_million > 0 && ((self.random)(1_000_000) as u32) < *per_million {
                return Pick::Drop(message.clone());
            }
        }
        match self.child.pick(call) {
            Pick::Ready(mut routed) => {
                if self.in_flight.0.load(Ordering::Relaxed) >= self.max {
                    return Pick::Drop("circuit breaker drop".into());
                }
                routed.tracker = Some(match routed.tracker.take() {
                    None => self.in_flight.clone(),
                    inner @ Some(_) => Arc::new(Counted {
                        in_flight: self.in_flight.clone(),
                        inner,
                    }),
                });
                Pick::Ready(routed)
            }
            other => other,
        }
    }
}

/// The helper the child gets: its pickers are guarded.
struct ChildHelper<'a> {
    parent: &'a mut dyn Helper,
    config: &'a ClusterImplConfig,
    in_flight: &'a Arc<InFlight>,
    random: &'a RandomIndex,
}

impl Helper for ChildHelper<'_> {
    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle {
        self.parent.new_subchannel(addresses)
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.parent.remove_subchannel(id);
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let drops = self
            .config
            .drops
            .iter()
            .map(|(category, per_million)| {
                (
                    Arc::from(format!("EDS-configured drop: {category}")),
                    *per_million,
                )
            })
            .collect();
        self.parent.update_picker(
            state,
            Arc::new(Guarded {
                child: picker,
                drops,
                max: self.config.max_concurrent_requests,
                in_flight: self.in_flight.clone(),
                random: self.random.clone(),
            }),
        );
    }

    fn resolve_now(&mut self) {
        self.parent.resolve_now();
    }

    fn set_timer(&mut self, after: Duration, token: u64) {
        self.parent.set_timer(after, token);
    }

    fn events(&mut self) -> PolicyEvents {
        self.parent.events()
    }

    fn authority(&self) -> String {
        self.parent.authority()
    }

    fn tls(&self) -> Option<crate::ClientTlsConfig> {
        self.parent.tls()
    }
    fn metrics(&self) -> Option<crate::metrics::PolicyMetrics> {
        self.parent.metrics()
    }
}

/// The policy. See the [module docs](self).
pub struct ClusterImpl {
    config: Option<ClusterImplConfig>,
    child: Option<(String, Box<dyn Policy>)>,
    in_flight: Arc<InFlight>,
    random: RandomIndex,
}

impl ClusterImpl {
    /// A policy drawing its drop chances from `random`.
    pub fn new(random: RandomIndex) -> ClusterImpl {
        ClusterImpl {
            config: None,
            child: None,
            in_flight: Arc::default(),
            random,
        }
    }

    fn with_child(
        &mut self,
        helper: &mut dyn Helper,
        f: impl FnOnce(&mut dyn Policy, &mut dyn Helper),
    ) {
        if let (Some((_, child)), Some(config)) = (&mut self.child, &self.config) {
            let mut child_helper = ChildHelper {
                parent: helper,
                config,
                in_flight: &self.in_flight,
                random: &self.random,
            };
            f(child.as_mut(), &mut child_helper);
        }
    }
}

impl Policy for ClusterImpl {
    fn resolver_update(&mut self, state: &ResolverState, config: &Value, helper: &mut dyn Helper) {
        if let Ok(parsed) = parse(config, &|name| PolicyRegistry::global().get(name).is_some()) {
            let name = &parsed.child.0;
            if self
                .child
                .as_ref()
                .is_none_or(|(current, _)| current != name)
            {
                self.child = PolicyRegistry::global()
                    .get(name)
                    .map(|builder| (name.clone(), builder.build()));
            }
            self.config = Some(parsed);
        }
        let child_config = self
            .config
            .as_ref()
            .map_or(Value::Null, |c| c.child.1.clone());
        self.with_child(helper, |child, h| {
            child.resolver_update(state, &child_config, h)
        });
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.child.is_none() {
            crate::policy::fail_resolution(error, helper);
        }
        self.with_child(helper, |child, h| child.resolver_error(error, h));
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        self.with_child(helper, |child, h| child.subchannel_update(id, state, h));
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        self.with_child(helper, |child, h| child.timer(token, h));
    }

    fn event(&mut self, event: Box<dyn std::any::Any + Send>, helper: &mut dyn Helper) {
        self.with_child(helper, |child, h| child.event(event, h));
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::FakeHelper;
    use serde_json::json;
    use waypost_resolver::Endpoint;

    use super::*;

    const PATH: &str = "/movies.v1.MoviesService/GetMovie";

    fn ready(config: Value) -> (ClusterImpl, FakeHelper) {
        let mut policy = ClusterImpl::new(crate::policy::seeded_random(5));
        let mut helper = FakeHelper::new("orders");
        let addresses: [std::net::SocketAddr; 2] = [
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        let state = ResolverState::from_endpoints(addresses.map(Endpoint::new));
        policy.resolver_update(&state, &config, &mut helper);
        for id in helper.subchannel_ids() {
            helper.set_state(&mut policy, id, ConnectivityState::Ready);
        }
        (policy, helper)
    }

    #[test]
    fn drops_a_quarter_and_names_the_category() {
        let (_policy, helper) = ready(json!({
            "cluster": "orders",
            "dropCategories": [{"category": "lb", "requestsPerMillion": 250000}],
            "childPolicy": [{"round_robin": {}}]
        }));
        let mut dropped = 0;
        for _ in 0..10_000 {
            match helper.pick_with(PATH, &[]) {
                Pick::Drop(message) => {
                    assert_eq!(&*message, "EDS-configured drop: lb");
                    dropped += 1;
                }
                Pick::Ready(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!((2_300..=2_700).contains(&dropped), "{dropped}");
    }

    #[test]
    fn the_circuit_breaker_counts_calls_until_they_end() {
        let (_policy, helper) = ready(json!({
            "cluster": "orders", "maxConcurrentRequests": 2,
            "childPolicy": [{"round_robin": {}}]
        }));
        let start = || match helper.pick_with(PATH, &[]) {
            Pick::Ready(routed) => routed.begin(),
            other => panic!("{other:?}"),
        };
        let first = start();
        let _second = start();
        assert!(
            matches!(helper.pick_with(PATH, &[]), Pick::Drop(m) if &*m == "circuit breaker drop")
        );
        drop(first);
        assert!(matches!(helper.pick_with(PATH, &[]), Pick::Ready(_)));
    }

    #[test]
    fn config_is_checked() {
        let known = |name: &str| name == "round_robin";
        assert!(parse(&json!({"childPolicy": [{"round_robin": {}}]}), &known).is_ok());
        for bad in [
            json!({"childPolicy": [{"nope": {}}]}),
            json!({"childPolicy": [{"round_robin": {}}], "dropCategories": [{"category": "x", "requestsPerMillion": 2000000}]}),
            json!({"childPolicy": [{"round_robin": {}}], "surprise": 1}),
        ] {
            assert!(parse(&bad, &known).is_err(), "{bad}");
        }
    }
}
