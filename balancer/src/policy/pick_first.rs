//! `pick_first`: connect to the addresses in order and send every call to
//! the first that becomes READY.
//!
//! The next address is tried when one fails, or after 250 ms if it is still
//! connecting ("happy eyeballs"). Once one is READY the others are dropped.
//! An update that still contains the connected address keeps it. When the
//! connection is lost the policy re-resolves and starts over. With
//! `{"shuffleAddressList": true}` the list is shuffled first.

use std::sync::Arc;
use std::time::Duration;

use waypost_resolver::{Address, ResolveError, ResolverState};

use super::{Helper, Policy, PolicyBuilder, RandomIndex};
use crate::connectivity::ConnectivityState;
use crate::picker::{FailPicker, QueuePicker, SinglePicker};
use crate::subchannel::{SubchannelHandle, SubchannelId, SubchannelState};

/// How long to wait on a connecting address before also trying the next.
pub const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

pub(super) struct PickFirstBuilder;

impl PolicyBuilder for PickFirstBuilder {
    fn name(&self) -> &str {
        "pick_first"
    }

    fn validate(&self, config: &serde_json::Value) -> Result<(), String> {
        Config::parse(config).map(drop)
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(PickFirst::default())
    }
}

/// `pick_first`'s config (gRFC A62).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    shuffle_address_list: bool,
}

impl Config {
    fn parse(config: &serde_json::Value) -> Result<Config, String> {
        crate::service_config::policy_config("pick_first", config)
    }
}

struct Attempt {
    handle: SubchannelHandle,
    state: SubchannelState,
    started: bool,
}

/// The `pick_first` policy.
pub struct PickFirst {
    /// Shuffles the address list when asked to.
    random: RandomIndex,
    addresses: Vec<Address>,
    /// One subchannel per address, in order, during a connection pass.
    attempts: Vec<Attempt>,
    /// The READY subchannel, once chosen.
    selected: Option<SubchannelHandle>,
    /// Timer tokens are pass numbers, so stale timers are ignored.
    pass: u64,
}

impl Default for PickFirst {
    fn default() -> Self {
        PickFirst::seeded(super::thread_random())
    }
}

impl PickFirst {
    /// pick_first shuffling (when configured to) with `random`.
    pub fn seeded(random: RandomIndex) -> PickFirst {
        PickFirst {
            random,
            addresses: Vec::new(),
            attempts: Vec::new(),
            selected: None,
            pass: 0,
        }
    }

    /// Starts connecting through the addresses in order. Subchannels for
    /// addresses still wanted are kept, so their connection backoff carries
    /// over (a backend that keeps dropping connections is redialled at the
    /// backoff's pace, not in a loop).
    fn start_pass(&mut self, helper: &mut dyn Helper) {
        let mut existing: Vec<SubchannelHandle> =
            self.attempts.drain(..).map(|a| a.handle).collect();
        existing.extend(self.selected.take());
        let mut reusable = std::collections::HashMap::new();
        for handle in existing {
            if self.addresses.contains(&handle.addresses()[0])
                && !reusable.contains_key(&handle.addresses()[0])
            {
                reusable.insert(handle.addresses()[0].clone(), handle);
            } else {
                helper.remove_subchannel(handle.id());
            }
        }
        self.pass += 1;
        if self.addresses.is_empty() {
            helper.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(
                    "pick_first: the resolver produced no addresses".into(),
                )),
            );
            return;
        }
        for address in &self.addresses {
            let handle = match reusable.remove(address) {
                Some(handle) => handle,
                None => helper.new_subchannel(std::slice::from_ref(address)),
            };
            self.attempts.push(Attempt {
                state: handle.state(),
                handle,
                started: false,
            });
        }
        helper.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker));
        self.start_next(helper);
    }

    /// Starts the first attempt not yet started, and arms happy eyeballs.
    fn start_next(&mut self, helper: &mut dyn Helper) -> bool {
        let Some(attempt) = self.attempts.iter_mut().find(|a| !a.started) else {
            return false;
        };
        attempt.started = true;
        attempt.handle.connect();
        helper.set_timer(HAPPY_EYEBALLS_DELAY, self.pass);
        true
    }
}

impl Policy for PickFirst {
    fn resolver_update(
        &mut self,
        state: &ResolverState,
        config: &serde_json::Value,
        helper: &mut dyn Helper,
    ) {
        let mut addresses: Vec<Address> = state.addresses().cloned().collect();
        let mut seen = std::collections::HashSet::new();
        addresses.retain(|a| seen.insert(a.clone()));
        if Config::parse(config).is_ok_and(|c| c.shuffle_address_list) {
            // Fisher–Yates.
            for i in (1..addresses.len()).rev() {
                addresses.swap(i, (self.random)(i + 1));
            }
        }
        self.addresses = addresses;
        if let Some(selected) = &self.selected
            && self.addresses.contains(&selected.addresses()[0])
        {
            return; // Sticky: the connected address is still wanted.
        }
        self.start_pass(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.selected.is_none() && self.attempts.is_empty() {
            super::fail_resolution(error, helper);
        }
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        if let Some(selected) = &self.selected {
            if selected.id() == id && state.connectivity != ConnectivityState::Ready {
                if let Some(metrics) = helper.metrics() {
                    metrics.pick_first_disconnection();
                }
                // The connection was lost: re-resolve and start over.
                helper.resolve_now();
                self.start_pass(helper);
            }
            return;
        }
        let Some(index) = self.attempts.iter().position(|a| a.handle.id() == id) else {
            return;
        };
        self.attempts[index].state = state.clone();
        match state.connectivity {
            ConnectivityState::Ready => {
                if let Some(metrics) = helper.metrics() {
                    metrics.pick_first_attempt(true);
                }
                let chosen = self.attempts.remove(index);
                for other in self.attempts.drain(..) {
                    helper.remove_subchannel(other.handle.id());
                }
                let connection = state
                    .connection
                    .clone()
                    .expect("READY carries a connection");
                self.selected = Some(chosen.handle);
                helper.update_picker(ConnectivityState::Ready, Arc::new(SinglePicker(connection)));
            }
            ConnectivityState::TransientFailure => {
                if let Some(metrics) = helper.metrics() {
                    metrics.pick_first_attempt(false);
                }
                if !self.start_next(helper)
                    && self
                        .attempts
                        .iter()
                        .all(|a| a.state.connectivity == ConnectivityState::TransientFailure)
                {
                    let reason = state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "pick_first: all addresses failed".into());
                    helper.resolve_now();
                    helper.update_picker(
                        ConnectivityState::TransientFailure,
                        Arc::new(FailPicker(reason)),
                    );
                }
            }
            ConnectivityState::Idle => {
                // Back from backoff after a failure: try it again.
                if self.attempts[index].started {
                    self.attempts[index].handle.connect();
                }
            }
            ConnectivityState::Connecting | ConnectivityState::Shutdown => {}
        }
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        if token == self.pass && self.selected.is_none() {
            self.start_next(helper);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use waypost_resolver::{Endpoint, ResolverState};

    use super::*;
    use crate::connectivity::ConnectivityState::*;
    use crate::testing::FakeHelper;

    const PATH: &str = "/movies.v1.MoviesService/GetMovie";

    fn address(i: usize) -> Address {
        Address::Tcp(format!("10.0.0.{i}:443").parse().unwrap())
    }

    fn three() -> ResolverState {
        ResolverState::from_endpoints((1..=3).map(|i| Endpoint::new(address(i))))
    }

    #[test]
    fn tries_in_order_moves_on_after_the_happy_eyeballs_delay_and_keeps_the_first_ready() {
        let mut policy = PickFirst::default();
        let mut helper = FakeHelper::new("movies.test");
        policy.resolver_update(&three(), &json!({}), &mut helper);
        let first = helper.subchannel_for(&address(1)).unwrap();
        assert!(helper.take_connect_request(first));
        helper.set_state(&mut policy, first, Connecting);
        assert_eq!(helper.state(), Some(Connecting));
        // Still connecting after 250 ms: the second is tried too.
        let (after, token) = *helper.timers().last().unwrap();
        assert_eq!(after, HAPPY_EYEBALLS_DELAY);
        policy.timer(token, &mut helper);
        let second = helper.subchannel_for(&address(2)).unwrap();
        assert!(helper.take_connect_request(second));
        // The second wins: the others are dropped, every call goes there.
        helper.set_state(&mut policy, second, Ready);
        assert_eq!(helper.state(), Some(Ready));
        assert!(helper.removed(first));
        for _ in 0..5 {
            assert_eq!(helper.pick(PATH, &[]), Some(second));
        }
    }

    #[test]
    fn losing_the_connection_re_resolves_and_all_failing_fails_calls() {
        let mut policy = PickFirst::default();
        let mut helper = FakeHelper::new("movies.test");
        policy.resolver_update(&three(), &json!({}), &mut helper);
        let first = helper.subchannel_for(&address(1)).unwrap();
        helper.set_state(&mut policy, first, Ready);
        helper.set_state(&mut policy, first, Idle);
        assert!(helper.resolve_now_calls() >= 1);
        // A new pass where every address fails.
        for i in 1..=3 {
            if let Some(id) = helper.subchannel_for(&address(i)) {
                helper.set_state(&mut policy, id, TransientFailure);
            }
        }
        for i in 1..=3 {
            if let Some(id) = helper.subchannel_for(&address(i)) {
                helper.set_state(&mut policy, id, TransientFailure);
            }
        }
        assert_eq!(helper.state(), Some(TransientFailure));
        assert!(matches!(
            helper.pick_with(PATH, &[]),
            crate::picker::Pick::Unavailable(_)
        ));
    }

    /// The order in which a policy seeded with `seed` creates subchannels.
    fn shuffled_order(seed: u64) -> Vec<Address> {
        let mut policy = PickFirst::seeded(crate::policy::seeded_random(seed));
        let mut helper = FakeHelper::new("movies.test");
        let state = ResolverState::from_endpoints((1..=8).map(|i| Endpoint::new(address(i))));
        policy.resolver_update(&state, &json!({"shuffleAddressList": true}), &mut helper);
        let ids = helper.subchannel_ids();
        (1..=8)
            .map(address)
            .map(|a| {
                (
                    ids.iter()
                        .position(|id| Some(*id) == helper.subchannel_for(&a)),
                    a,
                )
            })
            .fold(vec![None; 8], |mut order, (position, a)| {
                order[position.unwrap()] = Some(a);
                order
            })
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }

    #[test]
    fn shuffle_address_list_uses_the_injected_randomness() {
        let in_order: Vec<Address> = (1..=8).map(address).collect();
        let first = shuffled_order(7);
        assert_eq!(first, shuffled_order(7), "the same seed, the same order");
        assert_ne!(first, in_order, "shuffled");
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, in_order, "every address once");
    }
}
