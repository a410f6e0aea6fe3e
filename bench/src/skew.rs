//! `waypost-bench skew`: latency when one backend is slow.
//!
//! Four `movies.v1` backends in a child process, one ten times slower than
//! the others (`--fast-ms`, `--slow-ms`); 32 callers as fast as they can
//! for `--seconds` per variant: waypost round_robin, waypost
//! least_request (`choiceCount` 2, the default, and 4), waypost
//! weighted_round_robin (the backends report their measured load with
//! ORCA: calls in flight / `--orca-capacity` as utilization, and qps, so a
//! backend's weight is capacity / latency), and tonic `balance_list` (p2c
//! over zero load) as the named competitor. Each repetition measures the
//! variants in a rotated order; medians of p50 and p99 are reported, the
//! last stdout line is JSON.

use serde_json::json;
use tokio::time::Instant;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;

use crate::rpc::{spawn_backends_with, unpaced};
use crate::stats::median;

/// Arguments of `waypost-bench skew`.
#[derive(Debug, clap::Args)]
pub(crate) struct SkewArgs {
    /// Seconds per variant per repetition.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Added latency of the three fast backends, in ms.
    #[arg(long, default_value_t = 2)]
    fast_ms: u64,
    /// Added latency of the slow one, in ms.
    #[arg(long, default_value_t = 20)]
    slow_ms: u64,
    /// The capacity (calls in flight at 100 % utilization) the backends
    /// report their load against.
    #[arg(long, default_value_t = 8.0)]
    orca_capacity: f64,
}

const VARIANTS: [&str; 5] = [
    "round_robin",
    "least_request",
    "least_request_4",
    "weighted_round_robin",
    "tonic_balance",
];

pub(crate) async fn run(args: SkewArgs) -> Result<(), Box<dyn std::error::Error>> {
    let delays = [args.slow_ms, args.fast_ms, args.fast_ms, args.fast_ms];
    let (child, addrs) = spawn_backends_with(None, &delays, Some(args.orca_capacity)).await?;
    let waypost = |policy: serde_json::Value| {
        waypost_balancer::Channel::builder(format!("ipv4:{}", addrs.join(",")))
            .default_service_config(json!({"loadBalancingConfig": [policy]}))
            .build()
    };
    let round_robin = MoviesServiceClient::new(waypost(json!({"round_robin": {}}))?);
    let least_request =
        MoviesServiceClient::new(waypost(json!({"least_request_experimental": {}}))?);
    let least_request_4 = MoviesServiceClient::new(waypost(
        json!({"least_request_experimental": {"choiceCount": 4}}),
    )?);
    // A short blackout, so the 1 s warm-up covers it.
    let weighted = MoviesServiceClient::new(waypost(json!({"weighted_round_robin": {
        "blackoutPeriod": "0.5s", "weightUpdatePeriod": "0.2s"}}))?);
    let tonic_balance =
        MoviesServiceClient::new(tonic::transport::Channel::balance_list(addrs.iter().map(
            |a| tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("endpoint"),
        )));
    let measure = |variant: &str, seconds: u64| {
        let (rr, lr, lr4, wrr, tb) = (
            round_robin.clone(),
            least_request.clone(),
            least_request_4.clone(),
            weighted.clone(),
            tonic_balance.clone(),
        );
        let variant = variant.to_owned();
        let concurrency = args.concurrency;
        async move {
            match variant.as_str() {
                "round_robin" => unpaced(rr, concurrency, seconds).await,
                "least_request" => unpaced(lr, concurrency, seconds).await,
                "least_request_4" => unpaced(lr4, concurrency, seconds).await,
                "weighted_round_robin" => unpaced(wrr, concurrency, seconds).await,
                _ => unpaced(tb, concurrency, seconds).await,
            }
        }
    };
    eprintln!("backends {addrs:?}, delays {delays:?} ms; warming up each variant for 1 s");
    for variant in VARIANTS {
        measure(variant, 1).await;
    }
    let started = Instant::now();
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..args.reps {
        for k in 0..VARIANTS.len() {
            let i = (k + rep) % VARIANTS.len();
            let measured = measure(VARIANTS[i], args.seconds).await;
            eprintln!(
                "rep {rep} {:>20}: {:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs",
                VARIANTS[i], measured.0, measured.1, measured.2
            );
            results[i].push(measured);
        }
    }
    let med = |i: usize, f: fn(&(f64, f64, f64)) -> f64| {
        median(results[i].iter().map(f).collect()).round()
    };
    eprintln!(
        "\nmedians over {} repetitions ({:.0} s):",
        args.reps,
        started.elapsed().as_secs_f64()
    );
    for (i, name) in VARIANTS.iter().enumerate() {
        eprintln!(
            "  {name:>20}: p50 {:.0} µs, p99 {:.0} µs, {:.0} calls/s",
            med(i, |m| m.1),
            med(i, |m| m.2),
            med(i, |m| m.0)
        );
    }
    // Issue 16's goal, rep by rep: least_request's and weighted_round_robin's
    // p99 at most half of round_robin's and of tonic balance_list's.
    let mut goals = serde_json::Map::new();
    for (i, policy) in [(1, "least_request"), (3, "weighted_round_robin")] {
        for (j, other) in [(0, "round_robin"), (4, "tonic_balance")] {
            let ratios: Vec<f64> = results[i]
                .iter()
                .zip(&results[j])
                .map(|(a, b)| a.2 / b.2)
                .collect();
            let name = format!("{policy}_p99_vs_{other}");
            let figure = crate::stats::goal(&name, &ratios, 0.5, true);
            goals.insert(name, figure);
        }
    }
    println!(
        "{}",
        json!({
            "goals": goals,
            "machine": crate::stats::machine(),
            "round_robin_p50_us": med(0, |m| m.1), "round_robin_p99_us": med(0, |m| m.2),
            "least_request_p50_us": med(1, |m| m.1), "least_request_p99_us": med(1, |m| m.2),
            "least_request_4_p50_us": med(2, |m| m.1), "least_request_4_p99_us": med(2, |m| m.2),
            "weighted_round_robin_p50_us": med(3, |m| m.1),
            "weighted_round_robin_p99_us": med(3, |m| m.2),
            "tonic_balance_p50_us": med(4, |m| m.1), "tonic_balance_p99_us": med(4, |m| m.2),
            "round_robin_qps": med(0, |m| m.0), "least_request_qps": med(1, |m| m.0),
            "least_request_4_qps": med(2, |m| m.0), "weighted_round_robin_qps": med(3, |m| m.0),
            "tonic_balance_qps": med(4, |m| m.0),
        })
    );
    drop(child);
    Ok(())
}
