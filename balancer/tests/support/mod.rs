//! Helpers shared by the balancer's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use waypost_balancer::{Channel, ChannelBuilder};
use waypost_integration::backend::Backend;
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_resolver::backoff::BackoffConfig;

pub type Client = MoviesServiceClient<Channel>;

/// `ipv4:` target over the backends' addresses.
pub fn ipv4_target(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    format!("ipv4:{}", list.join(","))
}

pub fn round_robin() -> serde_json::Value {
    json!({"loadBalancingConfig": [{"round_robin": {}}]})
}

/// A builder with a fast connection backoff so tests recover quickly.
pub fn builder(target: &str) -> ChannelBuilder {
    Channel::builder(target).connect_backoff(BackoffConfig {
        base: Duration::from_millis(100),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_millis(500),
    })
}

/// One GetMovie call, returning the backend that served it.
pub async fn call(
    client: &mut Client,
    wait_for_ready: bool,
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(timeout);
    request
        .extensions_mut()
        .insert(waypost_balancer::WaitForReady(wait_for_ready));
    client
        .get_movie(request)
        .await
        .map(|r| r.into_inner().served_by)
}

/// Calls until every one of `names` has served at least once (at most 10 s).
pub async fn until_all_serve(client: &mut Client, names: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = BTreeMap::new();
    while names.iter().any(|n| !seen.contains_key(*n)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen:?} served within 10 s"
        );
        if let Ok(name) = call(client, true, Duration::from_secs(5)).await {
            *seen.entry(name).or_insert(0) += 1;
        }
    }
}
