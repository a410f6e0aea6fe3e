//! `waypost-bench dataconn`: one bulk stream over loopback, three ways, in
//! one run:
//!
//! - **waypost**: a waypost-rpc data connection through the public API
//!   (handshake, frames, heartbeats, pooling and all): the client uploads,
//!   the server's handler consumes the body as `Bytes` chunks;
//! - **raw_tcp**: a tokio TCP copy with the same 256 KiB buffers;
//! - **tonic_stream**: the same bytes as a client stream of 64 KiB
//!   `bulk.v1.Chunk` messages over tonic (4 MiB HTTP/2 windows, nodelay:
//!   its best settings, not its defaults).
//!
//! Each transfer runs in its own child process (server and client in one
//! tokio runtime with the default two workers), so its CPU time (user +
//! system, from `/proc/self/stat`) and peak RSS (`VmHWM`) are its own. The
//! source is `tokio::io::repeat` for all three. Repeated `--runs` times,
//! interleaved; medians reported. Last line:
//! `{"waypost_gibps":..,"raw_tcp_gibps":..,"tonic_stream_gibps":..,
//! "waypost_cpu_s_per_gib":..,"raw_cpu_s_per_gib":..,"peak_rss_mib":..}`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;
const TONIC_MESSAGE: usize = 64 * 1024;
/// HTTP/2 flow-control windows for tonic: 4 MiB instead of the 64 KiB
/// default, which would cap it far below its best on loopback.
const WINDOW: u32 = 4 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Options of `dataconn`.
#[derive(Debug, clap::Args)]
pub(crate) struct DataconnArgs {
    /// GiB per transfer.
    #[arg(long, default_value_t = 10)]
    gib: u64,
    /// Rounds of the three transfers.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Options of the hidden child.
#[derive(Debug, clap::Args)]
pub(crate) struct DataconnChildArgs {
    /// waypost, raw_tcp or tonic_stream.
    #[arg(long)]
    mode: String,
    /// Bytes to move.
    #[arg(long)]
    bytes: u64,
}

const MODES: [&str; 3] = ["waypost", "raw_tcp", "tonic_stream"];

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    gibps: f64,
    cpu_s_per_gib: f64,
    peak_rss_mib: f64,
}

pub(crate) async fn run(args: DataconnArgs) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = args.gib << 30;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); MODES.len()];
    for round in 0..args.runs {
        for (i, mode) in MODES.iter().enumerate() {
            let v = crate::stats::run_child([
                "dataconn-child",
                "--mode",
                mode,
                "--bytes",
                &bytes.to_string(),
            ])
            .await
            .map_err(|e| format!("{mode}: {e}"))?;
            let s = Sample {
                gibps: v["gibps"].as_f64().unwrap_or(0.0),
                cpu_s_per_gib: v["cpu_s_per_gib"].as_f64().unwrap_or(0.0),
                peak_rss_mib: v["peak_rss_mib"].as_f64().unwrap_or(0.0),
            };
            eprintln!(
                "round {round} {mode:>12}: {:.2} GiB/s, {:.3} CPU-s/GiB, peak RSS {:.0} MiB",
                s.gibps, s.cpu_s_per_gib, s.peak_rss_mib
            );
            samples[i].push(s);
        }
    }
    let median =
        |i: usize, f: fn(&Sample) -> f64| crate::stats::median(samples[i].iter().map(f).collect());
    eprintln!(
        "\n{:>12}  {:>8}  {:>10}  {:>9}",
        "", "GiB/s", "CPU-s/GiB", "RSS MiB"
    );
    for (i, mode) in MODES.iter().enumerate() {
        eprintln!(
            "{mode:>12}  {:>8.2}  {:>10.3}  {:>9.0}",
            median(i, |s| s.gibps),
            median(i, |s| s.cpu_s_per_gib),
            median(i, |s| s.peak_rss_mib)
        );
    }
    let (w, r, t) = (
        median(0, |s| s.gibps),
        median(1, |s| s.gibps),
        median(2, |s| s.gibps),
    );
    eprintln!(
        "waypost/raw throughput {:.3}x, CPU {:.3}x; waypost/tonic {:.2}x",
        w / r,
        median(0, |s| s.cpu_s_per_gib) / median(1, |s| s.cpu_s_per_gib),
        w / t
    );
    // Issue 20's goals, round by round: throughput ≥ 0.95× raw TCP's,
    // CPU per GiB ≤ 1.1× raw's.
    let per_round = |f: fn(&Sample) -> f64| -> Vec<f64> {
        samples[0]
            .iter()
            .zip(&samples[1])
            .map(|(w, r)| f(w) / f(r))
            .collect()
    };
    let throughput = per_round(|s| s.gibps);
    let cpu = per_round(|s| s.cpu_s_per_gib);
    let (throughput_verdict, cpu_verdict) = (
        crate::stats::verdict(&throughput, 0.95, false),
        crate::stats::verdict(&cpu, 1.1, true),
    );
    eprintln!(
        "per round: throughput {throughput:.3?} × raw (goal ≥ 0.95: {throughput_verdict}), CPU/GiB {cpu:.3?} × raw (goal ≤ 1.1: {cpu_verdict})"
    );
    println!(
        "{}",
        json!({
            "machine": crate::stats::machine(),
            "throughput_vs_raw": crate::stats::rounds(&throughput), "throughput_verdict": throughput_verdict,
            "cpu_vs_raw": crate::stats::rounds(&cpu), "cpu_verdict": cpu_verdict,
            "waypost_gibps": w, "raw_tcp_gibps": r, "tonic_stream_gibps": t,
            "waypost_cpu_s_per_gib": median(0, |s| s.cpu_s_per_gib),
            "raw_cpu_s_per_gib": median(1, |s| s.cpu_s_per_gib),
            "tonic_cpu_s_per_gib": median(2, |s| s.cpu_s_per_gib),
            "peak_rss_mib": median(0, |s| s.peak_rss_mib),
            "raw_peak_rss_mib": median(1, |s| s.peak_rss_mib),
            "tonic_peak_rss_mib": median(2, |s| s.peak_rss_mib),
            "gib_per_transfer": bytes as f64 / GIB, "runs": args.runs,
        })
    );
    Ok(())
}

fn cpu_time() -> Duration {
    crate::stats::cpu_time("/proc/self/stat")
}

fn peak_rss_mib() -> f64 {
    crate::stats::status_mib("/proc/self/status", "VmHWM:")
}

pub(crate) async fn child(args: DataconnChildArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cpu_before = cpu_time();
    let started = Instant::now();
    let moved = match args.mode.as_str() {
        "waypost" => waypost(args.bytes).await?,
        "raw_tcp" => raw_tcp(args.bytes).await?,
        "tonic_stream" => tonic_stream(args.bytes).await?,
        other => return Err(format!("unknown mode {other}").into()),
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_before).as_secs_f64();
    if moved != args.bytes {
        return Err(format!("moved {moved} of {} bytes", args.bytes).into());
    }
    let gib = moved as f64 / GIB;
    println!(
        "{}",
        json!({"gibps": gib / wall, "cpu_s_per_gib": cpu / gib, "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}

async fn waypost(bytes: u64) -> Result<u64, Box<dyn std::error::Error>> {
    use waypost_rpc::{Client, DataRequest, DataResponse, Listener, Server};
    let server = Server::builder()
        .data(|mut request: DataRequest| async move {
            let mut n = 0u64;
            while let Some(chunk) = request.body.chunk().await {
                n += chunk?.len() as u64;
            }
            Ok(DataResponse::new(n.to_string()))
        })
        .serve(Listener::tcp("127.0.0.1:0").await?)?;
    let client = Client::builder(format!("ipv4:{}", server.address())).build()?;
    let source = tokio::io::repeat(0).take(bytes);
    let response = client.call("sink", "", Some(Box::new(source))).await?;
    let counted: u64 = std::str::from_utf8(&response.message)?.parse()?;
    server.shutdown().await;
    Ok(counted)
}

async fn raw_tcp(bytes: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let read = stream.read(&mut buf).await?;
            if read == 0 {
                return Ok::<u64, std::io::Error>(n);
            }
            n += read as u64;
        }
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut source = tokio::io::BufReader::with_capacity(CHUNK, tokio::io::repeat(0).take(bytes));
    tokio::io::copy_buf(&mut source, &mut stream).await?;
    stream.shutdown().await?;
    Ok(receiver.await??)
}

async fn tonic_stream(bytes: u64) -> Result<u64, Box<dyn std::error::Error>> {
    use waypost_proto::bulk::v1::bulk_client::BulkClient;
    use waypost_proto::bulk::v1::bulk_server::{Bulk, BulkServer};
    use waypost_proto::bulk::v1::{
        Chunk, OpenTransfer, StreamSummary, TransferResult, TransferTicket,
    };

    #[derive(Debug)]
    struct Counter;

    #[tonic::async_trait]
    impl Bulk for Counter {
        async fn upload(
            &self,
            request: tonic::Request<tonic::Streaming<Chunk>>,
        ) -> Result<tonic::Response<StreamSummary>, tonic::Status> {
            let mut stream = request.into_inner();
            let mut n = 0u64;
            while let Some(chunk) = stream.message().await? {
                n += chunk.data.len() as u64;
            }
            Ok(tonic::Response::new(StreamSummary { bytes: n }))
        }
        async fn open(
            &self,
            _: tonic::Request<OpenTransfer>,
        ) -> Result<tonic::Response<TransferTicket>, tonic::Status> {
            Err(tonic::Status::unimplemented("bench"))
        }
        async fn result(
            &self,
            _: tonic::Request<TransferTicket>,
        ) -> Result<tonic::Response<TransferResult>, tonic::Status> {
            Err(tonic::Status::unimplemented("bench"))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(WINDOW))
            .add_service(BulkServer::new(Counter).max_decoding_message_size(1 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(WINDOW))
        .connect()
        .await?;
    let mut client = BulkClient::new(channel);
    let source = tokio::io::repeat(0).take(bytes);
    let chunks = futures_util::stream::unfold(source, |mut source| async move {
        let mut buf = BytesMut::with_capacity(TONIC_MESSAGE);
        while buf.len() < TONIC_MESSAGE {
            match source.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if buf.is_empty() {
            return None;
        }
        let data: Bytes = buf.freeze();
        Some((Chunk { data }, source))
    });
    let summary = client.upload(chunks).await?.into_inner();
    server.abort();
    Ok(summary.bytes)
}
