//! `waypost::rpc` data calls balanced by `waypost serve` over grpclb: every
//! call goes to a listed backend and carries that backend's `lb-token`
//! (the REQUEST frame's metadata), drops fail the call, and the calls are
//! reported in the client's ClientStats.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use waypost_lbserver::assign::token;
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{Running, ServeOptions, start};
use waypost_rpc::{Client, DataRequest, DataResponse, Listener, Server};

/// A data server answering every call with `NAME TOKEN` (the `lb-token`
/// it received, `-` if none).
async fn backend(name: &'static str) -> waypost_rpc::Running {
    Server::builder()
        .data(move |request: DataRequest| async move {
            let token = request.metadata("lb-token").unwrap_or("-").to_owned();
            Ok(DataResponse::new(format!("{name} {token}")))
        })
        .serve(Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap()
}

fn addr(server: &waypost_rpc::Running) -> std::net::SocketAddr {
    match server.address() {
        waypost_resolver::Address::Tcp(addr) => *addr,
        other => panic!("not TCP: {other}"),
    }
}

async fn balancer(
    service: &str,
    backends: &[&waypost_rpc::Running],
    drop_fraction: f64,
) -> Running {
    let source: Vec<String> = backends.iter().map(|b| addr(b).to_string()).collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"{service}\"\nsource = \"{}\"\ndrop_fraction = {drop_fraction}\nclient_stats_interval = \"100ms\"\n",
        source.join(",")
    );
    start(
        Config::parse(&text, "rpc.toml").unwrap(),
        ServeOptions::default(),
    )
    .await
    .unwrap()
}

fn client(service: &str, lb: &Running) -> Client {
    let config = json!({"loadBalancingConfig": [{"grpclb": {
        "serviceName": service,
        "balancerAddresses": [lb.listen.to_string()],
    }}]});
    Client::builder(format!("passthrough:///{service}"))
        .pick_timeout(Duration::from_secs(10))
        .channel(move |b| b.default_service_config(config))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_calls_go_to_listed_backends_with_their_tokens() {
    let (b1, b2) = (backend("d1").await, backend("d2").await);
    let lb = balancer("bulk", &[&b1, &b2], 0.0).await;
    let client = client("bulk", &lb);

    let expected: BTreeMap<&str, String> = [
        ("d1", token("bulk", addr(&b1))),
        ("d2", token("bulk", addr(&b2))),
    ]
    .into();
    let mut served = BTreeMap::new();
    // Until both are READY, then 40 more.
    let mut calls = 0;
    for _ in 0..500 {
        let response = client.call("echo", "", None).await.unwrap();
        let text = String::from_utf8(response.message.to_vec()).unwrap();
        let (name, seen) = text.split_once(' ').unwrap();
        assert_eq!(
            Some(&seen.to_owned()),
            expected.get(name),
            "{name} got the token of its own list entry"
        );
        *served.entry(name.to_owned()).or_insert(0) += 1;
        calls += 1;
        if served.len() == 2 && calls >= 40 {
            break;
        }
    }
    assert_eq!(served.len(), 2, "{served:?}");

    // The calls reach the balancer's ClientStats.
    let service = lb.registry.find("bulk").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while service.stats.known_received.load(Ordering::Relaxed) < calls {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reported {} of {calls}",
            service.stats.known_received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_calls_honour_the_balancers_drops() {
    let b1 = backend("d1").await;
    let lb = balancer("shed", &[&b1], 0.5).await;
    let client = client("shed", &lb);
    // Wait until the backend serves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.call("echo", "", None).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never served");
    }
    let (mut ok, mut dropped) = (0, 0);
    for _ in 0..40 {
        match client.call("echo", "", None).await {
            Ok(_) => ok += 1,
            Err(error) => {
                assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
                assert!(error.to_string().contains("drop"), "{error}");
                dropped += 1;
            }
        }
    }
    // Half the list entries are drops, walked in order.
    assert!(
        (15..=25).contains(&dropped),
        "{dropped} of 40 dropped, {ok} served"
    );
}
