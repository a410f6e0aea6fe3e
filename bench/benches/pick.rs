//! The per-call balancing cost: one pick over 1,000 READY subchannels.
//!
//! ```text
//! cargo bench -p waypost-bench --bench pick
//! ```
//!
//! - `waypost_round_robin/1_thread`: `Channel::pick` (load the picker
//!   snapshot, choose, clone the connection handle) on a round_robin
//!   channel with 1,000 READY subchannels to real loopback servers.
//! - `tower_p2c/1_thread`: tower's power-of-two-choices balancer over 1,000
//!   always-ready services: `poll_ready` (which chooses) plus `call`.
//! - `*/2_threads`: two threads picking at once; the time is per pick per
//!   thread. `naive_atomic_cursor` is a shared `AtomicUsize` round-robin
//!   over the same connections, the design waypost's picker avoids.
//! - `waypost_ring_hash`, `waypost_least_request`,
//!   `waypost_outlier_detection` (over round_robin),
//!   `waypost_weighted_round_robin`: the same pick with the other policies
//!   over the same 1,000 backends (ring_hash hashing an `x-user` header;
//!   every endpoint connected first; the backends report ORCA CPU
//!   utilizations 0.1 to 1.0 in each call's trailers — gRPC's default —
//!   and the weighted pick is timed once calls to every backend have made
//!   the weights count, with no traffic left in the background).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use tower::Service;
use tower::ServiceExt;
use waypost_balancer::picker::{Pick, PickInfo};
use waypost_balancer::{Channel, Connection};
use waypost_integration::backend::Backend;

const SUBCHANNELS: usize = 1000;
const PATH: &str = "/movies.v1.MoviesService/GetMovie";

fn start_backends(runtime: &tokio::runtime::Runtime) -> Vec<Backend> {
    runtime.block_on(async {
        let mut backends = Vec::with_capacity(SUBCHANNELS);
        for i in 0..SUBCHANNELS {
            let backend = Backend::start(&format!("b{i}")).await.expect("backend");
            // Ten load levels, for weighted_round_robin.
            let utilization = 0.1 + (i % 10) as f64 * 0.1;
            backend
                .orca()
                .set_cpu_utilization(utilization)
                .expect("valid");
            backend.orca().set_qps(100.0).expect("valid");
            backends.push(backend);
        }
        backends
    })
}

/// Calls through `channel` until its picks are weighted: 1,000 picks in a
/// row from one thread no longer reach each of the 1,000 endpoints once.
fn until_weighted(runtime: &tokio::runtime::Runtime, channel: &Channel) {
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = waypost_proto::movies::v1::movies_service_client::MoviesServiceClient::new(
            channel.clone(),
        );
        loop {
            // Each call's trailers carry its backend's load report.
            for _ in 0..2 * SUBCHANNELS {
                client
                    .get_movie(waypost_proto::movies::v1::MovieId { mid: 1 })
                    .await
                    .expect("a call");
            }
            let mut seen = std::collections::HashMap::new();
            for _ in 0..SUBCHANNELS {
                if let Pick::Ready(routed) = channel.pick(PATH) {
                    *seen.entry(routed.connection.id()).or_insert(0) += 1;
                }
            }
            if seen.values().any(|n| *n != 1) {
                return;
            }
            assert!(Instant::now() < deadline, "weights unused after 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// A channel over `backends` with `policy`, once every subchannel is READY
/// (ring_hash connects only what picks land on: picks with many keys wake
/// them all).
fn ready_channel(
    runtime: &tokio::runtime::Runtime,
    backends: &[Backend],
    policy: serde_json::Value,
) -> Channel {
    runtime.block_on(async {
        let list: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
        let channel = Channel::builder(format!("ipv4:{}", list.join(",")))
            .default_service_config(serde_json::json!({"loadBalancingConfig": [policy]}))
            .build()
            .expect("channel");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut key = 0u64;
        while channel.stats().subchannels_ready < SUBCHANNELS as u64 {
            assert!(
                Instant::now() < deadline,
                "subchannels not READY in 120 s: {:?}",
                channel.stats()
            );
            for _ in 0..200 {
                key += 1;
                let _ = channel.pick_with(&PickInfo::new(PATH, &user(key)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        channel
    })
}

/// Request headers with `x-user: user-<key>`.
fn user(key: u64) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", format!("user-{key}").parse().expect("a value"));
    headers
}

/// Runs `pick` `iters` times on each of two threads at once; returns the
/// mean wall time per pick per thread.
fn two_threads(iters: u64, pick: impl Fn() + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(2);
    let elapsed: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        pick();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    elapsed.into_iter().max().expect("two threads")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let backends = start_backends(&runtime);
    let channel = ready_channel(&runtime, &backends, serde_json::json!({"round_robin": {}}));
    let others = [
        (
            "waypost_ring_hash",
            ready_channel(
                &runtime,
                &backends,
                serde_json::json!({"ring_hash_experimental": {"requestHashHeader": "x-user"}}),
            ),
        ),
        (
            "waypost_least_request",
            ready_channel(
                &runtime,
                &backends,
                serde_json::json!({"least_request_experimental": {}}),
            ),
        ),
        (
            "waypost_weighted_round_robin",
            ready_channel(
                &runtime,
                &backends,
                serde_json::json!({"weighted_round_robin": {
                    "blackoutPeriod": "0s", "weightExpirationPeriod": "3600s",
                    "weightUpdatePeriod": "0.1s"}}),
            ),
        ),
        (
            "waypost_outlier_detection",
            ready_channel(
                &runtime,
                &backends,
                serde_json::json!({"outlier_detection_experimental": {
                    "failurePercentageEjection": {}, "childPolicy": [{"round_robin": {}}]}}),
            ),
        ),
    ];
    until_weighted(&runtime, &others[2].1);
    let headers = user(7);
    let connections: Vec<Connection> = (0..SUBCHANNELS)
        .filter_map(|_| match channel.pick(PATH) {
            Pick::Ready(routed) => Some(routed.connection),
            _ => None,
        })
        .collect();
    let cursor = AtomicUsize::new(0);
    let naive = || {
        let i = cursor.fetch_add(1, Ordering::Relaxed) % connections.len();
        black_box(connections[i].clone());
    };

    let mut p2c = {
        let services: Vec<_> = (0..SUBCHANNELS)
            .map(|_| {
                tower::load::Constant::new(
                    tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }),
                    0u64,
                )
            })
            .collect();
        tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services))
    };
    // Let p2c discover its services.
    futures_util::future::poll_fn(|cx| p2c.poll_ready(cx))
        .now_or_never()
        .expect("ready")
        .expect("ok");

    let mut group = c.benchmark_group("pick_1000_ready");
    group.bench_function("waypost_round_robin/1_thread", |b| {
        b.iter(|| black_box(channel.pick(black_box(PATH))))
    });
    group.bench_function("tower_p2c/1_thread", |b| {
        b.iter(|| {
            let ready = p2c
                .ready()
                .now_or_never()
                .expect("ready at once")
                .expect("ok");
            drop(black_box(ready.call(())));
        })
    });
    group.bench_function("naive_atomic_cursor/1_thread", |b| b.iter(naive));
    group.bench_function("waypost_round_robin/2_threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                black_box(channel.pick(black_box(PATH)));
            })
        })
    });
    group.bench_function("naive_atomic_cursor/2_threads", |b| {
        b.iter_custom(|iters| two_threads(iters, naive))
    });
    for (name, other) in &others {
        let pick = || black_box(other.pick_with(&PickInfo::new(black_box(PATH), &headers)));
        group.bench_function(format!("{name}/1_thread"), |b| b.iter(pick));
        group.bench_function(format!("{name}/2_threads"), |b| {
            b.iter_custom(|iters| {
                two_threads(iters, || {
                    pick();
                })
            })
        });
    }
    group.finish();
    drop(others);
    drop(channel);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
