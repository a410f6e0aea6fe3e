//! `priority_experimental` (gRFC A56): children in order of preference; the
//! first that can serve takes the calls.
//!
//! Children are started in order, as needed. A child is used while it is
//! READY or IDLE, or CONNECTING within its failover timer (10 s from its
//! start); one in TRANSIENT_FAILURE, or still CONNECTING when its timer
//! fires, hands over to the next (started then). A more preferred child
//! that becomes READY again takes back over at once. When none can serve,
//! the last started one's picker answers.
//!
//! ```json
//! {"priority_experimental": {
//!     "children": {"p0": {"config": [{"round_robin": {}}]},
//!                  "p1": {"config": [{"round_robin": {}}]}},
//!     "priorities": ["p0", "p1"]}}
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::ConnectivityState;
use crate::policy::{Helper, Policy, PolicyBuilder};
use crate::{SubchannelId, SubchannelState};
use serde_json::Value;
use waypost_resolver::{ResolveError, ResolverState};

use super::children::{ChildConfig, Children, child_policy};

/// The policy's name, as gRPC's.
pub const NAME: &str = "priority_experimental";
/// How long a CONNECTING child keeps the calls before the next is tried.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Timer tokens: this minus the child's index (children's own tokens are
/// passed through).
const FAILOVER_TOKEN: u64 = u64::MAX - 0x5600;

/// The policy's config: the children by name, and their order.
#[derive(Debug, Default, serde::Deserialize)]
struct Config {
    children: BTreeMap<String, ChildJson>,
    priorities: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ChildJson {
    #[serde(default)]
    config: Option<Value>,
}

/// The priorities in order, each with its child policy.
fn parse(config: &Value) -> Result<Vec<(String, ChildConfig)>, String> {
    let config: Config = crate::service_config::policy_config(NAME, config)?;
    config
        .priorities
        .into_iter()
        .map(|name| {
            let child = config
                .children
                .get(&name)
                .ok_or(format!("{NAME}: priority {name} has no child"))?;
            let policy = child_policy(child.config.as_ref());
            Ok((name, policy))
        })
        .collect()
}

pub(crate) struct PriorityBuilder;

impl PolicyBuilder for PriorityBuilder {
    fn name(&self) -> &str {
        NAME
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(Priority::default())
    }
}

/// The policy. See the [module docs](self).
#[derive(Default)]
pub struct Priority {
    order: Vec<(String, ChildConfig)>,
    children: Children,
    /// Started children whose failover timer fired.
    timed_out: HashSet<String>,
    /// The last resolver state (children are started from it).
    state: ResolverState,
}

impl Priority {
    /// Starts children as needed and publishes the chosen one's picker.
    fn choose(&mut self, helper: &mut dyn Helper) {
        for index in 0..self.order.len() {
            let name = self.order[index].0.clone();
            if !self.children.children.contains_key(&name) {
                let wanted: BTreeMap<String, ChildConfig> = self.order[..=index]
                    .iter()
                    .filter(|(n, _)| *n == name || self.children.children.contains_key(n))
                    .cloned()
                    .collect();
                self.children
                    .update(&wanted, &self.state, "priority", helper);
                helper.set_timer(FAILOVER_TIMEOUT, FAILOVER_TOKEN - index as u64);
            }
            let child = &self.children.children[&name];
            let usable = match child.state {
                ConnectivityState::Ready | ConnectivityState::Idle => true,
                ConnectivityState::Connecting => !self.timed_out.contains(&name),
                ConnectivityState::TransientFailure | ConnectivityState::Shutdown => false,
            };
            if usable || index + 1 == self.order.len() {
                helper.update_picker(child.state, child.picker.clone());
                return;
            }
        }
        helper.update_picker(
            ConnectivityState::TransientFailure,
            std::sync::Arc::new(crate::picker::FailPicker(
                format!("{NAME}: no priorities").into(),
            )),
        );
    }
}

impl Policy for Priority {
    fn resolver_update(&mut self, state: &ResolverState, config: &Value, helper: &mut dyn Helper) {
        let Ok(order) = parse(config) else {
            return;
        };
        self.order = order;
        self.state = state.clone();
        // Update the children already started (others start when needed).
        let wanted: BTreeMap<String, ChildConfig> = self
            .order
            .iter()
            .filter(|(n, _)| self.children.children.contains_key(n))
            .cloned()
            .collect();
        self.timed_out.retain(|n| wanted.contains_key(n));
        self.children.update(&wanted, state, "priority", helper);
        self.choose(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.children.children.is_empty() {
            crate::policy::fail_resolution(error, helper);
            return;
        }
        self.children.resolver_error(error, helper);
        self.choose(helper);
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        if self.children.subchannel_update(id, state, helper) {
            self.choose(helper);
        }
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        let index = FAILOVER_TOKEN.wrapping_sub(token);
        if token <= FAILOVER_TOKEN && index < self.order.len() as u64 {
            let name = self.order[index as usize].0.clone();
            if self
                .children
                .children
                .get(&name)
                .is_some_and(|c| c.state == ConnectivityState::Connecting)
            {
                self.timed_out.insert(name);
                self.choose(helper);
            }
            return;
        }
        if self.children.timer(token, helper) {
            self.choose(helper);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::FakeHelper;
    use serde_json::json;
    use waypost_resolver::Endpoint;

    use super::*;
    use crate::ConnectivityState::*;

    fn setup() -> (Priority, FakeHelper) {
        let mut policy = Priority::default();
        let mut helper = FakeHelper::new("orders");
        let endpoint = |addr: &str, priority: &str| {
            Endpoint::new(addr.parse::<std::net::SocketAddr>().unwrap())
                .with_metadata(json!({"priority": priority}))
        };
        let state = ResolverState::from_endpoints([
            endpoint("10.0.0.1:80", "p0"),
            endpoint("10.0.0.2:80", "p1"),
        ]);
        let config = json!({
            "children": {"p0": {"config": [{"round_robin": {}}]},
                         "p1": {"config": [{"round_robin": {}}]}},
            "priorities": ["p0", "p1"]});
        policy.resolver_update(&state, &config, &mut helper);
        (policy, helper)
    }

    #[test]
    fn a_failing_priority_hands_over_and_takes_back_when_ready() {
        let (mut policy, mut helper) = setup();
        // Only p0 is started.
        let ids = helper.subchannel_ids();
        assert_eq!(ids.len(), 1);
        let p0 = ids[0];
        helper.set_state(&mut policy, p0, TransientFailure);
        let ids = helper.subchannel_ids();
        assert_eq!(ids.len(), 2, "p1 started when p0 failed");
        let p1 = ids[1];
        helper.set_state(&mut policy, p1, Ready);
        assert_eq!(helper.pick("/s/m", &[]), Some(p1));
        // p0 comes back: it takes over at once.
        helper.set_state(&mut policy, p0, Ready);
        assert_eq!(helper.pick("/s/m", &[]), Some(p0));
    }

    #[test]
    fn a_priority_still_connecting_when_its_timer_fires_hands_over() {
        let (mut policy, mut helper) = setup();
        let p0 = helper.subchannel_ids()[0];
        helper.set_state(&mut policy, p0, Connecting);
        assert_eq!(
            helper.subchannel_ids().len(),
            1,
            "p0 keeps the calls while connecting"
        );
        let (after, token) = *helper
            .timers()
            .iter()
            .find(|(_, t)| *t == FAILOVER_TOKEN)
            .expect("p0's failover timer");
        assert_eq!(after, FAILOVER_TIMEOUT);
        policy.timer(token, &mut helper);
        let ids = helper.subchannel_ids();
        assert_eq!(ids.len(), 2, "p1 started when p0's timer fired");
        helper.set_state(&mut policy, ids[1], Ready);
        assert_eq!(helper.pick("/s/m", &[]), Some(ids[1]));
    }
}
