//! `waypost-bench rpc`: the client-side cost of balancing a unary call.
//!
//! Four `movies.v1` backends run in a child process (so their CPU is not
//! counted); the bench process is the client. Four variants, all driving the
//! same generated `MoviesServiceClient`:
//!
//! - `waypost`: a waypost `Channel`, round_robin over the 4 backends;
//! - `tonic_balance`: tonic's `Channel::balance_list` over the same 4;
//! - `tonic_single`: a plain tonic `Channel` to one backend;
//! - `floor`: a bare hyper HTTP/2 connection to one backend, no balancing;
//! - `waypost_single`: a waypost `Channel` to that one backend, which
//!   separates waypost's own per-call cost from the cost of spreading calls
//!   over four connections;
//! - `waypost_prometheus`, `waypost_otel`: the `waypost` channel recording
//!   gRPC's client metrics (A66) into a prometheus-client registry, or an
//!   OpenTelemetry SDK meter provider: their CPU per call over plain
//!   `waypost`'s is the metrics' cost (goal ≤ 1.05×).
//!
//! With `--tls` every variant speaks TLS (rustls with ring everywhere): the
//! backends are tonic servers with tonic's TLS, waypost uses its
//! `ClientTlsConfig`, tonic its own `ClientTlsConfig`, and the floor is
//! bare hyper over tokio-rustls. The run also measures the client CPU of
//! one full TLS handshake (no session resumption) through waypost's
//! dialer.
//!
//! Every variant is warmed up first (the first measured in a process runs
//! slow), then each repetition measures them in a rotated order, in two
//! phases: **paced** at a fixed total rate, measuring this process's CPU
//! time per call (from `/proc/self/stat`, so CPU is compared at equal
//! throughput); **unpaced** with N concurrent callers, measuring calls/s and
//! latency percentiles. Results are medians over the repetitions; the last
//! stdout line is JSON.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tonic::codegen::StdError;
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;

use waypost_balancer::metrics::ClientMetrics;

use crate::stats::{median, percentile};

/// Arguments of `waypost-bench rpc`.
#[derive(Debug, clap::Args)]
pub(crate) struct RpcArgs {
    /// Seconds per phase per variant.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Total calls per second in the paced phase.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Concurrent callers in the unpaced phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Every variant over TLS.
    #[arg(long)]
    tls: bool,
}

/// Arguments of the internal `rpc-backends`.
#[derive(Debug, clap::Args)]
pub(crate) struct BackendArgs {
    /// Serve TLS with this certificate (PEM)…
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// …and this key (PEM).
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// Added latency per backend, in ms, comma-separated (plaintext only).
    #[arg(long, value_delimiter = ',')]
    delays_ms: Vec<u64>,
    /// Report measured load with ORCA (calls in flight / this capacity;
    /// plaintext only).
    #[arg(long)]
    orca_capacity: Option<f64>,
}

/// The name the backends' certificate is for.
const TLS_NAME: &str = "movies.bench";

/// The TLS material of a `--tls` run: a CA, and the backends' certificate
/// in files the child reads.
pub(crate) struct BenchTls {
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl BenchTls {
    fn new() -> Result<BenchTls, Box<dyn std::error::Error>> {
        let pki = waypost_integration::pki::TestPki::new("waypost bench CA");
        let server = pki.server(&[TLS_NAME]);
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("cert.pem"), &server.cert_pem)?;
        std::fs::write(dir.path().join("key.pem"), &server.key_pem)?;
        Ok(BenchTls {
            ca_pem: pki.ca_pem().to_owned(),
            dir,
        })
    }

    fn waypost(&self) -> waypost_balancer::ClientTlsConfig {
        waypost_balancer::ClientTlsConfig::new()
            .ca_certificate(waypost_balancer::Certificate::from_pem(&self.ca_pem))
            .domain_name(TLS_NAME)
    }

    fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(TLS_NAME)
    }
}

const VARIANTS: [&str; 7] = [
    "waypost",
    "tonic_balance",
    "tonic_single",
    "floor",
    "waypost_single",
    "waypost_prometheus",
    "waypost_otel",
];

/// Runs in the child: four backends until stdin closes.
pub(crate) async fn backends(args: BackendArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut plain = Vec::new();
    let mut tls = Vec::new();
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let identity = waypost_integration::pki::Pem {
                cert_pem: std::fs::read_to_string(cert)?,
                key_pem: std::fs::read_to_string(key)?,
            };
            for i in 0..4 {
                tls.push(
                    waypost_integration::tls_backend::TlsBackend::start(
                        &format!("b{i}"),
                        &identity,
                        None,
                    )
                    .await?,
                );
            }
        }
        _ => {
            plain = waypost_integration::backend::start_backends(4).await?;
            for (backend, ms) in plain.iter().zip(&args.delays_ms) {
                backend.set_delay(Duration::from_millis(*ms));
            }
            if let Some(capacity) = args.orca_capacity {
                for backend in &plain {
                    backend.report_measured_load(capacity);
                }
            }
        }
    }
    let addrs: Vec<String> = plain
        .iter()
        .map(|b| b.addr().to_string())
        .chain(tls.iter().map(|b| b.addr().to_string()))
        .collect();
    println!("BACKENDS {}", addrs.join(","));
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    Ok(())
}

/// A bare hyper HTTP/2 connection as a tower service: the floor.
#[derive(Clone)]
struct Bare {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    authority: http::uri::Authority,
    scheme: http::uri::Scheme,
}

impl tower::Service<http::Request<tonic::body::Body>> for Bare {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        *request.uri_mut() = http::Uri::from_parts(parts).expect("valid URI");
        Box::pin(self.send.send_request(request))
    }
}

async fn bare(addr: &str, tls: Option<&BenchTls>) -> Result<Bare, Box<dyn std::error::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .clone();
    let (send, scheme) = match tls {
        None => {
            let (send, connection) = builder
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
            tokio::spawn(connection);
            (send, http::uri::Scheme::HTTP)
        }
        Some(tls) => {
            let config = tls.waypost().rustls_config()?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(TLS_NAME)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            let (send, connection) = builder
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
            tokio::spawn(connection);
            (send, http::uri::Scheme::HTTPS)
        }
    };
    Ok(Bare {
        send,
        authority: addr.parse()?,
        scheme,
    })
}

/// Client CPU µs of one full TLS handshake (TCP connect included, no
/// session resumption) through waypost's dialer, over `count` handshakes.
async fn handshake_cpu(
    addr: &str,
    tls: &BenchTls,
    count: u32,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut config = (*tls.waypost().rustls_config()?).clone();
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    let config = std::sync::Arc::new(config);
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(TLS_NAME)?;
    let before = cpu_time();
    for _ in 0..count {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name.clone(), stream)
            .await?;
        drop(tls);
    }
    Ok((cpu_time() - before).as_secs_f64() * 1e6 / f64::from(count))
}

fn cpu_time() -> Duration {
    crate::stats::cpu_time("/proc/self/stat")
}

/// What one phase measured.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    cpu_us_per_call: f64,
    /// Socket reads and writes per call in the paced phase.
    syscalls_per_call: f64,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Calls at `rate` per second for `seconds`; returns CPU µs per call and
/// read/write system calls per call.
pub(crate) async fn paced<T>(client: MoviesServiceClient<T>, rate: u64, seconds: u64) -> (f64, f64)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let per_tick = rate / 1000;
    let ticks = seconds * 1000;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time();
    let syscalls_before = crate::stats::read_write_syscalls();
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ticks {
        interval.tick().await;
        for _ in 0..per_tick {
            let mut client = client.clone();
            let (done, failed) = (done.clone(), failed.clone());
            tasks.spawn(async move {
                match client.get_movie(MovieId { mid: 1 }).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let cpu = cpu_time() - cpu_before;
    let syscalls = crate::stats::read_write_syscalls() - syscalls_before;
    let calls = done.load(Ordering::Relaxed).max(1);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "calls failed in the paced phase"
    );
    (
        cpu.as_secs_f64() * 1e6 / calls as f64,
        syscalls as f64 / calls as f64,
    )
}

/// `concurrency` callers as fast as they can for `seconds`: calls/s, p50
/// and p99 in µs.
pub(crate) async fn unpaced<T>(
    client: MoviesServiceClient<T>,
    concurrency: usize,
    seconds: u64,
) -> (f64, f64, f64)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            while Instant::now() < deadline {
                let t = Instant::now();
                client.get_movie(MovieId { mid: 1 }).await.expect("call");
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.expect("caller"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let qps = all.len() as f64 / elapsed;
    let p50 = percentile(&mut all, 50.0).as_secs_f64() * 1e6;
    let p99 = percentile(&mut all, 99.0).as_secs_f64() * 1e6;
    (qps, p50, p99)
}

struct Clients {
    waypost: MoviesServiceClient<waypost_balancer::Channel>,
    tonic_balance: MoviesServiceClient<tonic::transport::Channel>,
    tonic_single: MoviesServiceClient<tonic::transport::Channel>,
    floor: MoviesServiceClient<Bare>,
    waypost_single: MoviesServiceClient<waypost_balancer::Channel>,
    /// The `waypost` channel recording gRPC's metrics into a
    /// prometheus-client registry.
    waypost_prometheus: MoviesServiceClient<waypost_balancer::Channel>,
    /// The same into an OpenTelemetry SDK meter provider.
    waypost_otel: MoviesServiceClient<waypost_balancer::Channel>,
    /// What the metered channels record into (kept alive with them).
    _metrics: (
        prometheus_client::registry::Registry,
        opentelemetry_sdk::metrics::SdkMeterProvider,
    ),
}

impl Clients {
    async fn paced(&self, variant: &str, rate: u64, seconds: u64) -> (f64, f64) {
        match variant {
            "waypost" => paced(self.waypost.clone(), rate, seconds).await,
            "tonic_balance" => paced(self.tonic_balance.clone(), rate, seconds).await,
            "tonic_single" => paced(self.tonic_single.clone(), rate, seconds).await,
            "waypost_single" => paced(self.waypost_single.clone(), rate, seconds).await,
            "waypost_prometheus" => paced(self.waypost_prometheus.clone(), rate, seconds).await,
            "waypost_otel" => paced(self.waypost_otel.clone(), rate, seconds).await,
            _ => paced(self.floor.clone(), rate, seconds).await,
        }
    }

    async fn unpaced(&self, variant: &str, concurrency: usize, seconds: u64) -> (f64, f64, f64) {
        match variant {
            "waypost" => unpaced(self.waypost.clone(), concurrency, seconds).await,
            "tonic_balance" => unpaced(self.tonic_balance.clone(), concurrency, seconds).await,
            "tonic_single" => unpaced(self.tonic_single.clone(), concurrency, seconds).await,
            "waypost_single" => unpaced(self.waypost_single.clone(), concurrency, seconds).await,
            "waypost_prometheus" => {
                unpaced(self.waypost_prometheus.clone(), concurrency, seconds).await
            }
            "waypost_otel" => unpaced(self.waypost_otel.clone(), concurrency, seconds).await,
            _ => unpaced(self.floor.clone(), concurrency, seconds).await,
        }
    }
}

/// The backends' child process (it ends when dropped) and their addresses.
async fn spawn_backends(
    tls: Option<&BenchTls>,
) -> Result<(tokio::process::Child, Vec<String>), Box<dyn std::error::Error>> {
    spawn_backends_with(tls, &[], None).await
}

/// [`spawn_backends`], each backend slowed by `delays_ms` (in order).
pub(crate) async fn spawn_backends_with(
    tls: Option<&BenchTls>,
    delays_ms: &[u64],
    orca_capacity: Option<f64>,
) -> Result<(tokio::process::Child, Vec<String>), Box<dyn std::error::Error>> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.arg("rpc-backends");
    if let Some(capacity) = orca_capacity {
        command.arg("--orca-capacity").arg(capacity.to_string());
    }
    if !delays_ms.is_empty() {
        let list: Vec<String> = delays_ms.iter().map(u64::to_string).collect();
        command.arg("--delays-ms").arg(list.join(","));
    }
    if let Some(tls) = tls {
        command
            .arg("--tls-cert")
            .arg(tls.dir.path().join("cert.pem"))
            .arg("--tls-key")
            .arg(tls.dir.path().join("key.pem"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let addrs: Vec<String> = loop {
        let line = lines
            .next_line()
            .await?
            .ok_or("the backend process exited")?;
        if let Some(list) = line.strip_prefix("BACKENDS ") {
            break list.split(',').map(str::to_owned).collect();
        }
    };
    eprintln!("backends (child pid {:?}): {addrs:?}", child.id());
    Ok((child, addrs))
}

impl Clients {
    /// Every variant, connected and (for waypost) READY.
    async fn connect(
        addrs: &[String],
        tls: Option<&BenchTls>,
    ) -> Result<Clients, Box<dyn std::error::Error>> {
        let waypost_channel = |target: String, metrics: Option<ClientMetrics>| {
            let mut builder = waypost_balancer::Channel::builder(target)
                .default_service_config(json!({"loadBalancingConfig": [{"round_robin": {}}]}));
            if let Some(tls) = tls {
                builder = builder.tls(tls.waypost());
            }
            if let Some(metrics) = metrics {
                builder = builder.metrics(metrics);
            }
            builder.build()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let prometheus = ClientMetrics::builder()
            .methods(["movies.v1.MoviesService/GetMovie"])
            .prometheus(&mut registry)
            .build();
        // A periodic reader (every 60 s, OpenTelemetry's default) into an
        // in-memory exporter: recording aggregates as in production.
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(
                opentelemetry_sdk::metrics::PeriodicReader::builder(
                    opentelemetry_sdk::metrics::InMemoryMetricExporter::default(),
                )
                .build(),
            )
            .build();
        let otel = ClientMetrics::builder()
            .methods(["movies.v1.MoviesService/GetMovie"])
            .meter_provider(&provider)
            .build();
        let endpoint = |addr: &str| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
                .expect("endpoint");
            match tls {
                Some(tls) => endpoint.tls_config(tls.tonic()).expect("tonic TLS"),
                None => endpoint,
            }
        };
        let all = format!("ipv4:{}", addrs.join(","));
        let waypost = waypost_channel(all.clone(), None)?;
        let waypost_single = waypost_channel(format!("ipv4:{}", addrs[0]), None)?;
        let waypost_prometheus = waypost_channel(all.clone(), Some(prometheus))?;
        let waypost_otel = waypost_channel(all, Some(otel))?;
        let clients = Clients {
            waypost: MoviesServiceClient::new(waypost.clone()),
            tonic_balance: MoviesServiceClient::new(tonic::transport::Channel::balance_list(
                addrs.iter().map(|a| endpoint(a)),
            )),
            tonic_single: MoviesServiceClient::new(endpoint(&addrs[0]).connect().await?),
            floor: MoviesServiceClient::new(bare(&addrs[0], tls).await?),
            waypost_single: MoviesServiceClient::new(waypost_single),
            waypost_prometheus: MoviesServiceClient::new(waypost_prometheus.clone()),
            waypost_otel: MoviesServiceClient::new(waypost_otel.clone()),
            _metrics: (registry, provider),
        };
        let ready_by = Instant::now() + Duration::from_secs(30);
        while [&waypost, &waypost_prometheus, &waypost_otel]
            .iter()
            .any(|c| c.stats().subchannels_ready < addrs.len() as u64)
        {
            if Instant::now() > ready_by {
                return Err("waypost channel not READY".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(clients)
    }

    async fn sequential(&self, variant: &str, calls: u64) {
        match variant {
            "waypost" => sequential(self.waypost.clone(), calls).await,
            "tonic_balance" => sequential(self.tonic_balance.clone(), calls).await,
            "tonic_single" => sequential(self.tonic_single.clone(), calls).await,
            "waypost_single" => sequential(self.waypost_single.clone(), calls).await,
            "waypost_prometheus" => sequential(self.waypost_prometheus.clone(), calls).await,
            "waypost_otel" => sequential(self.waypost_otel.clone(), calls).await,
            _ => sequential(self.floor.clone(), calls).await,
        }
    }
}

/// `calls` calls, one after another.
async fn sequential<T>(mut client: MoviesServiceClient<T>, calls: u64)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    for _ in 0..calls {
        client.get_movie(MovieId { mid: 1 }).await.expect("call");
    }
}

/// Arguments of `waypost-bench rpc-calls`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallsArgs {
    /// One of waypost, tonic_balance, tonic_single, floor, waypost_single.
    #[arg(long)]
    variant: String,
    /// Calls to make, one after another, after 1,000 warm-up calls.
    #[arg(long, default_value_t = 10_000)]
    calls: u64,
    /// Over TLS.
    #[arg(long)]
    tls: bool,
}

/// `waypost-bench rpc-calls`: the same backends and variants as `rpc`, but
/// one variant making sequential calls and nothing else, for counting the
/// client's instructions per call under `valgrind --tool=callgrind` (run
/// it with two call counts; the difference of the totals over the
/// difference of the counts is the cost of one call, free of setup).
pub(crate) async fn calls(args: CallsArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !VARIANTS.contains(&args.variant.as_str()) {
        return Err(format!("unknown variant {:?}; one of {VARIANTS:?}", args.variant).into());
    }
    let tls = args.tls.then(BenchTls::new).transpose()?;
    let (child, addrs) = spawn_backends(tls.as_ref()).await?;
    let clients = Clients::connect(&addrs, tls.as_ref()).await?;
    clients.sequential(&args.variant, 1_000).await;
    clients.sequential(&args.variant, args.calls).await;
    drop(child);
    Ok(())
}

pub(crate) async fn run(args: RpcArgs) -> Result<(), Box<dyn std::error::Error>> {
    let tls = args.tls.then(BenchTls::new).transpose()?;
    let (child, addrs) = spawn_backends(tls.as_ref()).await?;
    let clients = Clients::connect(&addrs, tls.as_ref()).await?;
    let handshake_us = match &tls {
        Some(tls) => {
            handshake_cpu(&addrs[0], tls, 50).await?;
            let us = handshake_cpu(&addrs[0], tls, 500).await?;
            eprintln!("one full TLS handshake: {us:.0} client CPU µs (TCP connect included)");
            Some((us * 10.0).round() / 10.0)
        }
        None => None,
    };

    eprintln!("warming up each variant for 1 s");
    for variant in VARIANTS {
        clients.unpaced(variant, args.concurrency, 1).await;
    }

    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..args.reps {
        let order: Vec<usize> = (0..VARIANTS.len())
            .map(|i| (i + rep) % VARIANTS.len())
            .collect();
        let mut measured = vec![Measured::default(); VARIANTS.len()];
        for &i in &order {
            let (cpu, syscalls) = clients.paced(VARIANTS[i], args.rate, args.seconds).await;
            measured[i].cpu_us_per_call = cpu;
            measured[i].syscalls_per_call = syscalls;
            eprintln!(
                "rep {rep} paced   {:>14}: {cpu:.2} CPU µs/call, {syscalls:.2} socket reads+writes/call",
                VARIANTS[i]
            );
        }
        for &i in &order {
            let (qps, p50, p99) = clients
                .unpaced(VARIANTS[i], args.concurrency, args.seconds)
                .await;
            measured[i].qps = qps;
            measured[i].p50_us = p50;
            measured[i].p99_us = p99;
            eprintln!(
                "rep {rep} unpaced {:>14}: {qps:.0} calls/s, p50 {p50:.0} µs, p99 {p99:.0} µs",
                VARIANTS[i]
            );
        }
        for (i, m) in measured.into_iter().enumerate() {
            results[i].push(m);
        }
    }
    let med = |i: usize, f: fn(&Measured) -> f64| {
        (median(results[i].iter().map(f).collect()) * 100.0).round() / 100.0
    };
    let cpu = |i| med(i, |m| m.cpu_us_per_call);
    let qps = |i| med(i, |m| m.qps).round();
    let p99 = |i| med(i, |m| m.p99_us).round();
    let syscalls = |i| med(i, |m| m.syscalls_per_call);
    eprintln!("\nmedians over {} repetitions:", args.reps);
    for (i, name) in VARIANTS.iter().enumerate() {
        let range = |f: fn(&Measured) -> f64| {
            let values = results[i].iter().map(f);
            let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            format!("{lo:.1}–{hi:.1}")
        };
        eprintln!(
            "  {name:>14}: {:.2} CPU µs/call ({}) and {:.2} socket reads+writes/call (paced {}/s), {:.0} calls/s ({}), p99 {:.0} µs (unpaced, {} callers)",
            cpu(i),
            range(|m| m.cpu_us_per_call),
            syscalls(i),
            args.rate,
            qps(i),
            range(|m| m.qps),
            p99(i),
            args.concurrency
        );
    }
    // The goals (issue 4 over plain TCP, issue 15 over TLS), rep
    // by rep: waypost against tonic balance_list and the floor.
    let per_rep = |f: fn(&Measured) -> f64, a: usize, b: usize| -> Vec<f64> {
        results[a]
            .iter()
            .zip(&results[b])
            .map(|(x, y)| f(x) / f(y))
            .collect()
    };
    let goals = if args.tls {
        [(0.85, true), (1.0, true), (1.25, false)]
    } else {
        [(0.93, true), (1.03, true), (1.1, false)]
    };
    let mut goal_verdicts = serde_json::Map::new();
    for ((name, ratios), (goal, at_most)) in [
        ("cpu_vs_tonic_balance", per_rep(|m| m.cpu_us_per_call, 0, 1)),
        ("cpu_vs_floor", per_rep(|m| m.cpu_us_per_call, 0, 3)),
        ("qps_vs_tonic_balance", per_rep(|m| m.qps, 0, 1)),
    ]
    .into_iter()
    .zip(goals)
    {
        goal_verdicts.insert(
            name.to_owned(),
            crate::stats::goal(name, &ratios, goal, at_most),
        );
    }
    // The metrics' cost: each metered variant's CPU per call over the
    // plain `waypost` channel's, per repetition (same rep, same order).
    let mut metrics_cost = serde_json::Map::new();
    for (i, name) in [(5, "prometheus"), (6, "otel")] {
        let ratios: Vec<f64> = results[i]
            .iter()
            .zip(&results[0])
            .map(|(m, w)| m.cpu_us_per_call / w.cpu_us_per_call)
            .collect();
        let ratio = median(ratios.clone());
        // The goal is ≤ 1.05×: met only if the median and every rep hold.
        let verdict = crate::stats::verdict(&ratios, 1.05, true);
        eprintln!(
            "  metrics via {name}: CPU/call {ratio:.3}× plain waypost (per rep {}), goal ≤ 1.05×: {verdict}",
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        metrics_cost.insert(
            name.to_owned(),
            json!({"ratio": crate::stats::rounds(&ratios), "verdict": verdict}),
        );
    }
    println!(
        "{}",
        json!({
            "goals": goal_verdicts,
            "metrics_cost": metrics_cost,
            "waypost_prometheus_cpu_us": cpu(5), "waypost_otel_cpu_us": cpu(6),
            "machine": crate::stats::machine(),
            "waypost_cpu_us": cpu(0), "tonic_balance_cpu_us": cpu(1), "tonic_single_cpu_us": cpu(2), "floor_cpu_us": cpu(3),
            "waypost_qps": qps(0), "tonic_balance_qps": qps(1), "tonic_single_qps": qps(2),
            "waypost_p99_us": p99(0), "tonic_balance_p99_us": p99(1),
            "waypost_single_cpu_us": cpu(4), "waypost_single_qps": qps(4),
            "waypost_syscalls_per_call": syscalls(0), "tonic_balance_syscalls_per_call": syscalls(1),
            "floor_syscalls_per_call": syscalls(3), "waypost_single_syscalls_per_call": syscalls(4),
            "tls": args.tls, "tls_handshake_cpu_us": handshake_us,
        })
    );
    drop(child);
    Ok(())
}
