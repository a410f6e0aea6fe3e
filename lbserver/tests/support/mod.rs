//! Helpers shared by the lbserver's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use waypost_integration::backend::Backend;
use waypost_lbserver::balance::BalanceOptions;
use waypost_lbserver::config::Config;
use waypost_lbserver::probe::ProbeOptions;
use waypost_lbserver::server::{Running, ServeOptions, start};
use waypost_lbserver::xds::service::AdsOptions;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::load_balancer_client::LoadBalancerClient;
use waypost_proto::grpc::lb::v1::{
    InitialLoadBalanceRequest, LoadBalanceRequest, LoadBalanceResponse, Server,
};
use waypost_resolver::backoff::BackoffConfig;

pub fn options() -> ServeOptions {
    ServeOptions {
        balance: BalanceOptions {
            initial_request_timeout: Duration::from_millis(500),
            debounce: Duration::from_millis(10),
        },
        probe: ProbeOptions {
            backoff: BackoffConfig {
                base: Duration::from_millis(100),
                multiplier: 1.6,
                jitter: 0.2,
                max: Duration::from_millis(500),
            },
            ..ProbeOptions::default()
        },
        ads: AdsOptions {
            first_request_timeout: Duration::from_millis(500),
            ..AdsOptions::default()
        },
        keepalive: waypost_lbserver::port::Keepalive::default(),
    }
}

pub async fn serve(text: &str) -> Running {
    let text = format!("listen = \"127.0.0.1:0\"\n{text}");
    let config = Config::parse(&text, "test.toml").unwrap();
    start(config, options()).await.unwrap()
}

pub fn listing(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| b.addr().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug)]
pub struct Stream {
    pub tx: mpsc::Sender<LoadBalanceRequest>,
    pub rx: Streaming<LoadBalanceResponse>,
}

pub async fn open(
    lb: std::net::SocketAddr,
    first: LoadBalanceRequest,
) -> Result<Stream, tonic::Status> {
    let mut client = lb_client(lb).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let rx = client
        .balance_load(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Stream { tx, rx })
}

pub async fn lb_client(lb: std::net::SocketAddr) -> LoadBalancerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{lb}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    LoadBalancerClient::new(channel)
}

pub fn initial(name: &str) -> LoadBalanceRequest {
    LoadBalanceRequest {
        load_balance_request_type: Some(LoadBalanceRequestType::InitialRequest(
            InitialLoadBalanceRequest { name: name.into() },
        )),
    }
}

pub async fn next(stream: &mut Stream) -> LoadBalanceResponseType {
    tokio::time::timeout(Duration::from_secs(10), stream.rx.message())
        .await
        .expect("a response within 10 s")
        .expect("no error")
        .expect("the stream is open")
        .load_balance_response_type
        .expect("a response type")
}

/// Reads responses until a server list satisfies `pred` (at most 10 s).
pub async fn list_where(stream: &mut Stream, pred: impl Fn(&[Server]) -> bool) -> Vec<Server> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching list within 10 s"
        );
        if let LoadBalanceResponseType::ServerList(list) = next(stream).await
            && pred(&list.servers)
        {
            return list.servers;
        }
    }
}

pub fn ports(servers: &[Server]) -> Vec<u16> {
    servers
        .iter()
        .filter(|s| !s.drop)
        .map(|s| s.port as u16)
        .collect()
}

/// One HTTP/1.1 request to the admin endpoint; the whole response.
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The `waypost` binary under test.
pub const WAYPOST: &str = env!("CARGO_BIN_EXE_waypost");

/// Runs `waypost ARGS` to the end: its JSON lines and exit code.
pub async fn run(args: &[&str]) -> (Vec<Value>, i32) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(WAYPOST).args(args).output(),
    )
    .await
    .expect("waypost finished within 30 s")
    .unwrap();
    let lines = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    (lines, output.status.code().unwrap_or(-1))
}

/// Starts `waypost ARGS`, reading its standard output by lines.
pub fn spawn(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut command = Command::new(WAYPOST);
    command.args(args);
    spawn_command(command)
}

/// Starts `command` (e.g. `waypost` under `prlimit`), reading its standard
/// output by lines.
pub fn spawn_command(mut command: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The next JSON line (at most 20 s).
pub async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line within 20 s")
        .unwrap()
        .expect("the process is still printing");
    serde_json::from_str(&line).unwrap()
}

/// Sends SIGTERM and waits for the exit code (at most 20 s).
pub async fn terminate(child: &mut Child) -> i32 {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap()
        .code()
        .unwrap_or(-1)
}
