//! `waypost-bench xds-server`: how many ADS streams one `waypost serve`
//! holds, in how much memory, and how fast an EDS change reaches all of
//! them — beside the same server's BalanceLoad fan-out and a plain tonic
//! BalanceLoad server's, measured in the same run.
//!
//! The release `waypost` binary (build it first) runs in its own process
//! with one service of two static backends (`xds_rds = true`, no probing).
//! The bench opens `--streams` ADS streams over HTTP/2 connections of
//! `--per-connection` streams each; every stream subscribes to the
//! service's Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
//! and ACKs every response, as a gRPC client does. Once every stream has
//! all four, it reads the server's RSS, then makes `--changes` backend
//! changes (drain one backend through the admin endpoint, undo it, …) and
//! measures per stream the time until its EDS update arrived. A drain is
//! sent as DRAINING first and the removal 2 s later (`draining_grace`);
//! each change is followed by a 2.5 s settle so that follow-up is not taken
//! for the next change's update, and the server CPU is read over the change
//! and its settle (follow-up included). Then the `lbserver` bench's
//! BalanceLoad measurement runs on a fresh `waypost serve` and on the plain
//! tonic server (unless `--no-compare`). Last line: `{"ads":{..},
//! "balance_load":{..},"tonic":{..},"ads_p99_vs_tonic":..}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::lbserver::{LbArgs, ServerUnderTest, cpu_seconds, measure, rss_mib};
use crate::stats::{median, ms, percentile};

/// Arguments of `waypost-bench xds-server`.
#[derive(Debug, clap::Args)]
pub(crate) struct XdsServerArgs {
    /// Concurrent ADS streams.
    #[arg(long, default_value_t = 50_000)]
    streams: usize,
    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1_000)]
    per_connection: usize,
    /// Backend changes to measure (the medians are reported).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Skip the BalanceLoad measurements (waypost and plain tonic).
    #[arg(long)]
    no_compare: bool,
}

const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
];
const EDS: usize = 3;

pub(crate) async fn run(args: XdsServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ads = measure_ads(
        ServerUnderTest::waypost_with("xds_rds = true").await?,
        &args,
    )
    .await?;
    let mut summary = json!({ "ads": ads });
    if !args.no_compare {
        let lb_args = LbArgs {
            streams: args.streams,
            per_connection: args.per_connection,
            changes: args.changes,
            no_tonic: false,
        };
        let balance_load = measure(ServerUnderTest::waypost().await?, &lb_args).await?;
        let tonic = measure(ServerUnderTest::tonic().await?, &lb_args).await?;
        let ratio = summary["ads"]["fanout_p99_ms"].as_f64().unwrap_or(f64::NAN)
            / tonic["fanout_p99_ms"].as_f64().unwrap_or(f64::NAN);
        summary["balance_load"] = balance_load;
        summary["tonic"] = tonic;
        summary["ads_p99_vs_tonic"] = json!((ratio * 100.0).round() / 100.0);
    }
    println!("{summary}");
    Ok(())
}

async fn measure_ads(
    mut server: ServerUnderTest,
    args: &XdsServerArgs,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (pid, listen) = (server.pid, server.listen.clone());
    eprintln!(
        "waypost serve (ADS) pid {pid} on {listen}; idle RSS {} MiB",
        rss_mib(pid)
    );
    let established = Arc::new(AtomicUsize::new(0));
    let all_established = Arc::new(Notify::new());
    let (triggers_tx, triggers) = watch::channel::<Vec<Instant>>(Vec::new());
    let (results_tx, mut results) = mpsc::unbounded_channel::<Batch>();
    let connections = args.streams.div_ceil(args.per_connection);
    let setup = Instant::now();
    let mut handles = Vec::with_capacity(connections);
    for c in 0..connections {
        let client = AdsConnection {
            listen: listen.clone(),
            streams: args
                .per_connection
                .min(args.streams - c * args.per_connection),
            total: args.streams,
            established: established.clone(),
            all_established: all_established.clone(),
            triggers: triggers.clone(),
            results: results_tx.clone(),
        };
        handles.push(tokio::spawn(client.run()));
    }
    drop(results_tx);
    tokio::time::timeout(Duration::from_secs(300), all_established.notified())
        .await
        .map_err(|_| {
            format!(
                "only {} of {} ADS streams had all four resources in 300 s",
                established.load(Ordering::Relaxed),
                args.streams
            )
        })?;
    eprintln!(
        "{} ADS streams over {connections} connections established in {:.1} s",
        args.streams,
        setup.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(pid);
    eprintln!("server RSS with all ADS streams open: {rss} MiB");

    let mut per_change = Vec::with_capacity(args.changes);
    for change in 0..args.changes {
        let server_cpu0 = cpu_seconds(&format!("/proc/{pid}/stat"));
        triggers_tx.send_modify(|t| t.push(Instant::now()));
        server.change(change).await?;
        let mut latencies = Vec::with_capacity(args.streams);
        while latencies.len() < args.streams {
            match tokio::time::timeout(Duration::from_secs(60), results.recv()).await {
                Ok(Some(Batch::Latencies(k, batch))) if k == change => latencies.extend(batch),
                Ok(Some(Batch::Latencies(k, _))) => {
                    return Err(format!("an update for change {k} during change {change}").into());
                }
                Ok(Some(Batch::Failed(why))) => return Err(why.into()),
                Ok(None) | Err(_) => break,
            }
        }
        // The drain's follow-up (DRAINING → gone) goes out 2 s later: let
        // it, before the next change.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let server_cpu = cpu_seconds(&format!("/proc/{pid}/stat")) - server_cpu0;
        let received = latencies.len();
        let (p50, p99, max) = (
            percentile(&mut latencies, 50.0),
            percentile(&mut latencies, 99.0),
            percentile(&mut latencies, 100.0),
        );
        eprintln!(
            "change {change}: EDS update reached {received} streams: p50 {p50:?}, p99 {p99:?}, max {max:?}; server CPU {server_cpu:.2} s"
        );
        if received < args.streams {
            return Err(format!(
                "only {received} of {} streams got change {change}",
                args.streams
            )
            .into());
        }
        per_change.push(json!({"fanout_p50_ms": ms(p50), "fanout_p99_ms": ms(p99), "fanout_max_ms": ms(max), "server_cpu_s": server_cpu}));
    }
    for handle in &handles {
        handle.abort();
    }
    let median_of = |field: &str| {
        median(
            per_change
                .iter()
                .filter_map(|c| c[field].as_f64())
                .collect(),
        )
    };
    let summary = json!({
        "streams": args.streams,
        "rss_mib": rss,
        "fanout_p50_ms": median_of("fanout_p50_ms"),
        "fanout_p99_ms": median_of("fanout_p99_ms"),
        "fanout_max_ms": median_of("fanout_max_ms"),
        "server_cpu_s": median_of("server_cpu_s"),
        "changes": per_change,
    });
    eprintln!("waypost serve (ADS): {summary}");
    Ok(summary)
}

enum Batch {
    Latencies(usize, Vec<Duration>),
    Failed(String),
}

/// One HTTP/2 connection's ADS streams, all read by one task; each
/// response is ACKed at once on its stream.
struct AdsConnection {
    listen: String,
    streams: usize,
    total: usize,
    established: Arc<AtomicUsize>,
    all_established: Arc<Notify>,
    triggers: watch::Receiver<Vec<Instant>>,
    results: mpsc::UnboundedSender<Batch>,
}

fn subscribe(type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: vec!["movies".into()],
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

impl AdsConnection {
    async fn run(self) {
        if let Err(why) = self.read_all().await {
            let _ = self.results.send(Batch::Failed(why));
        }
    }

    async fn read_all(&self) -> Result<(), String> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.listen))
            .map_err(|e| e.to_string())?
            .initial_stream_window_size(Some(16 * 1024))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut senders = Vec::with_capacity(self.streams);
        let opened = futures_util::future::join_all((0..self.streams).map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            for type_url in TYPES {
                let _ = tx.send(subscribe(type_url, "", ""));
            }
            senders.push(tx);
            let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
            async move {
                client
                    .stream_aggregated_resources(
                        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                    )
                    .await
            }
        }))
        .await;
        let mut inbound = futures_util::stream::select_all(opened.into_iter().enumerate().map(
            |(i, response)| match response {
                Ok(response) => response.into_inner().map(move |m| (i, m)).left_stream(),
                Err(status) => futures_util::stream::iter([(i, Err(status))]).right_stream(),
            },
        ));
        // Per stream: which types it has had, and the last change whose
        // EDS update it has had.
        let mut seen = vec![0u8; self.streams];
        let mut recorded: Vec<Option<usize>> = vec![None; self.streams];
        let mut changes: Vec<Vec<Duration>> = Vec::new();
        while let Some((i, message)) = inbound.next().await {
            let response: DiscoveryResponse =
                message.map_err(|status| format!("stream {i}: {status}"))?;
            let Some(ty) = TYPES.iter().position(|t| *t == response.type_url) else {
                return Err(format!(
                    "stream {i}: a response of type {}",
                    response.type_url
                ));
            };
            let _ = senders[i].send(subscribe(
                TYPES[ty],
                &response.version_info,
                &response.nonce,
            ));
            let complete = seen[i] == 0b1111;
            seen[i] |= 1 << ty;
            if !complete {
                if seen[i] == 0b1111
                    && self.established.fetch_add(1, Ordering::Relaxed) + 1 == self.total
                {
                    self.all_established.notify_one();
                }
                continue;
            }
            if ty != EDS {
                continue;
            }
            let triggers = self.triggers.borrow();
            let Some(change) = triggers.len().checked_sub(1) else {
                continue;
            };
            if recorded[i].is_some_and(|r| r >= change) {
                continue; // a follow-up of a change already recorded
            }
            recorded[i] = Some(change);
            let latency = triggers[change].elapsed();
            drop(triggers);
            if changes.len() <= change {
                changes.resize_with(change + 1, Vec::new);
            }
            changes[change].push(latency);
            if changes[change].len() == self.streams {
                let batch = std::mem::take(&mut changes[change]);
                let _ = self.results.send(Batch::Latencies(change, batch));
            }
        }
        Err("the connection's streams ended".into())
    }
}
