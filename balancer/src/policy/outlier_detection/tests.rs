//! outlier_detection on the fake helper, under tokio's paused clock.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use waypost_resolver::{Address, Endpoint, ResolverState};

use super::OutlierDetection;
use crate::connectivity::ConnectivityState::*;
use crate::picker::Pick;
use crate::policy::Policy;
use crate::subchannel::SubchannelId;
use crate::testing::FakeHelper;

const PATH: &str = "/movies.v1.MoviesService/GetMovie";

fn address(i: usize) -> Address {
    Address::Tcp(format!("10.0.0.{i}:443").parse().unwrap())
}

fn config() -> serde_json::Value {
    json!({"interval": "1s", "baseEjectionTime": "5s", "maxEjectionTime": "60s",
           "maxEjectionPercent": 50,
           "failurePercentageEjection": {"threshold": 50, "minimumHosts": 4, "requestVolume": 10},
           "childPolicy": [{"round_robin": {}}]})
}

fn start() -> (OutlierDetection, FakeHelper, Vec<SubchannelId>) {
    let mut policy = OutlierDetection::new(Box::new(|| 0));
    let mut helper = FakeHelper::new("movies.test");
    let state = ResolverState::from_endpoints((1..=4).map(|i| Endpoint::new(address(i))));
    policy.resolver_update(&state, &config(), &mut helper);
    let ids = helper.subchannel_ids();
    for id in &ids {
        helper.set_state(&mut policy, *id, Ready);
    }
    (policy, helper, ids)
}

/// `n` calls through the current picker; calls to `failing` fail 4 in 5.
fn traffic(helper: &FakeHelper, n: usize, failing: SubchannelId) -> BTreeMap<SubchannelId, usize> {
    let mut served = BTreeMap::new();
    for i in 0..n {
        let Pick::Ready(routed) = helper.pick_with(PATH, &[]) else {
            panic!("no pick");
        };
        let id = routed.connection.id();
        *served.entry(id).or_default() += 1;
        let mut end = routed.begin();
        end.record(!(id == failing && i % 5 != 0));
    }
    served
}

/// Fires the policy's interval timer (the last one set).
fn tick(policy: &mut OutlierDetection, helper: &mut FakeHelper) {
    let (after, token) = *helper.timers().last().expect("a timer");
    assert_eq!(after, Duration::from_secs(1));
    policy.timer(token, helper);
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_at_the_interval_and_returns_after_the_base_time() {
    let (mut policy, mut helper, ids) = start();
    let served = traffic(&helper, 200, ids[0]);
    assert_eq!(served.len(), 4);
    tick(&mut policy, &mut helper);
    // Ejected: the child sees it failed and routes around it.
    assert_eq!(helper.state(), Some(Ready));
    let served = traffic(&helper, 90, ids[0]);
    assert!(!served.contains_key(&ids[0]), "{served:?}");
    // Still out 4 s later…
    tokio::time::advance(Duration::from_secs(4)).await;
    tick(&mut policy, &mut helper);
    assert!(!traffic(&helper, 30, ids[0]).contains_key(&ids[0]));
    // …back once the 5 s base ejection time has passed.
    tokio::time::advance(Duration::from_secs(1)).await;
    tick(&mut policy, &mut helper);
    assert!(traffic(&helper, 30, ids[0]).contains_key(&ids[0]));
}

#[tokio::test(start_paused = true)]
async fn healthy_endpoints_and_quiet_intervals_eject_nothing() {
    let (mut policy, mut helper, ids) = start();
    // Failing, but too few calls each (requestVolume 10).
    let _ = traffic(&helper, 20, ids[0]);
    tick(&mut policy, &mut helper);
    assert_eq!(traffic(&helper, 40, ids[0]).len(), 4);
    // Enough calls, all fine.
    let _ = traffic(&helper, 200, SubchannelId(u64::MAX));
    tick(&mut policy, &mut helper);
    assert_eq!(traffic(&helper, 40, ids[0]).len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_subchannel_change_while_ejected_stays_hidden_from_the_child() {
    let (mut policy, mut helper, ids) = start();
    let _ = traffic(&helper, 200, ids[0]);
    tick(&mut policy, &mut helper);
    // The ejected subchannel reconnects: the child still must not use it.
    helper.set_state(&mut policy, ids[0], Idle);
    helper.set_state(&mut policy, ids[0], Ready);
    assert!(!traffic(&helper, 40, ids[0]).contains_key(&ids[0]));
}

#[test]
fn the_config_is_checked_with_its_child() {
    use crate::policy::PolicyRegistry;
    let builder = PolicyRegistry::global()
        .get("outlier_detection_experimental")
        .unwrap();
    assert!(builder.validate(&config()).is_ok());
    assert!(
        builder
            .validate(&json!({"childPolicy": [{"ring_hash": {"minRingSize": 0}}]}))
            .is_err()
    );
    assert!(builder.validate(&json!({"childPolicy": []})).is_err());
}
