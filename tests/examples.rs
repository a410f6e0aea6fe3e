//! Runs the examples' scenarios, so the README's first command stays true.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[tokio::test]
async fn the_quickstart_spreads_calls_and_avoids_the_unhealthy_backend() {
    let observed = quickstart::run().await.expect("the quickstart runs");
    assert_eq!(
        observed.healthy.len(),
        3,
        "all three backends serve: {:?}",
        observed.healthy
    );
    assert!(
        observed.healthy.values().all(|n| (8..=12).contains(n)),
        "round_robin spreads 30 calls evenly: {:?}",
        observed.healthy
    );
    assert!(
        !observed.after.contains_key("backend-2"),
        "the unhealthy backend gets no calls: {:?}",
        observed.after
    );
    assert_eq!(observed.after.values().sum::<usize>(), 30);
}
