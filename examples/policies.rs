//! Balancing policies chosen by the service config, on real backends:
//! `ring_hash` keeps each user on one backend by a request header, and
//! `least_request` steers calls away from a slow backend that
//! `round_robin` keeps feeding.
//!
//! ```text
//! cargo run --example policies
//! ```
//!
//! Everything runs in this process on loopback: three `movies.v1`
//! backends, then four with one ten times slower than the others, and a
//! `waypost::Channel` per policy (`ipv4:` targets, no DNS needed).
//! `weighted_round_robin` with ORCA load reports joins this example when
//! it lands.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use waypost::Channel;
use waypost::proto::movies::v1::MovieId;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_integration::backend::{Backend, start_backends};

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];

/// What the example saw.
pub struct Observed {
    /// The backends each user's 5 calls reached (one each, with ring_hash).
    pub by_user: BTreeMap<String, Vec<String>>,
    /// Share of calls the slow backend got with round_robin, in %.
    pub slow_round_robin: f64,
    /// The same with least_request.
    pub slow_least_request: f64,
}

fn channel(
    backends: &[Backend],
    policy: serde_json::Value,
) -> Result<Channel, Box<dyn std::error::Error>> {
    let list: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    Ok(Channel::builder(format!("ipv4:{}", list.join(",")))
        .default_service_config(json!({"loadBalancingConfig": [policy]}))
        .build()?)
}

async fn call(
    client: &mut MoviesServiceClient<Channel>,
    user: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(10));
    request.extensions_mut().insert(waypost::WaitForReady(true));
    if let Some(user) = user {
        request
            .metadata_mut()
            .insert("x-user", user.parse().expect("a header value"));
    }
    Ok(client.get_movie(request).await?.into_inner().served_by)
}

/// 8 callers × 40 calls; the share (in %) the first backend served.
async fn slow_share(
    backends: &[Backend],
    policy: serde_json::Value,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut client = MoviesServiceClient::new(channel(backends, policy)?);
    call(&mut client, None).await?;
    let before = backends[0].calls();
    let total_before: u64 = backends.iter().map(Backend::calls).sum();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = client.clone();
        callers.spawn(async move {
            for _ in 0..40 {
                call(&mut client, None).await?;
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    let total: u64 = backends.iter().map(Backend::calls).sum::<u64>() - total_before;
    Ok((backends[0].calls() - before) as f64 * 100.0 / total as f64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await.map(|_| ())
}

/// Runs the example, printing as it goes.
pub async fn run() -> Result<Observed, Box<dyn std::error::Error>> {
    // ring_hash: the same user, the same backend.
    let backends = start_backends(3).await?;
    let ring_hash = json!({"ring_hash_experimental": {"requestHashHeader": "x-user"}});
    println!("ring_hash with requestHashHeader x-user, three backends:");
    let mut client = MoviesServiceClient::new(channel(&backends, ring_hash)?);
    let mut by_user = BTreeMap::new();
    for user in USERS {
        let mut reached = Vec::new();
        for _ in 0..5 {
            reached.push(call(&mut client, Some(user)).await?);
        }
        println!("  {user:<6} → {}", reached.join(", "));
        by_user.insert(user.to_owned(), reached);
    }

    // least_request: a slow backend gets fewer calls.
    let backends = start_backends(4).await?;
    backends[0].set_delay(Duration::from_millis(50));
    for fast in &backends[1..] {
        fast.set_delay(Duration::from_millis(5));
    }
    println!(
        "\nfour backends, {} ten times slower; 8 callers × 40 calls:",
        backends[0].name()
    );
    let slow_round_robin = slow_share(&backends, json!({"round_robin": {}})).await?;
    println!("  round_robin   sends it {slow_round_robin:>4.1} % of calls");
    let slow_least_request = slow_share(
        &backends,
        json!({"least_request_experimental": {"choiceCount": 2}}),
    )
    .await?;
    println!("  least_request sends it {slow_least_request:>4.1} % of calls");
    Ok(Observed {
        by_user,
        slow_round_robin,
        slow_least_request,
    })
}
