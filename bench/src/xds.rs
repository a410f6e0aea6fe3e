//! `waypost-bench xds`: how fast an `xds:///` channel follows its
//! management server, and what a pick costs through the xDS policy tree.
//!
//! A scripted ADS server (the test harness's) serves a listener, a cluster
//! and an assignment of one backend; then `--updates` times it adds the
//! next backend to the assignment and the bench calls until a call lands
//! on it: the push → first call time, p50/p99. Then the pick cost
//! (`Channel::pick`, one thread, `--picks` picks) through the whole tree
//! (cluster_impl → round_robin under the xds resolver) beside a plain
//! round_robin channel over the same backends, in the same run. Last, the
//! client CPU per call: `--rounds` rounds of `--seconds` s at `--rate`
//! calls/s on each channel in turn, against backends in a child process
//! (so only the client's CPU is counted), the xDS channel over the same
//! three backends as the plain round_robin one.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use waypost_balancer::Channel;
use waypost_integration::ads::AdsServer;
use waypost_integration::ads::build::{
    CLUSTER, ENDPOINTS, LISTENER, api_listener, assignment, eds_cluster, response,
};
use waypost_integration::backend::Backend;
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;

use crate::stats::percentile;

/// Arguments of `waypost-bench xds`.
#[derive(Debug, clap::Args)]
pub(crate) struct XdsArgs {
    /// EDS updates, each adding one backend.
    #[arg(long, default_value_t = 200)]
    updates: usize,
    /// Picks timed per channel.
    #[arg(long, default_value_t = 2_000_000)]
    picks: u64,
    /// Calls per second in the per-call CPU phase.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Seconds per round of the per-call CPU phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the per-call CPU phase (each channel once per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const PATH: &str = "/movies.v1.MoviesService/GetMovie";

async fn call(client: &mut MoviesServiceClient<Channel>) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(10));
    request
        .extensions_mut()
        .insert(waypost_balancer::WaitForReady(true));
    Ok(client.get_movie(request).await?.into_inner().served_by)
}

/// Nanoseconds per `Channel::pick`, over `picks` picks.
fn pick_cost(channel: &Channel, picks: u64) -> f64 {
    let started = std::time::Instant::now();
    for _ in 0..picks {
        std::hint::black_box(channel.pick(std::hint::black_box(PATH)));
    }
    started.elapsed().as_nanos() as f64 / picks as f64
}

/// Calls until every one of `names` has served (at most 60 s).
async fn until_all_serve(
    client: &mut MoviesServiceClient<Channel>,
    names: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < names.len() {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} backends served within 60 s",
                seen.len(),
                names.len()
            )
            .into());
        }
        seen.insert(call(client).await?);
    }
    Ok(())
}

pub(crate) async fn run(args: XdsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut backends = Vec::with_capacity(args.updates + 1);
    for i in 0..=args.updates {
        backends.push(Backend::start(&format!("b{i}")).await?);
    }
    let addrs: Vec<std::net::SocketAddr> = backends.iter().map(Backend::addr).collect();
    let server = AdsServer::start().await?;
    server.set(response(
        LISTENER,
        "0",
        &[api_listener("bench", "bench-cluster")],
    ));
    server.set(response(CLUSTER, "0", &[eds_cluster("bench-cluster")]));
    server.set(response(
        ENDPOINTS,
        "0",
        &[assignment("bench-cluster", &addrs[..1])],
    ));
    let bootstrap = waypost_xds::bootstrap::Bootstrap::from_json(&server.bootstrap_json("bench"))?;
    let resolvers = waypost_resolver::ResolverRegistry::new();
    resolvers.register(waypost_xds::resolver::XdsResolverBuilder::with_bootstrap(
        bootstrap,
    ));
    let channel = Channel::builder("xds:///bench")
        .resolvers(resolvers)
        .build()?;
    let mut client = MoviesServiceClient::new(channel.clone());
    call(&mut client).await?;

    eprintln!("{} EDS updates, each adding a backend", args.updates);
    let mut delays = Vec::with_capacity(args.updates);
    for i in 1..=args.updates {
        let pushed = Instant::now();
        server.set(response(
            ENDPOINTS,
            &i.to_string(),
            &[assignment("bench-cluster", &addrs[..=i])],
        ));
        let wanted = backends[i].name().to_owned();
        let deadline = pushed + Duration::from_secs(10);
        // Round robin over i+1 backends reaches the new one within i+1
        // calls once it is READY.
        loop {
            if call(&mut client).await? == wanted {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("update {i}: no call reached {wanted} within 10 s").into());
            }
        }
        delays.push(pushed.elapsed());
    }
    let p50 = percentile(&mut delays, 50.0);
    let p99 = percentile(&mut delays, 99.0);
    eprintln!("push → first call on the new backend: p50 {p50:?}, p99 {p99:?}");

    // Pick cost: the xDS tree beside a plain round_robin channel.
    let names: Vec<String> = backends.iter().map(|b| b.name().to_owned()).collect();
    until_all_serve(&mut client, &names).await?;
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let plain = Channel::builder(format!("ipv4:{}", list.join(",")))
        .default_service_config(json!({"loadBalancingConfig": [{"round_robin": {}}]}))
        .build()?;
    let mut plain_client = MoviesServiceClient::new(plain.clone());
    until_all_serve(&mut plain_client, &names).await?;
    let mut xds_ns = Vec::new();
    let mut plain_ns = Vec::new();
    for _ in 0..3 {
        xds_ns.push(pick_cost(&channel, args.picks));
        plain_ns.push(pick_cost(&plain, args.picks));
    }
    let xds_pick = crate::stats::median(xds_ns.clone());
    let plain_pick = crate::stats::median(plain_ns.clone());
    eprintln!(
        "pick over {} backends: xds tree {xds_pick:.1} ns (rounds {xds_ns:.1?}), plain round_robin {plain_pick:.1} ns (rounds {plain_ns:.1?}), ratio {:.2}",
        addrs.len(),
        xds_pick / plain_pick
    );
    let (xds_cpu, plain_cpu) = per_call_cpu(&server, &args).await?;
    let xds_us = crate::stats::median(xds_cpu.clone());
    let plain_us = crate::stats::median(plain_cpu.clone());
    let ratios_per_round: Vec<f64> = xds_cpu.iter().zip(&plain_cpu).map(|(x, p)| x / p).collect();
    let met_every_round = ratios_per_round.iter().all(|r| *r <= 1.15);
    eprintln!(
        "client CPU per call: xds {xds_us:.2} µs (rounds {xds_cpu:.2?}), plain round_robin {plain_us:.2} µs (rounds {plain_cpu:.2?}), ratio {:.2}",
        xds_us / plain_us
    );
    println!(
        "{}",
        json!({
            "updates": args.updates,
            "push_to_first_call_p50_ms": p50.as_secs_f64() * 1e3,
            "push_to_first_call_p99_ms": p99.as_secs_f64() * 1e3,
            "xds_pick_ns": xds_pick, "plain_round_robin_pick_ns": plain_pick,
            "pick_ratio": xds_pick / plain_pick,
            "xds_cpu_us_per_call": xds_us, "plain_cpu_us_per_call": plain_us,
            "xds_cpu_rounds": xds_cpu, "plain_cpu_rounds": plain_cpu,
            "cpu_ratio": xds_us / plain_us,
            "cpu_goal_met_in_every_round": met_every_round,
            "cpu_verdict": crate::stats::verdict(&ratios_per_round, 1.15, true),
            "machine": crate::stats::machine(),
        })
    );
    Ok(())
}

/// Client CPU µs per call, per round: an `xds:///` channel (served by
/// `server`) and a plain round_robin channel over the same three backends
/// in a child process, taking turns.
async fn per_call_cpu(
    server: &AdsServer,
    args: &XdsArgs,
) -> Result<(Vec<f64>, Vec<f64>), Box<dyn std::error::Error>> {
    let (_child, addrs) = crate::rpc::spawn_backends_with(None, &[], None).await?;
    let addrs: Vec<std::net::SocketAddr> =
        addrs.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    // (LDS and CDS are full state: the first channel's resources stay.)
    server.set(response(
        LISTENER,
        "cpu",
        &[
            api_listener("bench", "bench-cluster"),
            api_listener("cpu", "cpu-cluster"),
        ],
    ));
    server.set(response(
        CLUSTER,
        "cpu",
        &[eds_cluster("bench-cluster"), eds_cluster("cpu-cluster")],
    ));
    server.set(response(
        ENDPOINTS,
        "cpu",
        &[assignment("cpu-cluster", &addrs)],
    ));
    let bootstrap = waypost_xds::bootstrap::Bootstrap::from_json(&server.bootstrap_json("bench"))?;
    let resolvers = waypost_resolver::ResolverRegistry::new();
    resolvers.register(waypost_xds::resolver::XdsResolverBuilder::with_bootstrap(
        bootstrap,
    ));
    let xds = Channel::builder("xds:///cpu")
        .resolvers(resolvers)
        .build()?;
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let plain = Channel::builder(format!("ipv4:{}", list.join(",")))
        .default_service_config(json!({"loadBalancingConfig": [{"round_robin": {}}]}))
        .build()?;
    let (mut xds_client, mut plain_client) = (
        MoviesServiceClient::new(xds.clone()),
        MoviesServiceClient::new(plain.clone()),
    );
    // Warm both: every backend connected.
    for _ in 0..50 {
        call(&mut xds_client).await?;
        call(&mut plain_client).await?;
    }
    let (mut xds_us, mut plain_us) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (x, _) = crate::rpc::paced(xds_client.clone(), args.rate, args.seconds).await;
        let (p, _) = crate::rpc::paced(plain_client.clone(), args.rate, args.seconds).await;
        eprintln!("round {round}: client CPU per call xds {x:.2} µs, plain round_robin {p:.2} µs");
        xds_us.push(x);
        plain_us.push(p);
    }
    Ok((xds_us, plain_us))
}
