//! Servers that recycle their connections — `max_connection_age`, rolling
//! restarts — must cost no call: a connection that was READY and then ended
//! by the server's GOAWAY is reconnected at once (the subchannel goes IDLE,
//! not TRANSIENT_FAILURE), as grpc-go and C-core do.
//!
//! The peers are gRPC C-core servers (Python grpcio with
//! `grpc.max_connection_age_ms`) and the harness's tonic backends recycling
//! every connection after 200 ms.

mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use support::*;
use waypost_balancer::Channel;
use waypost_integration::backend::{Backend, start_backends};
use waypost_integration::grpcio::GrpcioBackends;

/// What [`hammer`] saw.
#[derive(Debug, Default)]
struct Outcome {
    ok: u64,
    failures: Vec<String>,
    max_latency: Duration,
}

/// `callers` concurrent fail-fast callers, each calling one after another
/// for `run` (and at most 20,000 calls each).
async fn hammer(channel: &Channel, callers: usize, run: Duration) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let until = tokio::time::Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let mut client = Client::new(channel.clone());
        let outcome = outcome.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20_000 {
                if tokio::time::Instant::now() >= until {
                    break;
                }
                let started = tokio::time::Instant::now();
                let result = call(&mut client, false, Duration::from_secs(5)).await;
                let latency = started.elapsed();
                let mut outcome = outcome.lock();
                outcome.max_latency = outcome.max_latency.max(latency);
                match result {
                    Ok(_) => outcome.ok += 1,
                    Err(status) => outcome.failures.push(format!("{status}")),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::into_inner(outcome).unwrap().into_inner()
}

fn assert_no_call_lost(outcome: &Outcome, what: &str) {
    assert!(outcome.ok > 100, "{what}: too few calls made: {outcome:?}");
    assert!(
        outcome.failures.is_empty(),
        "{what}: {} of {} calls failed, first: {:?}",
        outcome.failures.len(),
        outcome.ok + outcome.failures.len() as u64,
        outcome.failures.first()
    );
    assert!(
        outcome.max_latency <= Duration::from_millis(100),
        "{what}: a call took {:?}",
        outcome.max_latency
    );
}

fn target(addrs: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("ipv4:{}", list.join(","))
}

/// Three grpcio servers closing every connection 300 ms after it opened
/// (then 1 s of grace for its calls).
async fn recycling_grpcio_backends() -> GrpcioBackends {
    GrpcioBackends::start(
        &["g0", "g1", "g2"],
        &[
            ("grpc.max_connection_age_ms", 300),
            ("grpc.max_connection_age_grace_ms", 1000),
        ],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_grpcio_servers_with_max_connection_age_fails_no_call() {
    let backends = recycling_grpcio_backends().await;
    // The default connection backoff (1 s base): what a user gets.
    let channel = Channel::builder(target(&backends.addrs()))
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &backends.names()).await;

    let outcome = hammer(&channel, 4, Duration::from_secs(5)).await;
    assert_no_call_lost(&outcome, "round_robin over grpcio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_first_over_grpcio_servers_with_max_connection_age_fails_no_call() {
    let backends = recycling_grpcio_backends().await;
    let channel = Channel::builder(target(&backends.addrs()))
        .default_service_config(json!({"loadBalancingConfig": [{"pick_first": {}}]}))
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    call(&mut client, true, Duration::from_secs(5))
        .await
        .unwrap();

    let outcome = hammer(&channel, 4, Duration::from_secs(5)).await;
    assert_no_call_lost(&outcome, "pick_first over grpcio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_backends_that_drain_every_200ms_fails_no_call() {
    let backends = start_backends(3).await.unwrap();
    for backend in &backends {
        backend.set_max_connection_age(Some(Duration::from_millis(200)));
    }
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let channel = Channel::builder(target(&addrs))
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0", "b1", "b2"]).await;

    let outcome = hammer(&channel, 4, Duration::from_secs(3)).await;
    assert_no_call_lost(&outcome, "round_robin over draining backends");
    // The connections really were recycled, many times over.
    let accepted: u64 = backends.iter().map(Backend::accepted_connections).sum();
    assert!(accepted >= 3 * 10, "only {accepted} connections were made");
}
