//! `waypost-bench lbserver`: how many BalanceLoad streams one `waypost
//! serve` holds, in how much memory, and how fast a list change reaches
//! all of them.
//!
//! Starts the release `waypost` binary (build it first) as a child with one
//! service of two static backends (no probing, no traffic to them), opens
//! `--streams` BalanceLoad streams over HTTP/2 connections of
//! `--per-connection` streams each, waits until every stream has its first
//! list, reads the server's RSS from `/proc/<pid>/status`, then drains one
//! backend through the admin endpoint and measures, per stream, the time
//! until the new list arrived. Last line: `{"streams":..,"rss_mib":..,
//! "fanout_p50_ms":..,"fanout_p99_ms":..,"fanout_max_ms":..}`.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balancer_client::LoadBalancerClient;
use waypost_proto::grpc::lb::v1::{InitialLoadBalanceRequest, LoadBalanceRequest};

use crate::stats::{ms, percentile};

/// Arguments of `waypost-bench lbserver`.
#[derive(Debug, clap::Args)]
pub(crate) struct LbArgs {
    /// Concurrent BalanceLoad streams.
    #[arg(long, default_value_t = 50_000)]
    streams: usize,
    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1_000)]
    per_connection: usize,
}

/// User + system CPU seconds of a process, from its `stat` file.
fn cpu_seconds(stat_path: &str) -> f64 {
    crate::stats::cpu_time(stat_path).as_secs_f64()
}

fn rss_mib(pid: u32) -> f64 {
    let mib = crate::stats::status_mib(&format!("/proc/{pid}/status"), "VmRSS:");
    (mib * 10.0).round() / 10.0
}

pub(crate) async fn run(args: LbArgs) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let waypost = exe.parent().ok_or("no exe dir")?.join("waypost");
    if !waypost.is_file() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release -p waypost-lbserver --bin waypost`",
            waypost.display()
        )
        .into());
    }
    let dir = std::env::temp_dir().join(format!("waypost-bench-lb-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:9,127.0.0.1:10\"\n",
    )?;
    let mut child = tokio::process::Command::new(&waypost)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("no child pid")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let started: serde_json::Value =
        serde_json::from_str(&lines.next_line().await?.ok_or("waypost serve exited")?)?;
    let listen = started["listening"]
        .as_str()
        .ok_or("no listen address")?
        .to_owned();
    let admin = started["admin"]
        .as_str()
        .ok_or("no admin address")?
        .to_owned();
    eprintln!(
        "waypost serve pid {pid} on {listen}, admin {admin}; idle RSS {} MiB",
        rss_mib(pid)
    );

    let established = Arc::new(AtomicUsize::new(0));
    let all_established = Arc::new(Notify::new());
    let (trigger_tx, trigger_rx) = watch::channel::<Option<Instant>>(None);
    let (done_tx, mut done_rx) = mpsc::channel::<Duration>(args.streams.max(1));
    let connections = args.streams.div_ceil(args.per_connection);
    let setup = Instant::now();
    let mut handles = Vec::with_capacity(args.streams);
    for c in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))?
            .initial_stream_window_size(Some(16 * 1024))
            .connect()
            .await?;
        let count = args
            .per_connection
            .min(args.streams - c * args.per_connection);
        for _ in 0..count {
            let mut client = LoadBalancerClient::new(channel.clone());
            let (established, all_established, total) =
                (established.clone(), all_established.clone(), args.streams);
            let mut trigger = trigger_rx.clone();
            let done = done_tx.clone();
            handles.push(tokio::spawn(async move {
                let (tx, rx) = mpsc::channel(1);
                let initial = LoadBalanceRequest {
                    load_balance_request_type: Some(LoadBalanceRequestType::InitialRequest(
                        InitialLoadBalanceRequest {
                            name: "movies".into(),
                        },
                    )),
                };
                let _ = tx.send(initial).await;
                let Ok(response) = client.balance_load(ReceiverStream::new(rx)).await else {
                    return;
                };
                let mut inbound = response.into_inner();
                // The initial response, then the first list.
                for _ in 0..2 {
                    if !matches!(inbound.message().await, Ok(Some(_))) {
                        return;
                    }
                }
                if established.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    all_established.notify_one();
                }
                if matches!(inbound.message().await, Ok(Some(_))) {
                    let _ = trigger.wait_for(Option::is_some).await;
                    let t0 = trigger.borrow().expect("set");
                    let _ = done.send(t0.elapsed()).await;
                }
                drop(tx);
            }));
        }
    }
    drop(done_tx);
    tokio::time::timeout(Duration::from_secs(300), all_established.notified())
        .await
        .map_err(|_| {
            format!(
                "only {} of {} streams established in 300 s",
                established.load(Ordering::Relaxed),
                args.streams
            )
        })?;
    eprintln!(
        "{} streams over {connections} connections established in {:.1} s",
        args.streams,
        setup.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(pid);
    eprintln!("server RSS with all streams open: {rss} MiB");

    // A backend change: drain one backend; every stream gets a new list.
    let (server_cpu0, client_cpu0) = (
        cpu_seconds(&format!("/proc/{pid}/stat")),
        cpu_seconds("/proc/self/stat"),
    );
    let t0 = Instant::now();
    trigger_tx.send_replace(Some(t0));
    let mut stream = tokio::net::TcpStream::connect(&admin).await?;
    stream
        .write_all("POST /drain?service=movies&backend=127.0.0.1:10 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("drain failed: {answer}").into());
    }
    let mut latencies = Vec::with_capacity(args.streams);
    while latencies.len() < args.streams {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(latency)) => latencies.push(latency),
            _ => break,
        }
    }
    let received = latencies.len();
    let server_cpu = cpu_seconds(&format!("/proc/{pid}/stat")) - server_cpu0;
    let client_cpu = cpu_seconds("/proc/self/stat") - client_cpu0;
    eprintln!("CPU during the fan-out: server {server_cpu:.2} s, bench client {client_cpu:.2} s");
    let (p50, p99, max) = (
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
        percentile(&mut latencies, 100.0),
    );
    eprintln!("new list reached {received} streams: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    for handle in &handles {
        handle.abort();
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({"streams": received, "rss_mib": rss, "fanout_p50_ms": ms(p50), "fanout_p99_ms": ms(p99), "fanout_max_ms": ms(max), "server_cpu_s": server_cpu, "client_cpu_s": client_cpu})
    );
    Ok(())
}
