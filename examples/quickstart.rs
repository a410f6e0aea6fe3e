//! The quickstart: three real tonic backends found through DNS, and a
//! waypost channel that balances calls over them and steers around an
//! unhealthy one.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Everything runs in this process on loopback: a DNS server answering for
//! `movies.demo` (three A records and a `_grpc_config` TXT record that asks
//! for `round_robin` with health checking), three `movies.v1` backends on
//! 127.0.0.1–3, and a `waypost::Channel` used by the generated tonic client.
//! The standalone balancer (`waypost serve`) will take this demo's place as
//! the README's first command when it lands.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use waypost::Channel;
use waypost::proto::movies::v1::MovieId;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_integration::backend::Backend;
use waypost_integration::dns::DnsServer;

const CALLS: usize = 30;

async fn spread(
    client: &mut MoviesServiceClient<Channel>,
) -> Result<BTreeMap<String, usize>, tonic::Status> {
    let mut spread = BTreeMap::new();
    for i in 0..CALLS {
        let mut request = tonic::Request::new(MovieId {
            mid: 1 + (i % 5) as i32,
        });
        request.set_timeout(Duration::from_secs(5));
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

/// How calls spread before and after backend-2 turned unhealthy.
pub struct Observed {
    /// Calls per backend with all three healthy.
    pub healthy: BTreeMap<String, usize>,
    /// Calls per backend after backend-2 reported NOT_SERVING.
    pub after: BTreeMap<String, usize>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await.map(|_| ())
}

/// Runs the demo, printing as it goes.
pub async fn run() -> Result<Observed, Box<dyn std::error::Error>> {
    // Three backends on three loopback addresses, one port.
    let b0 = Backend::start_at(
        "backend-1",
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 0)),
    )
    .await?;
    let port = b0.addr().port();
    let b1 = Backend::start_at(
        "backend-2",
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port)),
    )
    .await?;
    let b2 = Backend::start_at(
        "backend-3",
        SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), port)),
    )
    .await?;
    for b in [&b0, &b1, &b2] {
        println!("{} listening on {}", b.name(), b.addr());
    }

    // DNS: the addresses, and a service config choosing round_robin with health checks.
    let dns = DnsServer::start("demo.").await?;
    let ips = [
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
    ];
    dns.set_a("movies.demo.", &ips, 5).await?;
    let config = r#"grpc_config=[{"serviceConfig":{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":"movies.v1.MoviesService"}}}]"#;
    dns.set_txt("_grpc_config.movies.demo.", config, 5).await?;
    let target = format!("dns://{}/movies.demo:{port}", dns.addr());
    println!("DNS server on {}; target {target}", dns.addr());

    let channel = Channel::builder(target).build()?;
    let mut client = MoviesServiceClient::new(channel.clone());
    // The first calls may land before every backend is connected; warm up
    // until all three have answered.
    for _ in 0..20 {
        if spread(&mut client).await?.len() == 3 {
            break;
        }
    }
    let healthy = spread(&mut client).await?;
    show(
        &format!("{CALLS} calls, round_robin over three healthy backends:"),
        &healthy,
    );

    b1.set_serving(false);
    println!("\nbackend-2 now reports NOT_SERVING on grpc.health.v1 …");
    let mut after = spread(&mut client).await?;
    for _ in 0..20 {
        if !after.contains_key("backend-2") {
            break;
        }
        after = spread(&mut client).await?;
    }
    show(
        &format!("{CALLS} calls after backend-2 turned unhealthy:"),
        &after,
    );

    let stats = channel.stats();
    println!(
        "\nchannel {}: {} picks, {} connects, {} subchannels READY",
        channel.state(),
        stats.picks,
        stats.connects,
        stats.subchannels_ready
    );
    println!("(coming next: `waypost serve`, the standalone grpc.lb.v1 balancer, runs this demo)");
    Ok(Observed { healthy, after })
}
