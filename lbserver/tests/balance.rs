//! The BalanceLoad server, driven by the generated grpc.lb.v1 client, with
//! real backends (health probed) and real etcd.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use waypost_integration::backend::start_backends;
use waypost_integration::etcd::EtcdServer;
use waypost_lbserver::assign::token;
use waypost_lbserver::config::Config;
use waypost_lbserver::server::start;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::{ClientStats, ClientStatsPerToken, LoadBalanceRequest, Server};
use waypost_resolver::etcd::{Registration, RegistrationOptions};

#[tokio::test]
async fn initial_response_then_lists_with_addresses_ports_and_tokens() {
    let backends = start_backends(2).await.unwrap();
    let lb = serve(&format!(
        r#"
[[service]]
name = "movies"
source = "{}"
health_service = "movies.v1.MoviesService"
client_stats_interval = "2s"

[[service]]
name = "v6"
source = "[::1]:7"
"#,
        listing(&[&backends[0], &backends[1]])
    ))
    .await;

    let mut stream = open(lb.listen, initial("movies:443")).await.unwrap();
    match next(&mut stream).await {
        LoadBalanceResponseType::InitialResponse(r) => {
            assert_eq!(
                r.client_stats_report_interval,
                Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0
                })
            );
        }
        other => panic!("expected the initial response first, got {other:?}"),
    }
    let servers = list_where(&mut stream, |s| s.len() == 2).await;
    let mut expected: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    expected.sort();
    for (server, addr) in servers.iter().zip(&expected) {
        assert_eq!(server.ip_address, Ipv4Addr::LOCALHOST.octets().to_vec());
        assert_eq!(server.port, i32::from(addr.port()));
        assert_eq!(server.load_balance_token, token("movies", *addr));
        assert!(!server.drop);
    }

    let mut v6 = open(lb.listen, initial("v6")).await.unwrap();
    next(&mut v6).await;
    let servers = list_where(&mut v6, |s| !s.is_empty()).await;
    assert_eq!(servers[0].ip_address.len(), 16);
    assert_eq!(servers[0].port, 7);
}

#[tokio::test]
async fn a_health_flip_and_a_drain_change_the_list() {
    let backends = start_backends(3).await.unwrap();
    let lb = serve(&format!(
        "admin = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"{}\"\nhealth_service = \"movies.v1.MoviesService\"\n",
        listing(&[&backends[0], &backends[1], &backends[2]])
    ))
    .await;
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    list_where(&mut stream, |s| s.len() == 3).await;

    backends[1].set_serving(false);
    let servers = list_where(&mut stream, |s| s.len() == 2).await;
    assert!(!ports(&servers).contains(&backends[1].addr().port()));
    backends[1].set_serving(true);
    list_where(&mut stream, |s| s.len() == 3).await;

    // Drain b2 through the admin endpoint: out of new lists at once.
    let admin = lb.admin.unwrap();
    let drained = http(
        admin,
        "POST",
        &format!("/drain?service=movies&backend={}", backends[2].addr()),
    )
    .await;
    assert!(drained.starts_with("HTTP/1.1 200"), "{drained}");
    let servers = list_where(&mut stream, |s| s.len() == 2).await;
    assert!(!ports(&servers).contains(&backends[2].addr().port()));
    let status = http(admin, "GET", "/status").await;
    assert!(status.contains("\"draining\":true"), "{status}");
    http(
        admin,
        "POST",
        &format!(
            "/drain?service=movies&backend={}&undo=true",
            backends[2].addr()
        ),
    )
    .await;
    list_where(&mut stream, |s| s.len() == 3).await;
    let metrics = http(admin, "GET", "/metrics").await;
    assert!(
        metrics.contains("waypost_lb_backends{service=\"movies\",state=\"healthy\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("waypost_lb_streams{service=\"movies\"} 1"),
        "{metrics}"
    );
    assert!(http(admin, "GET", "/healthz").await.ends_with("ok\n"));
}

#[tokio::test]
async fn an_etcd_registration_changes_the_list_and_replicas_agree() {
    let etcd = EtcdServer::start().await.unwrap();
    let backends = start_backends(2).await.unwrap();
    let client = waypost_resolver::etcd::connect(&[etcd.addr()])
        .await
        .unwrap();
    let _r0 = Registration::register(
        client.clone(),
        RegistrationOptions::new("movies", backends[0].addr().to_string()),
    )
    .await
    .unwrap();
    let config = format!(
        "etcd = [\"{}\"]\n[[service]]\nname = \"movies\"\nsource = \"etcd:///movies\"\nhealth_service = \"\"\n",
        etcd.addr()
    );
    let replica_a = serve(&config).await;
    let replica_b = serve(&config).await;
    let mut a = open(replica_a.listen, initial("movies")).await.unwrap();
    let mut b = open(replica_b.listen, initial("movies")).await.unwrap();
    next(&mut a).await;
    next(&mut b).await;
    list_where(&mut a, |s| s.len() == 1).await;

    let _r1 = Registration::register(
        client.clone(),
        RegistrationOptions::new("movies", backends[1].addr().to_string()),
    )
    .await
    .unwrap();
    let from_a = list_where(&mut a, |s| s.len() == 2).await;
    let from_b = list_where(&mut b, |s| s.len() == 2).await;
    assert_eq!(
        from_a, from_b,
        "two replicas on one etcd hand out the same list"
    );
}

#[tokio::test]
async fn drops_are_spread_through_the_list() {
    let backends = start_backends(3).await.unwrap();
    let lb = serve(&format!(
        "[[service]]\nname = \"movies\"\nsource = \"{}\"\ndrop_fraction = 0.25\n",
        listing(&[&backends[0], &backends[1], &backends[2]])
    ))
    .await;
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    let servers = list_where(&mut stream, |s| s.iter().filter(|x| !x.drop).count() == 3).await;
    let drops = servers.iter().filter(|s| s.drop).count();
    assert_eq!(drops, 1, "1 of 4 entries: {servers:?}");
    assert!(
        servers
            .iter()
            .filter(|s| s.drop)
            .all(|s| s.load_balance_token == "drop")
    );
}

#[tokio::test]
async fn bad_streams_are_rejected_with_clear_statuses() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n").await;

    let unknown = open(lb.listen, initial("orders"))
        .await
        .expect_err("rejected");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains("orders"));

    let long = open(lb.listen, initial(&"x".repeat(256)))
        .await
        .expect_err("rejected");
    assert_eq!(long.code(), tonic::Code::InvalidArgument);

    let stats_first = LoadBalanceRequest {
        load_balance_request_type: Some(
            LoadBalanceRequestType::ClientStats(ClientStats::default()),
        ),
    };
    let wrong = open(lb.listen, stats_first).await.expect_err("rejected");
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);

    // A client that never sends its initial request is closed after the timeout.
    let mut client = lb_client(lb.listen).await;
    let (_tx, rx) = mpsc::channel::<LoadBalanceRequest>(1);
    let started = tokio::time::Instant::now();
    let silent = client
        .balance_load(ReceiverStream::new(rx))
        .await
        .expect_err("closed");
    assert_eq!(silent.code(), tonic::Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn client_stats_are_aggregated_per_service_and_token() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\ndrop_fraction = 0.5\nclient_stats_interval = \"100ms\"\n").await;
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    next(&mut stream).await;
    let backend_token = token("movies", "127.0.0.1:1".parse().unwrap());
    for _ in 0..3 {
        let report = ClientStats {
            num_calls_started: 10,
            num_calls_finished: 9,
            num_calls_finished_known_received: 7,
            calls_finished_with_drop: vec![
                ClientStatsPerToken {
                    load_balance_token: "drop".into(),
                    num_calls: 2,
                },
                ClientStatsPerToken {
                    load_balance_token: "made-up".into(),
                    num_calls: 99,
                },
                ClientStatsPerToken {
                    load_balance_token: backend_token.clone(),
                    num_calls: 1,
                },
            ],
            ..Default::default()
        };
        stream
            .tx
            .send(LoadBalanceRequest {
                load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(report)),
            })
            .await
            .unwrap();
    }
    let service = lb.registry.find("movies").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while service
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports not all received"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        load(&service.stats.started),
        30,
        "three quick reports are throttled, not lost"
    );
    assert_eq!(load(&service.stats.finished), 27);
    assert_eq!(load(&service.stats.known_received), 21);
    let drops = service.stats.drops.lock().clone();
    assert_eq!(drops.get("drop"), Some(&6));
    assert_eq!(drops.get(&backend_token), Some(&3));
    assert!(
        !drops.contains_key("made-up"),
        "tokens it never handed out are not kept"
    );
}

#[tokio::test]
async fn a_restarted_balancer_serves_new_streams_on_the_same_port() {
    let backends = start_backends(1).await.unwrap();
    let text = format!(
        "[[service]]\nname = \"movies\"\nsource = \"{}\"\n",
        backends[0].addr()
    );
    let lb = serve(&text).await;
    let addr = lb.listen;
    let mut stream = open(addr, initial("movies")).await.unwrap();
    next(&mut stream).await;
    list_where(&mut stream, |s| s.len() == 1).await;

    lb.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.rx.message())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "no more lists after shutdown: {ended:?}"
    );

    let config = Config::parse(&format!("listen = \"{addr}\"\n{text}"), "test.toml").unwrap();
    let again = start(config, options()).await.unwrap();
    let mut stream = open(again.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    list_where(&mut stream, |s| s.len() == 1).await;
}

#[tokio::test]
async fn subset_gives_each_client_its_own_backends() {
    let lb = serve(
        "[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4\"\npolicy = \"subset\"\nsubset_size = 2\n",
    )
    .await;
    let mut lists = Vec::new();
    for _ in 0..2 {
        let mut stream = open(lb.listen, initial("movies")).await.unwrap();
        next(&mut stream).await;
        lists.push(ports(&list_where(&mut stream, |s| s.len() == 2).await));
    }
    let mut all: Vec<u16> = lists.concat();
    all.sort();
    assert_eq!(
        all,
        vec![1, 2, 3, 4],
        "two clients of one round share no backend: {lists:?}"
    );
}

#[tokio::test]
async fn reported_load_and_client_stats_steer_the_weighted_list() {
    let etcd = EtcdServer::start().await.unwrap();
    let backends = start_backends(2).await.unwrap();
    let mut client = waypost_resolver::etcd::connect(&[etcd.addr()])
        .await
        .unwrap();
    let put = |addr: std::net::SocketAddr, load: f64| {
        (
            format!("movies/{addr}"),
            format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":{{"weight":4,"load":{load}}}}}"#),
        )
    };
    let (busy, idle) = (backends[0].addr(), backends[1].addr());
    for (key, value) in [put(busy, 0.75), put(idle, 0.0)] {
        client.put(key, value, None).await.unwrap();
    }
    let lb = serve(&format!(
        "etcd = [\"{}\"]\n[[service]]\nname = \"movies\"\nsource = \"etcd:///movies\"\npolicy = \"weighted\"\ncapacity_per_weight = 10.0\nhealth_service = \"\"\nclient_stats_interval = \"100ms\"\n",
        etcd.addr()
    ))
    .await;
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    let count = |servers: &[Server], addr: std::net::SocketAddr| {
        ports(servers).iter().filter(|p| **p == addr.port()).count()
    };

    // Reported load: the busy backend (75 % loaded) gets 1 entry, the idle 4.
    let list = list_where(&mut stream, |s| s.len() == 5).await;
    assert_eq!((count(&list, busy), count(&list, idle)), (1, 4));

    // It reports being idle again: both get their full weight.
    let (key, value) = put(busy, 0.0);
    client.put(key, value, None).await.unwrap();
    let list = list_where(&mut stream, |s| ports(s).len() == 8).await;
    assert_eq!((count(&list, busy), count(&list, idle)), (4, 4));
    assert!(list.iter().all(|s| !s.drop));

    // Clients report 400 calls/s against a spare capacity of 80 calls/s
    // (2 backends × weight 4 × 10 calls/s): the excess is dropped.
    let report = || LoadBalanceRequest {
        load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(ClientStats {
            num_calls_started: 40,
            num_calls_finished: 40,
            ..Default::default()
        })),
    };
    let reporter = {
        let tx = stream.tx.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                if tx.send(report()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let list = list_where(&mut stream, |s| {
        s.iter().filter(|e| e.drop).count() * 2 >= s.len()
    })
    .await;
    let drops = list.iter().filter(|e| e.drop).count();
    assert!(
        drops * 10 >= list.len() * 6,
        "about 80 % drops: {drops} of {}",
        list.len()
    );
    let service = lb.registry.find("movies").unwrap();
    assert!(
        service.observed_rate() > 100.0,
        "{}",
        service.observed_rate()
    );
    let status = waypost_lbserver::admin::status(&lb.registry);
    assert!(status["services"][0]["drop_fraction"].as_f64().unwrap() > 0.5);

    // The clients calm down: the drops go away again.
    reporter.abort();
    let list = list_where(&mut stream, |s| s.iter().all(|e| !e.drop)).await;
    assert_eq!(ports(&list).len(), 8);
}
