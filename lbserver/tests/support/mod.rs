//! Helpers shared by the lbserver's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use waypost_integration::backend::Backend;
use waypost_lbserver::balance::BalanceOptions;
use waypost_lbserver::config::Config;
use waypost_lbserver::probe::ProbeOptions;
use waypost_lbserver::server::{Running, ServeOptions, start};
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
        if let LoadBalanceResponseType::ServerList(list) = next(stream).await {
            if pred(&list.servers) {
                return list.servers;
            }
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
