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

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::lbserver::{
    Connection, Fanout, GOAL_VS_TONIC, LbArgs, ServerUnderTest, measure, measure_fanout, versus,
};

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
        eprintln!("ADS against the plain tonic BalanceLoad server:");
        summary["ads_goals"] = versus(&summary["ads"], &tonic, GOAL_VS_TONIC)
            .into_iter()
            .collect::<serde_json::Map<_, _>>()
            .into();
        eprintln!("BalanceLoad against the plain tonic BalanceLoad server:");
        summary["balance_load_goals"] = versus(&balance_load, &tonic, GOAL_VS_TONIC)
            .into_iter()
            .collect::<serde_json::Map<_, _>>()
            .into();
        summary["balance_load"] = balance_load;
        summary["tonic"] = tonic;
        summary["ads_p99_vs_tonic"] = json!((ratio * 100.0).round() / 100.0);
    }
    summary["machine"] = crate::stats::machine();
    println!("{summary}");
    Ok(())
}

async fn measure_ads(
    server: ServerUnderTest,
    args: &XdsServerArgs,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let plan = Fanout {
        what: "waypost serve (ADS)",
        streams: args.streams,
        per_connection: args.per_connection,
        changes: args.changes,
        // The drain's follow-up (DRAINING → gone) goes out 2 s later: let
        // it, before the next change.
        settle: Duration::from_millis(2500),
    };
    measure_fanout(server, &plan, |connection| async move {
        if let Err(why) = read_all(&connection).await {
            connection.failed(why);
        }
    })
    .await
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

/// One connection's ADS streams, all read by one task; each response is
/// ACKed at once on its stream. A stream is established once it has all
/// four types; then the first EDS update after each change is that
/// change's (a follow-up of the same change is not counted).
async fn read_all(connection: &Connection) -> Result<(), String> {
    let channel = connection.channel().await?;
    let mut senders = Vec::with_capacity(connection.streams);
    let opened = futures_util::future::join_all((0..connection.streams).map(|_| {
        let (tx, rx) = mpsc::unbounded_channel();
        for type_url in TYPES {
            let _ = tx.send(subscribe(type_url, "", ""));
        }
        senders.push(tx);
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
        async move {
            client
                .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(
                    rx,
                ))
                .await
        }
    }))
    .await;
    let mut inbound =
        futures_util::stream::select_all(opened.into_iter().enumerate().map(|(i, response)| {
            match response {
                Ok(response) => response.into_inner().map(move |m| (i, m)).left_stream(),
                Err(status) => futures_util::stream::iter([(i, Err(status))]).right_stream(),
            }
        }));
    // Per stream: which types it has had, and the last change whose EDS
    // update it has had.
    let mut seen = vec![0u8; connection.streams];
    let mut recorded: Vec<Option<usize>> = vec![None; connection.streams];
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
            if seen[i] == 0b1111 {
                connection.stream_established();
            }
            continue;
        }
        if ty != EDS {
            continue;
        }
        let Some(change) = connection.triggers.borrow().len().checked_sub(1) else {
            continue;
        };
        if recorded[i].is_some_and(|r| r >= change) {
            continue; // a follow-up of a change already recorded
        }
        recorded[i] = Some(change);
        connection
            .record(change, &mut changes)
            .map_err(|e| format!("stream {i}: {e}"))?;
    }
    Err("the connection's streams ended".into())
}
