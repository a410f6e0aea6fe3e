//! weighted_round_robin on the fake helper, under tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::json;
use waypost_proto::orca::TRAILER;
use waypost_proto::xds::data::orca::v3::OrcaLoadReport;
use waypost_resolver::{Address, Endpoint, ResolverState};

use super::*;
use crate::connectivity::ConnectivityState::*;
use crate::testing::FakeHelper;

const PATH: &str = "/movies.v1.MoviesService/GetMovie";

fn address(i: usize) -> Address {
    Address::Tcp(format!("10.0.0.{i}:443").parse().unwrap())
}

fn load(cpu: f64, qps: f64) -> OrcaLoadReport {
    OrcaLoadReport {
        cpu_utilization: cpu,
        rps_fractional: qps,
        ..Default::default()
    }
}

fn trailers(report: &OrcaLoadReport) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(prost::Message::encode_to_vec(report));
    trailers.insert(TRAILER, encoded.parse().unwrap());
    trailers
}

/// Out-of-band streams opened by the policy: (subchannel, period, weight),
/// and how many were stopped.
#[derive(Default)]
struct FakeOob {
    opened: Mutex<Vec<(SubchannelId, Duration, Arc<EndpointWeight>)>>,
    stopped: Arc<AtomicUsize>,
}

struct Stop(Arc<AtomicUsize>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl OobReports for FakeOob {
    fn watch(
        &self,
        connection: Connection,
        _authority: &str,
        period: Duration,
        weight: Arc<EndpointWeight>,
    ) -> Box<dyn Send> {
        self.opened
            .lock()
            .unwrap()
            .push((connection.id(), period, weight));
        Box::new(Stop(self.stopped.clone()))
    }
}

struct Setup {
    policy: RoundRobin,
    helper: FakeHelper,
    ids: Vec<SubchannelId>,
    oob: Arc<FakeOob>,
}

/// Three READY endpoints under `config`.
fn three_ready(config: serde_json::Value) -> Setup {
    let oob = Arc::new(FakeOob::default());
    let mut policy = weighted_round_robin(crate::policy::seeded_random(3), oob.clone());
    let mut helper = FakeHelper::new("movies.test");
    let state = ResolverState::from_endpoints((1..=3).map(|i| Endpoint::new(address(i))));
    policy.resolver_update(&state, &config, &mut helper);
    let ids = helper.subchannel_ids();
    assert!(ids.iter().all(|id| helper.take_connect_request(*id)));
    for id in &ids {
        helper.set_state(&mut policy, *id, Ready);
    }
    Setup {
        policy,
        helper,
        ids,
        oob,
    }
}

impl Setup {
    /// Calls per subchannel out of `n` picks.
    fn spread(&self, n: usize) -> BTreeMap<SubchannelId, usize> {
        let mut served = BTreeMap::new();
        for _ in 0..n {
            *served
                .entry(self.helper.pick(PATH, &[]).unwrap())
                .or_insert(0) += 1;
        }
        served
    }

    /// One call to each endpoint, each ending with a report from `loads`.
    fn report_per_call(&self, loads: &[OrcaLoadReport]) {
        let mut reported = BTreeMap::new();
        while reported.len() < self.ids.len() {
            let Pick::Ready(routed) = self.helper.pick_with(PATH, &[]) else {
                panic!("not ready");
            };
            let index = self
                .ids
                .iter()
                .position(|id| *id == routed.connection.id())
                .unwrap();
            if reported.insert(index, ()).is_none() {
                let mut end = routed.begin();
                end.record_status(&trailers(&loads[index]));
            }
        }
    }

    fn fire_update(&mut self) {
        assert!(
            self.helper.timers().iter().any(|(_, t)| *t == UPDATE_TOKEN),
            "the weight update timer is armed"
        );
        self.policy.timer(UPDATE_TOKEN, &mut self.helper);
    }
}

fn shares_close_to(spread: &BTreeMap<SubchannelId, usize>, ids: &[SubchannelId], ratio: &[f64]) {
    let total: usize = spread.values().sum();
    let sum: f64 = ratio.iter().sum();
    for (id, r) in ids.iter().zip(ratio) {
        let expected = total as f64 * r / sum;
        let got = spread.get(id).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() / expected < 0.02,
            "{spread:?} is not {ratio:?}"
        );
    }
}

fn utilizations(u: [f64; 3]) -> Vec<OrcaLoadReport> {
    u.iter().map(|u| load(*u, 100.0)).collect()
}

#[tokio::test(start_paused = true)]
async fn per_call_reports_weigh_endpoints_after_the_blackout() {
    let mut s = three_ready(json!({"blackoutPeriod": "10s", "weightUpdatePeriod": "1s"}));
    let ids = s.ids.clone();
    // No reports yet: plain rotation.
    shares_close_to(&s.spread(3000), &ids, &[1.0, 1.0, 1.0]);
    let loads = utilizations([0.2, 0.4, 0.8]);
    s.report_per_call(&loads);
    tokio::time::advance(Duration::from_secs(5)).await;
    s.fire_update();
    // Still in the blackout.
    shares_close_to(&s.spread(3000), &ids, &[1.0, 1.0, 1.0]);
    tokio::time::advance(Duration::from_secs(5)).await;
    s.report_per_call(&loads);
    s.fire_update();
    // qps / utilization: 500, 250, 125.
    shares_close_to(&s.spread(7000), &ids, &[4.0, 2.0, 1.0]);
}

#[tokio::test(start_paused = true)]
async fn weights_expire_when_reports_stop() {
    let mut s = three_ready(json!({
        "blackoutPeriod": "0s", "weightExpirationPeriod": "60s", "weightUpdatePeriod": "1s"
    }));
    let ids = s.ids.clone();
    s.report_per_call(&utilizations([0.2, 0.4, 0.8]));
    s.fire_update();
    shares_close_to(&s.spread(7000), &ids, &[4.0, 2.0, 1.0]);
    tokio::time::advance(Duration::from_secs(60)).await;
    s.fire_update();
    shares_close_to(&s.spread(3000), &ids, &[1.0, 1.0, 1.0]);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_reconnects_starts_its_blackout_over() {
    let mut s = three_ready(json!({"blackoutPeriod": "10s"}));
    let ids = s.ids.clone();
    s.report_per_call(&utilizations([0.2, 0.4, 0.8]));
    tokio::time::advance(Duration::from_secs(10)).await;
    s.report_per_call(&utilizations([0.2, 0.4, 0.8]));
    s.fire_update();
    shares_close_to(&s.spread(7000), &ids, &[4.0, 2.0, 1.0]);
    // The busiest-weighted endpoint's connection goes and comes back.
    s.helper.set_state(&mut s.policy, ids[0], Idle);
    s.helper.set_state(&mut s.policy, ids[0], Ready);
    s.report_per_call(&utilizations([0.2, 0.4, 0.8]));
    s.fire_update();
    // Endpoint 0's weight is unknown again: it gets the mean of 2 and 1.
    shares_close_to(&s.spread(6000), &ids, &[1.5, 2.0, 1.0]);
}

#[tokio::test(start_paused = true)]
async fn out_of_band_reports_replace_per_call_ones() {
    let mut s = three_ready(json!({
        "enableOobLoadReport": true, "oobReportingPeriod": "5s", "blackoutPeriod": "0s"
    }));
    let ids = s.ids.clone();
    let opened: Vec<_> = s.oob.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 3, "one stream per READY endpoint");
    assert!(
        opened
            .iter()
            .all(|(_, period, _)| *period == Duration::from_secs(5))
    );
    // Calls carry no tracker: trailers are not read.
    let Pick::Ready(routed) = s.helper.pick_with(PATH, &[]) else {
        panic!("not ready")
    };
    assert!(routed.tracker.is_none());
    for ((id, _, weight), report) in opened.iter().zip(utilizations([0.8, 0.4, 0.2])) {
        assert!(ids.contains(id));
        weight.report(&report);
    }
    s.fire_update();
    let order: Vec<SubchannelId> = opened.iter().map(|(id, _, _)| *id).collect();
    shares_close_to(&s.spread(7000), &order, &[1.0, 2.0, 4.0]);

    // A new period restarts every stream; turning OOB off stops them.
    let state = ResolverState::from_endpoints((1..=3).map(|i| Endpoint::new(address(i))));
    let config = json!({"enableOobLoadReport": true, "oobReportingPeriod": "2s"});
    s.policy.resolver_update(&state, &config, &mut s.helper);
    assert_eq!(s.oob.stopped.load(Ordering::Relaxed), 3);
    assert_eq!(s.oob.opened.lock().unwrap().len(), 6);
    s.policy.resolver_update(&state, &json!({}), &mut s.helper);
    assert_eq!(s.oob.stopped.load(Ordering::Relaxed), 6);
    assert_eq!(s.oob.opened.lock().unwrap().len(), 6);
}

#[test]
fn config_fields_are_grpcs_and_checked() {
    let parsed = config::parse(&json!({
        "enableOobLoadReport": true,
        "oobReportingPeriod": "2.5s",
        "blackoutPeriod": "1s",
        "weightExpirationPeriod": "60s",
        "weightUpdatePeriod": "0.01s",
        "errorUtilizationPenalty": 0.5
    }))
    .unwrap();
    assert!(parsed.enable_oob_load_report);
    assert_eq!(parsed.oob_reporting_period, Duration::from_millis(2500));
    assert_eq!(
        parsed.weight_update_period,
        config::MIN_WEIGHT_UPDATE_PERIOD
    );
    assert_eq!(parsed.error_utilization_penalty, 0.5);
    assert_eq!(config::parse(&json!({})).unwrap(), WrrConfig::default());
    for bad in [
        json!({"errorUtilizationPenalty": -1}),
        json!({"blackoutPeriod": 10}),
        json!({"enableOobLoadReport": "yes"}),
        json!({"weight_update_period": "1s"}),
        json!([]),
    ] {
        assert!(config::parse(&bad).is_err(), "{bad}");
    }
}
