//! Service registration in etcd: a backend that registers itself on start
//! (waypost's registrar, lease kept alive), deregisters on SIGTERM, and —
//! killed with SIGKILL — disappears once its lease's TTL runs out. Clients
//! reach it through `etcd:///movies`.
//!
//! ```text
//! cargo run --example etcd_registration                       # the whole demo (needs etcd-server installed)
//! cargo run --example etcd_registration -- --etcd 127.0.0.1:2379   # just a backend, against your etcd
//! ```
//!
//! The demo starts a real `etcd` on free loopback ports, runs this same
//! program as a backend in a child process, calls it through a waypost
//! channel on `etcd:///movies`, stops it with SIGTERM (gone at once), runs
//! another and kills it with SIGKILL (gone after the TTL).

#[allow(dead_code, unreachable_pub)]
#[path = "support/movies.rs"]
mod movies;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use waypost::Channel;
use waypost::proto::movies::v1::MovieId;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost::resolver::ResolverRegistry;
use waypost::resolver::etcd::{EtcdResolverBuilder, Registration, RegistrationOptions};
use waypost_integration::etcd::EtcdServer;

/// The lease TTL the demo's backends use.
pub const TTL: Duration = Duration::from_secs(3);

/// What the demo observed (the test checks it).
#[derive(Debug, Default)]
pub struct Observed {
    /// Who answered a call through `etcd:///movies`.
    pub served_by: String,
    /// From SIGTERM until the endpoint left etcd.
    pub gone_after_sigterm: Duration,
    /// From SIGKILL until the endpoint left etcd.
    pub gone_after_sigkill: Duration,
}

/// Runs one backend: serve, register, wait for SIGTERM or Ctrl-C,
/// deregister.
async fn backend(etcd: String, ttl: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("backend-{}", std::process::id());
    let server = movies::serve(
        &name,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        None,
        movies::Layers::default(),
    )
    .await?;
    let client = waypost::resolver::etcd::connect(&[etcd]).await?;
    let registration = Registration::register(
        client,
        RegistrationOptions::new("movies", server.addr.to_string()).ttl(ttl),
    )
    .await?;
    println!("registered {} as {}", server.addr, registration.key());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    registration.shutdown().await?;
    println!("deregistered {}", server.addr);
    Ok(())
}

/// Starts a backend child process and waits for its "registered" line.
async fn start_backend(
    program: &std::path::Path,
    etcd: &str,
) -> Result<tokio::process::Child, Box<dyn std::error::Error>> {
    let mut child = tokio::process::Command::new(program)
        .args(["--etcd", etcd, "--ttl", &TTL.as_secs().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await??
        .ok_or("the backend exited before registering")?;
    println!("backend: {line}");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("backend: {line}");
        }
    });
    Ok(child)
}

/// Waits until etcd lists `n` endpoints for `movies`.
async fn wait_for_endpoints(
    resolution: &mut waypost::resolver::Resolution,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = resolution.current();
        if current
            .state
            .as_ref()
            .is_some_and(|s| s.endpoints.len() == n)
        {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, resolution.changed()).await??;
    }
}

fn signal(child: &tokio::process::Child, signal: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pid = child.id().ok_or("the backend already exited")?;
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(format!("kill {signal} {pid} failed").into());
    }
    Ok(())
}

/// The demo, with `program` as the backend executable (this example's
/// own binary).
pub async fn run(program: &std::path::Path) -> Result<Observed, Box<dyn std::error::Error>> {
    let mut observed = Observed::default();
    let etcd = EtcdServer::start().await?;
    println!("etcd on {}", etcd.addr());
    let client = waypost::resolver::etcd::connect(&[etcd.addr()]).await?;
    let resolvers = ResolverRegistry::new();
    resolvers.register(EtcdResolverBuilder::new(client));
    // The same registry resolves for the channel and for watching etcd here.
    let mut resolution = resolvers.resolve("etcd:///movies")?;
    let channel = Channel::builder("etcd:///movies")
        .resolvers(resolvers)
        .build()?;
    let mut movies_client = MoviesServiceClient::new(channel);

    // 1. A backend registers; a call through etcd:///movies reaches it.
    let first = start_backend(program, &etcd.addr()).await?;
    wait_for_endpoints(&mut resolution, 1).await?;
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(10));
    request.extensions_mut().insert(waypost::WaitForReady(true));
    observed.served_by = movies_client
        .get_movie(request)
        .await?
        .into_inner()
        .served_by;
    println!(
        "GetMovie through etcd:///movies → served by {}",
        observed.served_by
    );

    // 2. SIGTERM: the backend deregisters before exiting.
    let mut first = first;
    let started = Instant::now();
    signal(&first, "-TERM")?;
    wait_for_endpoints(&mut resolution, 0).await?;
    observed.gone_after_sigterm = started.elapsed();
    first.wait().await?;
    println!(
        "SIGTERM → gone from etcd after {:?}",
        observed.gone_after_sigterm
    );

    // 3. SIGKILL: nothing deregisters; the lease expires after its TTL.
    let mut second = start_backend(program, &etcd.addr()).await?;
    wait_for_endpoints(&mut resolution, 1).await?;
    let started = Instant::now();
    signal(&second, "-KILL")?;
    second.wait().await?;
    wait_for_endpoints(&mut resolution, 0).await?;
    observed.gone_after_sigkill = started.elapsed();
    println!(
        "SIGKILL → gone from etcd after {:?} (lease TTL {TTL:?})",
        observed.gone_after_sigkill
    );
    Ok(observed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(etcd) = flag("--etcd") {
        let ttl = flag("--ttl")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(10));
        return backend(etcd, ttl).await;
    }
    run(&std::env::current_exe()?).await?;
    Ok(())
}
