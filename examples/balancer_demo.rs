//! The main demo: a waypost client balanced by `waypost serve`.
//!
//! Run by `scripts/demo` (the README's first command), which starts
//! `waypost serve` with its embedded default registry (BalanceLoad on
//! 127.0.0.1:50050, admin on 127.0.0.1:50051, service `movies` with backends
//! 127.0.0.1:50061–50063) and then this program, which:
//!
//! 1. starts the three `movies.v1` backends on those ports;
//! 2. builds a `waypost::Channel` with the `grpclb` policy pointed at the
//!    balancer, and prints how 30 calls spread over the backends;
//! 3. drains backend-2 through the balancer's admin endpoint and prints the
//!    spread again, then undoes the drain.
//!
//! ```text
//! cargo run -p waypost-lbserver --bin waypost -- serve &   # the embedded registry
//! cargo run --example balancer_demo
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypost::Channel;
use waypost::proto::movies::v1::MovieId;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_integration::backend::Backend;

const CALLS: usize = 30;

/// Where the balancer and the backends are.
pub struct Setup {
    /// BalanceLoad address.
    pub balancer: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// The three backend ports (on 127.0.0.1).
    pub backend_ports: [u16; 3],
}

/// What the demo saw.
pub struct Observed {
    /// Calls per backend with all three listed.
    pub all: BTreeMap<String, usize>,
    /// Calls per backend while backend-2 was drained.
    pub drained: BTreeMap<String, usize>,
}

async fn spread(
    client: &mut MoviesServiceClient<Channel>,
) -> Result<BTreeMap<String, usize>, tonic::Status> {
    let mut spread = BTreeMap::new();
    for i in 0..CALLS {
        let mut request = tonic::Request::new(MovieId {
            mid: 1 + (i % 5) as i32,
        });
        request.set_timeout(Duration::from_secs(10));
        request.extensions_mut().insert(waypost::WaitForReady(true));
        let movie = client.get_movie(request).await?.into_inner();
        *spread.entry(movie.served_by).or_default() += 1;
    }
    Ok(spread)
}

fn show(title: &str, spread: &BTreeMap<String, usize>) {
    println!("\n{title}");
    for (backend, calls) in spread {
        println!("  {backend}: {calls:>2} {}", "#".repeat(*calls));
    }
}

async fn admin(
    admin: SocketAddr,
    method: &str,
    path: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// Waits (at most 30 s) until the balancer's `/status` says `service` has
/// `n` healthy backends: it probes them before listing them.
async fn until_healthy(
    at: SocketAddr,
    service: &str,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = admin(at, "GET", "/status").await?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let healthy = status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == service)
            .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
            .filter(|b| b["healthy"] == true)
            .count();
        if healthy >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("only {healthy} of {n} backends healthy after 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls until `pred` holds for a batch (at most 20 batches).
async fn settle(
    client: &mut MoviesServiceClient<Channel>,
    pred: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> Result<BTreeMap<String, usize>, Box<dyn std::error::Error>> {
    let mut last = BTreeMap::new();
    for _ in 0..20 {
        last = spread(client).await?;
        if pred(&last) {
            return Ok(last);
        }
    }
    Err(format!("the spread never settled: {last:?}").into())
}

/// Runs the demo against a balancer at `setup`.
pub async fn run(setup: Setup) -> Result<Observed, Box<dyn std::error::Error>> {
    let mut backends = Vec::new();
    for (i, port) in setup.backend_ports.iter().enumerate() {
        let backend = Backend::start_at(
            &format!("backend-{}", i + 1),
            SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
        )
        .await
        .map_err(|e| format!("cannot start a backend on port {port}: {e}"))?;
        println!("{} listening on {}", backend.name(), backend.addr());
        backends.push(backend);
    }

    let config = serde_json::json!({"loadBalancingConfig": [{"grpclb": {
        "serviceName": "movies",
        "balancerAddresses": [setup.balancer.to_string()],
    }}]});
    let channel = Channel::builder("passthrough:///movies")
        .default_service_config(config)
        .build()?;
    let mut client = MoviesServiceClient::new(channel.clone());
    println!("client: grpclb via the balancer at {}", setup.balancer);

    // The balancer probes the backends before listing them: wait until it
    // reports all three healthy, and until this client has reached each
    // (its connections are up), so the spread shown is the steady one.
    until_healthy(setup.admin, "movies", 3).await?;
    settle(&mut client, |s| s.len() == 3).await?;
    let all = spread(&mut client).await?;
    show(
        &format!("{CALLS} calls, balanced by waypost serve over three backends:"),
        &all,
    );

    let drain = format!(
        "/drain?service=movies&backend=127.0.0.1:{}",
        setup.backend_ports[1]
    );
    let answer = admin(setup.admin, "POST", &drain).await?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("drain failed: {answer}").into());
    }
    println!("\ndrained backend-2 at the balancer (POST {drain}) …");
    settle(&mut client, |s| !s.contains_key("backend-2")).await?;
    let drained = spread(&mut client).await?;
    show(
        &format!("{CALLS} calls while backend-2 is drained:"),
        &drained,
    );
    admin(setup.admin, "POST", &format!("{drain}&undo=true")).await?;

    let stats = channel.stats();
    println!(
        "\nchannel {}: {} picks, {} subchannels READY",
        channel.state(),
        stats.picks,
        stats.subchannels_ready
    );
    println!(
        "balancer status: curl http://{}/status   metrics: curl http://{}/metrics",
        setup.admin, setup.admin
    );
    Ok(Observed { all, drained })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let setup = Setup {
        balancer: "127.0.0.1:50050".parse()?,
        admin: "127.0.0.1:50051".parse()?,
        backend_ports: [50061, 50062, 50063],
    };
    run(setup).await.map(|_| ())
}
