//! `least_request` over real backends: a backend ten times slower than the
//! others gets far fewer calls than round_robin gives it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_integration::backend::start_backends;

/// 16 callers × 50 calls over the 4 backends with `policy`; the share of
/// calls the slow one (the first) served.
async fn slow_share(policy: serde_json::Value) -> f64 {
    let backends = start_backends(4).await.unwrap();
    backends[0].set_delay(Duration::from_millis(100));
    for fast in &backends[1..] {
        fast.set_delay(Duration::from_millis(10));
    }
    let refs: Vec<_> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(json!({"loadBalancingConfig": [policy]}))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    until_all_serve(&mut client, &names).await;
    let before: Vec<u64> = backends.iter().map(|b| b.calls()).collect();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = client.clone();
        callers.spawn(async move {
            for _ in 0..50 {
                call(&mut client, true, Duration::from_secs(10))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    let served: Vec<u64> = backends
        .iter()
        .zip(before)
        .map(|(b, before)| b.calls() - before)
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 800, "{served:?}");
    served[0] as f64 / 800.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_few_calls_with_least_request_and_its_quarter_with_round_robin() {
    let least = slow_share(json!({"least_request_experimental": {"choiceCount": 2}})).await;
    assert!(
        least < 0.12,
        "least_request sent {:.1} % to the slow backend",
        least * 100.0
    );
    let rotating = slow_share(json!({"round_robin": {}})).await;
    eprintln!(
        "slow backend's share: least_request {:.1} %, round_robin {:.1} %",
        least * 100.0,
        rotating * 100.0
    );
    assert!(
        (0.2..=0.3).contains(&rotating),
        "round_robin sent {:.1} % to the slow backend",
        rotating * 100.0
    );
}
