//! The ADS protocol as `waypost serve` speaks it, driven by hand: versions
//! and nonces, ACK/NACK tracking, only what changed to only who subscribed,
//! wildcards, identical versions from replicas, and misuse — missing or
//! unknown type URLs, garbage, too many names, clients that never ACK or
//! never ask.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use support::{listing, serve};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use waypost_integration::backend::start_backends;
use waypost_integration::etcd::EtcdServer;
use waypost_lbserver::xds::ResourceType;

const EDS: ResourceType = ResourceType::Endpoints;

struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

async fn client(
    addr: std::net::SocketAddr,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AggregatedDiscoveryServiceClient::new(channel)
}

fn request(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

impl Ads {
    /// A stream whose first request is `first` (node `test-node`).
    async fn open(addr: std::net::SocketAddr, mut first: DiscoveryRequest) -> Ads {
        first.node = Some(Node {
            id: "test-node".into(),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let rx = client(addr)
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Ads { tx, rx }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .expect("no error")
            .expect("the stream is open")
    }

    /// The status the stream ends with (at most 10 s).
    async fn ended(&mut self) -> tonic::Status {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.rx.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("ended without an error"),
                    Err(status) => return status,
                }
            }
        })
        .await
        .expect("ended within 10 s")
    }

    /// ACKs `response` keeping `names` subscribed.
    async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        let ty = ResourceType::from_type_url(&response.type_url).unwrap();
        self.send(request(ty, names, &response.version_info, &response.nonce))
            .await;
    }
}

fn assignments(response: &DiscoveryResponse) -> Vec<ClusterLoadAssignment> {
    response
        .resources
        .iter()
        .map(|any| ClusterLoadAssignment::decode(any.value.as_slice()).unwrap())
        .collect()
}

fn endpoint_count(assignment: &ClusterLoadAssignment) -> usize {
    assignment
        .endpoints
        .iter()
        .map(|l| l.lb_endpoints.len())
        .sum()
}

#[tokio::test]
async fn acks_and_nacks_are_tracked_and_a_nacking_client_keeps_getting_updates() {
    let backends = start_backends(2).await.unwrap();
    let refs: Vec<_> = backends.iter().collect();
    let lb = serve(&format!(
        "[[service]]\nname = \"movies\"\nsource = \"{}\"\n",
        listing(&refs)
    ))
    .await;
    let mut ads = Ads::open(lb.listen, request(EDS, &["movies"], "", "")).await;
    let first = ads.next().await;
    assert_eq!(first.type_url, EDS.type_url());
    assert_eq!(endpoint_count(&assignments(&first)[0]), 2);
    ads.ack(&first, &["movies"]).await;

    // A drain changes the assignment; the client NACKs it.
    let service = lb.registry.find("movies").unwrap();
    service.set_draining(backends[0].addr(), true);
    let second = ads.next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    let mut nack = request(EDS, &["movies"], &first.version_info, &second.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "no, thank you".into(),
        details: Vec::new(),
    });
    ads.send(nack).await;
    // The next change still reaches it (and it ACKs that one).
    service.set_draining(backends[0].addr(), false);
    let third = loop {
        let response = ads.next().await;
        if endpoint_count(&assignments(&response)[0]) == 2
            && assignments(&response)[0].endpoints[0]
                .lb_endpoints
                .iter()
                .all(|e| e.health_status == 1)
        {
            break response;
        }
        ads.ack(&response, &["movies"]).await;
    };
    ads.ack(&third, &["movies"]).await;

    // Status and metrics show the NACK, and the ACKed version.
    let status = waypost_lbserver::admin::status(&lb.registry);
    let record = &status["services"][0]["xds_clients"][0];
    assert_eq!(record["node_id"], "test-node", "{status}");
    assert_eq!(record["last_nack"]["type"], "eds");
    assert_eq!(record["last_nack"]["error"], "no, thank you");
    assert_eq!(
        record["last_nack"]["kept_version"],
        first.version_info.as_str()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = waypost_lbserver::admin::status(&lb.registry);
        if status["services"][0]["xds_clients"][0]["acked"]["eds"] == third.version_info.as_str() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::task::yield_now().await;
    }
    let metrics = waypost_lbserver::metrics::ServerMetrics::new(lb.registry.clone(), None).render();
    assert!(
        metrics.contains("waypost_lb_ads_nacks_total{type=\"eds\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("waypost_lb_ads_streams 1\n"), "{metrics}");
}

#[tokio::test]
async fn an_eds_change_goes_only_to_its_subscribers_and_carries_only_what_changed() {
    let backends = start_backends(2).await.unwrap();
    let lb = serve(&format!(
        "[[service]]\nname = \"a\"\nsource = \"{}\"\n[[service]]\nname = \"b\"\nsource = \"{}\"\n",
        backends[0].addr(),
        backends[1].addr()
    ))
    .await;
    let mut both = Ads::open(lb.listen, request(EDS, &["a", "b"], "", "")).await;
    let first = both.next().await;
    assert_eq!(first.resources.len(), 2);
    both.ack(&first, &["a", "b"]).await;
    let mut only_b = Ads::open(lb.listen, request(EDS, &["b"], "", "")).await;
    let b_first = only_b.next().await;
    only_b.ack(&b_first, &["b"]).await;

    lb.registry
        .find("a")
        .unwrap()
        .set_draining(backends[0].addr(), true);
    let update = both.next().await;
    let changed = assignments(&update);
    assert_eq!(changed.len(), 1, "only `a` changed");
    assert_eq!(changed[0].cluster_name, "a");
    // `b`'s subscriber was sent nothing: the next thing it gets is b's own
    // change.
    lb.registry
        .find("b")
        .unwrap()
        .set_draining(backends[1].addr(), true);
    let b_update = only_b.next().await;
    assert_eq!(assignments(&b_update)[0].cluster_name, "b");
}

#[tokio::test]
async fn lds_and_cds_answer_unknown_names_with_nothing_and_wildcards_with_everything() {
    let lb = serve(
        "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\n[[service]]\nname = \"b\"\nsource = \"127.0.0.1:2\"\n",
    )
    .await;
    let mut ads = Ads::open(
        lb.listen,
        request(ResourceType::Listener, &["nope"], "", ""),
    )
    .await;
    let none = ads.next().await;
    assert!(
        none.resources.is_empty(),
        "does-not-exist is an empty LDS response"
    );
    // Everything (a legacy wildcard: an empty first CDS request).
    ads.send(request(ResourceType::Cluster, &[], "", "")).await;
    let all = ads.next().await;
    assert_eq!(all.type_url, ResourceType::Cluster.type_url());
    assert_eq!(all.resources.len(), 2);
}

#[tokio::test]
async fn a_thousand_names_are_served_and_more_than_the_limit_refused() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n").await;
    let names: Vec<String> = (0..999).map(|i| format!("missing-{i}")).collect();
    let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
    refs.push("movies");
    let mut ads = Ads::open(lb.listen, request(ResourceType::Listener, &refs, "", "")).await;
    let response = ads.next().await;
    assert_eq!(response.resources.len(), 1);
    // Another client is unaffected.
    let mut other = Ads::open(
        lb.listen,
        request(ResourceType::Cluster, &["movies"], "", ""),
    )
    .await;
    assert_eq!(other.next().await.resources.len(), 1);

    let too_many: Vec<String> = (0..1025).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let mut greedy = Ads::open(lb.listen, request(ResourceType::Listener, &refs, "", "")).await;
    let status = greedy.ended().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let long = "x".repeat(300);
    let mut long_name =
        Ads::open(lb.listen, request(ResourceType::Listener, &[&long], "", "")).await;
    assert_eq!(long_name.ended().await.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn missing_and_unknown_type_urls_garbage_and_empty_subscriptions_end_the_stream_with_invalid_argument()
 {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n").await;
    let mut no_type = Ads::open(lb.listen, DiscoveryRequest::default()).await;
    let status = no_type.ended().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("type_url"), "{status:?}");

    let mut unknown = Ads::open(
        lb.listen,
        DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            ..Default::default()
        },
    )
    .await;
    let status = unknown.ended().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Secret"), "{status:?}");

    // Field 1 (version_info, a string) sent as a number: not a
    // DiscoveryRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Garbage {
        #[prost(uint64, tag = "1")]
        version_info: u64,
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", lb.listen))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(waypost_lbserver::xds::service::PATH);
    let result = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([Garbage { version_info: 7 }])),
            path,
            waypost_proto::codec::SmallMessageCodec::<Garbage, DiscoveryResponse>::default(),
        )
        .await;
    let status = match result {
        Err(status) => status,
        Ok(response) => {
            let mut inbound = response.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("garbage accepted"),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // A first request that asks for nothing.
    let mut nothing = Ads::open(lb.listen, request(EDS, &[], "", "")).await;
    let status = nothing.ended().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("subscribes to nothing"),
        "{status:?}"
    );

    // None of it disturbed a well-behaved client.
    let mut fine = Ads::open(
        lb.listen,
        request(ResourceType::Cluster, &["movies"], "", ""),
    )
    .await;
    assert_eq!(fine.next().await.resources.len(), 1);
    let rejected = lb
        .registry
        .xds_clients()
        .rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(rejected, 4);
}

#[tokio::test]
async fn a_client_that_never_acks_gets_nothing_more_until_it_does() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<_> = backends.iter().collect();
    let lb = serve(&format!(
        "[[service]]\nname = \"movies\"\nsource = \"{}\"\n",
        listing(&refs)
    ))
    .await;
    let mut silent = Ads::open(lb.listen, request(EDS, &["movies"], "", "")).await;
    let first = silent.next().await;
    let mut acking = Ads::open(lb.listen, request(EDS, &["movies"], "", "")).await;
    let a_first = acking.next().await;
    acking.ack(&a_first, &["movies"]).await;

    let service = lb.registry.find("movies").unwrap();
    for backend in &backends[..2] {
        service.set_draining(backend.addr(), true);
        let update = acking.next().await;
        acking.ack(&update, &["movies"]).await;
    }
    // The ACKing client saw the changes; the silent one has nothing
    // waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), silent.rx.message())
            .await
            .is_err(),
        "a response while one was unanswered"
    );
    // Once it ACKs, it gets the current state at once.
    silent.ack(&first, &["movies"]).await;
    let latest = silent.next().await;
    let current = lb.registry.find("movies").unwrap().xds();
    // (a shared resource field decodes as a response holding just it)
    let expected = DiscoveryResponse::decode(current.endpoints.field.clone()).unwrap();
    assert_eq!(latest.resources, expected.resources);
}

#[tokio::test]
async fn a_stream_that_asks_nothing_ends_with_deadline_exceeded() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n").await;
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let mut inbound = client(lb.listen)
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("ended within 10 s")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
}

#[tokio::test]
async fn two_replicas_on_one_etcd_serve_the_same_versions() {
    let etcd = EtcdServer::start().await.unwrap();
    let backends = start_backends(2).await.unwrap();
    let mut client = waypost_resolver::etcd::connect(&[etcd.addr()])
        .await
        .unwrap();
    for (backend, zone) in backends.iter().zip(["a", "b"]) {
        let addr = backend.addr();
        client
            .put(
                format!("movies/{addr}"),
                format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":{{"zone":"{zone}","weight":2}}}}"#),
                None,
            )
            .await
            .unwrap();
    }
    let config = format!(
        "etcd = [\"{}\"]\n[[service]]\nname = \"movies\"\nsource = \"etcd:///movies\"\npolicy = \"weighted\"\n",
        etcd.addr()
    );
    let (one, two) = (serve(&config).await, serve(&config).await);
    let mut seen = Vec::new();
    for lb in [&one, &two] {
        let mut responses = Vec::new();
        for ty in ResourceType::ALL {
            let mut ads = Ads::open(lb.listen, request(ty, &["movies"], "", "")).await;
            // Wait for both backends to be in (the source answers first).
            let response = loop {
                let response = ads.next().await;
                if ty != EDS || endpoint_count(&assignments(&response)[0]) == 2 {
                    break response;
                }
                ads.ack(&response, &["movies"]).await;
            };
            responses.push((response.version_info, response.resources));
        }
        seen.push(responses);
    }
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test]
async fn waypost_status_lists_xds_clients_with_their_acked_versions() {
    let (_server, mut out) = support::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--service",
        "movies=127.0.0.1:9",
    ]);
    let started = support::next_json(&mut out).await;
    let listen: std::net::SocketAddr = started["listening"].as_str().unwrap().parse().unwrap();
    let admin = started["admin"].as_str().unwrap().to_owned();
    let mut ads = Ads::open(listen, request(ResourceType::Cluster, &["movies"], "", "")).await;
    let cluster = ads.next().await;
    ads.ack(&cluster, &["movies"]).await;
    // The ACK reaches the server's record before `status` reads it.
    let version = &cluster.version_info[..8];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (mut status, mut table) = support::spawn(&["status", "--admin", &admin]);
        let mut lines = Vec::new();
        while let Some(line) = table.next_line().await.unwrap() {
            lines.push(line);
        }
        assert_eq!(status.wait().await.unwrap().code(), Some(0));
        let header = lines.iter().position(|l| l.contains("XDS NODE"));
        if let Some(header) = header {
            let row = &lines[header + 1];
            if row.contains(version) {
                assert!(
                    row.starts_with("movies") && row.contains("test-node"),
                    "{row}"
                );
                assert!(row.trim_end().ends_with('-'), "no NACK: {row}");
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{lines:?}");
    }
}

/// Methods the balancer port does not serve itself go through tonic's
/// router: its answers (UNIMPLEMENTED, for a method of no service here and
/// for ADS's delta variant) come back whole, trailers and all.
#[tokio::test]
async fn other_methods_on_the_balancer_port_get_tonics_answers() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", lb.listen))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health =
        waypost_proto::grpc::health::v1::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(waypost_proto::grpc::health::v1::HealthCheckRequest {
            service: "movies".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(1);
    drop(tx);
    let status = match ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("not a method"), "{status:?}");
}
