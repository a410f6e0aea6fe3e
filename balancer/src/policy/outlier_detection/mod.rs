//! `outlier_detection_experimental` (also `outlier_detection`), gRFC A50:
//! a wrapper around a child policy (`childPolicy`) that counts every call's
//! outcome per endpoint — in atomics, on the call path, without locks —
//! and every `interval` ejects the endpoints that fail far more than the
//! others (success-rate ejection) or more than a threshold
//! (failure-percentage ejection). An ejected endpoint looks
//! TRANSIENT_FAILURE to the child, which stops picking it; it returns
//! after `baseEjectionTime` × its ejection count (at most
//! `maxEjectionTime`). At most `maxEjectionPercent` of endpoints are
//! ejected at once.
//!
//! ```json
//! {"loadBalancingConfig": [{"outlier_detection_experimental": {
//!     "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 10,
//!     "failurePercentageEjection": {"threshold": 85, "requestVolume": 50},
//!     "childPolicy": [{"round_robin": {}}]}}]}
//! ```

pub mod config;
pub mod eject;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use waypost_resolver::{Address, ResolveError, ResolverState};

use self::config::OutlierConfig;
use super::{Helper, Policy, PolicyBuilder, PolicyEvents, PolicyRegistry};
use crate::connectivity::ConnectivityState;
use crate::picker::{CallOutcome, CallTracker, Pick, PickInfo, Picker};
use crate::subchannel::{SubchannelHandle, SubchannelId, SubchannelState};

/// The timer token this policy keeps for itself (the child's pass through).
const INTERVAL_TOKEN: u64 = u64::MAX - 0x0D;

/// The reason an ejected endpoint gives its child policy.
pub const EJECTED: &str = "ejected by outlier_detection";

fn known(name: &str) -> bool {
    PolicyRegistry::global().get(name).is_some()
}

pub(crate) struct OutlierDetectionBuilder {
    pub(crate) name: &'static str,
}

impl PolicyBuilder for OutlierDetectionBuilder {
    fn name(&self) -> &str {
        self.name
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        let parsed = config::parse(config, &known)?;
        let child = PolicyRegistry::global()
            .get(&parsed.child.0)
            .ok_or("outlier_detection: the child policy is not registered")?;
        child.validate(&parsed.child.1)
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(OutlierDetection::new(Box::new(|| {
            rand::random_range(0..100)
        })))
    }
}

/// One endpoint's outcomes in the current interval.
#[derive(Debug, Default)]
struct Counters {
    successes: AtomicU64,
    failures: AtomicU64,
}

impl CallTracker for Counters {
    fn started(&self) {}

    fn finished(&self, _outcome: CallOutcome) {}

    fn ended(&self, succeeded: Option<bool>) {
        match succeeded {
            Some(true) => self.successes.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.failures.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }
}

/// Both trackers of a call: ours and the child picker's own.
struct Both(Arc<Counters>, Arc<dyn CallTracker>);

impl CallTracker for Both {
    fn started(&self) {
        self.1.started();
    }

    fn finished(&self, outcome: CallOutcome) {
        self.1.finished(outcome);
    }

    fn ended(&self, succeeded: Option<bool>) {
        self.0.ended(succeeded);
        self.1.ended(succeeded);
    }

    fn trailers(&self, trailers: &http::HeaderMap) {
        self.1.trailers(trailers);
    }
}

/// Hashes a subchannel id with one multiplication (Fibonacci hashing; ids
/// are small distinct integers and not chosen by peers): a pick's lookup
/// costs no SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type ById<T> = HashMap<SubchannelId, T, std::hash::BuildHasherDefault<IdHasher>>;

/// The child's picker, with every routed call counted.
struct Counting {
    child: Arc<dyn Picker>,
    counters: ById<Arc<Counters>>,
}

impl Picker for Counting {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        match self.child.pick(call) {
            Pick::Ready(mut routed) => {
                if let Some(counters) = self.counters.get(&routed.connection.id()) {
                    routed.tracker = Some(match routed.tracker.take() {
                        None => counters.clone(),
                        Some(own) => Arc::new(Both(counters.clone(), own)),
                    });
                }
                Pick::Ready(routed)
            }
            other => other,
        }
    }
}

struct Tracked {
    counters: Arc<Counters>,
    history: eject::Endpoint,
    /// The subchannel's real state (the child sees TRANSIENT_FAILURE while
    /// it is ejected).
    actual: Option<SubchannelState>,
}

/// The helper the child policy gets: subchannels it creates are tracked,
/// pickers it publishes count calls.
struct ChildHelper<'a> {
    parent: &'a mut dyn Helper,
    tracked: &'a mut HashMap<SubchannelId, Tracked>,
}

impl Helper for ChildHelper<'_> {
    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle {
        let handle = self.parent.new_subchannel(addresses);
        self.tracked.insert(
            handle.id(),
            Tracked {
                counters: Arc::default(),
                history: eject::Endpoint::default(),
                actual: None,
            },
        );
        handle
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.tracked.remove(&id);
        self.parent.remove_subchannel(id);
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let counters = self
            .tracked
            .iter()
            .map(|(id, t)| (*id, t.counters.clone()))
            .collect();
        self.parent.update_picker(
            state,
            Arc::new(Counting {
                child: picker,
                counters,
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

    fn tls(&self) -> Option<crate::tls::ClientTlsConfig> {
        self.parent.tls()
    }
    fn metrics(&self) -> Option<crate::metrics::PolicyMetrics> {
        self.parent.metrics()
    }
}

/// The `outlier_detection` policy. See the [module docs](self).
pub struct OutlierDetection {
    config: Option<OutlierConfig>,
    child: Option<(String, Box<dyn Policy>)>,
    tracked: HashMap<SubchannelId, Tracked>,
    timer_armed: bool,
    percent: Box<dyn FnMut() -> u32 + Send>,
}

impl OutlierDetection {
    /// A policy drawing its enforcement chances (0..100) from `percent`.
    pub fn new(percent: Box<dyn FnMut() -> u32 + Send>) -> OutlierDetection {
        OutlierDetection {
            config: None,
            child: None,
            tracked: HashMap::new(),
            timer_armed: false,
            percent,
        }
    }

    /// Runs `f` on the child with its helper.
    fn with_child(
        &mut self,
        helper: &mut dyn Helper,
        f: impl FnOnce(&mut dyn Policy, &mut dyn Helper),
    ) {
        if let Some((_, child)) = &mut self.child {
            let mut child_helper = ChildHelper {
                parent: helper,
                tracked: &mut self.tracked,
            };
            f(child.as_mut(), &mut child_helper);
        }
    }

    /// What the child is told of `id`: TRANSIENT_FAILURE while ejected.
    fn seen(tracked: &Tracked, actual: &SubchannelState) -> SubchannelState {
        if tracked.history.ejected_at.is_some() {
            SubchannelState {
                connectivity: ConnectivityState::TransientFailure,
                connection: None,
                last_error: Some(EJECTED.into()),
            }
        } else {
            actual.clone()
        }
    }

    fn interval(&mut self, helper: &mut dyn Helper) {
        self.timer_armed = false;
        let Some(config) = self.config.clone() else {
            return;
        };
        let ids: Vec<SubchannelId> = self.tracked.keys().copied().collect();
        let mut endpoints: Vec<eject::Endpoint> = ids
            .iter()
            .map(|id| {
                let t = &self.tracked[id];
                eject::Endpoint {
                    successes: t.counters.successes.swap(0, Ordering::Relaxed),
                    failures: t.counters.failures.swap(0, Ordering::Relaxed),
                    ..t.history.clone()
                }
            })
            .collect();
        let decision = eject::run(
            &config,
            &mut endpoints,
            tokio::time::Instant::now(),
            &mut *self.percent,
        );
        for (id, history) in ids.iter().zip(endpoints) {
            if let Some(t) = self.tracked.get_mut(id) {
                t.history = history;
            }
        }
        for index in decision.ejected.iter().chain(&decision.returned) {
            let id = ids[*index];
            let Some(t) = self.tracked.get(&id) else {
                continue;
            };
            let actual = t.actual.clone().unwrap_or(SubchannelState {
                connectivity: ConnectivityState::Idle,
                connection: None,
                last_error: None,
            });
            let seen = Self::seen(t, &actual);
            if decision.ejected.contains(index) {
                tracing::info!(subchannel = id.0, "outlier_detection: ejected");
            }
            self.with_child(helper, |child, h| child.subchannel_update(id, &seen, h));
        }
        self.arm(helper);
    }

    fn arm(&mut self, helper: &mut dyn Helper) {
        if let Some(config) = &self.config {
            let ejecting = config.success_rate.is_some() || config.failure_percentage.is_some();
            let any_ejected = self
                .tracked
                .values()
                .any(|t| t.history.ejected_at.is_some());
            if (ejecting || any_ejected) && !self.timer_armed {
                helper.set_timer(config.interval, INTERVAL_TOKEN);
                self.timer_armed = true;
            }
        }
    }
}

impl Policy for OutlierDetection {
    fn resolver_update(&mut self, state: &ResolverState, config: &Value, helper: &mut dyn Helper) {
        if let Ok(parsed) = config::parse(config, &known) {
            let (name, _) = &parsed.child;
            if self
                .child
                .as_ref()
                .is_none_or(|(current, _)| current != name)
            {
                // A new child: the old one's subchannels go with it.
                for id in self.tracked.keys().copied().collect::<Vec<_>>() {
                    helper.remove_subchannel(id);
                }
                self.tracked.clear();
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
        self.arm(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.child.is_none() {
            super::fail_resolution(error, helper);
        }
        self.with_child(helper, |child, h| child.resolver_error(error, h));
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        t.actual = Some(state.clone());
        let seen = Self::seen(t, state);
        self.with_child(helper, |child, h| child.subchannel_update(id, &seen, h));
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        if token == INTERVAL_TOKEN {
            self.interval(helper);
        } else {
            self.with_child(helper, |child, h| child.timer(token, h));
        }
    }

    fn event(&mut self, event: Box<dyn std::any::Any + Send>, helper: &mut dyn Helper) {
        self.with_child(helper, |child, h| child.event(event, h));
    }
}

#[cfg(test)]
mod tests;
