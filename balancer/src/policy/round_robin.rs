//! `round_robin`: one subchannel per endpoint, every one kept connected;
//! calls rotate over the READY ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use waypost_resolver::{Address, ResolveError, ResolverState};

use super::{Helper, Policy, PolicyBuilder, RandomIndex};
use crate::connectivity::{ConnectivityState, aggregate};
use crate::picker::{FailPicker, Picker, QueuePicker, RoundRobinPicker};
use crate::subchannel::{Connection, SubchannelHandle, SubchannelId, SubchannelState};

pub(super) struct RoundRobinBuilder;

impl PolicyBuilder for RoundRobinBuilder {
    fn name(&self) -> &str {
        "round_robin"
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(RoundRobin::default())
    }
}

struct Entry {
    handle: SubchannelHandle,
    state: SubchannelState,
}

/// How a policy that keeps every endpoint connected picks among the READY
/// ones: round_robin rotates, least_request compares outstanding calls.
pub(crate) trait ReadyPicker: Send + 'static {
    /// The policy's config object from the service config (validated).
    fn configure(&mut self, config: &serde_json::Value);
    /// A picker over `ready` (not empty), in resolver order.
    fn picker(&mut self, ready: Vec<Connection>, helper: &mut dyn Helper) -> Arc<dyn Picker>;
    /// A timer this picker set through the helper fired; true asks for a
    /// new picker (e.g. weights were recomputed).
    fn timer(&mut self, token: u64, helper: &mut dyn Helper) -> bool {
        let _ = (token, helper);
        false
    }
}

/// round_robin's own: rotate, from a random start.
struct Rotate(RandomIndex);

impl ReadyPicker for Rotate {
    fn configure(&mut self, _config: &serde_json::Value) {}

    fn picker(&mut self, ready: Vec<Connection>, _helper: &mut dyn Helper) -> Arc<dyn Picker> {
        let start = (self.0)(ready.len());
        Arc::new(RoundRobinPicker::starting_at(ready, start))
    }
}

/// The `round_robin` policy.
pub struct RoundRobin {
    /// Subchannels by their address list, in resolver order.
    subchannels: Vec<(Vec<Address>, SubchannelId)>,
    entries: BTreeMap<SubchannelId, Entry>,
    /// Published state; TRANSIENT_FAILURE is sticky until something is READY.
    published: Option<ConnectivityState>,
    ready_picker: Box<dyn ReadyPicker>,
    name: &'static str,
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin::seeded(super::thread_random())
    }
}

impl RoundRobin {
    /// round_robin drawing each picker's starting place from `random`.
    pub fn seeded(random: RandomIndex) -> RoundRobin {
        RoundRobin::with(Box::new(Rotate(random)), "round_robin")
    }

    /// Every endpoint kept connected, picks made by `ready_picker`; `name`
    /// in messages.
    pub(crate) fn with(ready_picker: Box<dyn ReadyPicker>, name: &'static str) -> RoundRobin {
        RoundRobin {
            subchannels: Vec::new(),
            entries: BTreeMap::new(),
            published: None,
            ready_picker,
            name,
        }
    }

    fn publish(&mut self, helper: &mut dyn Helper) {
        let ready: Vec<_> = self
            .subchannels
            .iter()
            .filter_map(|(_, id)| self.entries.get(id))
            .filter_map(|e| e.state.connection.clone())
            .collect();
        if !ready.is_empty() {
            self.published = Some(ConnectivityState::Ready);
            let picker = self.ready_picker.picker(ready, helper);
            helper.update_picker(ConnectivityState::Ready, picker);
            return;
        }
        let state = aggregate(self.entries.values().map(|e| e.state.connectivity));
        let sticky_failure = self.published == Some(ConnectivityState::TransientFailure);
        if state == ConnectivityState::TransientFailure
            || (sticky_failure && !self.entries.is_empty())
        {
            let reason = self
                .entries
                .values()
                .find_map(|e| e.state.last_error.clone())
                .unwrap_or_else(|| format!("{}: no addresses", self.name).into());
            self.published = Some(ConnectivityState::TransientFailure);
            helper.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(reason)),
            );
        } else {
            self.published = Some(state);
            helper.update_picker(state, Arc::new(QueuePicker));
        }
    }
}

impl Policy for RoundRobin {
    fn resolver_update(
        &mut self,
        state: &ResolverState,
        config: &serde_json::Value,
        helper: &mut dyn Helper,
    ) {
        self.ready_picker.configure(config);
        let mut old: BTreeMap<Vec<Address>, SubchannelId> = self.subchannels.drain(..).collect();
        for endpoint in &state.endpoints {
            if endpoint.addresses.is_empty() {
                continue;
            }
            let id = match old.remove(&endpoint.addresses) {
                Some(id) => id,
                None => {
                    let handle = helper.new_subchannel(&endpoint.addresses);
                    handle.connect();
                    let id = handle.id();
                    self.entries.insert(
                        id,
                        Entry {
                            state: handle.state(),
                            handle,
                        },
                    );
                    id
                }
            };
            if !self.subchannels.iter().any(|(_, existing)| *existing == id) {
                self.subchannels.push((endpoint.addresses.clone(), id));
            }
        }
        for (_, id) in old {
            self.entries.remove(&id);
            helper.remove_subchannel(id);
        }
        if self.subchannels.is_empty() {
            self.published = Some(ConnectivityState::TransientFailure);
            helper.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(
                    format!("{}: the resolver produced no addresses", self.name).into(),
                )),
            );
            return;
        }
        self.publish(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.subchannels.is_empty() {
            self.published = Some(ConnectivityState::TransientFailure);
            super::fail_resolution(error, helper);
        }
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.state = state.clone();
        if state.connectivity == ConnectivityState::Idle {
            // Keep every endpoint connected.
            entry.handle.connect();
        }
        self.publish(helper);
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        if self.ready_picker.timer(token, helper) {
            self.publish(helper);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use waypost_resolver::{Endpoint, ResolverState};

    use super::*;
    use crate::connectivity::ConnectivityState::*;
    use crate::testing::FakeHelper;

    const PATH: &str = "/movies.v1.MoviesService/GetMovie";

    fn endpoints(range: std::ops::RangeInclusive<usize>) -> ResolverState {
        ResolverState::from_endpoints(
            range.map(|i| Endpoint::new(Address::Tcp(format!("10.0.0.{i}:443").parse().unwrap()))),
        )
    }

    #[test]
    fn connects_every_endpoint_and_rotates_over_the_ready_ones() {
        let mut policy = RoundRobin::default();
        let mut helper = FakeHelper::new("movies.test");
        policy.resolver_update(&endpoints(1..=3), &json!({}), &mut helper);
        let ids = helper.subchannel_ids();
        assert!(ids.iter().all(|id| helper.take_connect_request(*id)));
        assert_eq!(helper.state(), Some(Idle));
        helper.set_state(&mut policy, ids[0], Ready);
        helper.set_state(&mut policy, ids[2], Ready);
        let mut served = BTreeMap::new();
        for _ in 0..40 {
            *served.entry(helper.pick(PATH, &[]).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(served.len(), 2);
        assert!(served.values().all(|n| *n == 20), "{served:?}");
        // A connection that ends goes IDLE and is reconnected at once.
        helper.set_state(&mut policy, ids[0], Idle);
        assert!(helper.take_connect_request(ids[0]));
    }

    #[test]
    fn failure_is_sticky_until_something_is_ready_and_removed_endpoints_go() {
        let mut policy = RoundRobin::default();
        let mut helper = FakeHelper::new("movies.test");
        policy.resolver_update(&endpoints(1..=2), &json!({}), &mut helper);
        let ids = helper.subchannel_ids();
        helper.set_state(&mut policy, ids[0], TransientFailure);
        helper.set_state(&mut policy, ids[1], TransientFailure);
        assert_eq!(helper.state(), Some(TransientFailure));
        // Reconnecting does not hide the failure…
        helper.set_state(&mut policy, ids[0], Connecting);
        assert_eq!(helper.state(), Some(TransientFailure));
        // …READY does.
        helper.set_state(&mut policy, ids[0], Ready);
        assert_eq!(helper.state(), Some(Ready));
        policy.resolver_update(&endpoints(1..=1), &json!({}), &mut helper);
        assert!(helper.removed(ids[1]));
        assert!(!helper.removed(ids[0]));
    }
}
