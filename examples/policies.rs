//! Balancing policies chosen by the service config, on real backends:
//! `ring_hash` keeps each user on one backend by a request header,
//! `least_request` steers calls away from a slow backend that
//! `round_robin` keeps feeding, and `weighted_round_robin` steers them
//! away from a backend that reports, with ORCA, that it is loaded.
//!
//! ```text
//! cargo run --example policies
//! ```
//!
//! Everything runs in this process on loopback: three `movies.v1`
//! backends, then four with one ten times slower than the others, then
//! three tonic servers that report their CPU utilization with
//! [`waypost::proto::orca::OrcaReporter`] (the server side of ORCA: a
//! tower layer for per-call reports and the out-of-band service), and a
//! `waypost::Channel` per policy (`ipv4:` targets, no DNS needed).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use waypost::Channel;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost::proto::movies::v1::movies_service_server::{MoviesService, MoviesServiceServer};
use waypost::proto::movies::v1::{Movie, MovieId, MovieQuery};
use waypost::proto::orca::OrcaReporter;
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
    /// Share of calls (in %) the loaded backend got with round_robin.
    pub loaded_round_robin: f64,
    /// The same with weighted_round_robin.
    pub loaded_weighted: f64,
}

/// A movies backend that reports its load with ORCA, as a real service
/// would: the figures live in an `OrcaReporter` the application updates.
struct Reporting {
    name: String,
}

#[tonic::async_trait]
impl MoviesService for Reporting {
    async fn get_movie(
        &self,
        request: tonic::Request<MovieId>,
    ) -> Result<tonic::Response<Movie>, tonic::Status> {
        Ok(tonic::Response::new(Movie {
            mid: request.into_inner().mid,
            movie_name: "Alien".into(),
            served_by: self.name.clone(),
            ..Default::default()
        }))
    }

    type QueryMoviesStream = futures_util::stream::Empty<Result<Movie, tonic::Status>>;

    async fn query_movies(
        &self,
        _request: tonic::Request<MovieQuery>,
    ) -> Result<tonic::Response<Self::QueryMoviesStream>, tonic::Status> {
        Ok(tonic::Response::new(futures_util::stream::empty()))
    }
}

/// Starts a tonic server named `name` reporting `cpu` utilization at 100
/// qps, per call (trailers) and out of band; its address.
async fn start_reporting(
    name: &str,
    cpu: f64,
) -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let reporter = OrcaReporter::new().with_min_interval(Duration::from_millis(100));
    reporter.set_cpu_utilization(cpu)?;
    reporter.set_qps(100.0)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .layer(reporter.layer())
        .add_service(MoviesServiceServer::new(Reporting {
            name: name.to_owned(),
        }))
        .add_service(reporter.service())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok(addr)
}

/// 1,400 calls over `addrs` with `policy` once weights had time to settle
/// (the first 600 calls are not counted); the share (in %) of the first.
async fn loaded_share(
    addrs: &[std::net::SocketAddr],
    policy: serde_json::Value,
) -> Result<f64, Box<dyn std::error::Error>> {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let channel = Channel::builder(format!("ipv4:{}", list.join(",")))
        .default_service_config(json!({"loadBalancingConfig": [policy]}))
        .build()?;
    let mut client = MoviesServiceClient::new(channel);
    let started = tokio::time::Instant::now();
    // Calls carry the reports; the policy waits out its blackout.
    while started.elapsed() < Duration::from_millis(700) {
        call(&mut client, None).await?;
    }
    let mut loaded = 0;
    for _ in 0..1400 {
        if call(&mut client, None).await? == "loaded" {
            loaded += 1;
        }
    }
    Ok(f64::from(loaded) * 100.0 / 1400.0)
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

    // weighted_round_robin: a backend reporting 90 % CPU gets fewer calls.
    let addrs = [
        start_reporting("loaded", 0.9).await?,
        start_reporting("calm-1", 0.3).await?,
        start_reporting("calm-2", 0.3).await?,
    ];
    println!("\nthree backends reporting CPU utilization with ORCA: loaded 0.9, calm 0.3 and 0.3:");
    let loaded_round_robin = loaded_share(&addrs, json!({"round_robin": {}})).await?;
    println!("  round_robin          sends the loaded one {loaded_round_robin:>4.1} % of calls");
    let loaded_weighted = loaded_share(
        &addrs,
        json!({"weighted_round_robin": {"blackoutPeriod": "0.5s", "weightUpdatePeriod": "0.1s"}}),
    )
    .await?;
    println!("  weighted_round_robin sends the loaded one {loaded_weighted:>4.1} % of calls");
    Ok(Observed {
        by_user,
        slow_round_robin,
        slow_least_request,
        loaded_round_robin,
        loaded_weighted,
    })
}
