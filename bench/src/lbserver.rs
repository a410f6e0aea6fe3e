//! `waypost-bench lbserver`: how many BalanceLoad streams one `waypost
//! serve` holds, in how much memory, and how fast a list change reaches
//! all of them — beside a plain tonic server doing the same.
//!
//! Each server runs in its own process: the release `waypost` binary (build
//! it first) with one service of two static backends (no probing, no
//! traffic to them), and then — the competitor — a plain tonic
//! `LoadBalancer` server in the idiomatic shape (a task and an mpsc
//! channel per stream, each stream watching a shared list; hidden
//! subcommand `lbserver-tonic`). The bench opens `--streams` BalanceLoad
//! streams over HTTP/2 connections of `--per-connection` streams each,
//! waits until every stream has its first list, reads the server's RSS
//! from `/proc/<pid>/status`, then makes `--changes` backend changes one
//! after another (drain one backend through the admin endpoint, undo it, …;
//! the tonic server is told on its stdin) and measures, per stream, the
//! time until the new list arrived. Last line: `{"streams":..,"rss_mib":..,
//! "fanout_p50_ms":..,"fanout_p99_ms":..,"fanout_max_ms":..,"tonic":{..}}`
//! (medians over the changes; `tonic` holds the same fields for the plain
//! tonic server).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::load_balancer_client::LoadBalancerClient;
use waypost_proto::grpc::lb::v1::{
    InitialLoadBalanceRequest, InitialLoadBalanceResponse, LoadBalanceRequest, LoadBalanceResponse,
    Server, ServerList,
};

use crate::stats::{median, ms, percentile};

/// Arguments of `waypost-bench lbserver`.
#[derive(Debug, clap::Args)]
pub(crate) struct LbArgs {
    /// Concurrent BalanceLoad streams.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) streams: usize,
    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) per_connection: usize,
    /// Backend changes to measure, one after another (the medians are
    /// reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) changes: usize,
    /// Skip the plain tonic server.
    #[arg(long)]
    pub(crate) no_tonic: bool,
}

/// User + system CPU seconds of a process, from its `stat` file.
pub(crate) fn cpu_seconds(stat_path: &str) -> f64 {
    crate::stats::cpu_time(stat_path).as_secs_f64()
}

pub(crate) fn rss_mib(pid: u32) -> f64 {
    let mib = crate::stats::status_mib(&format!("/proc/{pid}/status"), "VmRSS:");
    (mib * 10.0).round() / 10.0
}

pub(crate) async fn run(args: LbArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut summary = measure(ServerUnderTest::waypost().await?, &args).await?;
    let mut goals = serde_json::Map::new();
    if !args.no_tonic {
        let tonic = measure(ServerUnderTest::tonic().await?, &args).await?;
        for (name, value) in versus(&summary, &tonic, GOAL_VS_TONIC) {
            goals.insert(name, value);
        }
        summary["tonic"] = tonic;
    }
    if args.streams >= 200_000 {
        for (name, value) in at_scale(&summary) {
            goals.insert(name, value);
        }
    }
    summary["goals"] = goals.into();
    summary["machine"] = crate::stats::machine();
    println!("{summary}");
    Ok(())
}

/// Issue 20's goal: fan-out p99, server CPU per change and memory at most
/// this fraction of the plain tonic server's, in the same run.
pub(crate) const GOAL_VS_TONIC: f64 = 0.6;

/// Each change's figure `field` of a summary ([`measure_fanout`]'s).
fn per_change(summary: &serde_json::Value, field: &str) -> Vec<f64> {
    summary["changes"]
        .as_array()
        .map(|changes| changes.iter().filter_map(|c| c[field].as_f64()).collect())
        .unwrap_or_default()
}

/// Our figures over the competitor's, change by change (the i-th change of
/// one run against the i-th of the other; a "round" in the printout), each
/// with its verdict against `goal` (at most): fan-out p99, server CPU per
/// change, and RSS (one reading each). Printed, and returned for the JSON
/// line.
pub(crate) fn versus(
    ours: &serde_json::Value,
    theirs: &serde_json::Value,
    goal: f64,
) -> Vec<(String, serde_json::Value)> {
    let ratios = |field: &str| -> Vec<f64> {
        per_change(ours, field)
            .iter()
            .zip(per_change(theirs, field))
            .map(|(a, b)| a / b)
            .collect()
    };
    let rss = [ours["rss_mib"].as_f64().unwrap_or(f64::NAN)
        / theirs["rss_mib"].as_f64().unwrap_or(f64::NAN)];
    [
        ("fanout_p99_vs_tonic", ratios("fanout_p99_ms")),
        ("server_cpu_vs_tonic", ratios("server_cpu_s")),
        ("rss_vs_tonic", rss.to_vec()),
    ]
    .into_iter()
    .map(|(name, values)| {
        (
            name.to_owned(),
            crate::stats::goal(name, &values, goal, true),
        )
    })
    .collect()
}

/// The 200,000-stream goals: RSS ≤ 800 MiB, fan-out p99 ≤ 2.5 s in every
/// change.
fn at_scale(ours: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    [
        (
            "rss_mib_at_scale",
            vec![ours["rss_mib"].as_f64().unwrap_or(f64::NAN)],
            800.0,
        ),
        (
            "fanout_p99_ms_at_scale",
            per_change(ours, "fanout_p99_ms"),
            2500.0,
        ),
    ]
    .into_iter()
    .map(|(name, values, goal)| {
        (
            name.to_owned(),
            crate::stats::goal(name, &values, goal, true),
        )
    })
    .collect()
}

/// A BalanceLoad server in a child process, and how to change its list.
pub(crate) struct ServerUnderTest {
    pub(crate) name: &'static str,
    child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) listen: String,
    change: Change,
    /// Removed when the measurement ends.
    dir: Option<std::path::PathBuf>,
}

enum Change {
    /// `waypost serve`: drain and undrain a backend through this admin address.
    Admin(String),
    /// The plain tonic server: one line on its stdin.
    Stdin(tokio::process::ChildStdin),
}

impl ServerUnderTest {
    pub(crate) async fn waypost() -> Result<Self, Box<dyn std::error::Error>> {
        Self::waypost_with("").await
    }

    /// `waypost serve` with `extra` lines in its one service's table.
    pub(crate) async fn waypost_with(extra: &str) -> Result<Self, Box<dyn std::error::Error>> {
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
            format!(
                "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:9,127.0.0.1:10\"\n{extra}\n"
            ),
        )?;
        let mut child = tokio::process::Command::new(&waypost)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let started = first_line(&mut child).await?;
        let admin = started["admin"]
            .as_str()
            .ok_or("no admin address")?
            .to_owned();
        Ok(ServerUnderTest {
            name: "waypost serve",
            pid: child.id().ok_or("no child pid")?,
            listen: listening(&started)?,
            child,
            change: Change::Admin(admin),
            dir: Some(dir),
        })
    }

    pub(crate) async fn tonic() -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("lbserver-tonic")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let started = first_line(&mut child).await?;
        Ok(ServerUnderTest {
            name: "plain tonic server",
            pid: child.id().ok_or("no child pid")?,
            listen: listening(&started)?,
            change: Change::Stdin(child.stdin.take().ok_or("no stdin")?),
            child,
            dir: None,
        })
    }

    /// Makes change number `n`: every stream gets a new list.
    pub(crate) async fn change(&mut self, n: usize) -> Result<(), Box<dyn std::error::Error>> {
        match &mut self.change {
            Change::Admin(admin) => {
                let undo = if n % 2 == 1 { "&undo=true" } else { "" };
                admin_post(
                    admin,
                    &format!("/drain?service=movies&backend=127.0.0.1:10{undo}"),
                )
                .await
            }
            Change::Stdin(stdin) => Ok(stdin.write_all(b"change\n").await?),
        }
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The JSON line a server prints once it listens.
async fn first_line(
    child: &mut tokio::process::Child,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let line = lines.next_line().await?.ok_or("the server exited")?;
    Ok(serde_json::from_str(&line)?)
}

fn listening(started: &serde_json::Value) -> Result<String, Box<dyn std::error::Error>> {
    Ok(started["listening"]
        .as_str()
        .ok_or("no listen address")?
        .to_owned())
}

/// Opens the streams against `server`, reads its RSS and measures
/// `args.changes` fan-outs; returns the summary JSON.
pub(crate) async fn measure(
    server: ServerUnderTest,
    args: &LbArgs,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let plan = Fanout {
        what: server.name,
        streams: args.streams,
        per_connection: args.per_connection,
        changes: args.changes,
        settle: Duration::ZERO,
    };
    measure_fanout(server, &plan, |connection| connection.run()).await
}

/// One fan-out measurement: how many streams, how many changes, and how
/// long to let a change settle before the next (its CPU counted).
pub(crate) struct Fanout {
    pub(crate) what: &'static str,
    pub(crate) streams: usize,
    pub(crate) per_connection: usize,
    pub(crate) changes: usize,
    pub(crate) settle: Duration,
}

/// Opens `plan.streams` streams against `server` (one `connection` task
/// per HTTP/2 connection, reporting through its [`Connection`]), reads the
/// server's RSS, then makes `plan.changes` changes one at a time and
/// collects every stream's latency for each; returns the summary JSON
/// (medians over the changes, and each change's figures).
pub(crate) async fn measure_fanout<F, Fut>(
    mut server: ServerUnderTest,
    plan: &Fanout,
    connection: F,
) -> Result<serde_json::Value, Box<dyn std::error::Error>>
where
    F: Fn(Connection) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (pid, listen) = (server.pid, server.listen.clone());
    eprintln!(
        "{} pid {pid} on {listen}; idle RSS {} MiB",
        plan.what,
        rss_mib(pid)
    );
    let established = Arc::new(AtomicUsize::new(0));
    let all_established = Arc::new(Notify::new());
    let (triggers_tx, triggers) = watch::channel::<Vec<Instant>>(Vec::new());
    let (results_tx, mut results) = mpsc::unbounded_channel::<Batch>();
    let connections = plan.streams.div_ceil(plan.per_connection);
    let setup = Instant::now();
    let mut handles = Vec::with_capacity(connections);
    for c in 0..connections {
        handles.push(tokio::spawn(connection(Connection {
            listen: listen.clone(),
            streams: plan
                .per_connection
                .min(plan.streams - c * plan.per_connection),
            total: plan.streams,
            established: established.clone(),
            all_established: all_established.clone(),
            triggers: triggers.clone(),
            results: results_tx.clone(),
        })));
    }
    drop(results_tx);
    tokio::time::timeout(Duration::from_secs(300), all_established.notified())
        .await
        .map_err(|_| {
            format!(
                "only {} of {} streams established in 300 s",
                established.load(Ordering::Relaxed),
                plan.streams
            )
        })?;
    eprintln!(
        "{}: {} streams over {connections} connections established in {:.1} s",
        plan.what,
        plan.streams,
        setup.elapsed().as_secs_f64()
    );
    // Let the setup's allocations settle before reading the RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(pid);
    eprintln!("server RSS with all streams open: {rss} MiB");

    // Changes, one at a time (drain one backend, then undo it, …); each
    // reaches every stream.
    let mut per_change = Vec::with_capacity(plan.changes);
    for change in 0..plan.changes {
        let (server_cpu0, client_cpu0) = (
            cpu_seconds(&format!("/proc/{pid}/stat")),
            cpu_seconds("/proc/self/stat"),
        );
        triggers_tx.send_modify(|t| t.push(Instant::now()));
        server.change(change).await?;
        let mut latencies = Vec::with_capacity(plan.streams);
        while latencies.len() < plan.streams {
            match tokio::time::timeout(Duration::from_secs(60), results.recv()).await {
                Ok(Some(Batch::Latencies(k, batch))) if k == change => latencies.extend(batch),
                Ok(Some(Batch::Latencies(k, _))) => {
                    return Err(
                        format!("an update for change {k} arrived during change {change}").into(),
                    );
                }
                Ok(Some(Batch::Failed(why))) => return Err(why.into()),
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(plan.settle).await;
        let server_cpu = cpu_seconds(&format!("/proc/{pid}/stat")) - server_cpu0;
        let client_cpu = cpu_seconds("/proc/self/stat") - client_cpu0;
        let received = latencies.len();
        let (p50, p99, max) = (
            percentile(&mut latencies, 50.0),
            percentile(&mut latencies, 99.0),
            percentile(&mut latencies, 100.0),
        );
        eprintln!(
            "change {change}: reached {received} streams: p50 {p50:?}, p99 {p99:?}, max {max:?}; CPU server {server_cpu:.2} s, bench client {client_cpu:.2} s"
        );
        if received < plan.streams {
            return Err(format!(
                "only {received} of {} streams got change {change}",
                plan.streams
            )
            .into());
        }
        per_change.push(json!({"fanout_p50_ms": ms(p50), "fanout_p99_ms": ms(p99), "fanout_max_ms": ms(max), "server_cpu_s": server_cpu, "client_cpu_s": client_cpu}));
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
        "streams": plan.streams,
        "rss_mib": rss,
        "fanout_p50_ms": median_of("fanout_p50_ms"),
        "fanout_p99_ms": median_of("fanout_p99_ms"),
        "fanout_max_ms": median_of("fanout_max_ms"),
        "server_cpu_s": median_of("server_cpu_s"),
        "client_cpu_s": median_of("client_cpu_s"),
        "changes": per_change,
    });
    for handle in &handles {
        handle.abort();
    }
    eprintln!("{}: {summary}", plan.what);
    Ok(summary)
}

async fn admin_post(admin: &str, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("POST {path} failed: {answer}").into());
    }
    Ok(())
}

/// What a connection's task reports: every stream's latency for one change,
/// or why it stopped.
pub(crate) enum Batch {
    Latencies(usize, Vec<Duration>),
    Failed(String),
}

/// One HTTP/2 connection's streams, all read by one task (a
/// `select_all`), so the measuring client costs little next to the server
/// it measures: no task, channel or allocation per stream per message.
pub(crate) struct Connection {
    pub(crate) listen: String,
    pub(crate) streams: usize,
    pub(crate) total: usize,
    pub(crate) established: Arc<AtomicUsize>,
    pub(crate) all_established: Arc<Notify>,
    /// When each change was requested, in order.
    pub(crate) triggers: watch::Receiver<Vec<Instant>>,
    pub(crate) results: mpsc::UnboundedSender<Batch>,
}

impl Connection {
    /// One more stream has what it needs before the changes start.
    pub(crate) fn stream_established(&self) {
        if self.established.fetch_add(1, Ordering::Relaxed) + 1 == self.total {
            self.all_established.notify_one();
        }
    }

    /// Records that a stream received change `change`'s update now;
    /// reports the change's batch once every stream of this connection
    /// has. `recorded` holds each change's latencies so far.
    pub(crate) fn record(
        &self,
        change: usize,
        recorded: &mut Vec<Vec<Duration>>,
    ) -> Result<(), String> {
        let Some(t0) = self.triggers.borrow().get(change).copied() else {
            return Err(format!("an update no change asked for (change {change})"));
        };
        if recorded.len() <= change {
            recorded.resize_with(change + 1, Vec::new);
        }
        recorded[change].push(t0.elapsed());
        if recorded[change].len() == self.streams {
            let batch = std::mem::take(&mut recorded[change]);
            let _ = self.results.send(Batch::Latencies(change, batch));
        }
        Ok(())
    }

    /// Reports why the connection's task stopped.
    pub(crate) fn failed(&self, why: String) {
        let _ = self.results.send(Batch::Failed(why));
    }

    /// An HTTP/2 connection to the server under test, with small stream
    /// windows (as many streams share it).
    pub(crate) async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.listen))
            .map_err(|e| e.to_string())?
            .initial_stream_window_size(Some(16 * 1024))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))
    }

    /// BalanceLoad streams: each established by its first list, then
    /// every list is a change's.
    async fn run(self) {
        if let Err(why) = self.read_all().await {
            self.failed(why);
        }
    }

    async fn read_all(&self) -> Result<(), String> {
        let channel = self.channel().await?;
        let opened = futures_util::future::join_all((0..self.streams).map(|_| {
            let mut client = LoadBalancerClient::new(channel.clone());
            let initial = LoadBalanceRequest {
                load_balance_request_type: Some(LoadBalanceRequestType::InitialRequest(
                    InitialLoadBalanceRequest {
                        name: "movies".into(),
                    },
                )),
            };
            // The request side stays open (ClientStats could follow).
            let requests =
                futures_util::stream::iter([initial]).chain(futures_util::stream::pending());
            async move { client.balance_load(requests).await }
        }))
        .await;
        let mut inbound = futures_util::stream::select_all(opened.into_iter().enumerate().map(
            |(i, response)| match response {
                Ok(response) => response.into_inner().map(move |m| (i, m)).left_stream(),
                Err(status) => futures_util::stream::iter([(i, Err(status))]).right_stream(),
            },
        ));
        let mut received = vec![0usize; self.streams];
        let mut changes: Vec<Vec<Duration>> = Vec::new();
        while let Some((i, message)) = inbound.next().await {
            message.map_err(|status| format!("stream {i}: {status}"))?;
            received[i] += 1;
            // The initial response, then the first list: established.
            if received[i] == 2 {
                self.stream_established();
            } else if received[i] > 2 {
                self.record(received[i] - 3, &mut changes)
                    .map_err(|e| format!("stream {i}: {e}"))?;
            }
        }
        Err("the connection's streams ended".into())
    }
}

/// `waypost-bench lbserver-tonic`: the competitor, a plain tonic
/// `LoadBalancer` server written the way tonic's examples write streaming
/// servers (default server settings; a task and an mpsc channel per stream,
/// each message encoded by tonic per stream). It serves one list and
/// switches between two versions (two backends, then one) whenever a line
/// arrives on stdin. First line on stdout: `{"listening":"ADDR"}`.
pub(crate) async fn tonic_child() -> Result<(), Box<dyn std::error::Error>> {
    use waypost_proto::grpc::lb::v1::load_balancer_server::LoadBalancerServer;

    let lists = [plain_list(&[9, 10]), plain_list(&[9])];
    let (set_list, list) = watch::channel(lists[0].clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{}",
        json!({"listening": listener.local_addr()?.to_string()})
    );
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        let mut n = 0;
        while let Ok(Some(_)) = stdin.next_line().await {
            n += 1;
            set_list.send_replace(lists[n % 2].clone());
        }
        // The bench is gone: stop.
        std::process::exit(0);
    });
    tonic::transport::Server::builder()
        .add_service(LoadBalancerServer::new(PlainBalancer { list }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

fn plain_list(ports: &[u16]) -> LoadBalanceResponse {
    LoadBalanceResponse {
        load_balance_response_type: Some(LoadBalanceResponseType::ServerList(ServerList {
            servers: ports
                .iter()
                .map(|&port| Server {
                    ip_address: vec![127, 0, 0, 1],
                    port: i32::from(port),
                    load_balance_token: format!("token-{port}"),
                    drop: false,
                })
                .collect(),
        })),
    }
}

struct PlainBalancer {
    list: watch::Receiver<LoadBalanceResponse>,
}

#[tonic::async_trait]
impl waypost_proto::grpc::lb::v1::load_balancer_server::LoadBalancer for PlainBalancer {
    type BalanceLoadStream =
        tokio_stream::wrappers::ReceiverStream<Result<LoadBalanceResponse, tonic::Status>>;

    async fn balance_load(
        &self,
        request: tonic::Request<tonic::Streaming<LoadBalanceRequest>>,
    ) -> Result<tonic::Response<Self::BalanceLoadStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        inbound
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("no initial request"))?;
        let (tx, rx) = mpsc::channel(4);
        let mut list = self.list.clone();
        tokio::spawn(async move {
            let initial = LoadBalanceResponse {
                load_balance_response_type: Some(LoadBalanceResponseType::InitialResponse(
                    InitialLoadBalanceResponse {
                        client_stats_report_interval: Some(prost_types::Duration {
                            seconds: 10,
                            nanos: 0,
                        }),
                    },
                )),
            };
            let current = list.borrow_and_update().clone();
            if tx.send(Ok(initial)).await.is_err() || tx.send(Ok(current)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = list.changed() => {
                        let current = list.borrow_and_update().clone();
                        if changed.is_err() || tx.send(Ok(current)).await.is_err() {
                            return;
                        }
                    }
                    message = inbound.message() => {
                        if !matches!(message, Ok(Some(_))) {
                            return;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}
