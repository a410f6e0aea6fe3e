//! `outlier_detection` over real backends: one failing 80 % of its calls
//! is ejected within a few intervals, and returns once its ejection time
//! is over and it is healthy again.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_integration::backend::start_backends;

/// Makes `n` fail-fast calls (failures are expected: a failing backend).
async fn calls(client: &mut Client, n: usize) {
    for _ in 0..n {
        let _ = call(client, false, Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_most_calls_is_ejected_and_returns_when_healthy() {
    let backends = start_backends(4).await.unwrap();
    backends[0].set_failing(80);
    let refs: Vec<_> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(
            json!({"loadBalancingConfig": [{"outlier_detection_experimental": {
            "interval": "0.2s", "baseEjectionTime": "1s", "maxEjectionPercent": 50,
            "failurePercentageEjection": {"threshold": 50, "minimumHosts": 4, "requestVolume": 10},
            "childPolicy": [{"round_robin": {}}]}}]}),
        )
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    until_all_serve(&mut client, &names[1..]).await;

    // Traffic until 100 calls in a row avoid the failing backend.
    let started = tokio::time::Instant::now();
    loop {
        let before = backends[0].calls();
        calls(&mut client, 100).await;
        if backends[0].calls() == before {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ejected");
    }
    let ejected_after = started.elapsed();
    // Three intervals of 0.2 s to see it, plus the calls' own time.
    assert!(
        ejected_after < Duration::from_secs(3),
        "ejected after {ejected_after:?}"
    );

    // Healthy again: back after its ejection time (1 s) at the next interval.
    backends[0].set_failing(0);
    let healed = tokio::time::Instant::now();
    let before = backends[0].calls();
    while backends[0].calls() == before {
        assert!(healed.elapsed() < Duration::from_secs(10), "never returned");
        calls(&mut client, 20).await;
        let seen = channel.picker_generation();
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            channel.wait_for_picker_change(seen),
        )
        .await;
    }
    // (The exact ejection times are checked under a paused clock in the
    // policy's unit tests.)
}
