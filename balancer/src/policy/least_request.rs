//! `least_request_experimental` (also `least_request`), gRFC A48: every
//! endpoint kept connected as round_robin does; each call goes to the one
//! with the fewest outstanding calls among `choiceCount` READY endpoints
//! drawn at random (power of two choices by default).
//!
//! A call is outstanding from its pick until it is over — its response
//! read to the end, or failed, or cancelled — counted in one atomic per
//! endpoint, without locks.
//!
//! ```json
//! {"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 2}}]}
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::round_robin::{ReadyPicker, RoundRobin};
use super::{Helper, Policy, PolicyBuilder};
use crate::picker::{CallOutcome, CallTracker, Pick, PickInfo, Picker, Routed};
use crate::subchannel::{Connection, SubchannelId};

pub use super::RandomIndex;

/// The JSON shape.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    choice_count: Option<u64>,
}

/// Parses `{choiceCount}`: a whole number, clamped to [2, 10] as A48
/// says; default 2. An unknown field is an error.
pub fn parse(config: &Value) -> Result<usize, String> {
    let raw: Raw = crate::service_config::policy_config("least_request", config)?;
    Ok(raw.choice_count.map_or(2, |n| n.clamp(2, 10) as usize))
}

pub(crate) struct LeastRequestBuilder {
    pub(crate) name: &'static str,
}

impl PolicyBuilder for LeastRequestBuilder {
    fn name(&self) -> &str {
        self.name
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(least_request(super::thread_random()))
    }
}

/// A least_request policy drawing its choices from `random`.
pub fn least_request(random: RandomIndex) -> RoundRobin {
    RoundRobin::with(
        Box::new(Fewest {
            choices: 2,
            outstanding: HashMap::new(),
            random,
        }),
        "least_request",
    )
}

/// An endpoint's outstanding calls: the tracker of every call routed to it.
#[derive(Debug, Default)]
struct Outstanding(AtomicU64);

impl CallTracker for Outstanding {
    fn started(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, _outcome: CallOutcome) {}

    fn ended(&self, _succeeded: Option<bool>) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Fewest {
    choices: usize,
    /// Kept across pickers, so counts survive a new picker.
    outstanding: HashMap<SubchannelId, Arc<Outstanding>>,
    random: RandomIndex,
}

impl ReadyPicker for Fewest {
    fn configure(&mut self, config: &Value) {
        if let Ok(choices) = parse(config) {
            self.choices = choices;
        }
    }

    fn picker(&mut self, ready: Vec<Connection>, _helper: &mut dyn Helper) -> Arc<dyn Picker> {
        self.outstanding
            .retain(|id, _| ready.iter().any(|c| c.id() == *id));
        let endpoints = ready
            .into_iter()
            .map(|connection| {
                let count = self.outstanding.entry(connection.id()).or_default().clone();
                (connection, count)
            })
            .collect();
        Arc::new(FewestPicker {
            endpoints,
            choices: self.choices,
            random: self.random.clone(),
        })
    }
}

struct FewestPicker {
    endpoints: Vec<(Connection, Arc<Outstanding>)>,
    choices: usize,
    random: RandomIndex,
}

impl Picker for FewestPicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        let len = self.endpoints.len();
        let mut best = (self.random)(len);
        let mut fewest = self.endpoints[best].1.0.load(Ordering::Relaxed);
        for _ in 1..self.choices {
            let other = (self.random)(len);
            let count = self.endpoints[other].1.0.load(Ordering::Relaxed);
            if count < fewest {
                (best, fewest) = (other, count);
            }
        }
        let (connection, outstanding) = &self.endpoints[best];
        let tracker: Arc<dyn CallTracker> = outstanding.clone();
        Pick::Ready(Routed {
            connection: connection.clone(),
            header: None,
            tracker: Some(tracker),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;
    use waypost_resolver::{Address, Endpoint, ResolverState};

    use super::*;
    use crate::connectivity::ConnectivityState::*;
    use crate::testing::FakeHelper;

    const PATH: &str = "/movies.v1.MoviesService/GetMovie";

    fn address(i: usize) -> Address {
        Address::Tcp(format!("10.0.0.{i}:443").parse().unwrap())
    }

    /// A policy drawing indexes from `script`, in order, then 0.
    fn scripted(script: Vec<usize>) -> RoundRobin {
        let script = Mutex::new(script.into_iter());
        least_request(Arc::new(move |n| {
            script.lock().unwrap().next().unwrap_or(0) % n
        }))
    }

    #[test]
    fn config_is_clamped_and_checked() {
        assert_eq!(parse(&json!({})), Ok(2));
        assert_eq!(parse(&json!({"choiceCount": 1})), Ok(2));
        assert_eq!(parse(&json!({"choiceCount": 50})), Ok(10));
        assert_eq!(parse(&json!({"choiceCount": 3})), Ok(3));
        assert!(parse(&json!({"choiceCount": "3"})).is_err());
        assert!(parse(&json!({"choices": 3})).is_err());
    }

    #[test]
    fn the_endpoint_with_fewer_outstanding_calls_wins_and_ended_calls_count_no_more() {
        // Draws: (0, 1), (0, 1), (0, 1).
        let mut policy = scripted(vec![0, 1, 0, 1, 0, 1]);
        let mut helper = FakeHelper::new("movies.test");
        let state = ResolverState::from_endpoints((1..=2).map(|i| Endpoint::new(address(i))));
        policy.resolver_update(&state, &json!({}), &mut helper);
        let ids = helper.subchannel_ids();
        // Every endpoint is connected at once, as round_robin does.
        assert!(ids.iter().all(|id| helper.take_connect_request(*id)));
        for id in &ids {
            helper.set_state(&mut policy, *id, Ready);
        }
        let routed = |pick: Pick| match pick {
            Pick::Ready(routed) => routed,
            other => panic!("{other:?}"),
        };
        // Equal counts: the first drawn.
        let first = routed(helper.pick_with(PATH, &[]));
        assert_eq!(first.connection.id(), ids[0]);
        let first_end = first.begin();
        // Endpoint 0 has a call outstanding: endpoint 1 wins.
        let second = routed(helper.pick_with(PATH, &[]));
        assert_eq!(second.connection.id(), ids[1]);
        // The first call ends (its guard dropped): endpoint 0 wins again.
        drop(first_end);
        let third = routed(helper.pick_with(PATH, &[]));
        assert_eq!(third.connection.id(), ids[0]);
    }
}
