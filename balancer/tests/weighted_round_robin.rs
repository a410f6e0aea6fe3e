//! `weighted_round_robin` over real backends that report ORCA load: three
//! backends at CPU utilization 0.2, 0.4 and 0.8 with equal qps get calls
//! about 4:2:1 once the blackout is over — with per-call reports, and the
//! same with out-of-band reports only.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_integration::backend::{Backend, assert_shares, start_backends};

/// Three backends reporting utilizations 0.2, 0.4, 0.8 at 100 qps; per-call
/// reports on or off.
async fn loaded_backends(per_call: bool) -> Vec<Backend> {
    let backends = start_backends(3).await.unwrap();
    for (backend, utilization) in backends.iter().zip([0.2, 0.4, 0.8]) {
        backend.orca().set_cpu_utilization(utilization).unwrap();
        backend.orca().set_qps(100.0).unwrap();
        backend.set_orca_per_call(per_call);
    }
    backends
}

/// Calls served by each backend out of `n` sequential calls.
async fn spread(client: &mut Client, n: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let name = call(client, true, Duration::from_secs(5)).await.unwrap();
        *served.entry(name).or_insert(0) += 1;
    }
    served
}

/// Calls in batches until one is clearly weighted (the weights are in use),
/// then returns the spread of 1,400 more calls.
async fn weighted_spread(
    policy: serde_json::Value,
    backends: &[Backend],
) -> BTreeMap<String, usize> {
    let refs: Vec<_> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(json!({"loadBalancingConfig": [policy]}))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    until_all_serve(&mut client, &names).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let batch = spread(&mut client, 70).await;
        let count = |name: &str| batch.get(name).copied().unwrap_or(0);
        if count("b0") >= 2 * count("b2") + 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no weighting within 20 s: last batch {batch:?}"
        );
    }
    spread(&mut client, 1400).await
}

fn assert_four_two_one(served: &BTreeMap<String, usize>) {
    assert_shares(
        "waypost",
        served,
        &[("b0", 4.0), ("b1", 2.0), ("b2", 1.0)],
        0.25,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_reports_split_calls_four_two_one() {
    let backends = loaded_backends(true).await;
    let served = weighted_spread(
        json!({"weighted_round_robin": {"blackoutPeriod": "1s", "weightUpdatePeriod": "0.1s"}}),
        &backends,
    )
    .await;
    eprintln!("per-call reports: {served:?}");
    assert_four_two_one(&served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_band_reports_alone_split_calls_the_same() {
    let backends = loaded_backends(false).await;
    let served = weighted_spread(
        json!({"weighted_round_robin": {
            "enableOobLoadReport": true,
            "oobReportingPeriod": "0.1s",
            "blackoutPeriod": "1s",
            "weightUpdatePeriod": "0.1s"
        }}),
        &backends,
    )
    .await;
    eprintln!("out-of-band reports: {served:?}");
    assert_four_two_one(&served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reports_it_rotates_evenly() {
    // The same policy over backends that report nothing: no weights, so
    // every backend gets its third (what the two tests above rule out).
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<_> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(json!({"loadBalancingConfig": [
            {"weighted_round_robin": {"blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}
        ]}))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    until_all_serve(&mut client, &["b0", "b1", "b2"]).await;
    let served = spread(&mut client, 600).await;
    for name in ["b0", "b1", "b2"] {
        let got = served.get(name).copied().unwrap_or(0);
        assert!((180..=220).contains(&got), "{served:?}");
    }
}
