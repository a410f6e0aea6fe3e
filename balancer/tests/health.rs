//! Client-side health checking (`healthCheckConfig`) against real backends.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_integration::backend::{Backend, start_backends};

fn health_checked(service: &str) -> serde_json::Value {
    json!({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": service}})
}

/// The set of backends that serve a batch of 30 calls.
async fn serving(client: &mut Client) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(call(client, true, Duration::from_secs(5)).await.unwrap());
    }
    seen
}

async fn until_serving(client: &mut Client, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = serving(client).await;
        if seen == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serving {seen:?}, expected {expected:?}"
        );
    }
}

#[tokio::test]
async fn not_serving_backends_are_not_picked_until_they_serve_again() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(health_checked("movies.v1.MoviesService"))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    until_serving(&mut client, &["b0", "b1", "b2"]).await;

    backends[1].set_serving(false);
    until_serving(&mut client, &["b0", "b2"]).await;
    // It stays out (not a one-off).
    assert_eq!(
        serving(&mut client).await,
        BTreeSet::from(["b0".to_owned(), "b2".to_owned()])
    );
    assert_eq!(
        backends[1].open_connections(),
        1,
        "the connection stays up while unhealthy"
    );

    backends[1].set_serving(true);
    until_serving(&mut client, &["b0", "b1", "b2"]).await;
}

#[tokio::test]
async fn a_backend_without_a_health_service_counts_as_healthy() {
    let plain = Backend::start_without_health("plain").await.unwrap();
    let checked = Backend::start("checked").await.unwrap();
    let channel = builder(&ipv4_target(&[&plain, &checked]))
        .default_service_config(health_checked("movies.v1.MoviesService"))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    until_serving(&mut client, &["checked", "plain"]).await;
}

#[tokio::test]
async fn an_unknown_health_service_name_keeps_the_backend_out() {
    let backends = start_backends(2).await.unwrap();
    backends[0].health().set(
        "custom.Service",
        waypost_proto::grpc::health::v1::health_check_response::ServingStatus::Serving,
    );
    let channel = builder(&ipv4_target(&[&backends[0], &backends[1]]))
        .default_service_config(health_checked("custom.Service"))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    // b1 answers SERVICE_UNKNOWN for custom.Service: not SERVING.
    until_serving(&mut client, &["b0"]).await;
}
