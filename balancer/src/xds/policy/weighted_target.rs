//! `weighted_target_experimental`: one child per locality, and a picker
//! that sends each call to a READY child drawn by the localities' weights
//! (gRFC A27's locality-weighted balancing).
//!
//! Each child gets the endpoints whose metadata `locality` is its name.
//! Children not READY take no calls; when none is READY the aggregate
//! state decides (CONNECTING queues, TRANSIENT_FAILURE fails).
//!
//! ```json
//! {"weighted_target_experimental": {"targets": {
//!     "{region=, zone=a, sub_zone=}": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
//!     "{region=, zone=b, sub_zone=}": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ConnectivityState;
use crate::picker::{Pick, PickInfo, Picker};
use crate::policy::{Helper, Policy, PolicyBuilder, RandomIndex, thread_random};
use crate::{SubchannelId, SubchannelState};
use serde_json::Value;
use waypost_resolver::{ResolveError, ResolverState};

use super::children::{ChildConfig, Children, child_policy};

/// The policy's name, as gRPC's.
pub const NAME: &str = "weighted_target_experimental";

/// A target's weight, and its child policy's name and config.
type Target = (u32, ChildConfig);

/// The policy's config: each target's weight and child policy.
#[derive(Debug, Default, serde::Deserialize)]
struct Config {
    targets: BTreeMap<String, TargetJson>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetJson {
    weight: u32,
    #[serde(default)]
    child_policy: Option<Value>,
}

/// The targets by name.
fn parse(config: &Value) -> Result<BTreeMap<String, Target>, String> {
    let config: Config = crate::service_config::policy_config(NAME, config)?;
    config
        .targets
        .into_iter()
        .map(|(name, target)| {
            if target.weight == 0 {
                return Err(format!("{NAME}: target {name} needs a weight ≥ 1"));
            }
            let child = child_policy(target.child_policy.as_ref());
            Ok((name, (target.weight, child)))
        })
        .collect()
}

pub(crate) struct WeightedTargetBuilder;

impl PolicyBuilder for WeightedTargetBuilder {
    fn name(&self) -> &str {
        NAME
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(WeightedTarget::new(thread_random()))
    }
}

/// The policy. See the [module docs](self).
pub struct WeightedTarget {
    weights: BTreeMap<String, u32>,
    children: Children,
    random: RandomIndex,
}

impl WeightedTarget {
    /// A policy drawing its choices from `random`.
    pub fn new(random: RandomIndex) -> WeightedTarget {
        WeightedTarget {
            weights: BTreeMap::new(),
            children: Children::default(),
            random,
        }
    }

    fn publish(&self, helper: &mut dyn Helper) {
        let state = self.children.aggregate();
        let mut ready = Vec::new();
        let mut total = 0u64;
        for (name, child) in &self.children.children {
            if child.state == ConnectivityState::Ready {
                total += u64::from(self.weights.get(name).copied().unwrap_or(1));
                ready.push((total, child.picker.clone()));
            }
        }
        let picker: Arc<dyn Picker> = if ready.is_empty() {
            // No READY locality: the first child's picker speaks (queue or
            // fail, as its state says).
            match self.children.children.values().next() {
                Some(child) => child.picker.clone(),
                None => Arc::new(crate::picker::FailPicker(
                    format!("{NAME}: no targets").into(),
                )),
            }
        } else {
            Arc::new(WeightedPicker {
                ready,
                total,
                random: self.random.clone(),
            })
        };
        helper.update_picker(state, picker);
    }
}

impl Policy for WeightedTarget {
    fn resolver_update(&mut self, state: &ResolverState, config: &Value, helper: &mut dyn Helper) {
        let Ok(targets) = parse(config) else {
            return;
        };
        self.weights = targets.iter().map(|(n, (w, _))| (n.clone(), *w)).collect();
        let wanted = targets.into_iter().map(|(n, (_, p))| (n, p)).collect();
        self.children.update(&wanted, state, "locality", helper);
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

/// Draws a READY target by weight and asks its picker.
struct WeightedPicker {
    /// (cumulative weight, picker), READY targets only.
    ready: Vec<(u64, Arc<dyn Picker>)>,
    total: u64,
    random: RandomIndex,
}

impl Picker for WeightedPicker {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        let point = (self.random)(self.total as usize) as u64;
        let (_, picker) = self
            .ready
            .iter()
            .find(|(upto, _)| point < *upto)
            .expect("point below the total");
        picker.pick(call)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::FakeHelper;
    use serde_json::json;
    use waypost_resolver::Endpoint;

    use super::*;

    #[test]
    fn ready_localities_share_calls_by_weight() {
        let mut policy = WeightedTarget::new(crate::policy::seeded_random(9));
        let mut helper = FakeHelper::new("orders");
        let endpoint = |addr: &str, locality: &str| {
            Endpoint::new(addr.parse::<std::net::SocketAddr>().unwrap())
                .with_metadata(json!({"locality": locality}))
        };
        let state = ResolverState::from_endpoints([
            endpoint("10.0.0.1:80", "a"),
            endpoint("10.0.0.2:80", "b"),
            endpoint("10.0.0.3:80", "c"),
        ]);
        let config = json!({"targets": {
            "a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
            "b": {"weight": 1, "childPolicy": [{"round_robin": {}}]},
            "c": {"weight": 4, "childPolicy": [{"round_robin": {}}]}}});
        policy.resolver_update(&state, &config, &mut helper);
        let ids = helper.subchannel_ids();
        assert_eq!(ids.len(), 3);
        // c never becomes READY: its weight does not count.
        helper.set_state(&mut policy, ids[0], ConnectivityState::Ready);
        helper.set_state(&mut policy, ids[1], ConnectivityState::Ready);
        let mut counts = [0usize; 2];
        for _ in 0..8000 {
            let id = helper.pick("/s/m", &[]).unwrap();
            counts[ids.iter().position(|i| *i == id).unwrap()] += 1;
        }
        assert!((5700..=6300).contains(&counts[0]), "{counts:?}");
        assert_eq!(helper.state(), Some(ConnectivityState::Ready));
        assert!(parse(&json!({"targets": {"a": {"weight": 0}}})).is_err());
    }
}
