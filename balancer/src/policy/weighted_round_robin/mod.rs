//! `weighted_round_robin`, gRFC A58: round_robin whose turns are shared in
//! proportion to each endpoint's weight, computed from the load the
//! backends report with ORCA (gRFC A51) — qps / (utilization + eps/qps ×
//! errorUtilizationPenalty).
//!
//! Reports come per call, in the `endpoint-load-metrics-bin` trailer, or,
//! with `enableOobLoadReport`, from an out-of-band
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream on each
//! READY connection. Every `weightUpdatePeriod` the weights are read and a
//! new picker published with a static-stride scheduler over them; an
//! endpoint's weight counts only after `blackoutPeriod` of reports and
//! stops counting `weightExpirationPeriod` after its last. Until two
//! endpoints have weights, the policy rotates like round_robin. Servers
//! report with [`waypost_proto::orca::OrcaReporter`].
//!
//! ```json
//! {"loadBalancingConfig": [{"weighted_round_robin": {
//!     "blackoutPeriod": "10s", "weightUpdatePeriod": "1s",
//!     "enableOobLoadReport": false}}]}
//! ```

pub mod config;
mod oob;
mod scheduler;
#[cfg(test)]
mod tests;
mod weight;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use self::config::WrrConfig;
use self::scheduler::Scheduler;
use self::weight::EndpointWeight;
use super::round_robin::{ReadyPicker, RoundRobin};
use super::{Helper, Policy, PolicyBuilder, RandomIndex};
use crate::picker::{CallTracker, Pick, PickInfo, Picker, Routed};
use crate::sequence::Sequence;
use crate::subchannel::{Connection, SubchannelId};

/// The token of the weight update timer.
const UPDATE_TOKEN: u64 = u64::MAX - 0xA58;

pub(crate) struct WrrBuilder;

impl PolicyBuilder for WrrBuilder {
    fn name(&self) -> &str {
        "weighted_round_robin"
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        config::parse(config).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(weighted_round_robin(
            super::thread_random(),
            Arc::new(oob::Streams),
        ))
    }
}

/// Opens out-of-band load reporting on a READY connection; what it
/// returns stops the reporting when dropped. The real one streams
/// `StreamCoreMetrics`; policy tests inject their own.
pub(crate) trait OobReports: Send + Sync + 'static {
    fn watch(
        &self,
        connection: Connection,
        authority: &str,
        period: Duration,
        weight: Arc<EndpointWeight>,
    ) -> Box<dyn Send>;
}

/// A weighted_round_robin policy drawing its sequence starts from `random`
/// and opening out-of-band reports through `oob`.
pub(crate) fn weighted_round_robin(random: RandomIndex, oob: Arc<dyn OobReports>) -> RoundRobin {
    RoundRobin::with(
        Box::new(Weighted {
            config: WrrConfig::default(),
            endpoints: HashMap::new(),
            timer_armed: false,
            random,
            oob,
        }),
        "weighted_round_robin",
    )
}

/// What the policy keeps per READY endpoint across pickers.
struct Tracked {
    connection: Connection,
    weight: Arc<EndpointWeight>,
    /// The out-of-band stream on this connection, while enabled.
    oob: Option<(Duration, Box<dyn Send>)>,
}

struct Weighted {
    config: WrrConfig,
    endpoints: HashMap<SubchannelId, Tracked>,
    timer_armed: bool,
    random: RandomIndex,
    oob: Arc<dyn OobReports>,
}

impl Weighted {
    /// Starts, restarts or stops `tracked`'s out-of-band stream to match
    /// the config.
    fn sync_oob(&self, tracked: &mut Tracked, authority: &str) {
        if !self.config.enable_oob_load_report {
            tracked.oob = None;
            return;
        }
        let period = self.config.oob_reporting_period;
        if tracked.oob.as_ref().is_some_and(|(p, _)| *p == period) {
            return;
        }
        tracked.oob = None; // Stop the old stream first.
        let guard = self.oob.watch(
            tracked.connection.clone(),
            authority,
            period,
            tracked.weight.clone(),
        );
        tracked.oob = Some((period, guard));
    }
}

impl ReadyPicker for Weighted {
    fn configure(&mut self, config: &Value) {
        if let Ok(config) = config::parse(config) {
            if config.error_utilization_penalty != self.config.error_utilization_penalty {
                // Weights are computed as reports come: start over.
                self.endpoints.clear();
            }
            self.config = config;
        }
    }

    fn picker(&mut self, ready: Vec<Connection>, helper: &mut dyn Helper) -> Arc<dyn Picker> {
        // An endpoint that was not READY (or is READY on a new connection)
        // starts with no weight, so its blackout starts over (A58).
        self.endpoints.retain(|id, tracked| {
            ready
                .iter()
                .any(|c| c.id() == *id && c.same_as(&tracked.connection))
        });
        let authority = helper.authority();
        for connection in &ready {
            if !self.endpoints.contains_key(&connection.id()) {
                let tracked = Tracked {
                    connection: connection.clone(),
                    weight: Arc::new(EndpointWeight::new(self.config.error_utilization_penalty)),
                    oob: None,
                };
                self.endpoints.insert(connection.id(), tracked);
            }
        }
        let mut endpoints = std::mem::take(&mut self.endpoints);
        for tracked in endpoints.values_mut() {
            self.sync_oob(tracked, &authority);
        }
        self.endpoints = endpoints;

        let now = Instant::now();
        let per_call = !self.config.enable_oob_load_report;
        let mut weights = Vec::with_capacity(ready.len());
        let mut routes = Vec::with_capacity(ready.len());
        let (mut not_yet_usable, mut stale) = (0, 0);
        for connection in ready {
            let tracked = &self.endpoints[&connection.id()];
            let (weight, usable) = tracked.weight.weighed(
                now,
                self.config.weight_expiration_period,
                self.config.blackout_period,
            );
            match usable {
                weight::Usable::Yes => {}
                weight::Usable::NotYet => not_yet_usable += 1,
                weight::Usable::Stale => stale += 1,
            }
            weights.push(weight);
            let tracker: Option<Arc<dyn CallTracker>> =
                per_call.then(|| tracked.weight.clone() as Arc<dyn CallTracker>);
            routes.push(Routed {
                connection,
                header: None,
                tracker,
            });
        }
        if !self.timer_armed {
            self.timer_armed = true;
            helper.set_timer(self.config.weight_update_period, UPDATE_TOKEN);
        }
        let start = (self.random)(routes.len());
        let scheduler = Scheduler::new(&weights);
        if let Some(metrics) = helper.metrics() {
            metrics.wrr_update(&crate::metrics::WrrUpdate {
                rr_fallback: matches!(scheduler, Scheduler::Rotate(_)),
                not_yet_usable,
                stale,
                weights: &weights,
            });
        }
        Arc::new(WeightedPicker {
            scheduler,
            routes: routes.into(),
            sequence: Sequence::new(start),
        })
    }

    fn timer(&mut self, token: u64, _helper: &mut dyn Helper) -> bool {
        if token != UPDATE_TOKEN {
            return false;
        }
        self.timer_armed = false;
        // A new picker reads the weights afresh (and arms the next update);
        // with nothing READY there is nothing to weigh.
        !self.endpoints.is_empty()
    }
}

/// Picks by the scheduler over the READY endpoints.
struct WeightedPicker {
    scheduler: Scheduler,
    routes: Arc<[Routed]>,
    sequence: Sequence,
}

impl Picker for WeightedPicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        let index = self.sequence.walk(|cursor| self.scheduler.pick(cursor));
        Pick::Ready(self.routes[index].clone())
    }
}
