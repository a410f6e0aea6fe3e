//! `xds:///orders` end to end: a scripted ADS server gives the listener
//! (inline routes), the cluster and its endpoints — three real backends —
//! and a waypost channel built on that target spreads calls over them,
//! stops calling one the EDS update removes, drops the share of calls EDS
//! says, and fails naming a listener that does not exist; a NACKed
//! cluster, a management server outage and a priority with only an
//! UNHEALTHY endpoint cost no call.
//!
//! The bootstrap is given in code, to a per-channel resolver registry.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use waypost_integration::ads::AdsServer;
use waypost_integration::ads::build::{api_listener, eds_cluster, response};
use waypost_integration::backend::{Backend, start_backends};
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_xds::resources::{cluster, endpoint, listener};

fn assignment(
    name: &str,
    backends: &[&Backend],
) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    let addrs: Vec<std::net::SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    waypost_integration::ads::build::assignment(name, &addrs)
}

/// A scripted ADS server, and a resolver registry whose `xds` resolver
/// uses it (bootstrap given in code, node `node`); the xDS policies
/// registered.
async fn ads_and_resolvers(node: &str) -> (AdsServer, waypost_resolver::ResolverRegistry) {
    let server = AdsServer::start().await.unwrap();
    let bootstrap =
        waypost_xds::bootstrap::Bootstrap::from_json(&server.bootstrap_json(node)).unwrap();
    let resolvers = waypost_resolver::ResolverRegistry::new();
    resolvers.register(waypost_xds::resolver::XdsResolverBuilder::with_bootstrap(
        bootstrap,
    ));
    (server, resolvers)
}

async fn spread(
    client: &mut MoviesServiceClient<waypost_balancer::Channel>,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        request
            .extensions_mut()
            .insert(waypost_balancer::WaitForReady(true));
        let name = client
            .get_movie(request)
            .await
            .unwrap()
            .into_inner()
            .served_by;
        *served.entry(name).or_insert(0) += 1;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_target_spreads_over_the_eds_endpoints_and_follows_updates() {
    let backends = start_backends(3).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-e2e").await;
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener("orders", "orders-cluster")],
    ));
    server.set(response(
        cluster::TYPE_URL,
        "1",
        &[eds_cluster("orders-cluster")],
    ));
    let refs: Vec<&Backend> = backends.iter().collect();
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[assignment("orders-cluster", &refs)],
    ));

    let channel = waypost_balancer::Channel::builder("xds:///orders")
        .resolvers(resolvers.clone())
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let served = spread(&mut client, 300).await;
    eprintln!("three endpoints: {served:?}");
    for b in &backends {
        let got = served.get(b.name()).copied().unwrap_or(0);
        assert!((80..=120).contains(&got), "{served:?}");
    }

    // EDS drops b2: within 1 s no call reaches it.
    server.set(response(
        endpoint::TYPE_URL,
        "2",
        &[assignment("orders-cluster", &refs[..2])],
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let before = backends[2].calls();
        let batch = spread(&mut client, 20).await;
        if backends[2].calls() == before {
            assert!(!batch.contains_key("b2"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b2 still called after 1 s"
        );
    }
    let served = spread(&mut client, 100).await;
    assert_eq!(served.get("b2"), None, "{served:?}");

    // EDS drops a quarter of the calls: 20–30 % fail UNAVAILABLE naming
    // the category.
    let mut dropping = assignment("orders-cluster", &refs);
    dropping.policy = Some(Policy {
        drop_overloads: vec![DropOverload {
            category: "lb".into(),
            drop_percentage: Some(FractionalPercent {
                numerator: 25,
                denominator: DenominatorType::Hundred as i32,
            }),
        }],
        ..Default::default()
    });
    server.set(response(endpoint::TYPE_URL, "3", &[dropping]));
    // Calls until the drops are in force (the first dropped call), then
    // counts 1,000.
    let one = |client: &mut MoviesServiceClient<waypost_balancer::Channel>| {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        let mut client = client.clone();
        async move {
            match client.get_movie(request).await {
                Ok(_) => false,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable);
                    assert_eq!(status.message(), "EDS-configured drop: lb");
                    true
                }
            }
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !one(&mut client).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call dropped within 10 s"
        );
    }
    let mut dropped = 0;
    for _ in 0..1000 {
        if one(&mut client).await {
            dropped += 1;
        }
    }
    eprintln!("dropped {dropped} of 1000");

    // 25 % of 1,000: σ ≈ 14, so 20–30 % is more than 3.5 σ either side.
    assert!((200..=300).contains(&dropped), "{dropped} of 1000 dropped");

    // A listener the server does not have: calls fail naming it.
    let missing = waypost_balancer::Channel::builder("xds:///nowhere")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut missing = MoviesServiceClient::new(missing);
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(10));
    let error = missing.get_movie(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
    assert!(
        error.message().contains("listener nowhere does not exist"),
        "{error}"
    );
}

/// Calls that must all succeed; the backends that served them.
async fn all_succeed(
    client: &mut MoviesServiceClient<waypost_balancer::Channel>,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        let name = client
            .get_movie(request)
            .await
            .expect("the call succeeds")
            .into_inner()
            .served_by;
        *served.entry(name).or_insert(0) += 1;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_an_outage_and_an_unhealthy_priority_cost_no_call() {
    use waypost_integration::ads::build::assignment_by_priority;
    let backends = start_backends(3).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-faults").await;
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener("faults", "faults-cluster")],
    ));
    server.set(response(
        cluster::TYPE_URL,
        "1",
        &[eds_cluster("faults-cluster")],
    ));
    let refs: Vec<&Backend> = backends.iter().collect();
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[assignment("faults-cluster", &refs)],
    ));
    let channel = waypost_balancer::Channel::builder("xds:///faults")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    spread(&mut client, 30).await;

    // An invalid cluster (MAGLEV): NACKed, and calls go on as before.
    let mut maglev = eds_cluster("faults-cluster");
    maglev.lb_policy =
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::Maglev as i32;
    server.set(response(cluster::TYPE_URL, "2", &[maglev]));
    let nack = server
        .wait_for_request(|r| r.type_url == cluster::TYPE_URL && r.error_detail.is_some())
        .await;
    assert_eq!(nack.version_info, "1");
    let served = all_succeed(&mut client, 90).await;
    assert_eq!(served.len(), 3, "still over all three: {served:?}");

    // The management server goes away: calls go on from the cache.
    server.stop().await;
    let served = all_succeed(&mut client, 90).await;
    assert_eq!(served.len(), 3, "{served:?}");

    // Back, with priority 0 holding only an UNHEALTHY endpoint: priority 1
    // takes every call.
    server.restart().await.unwrap();
    let p0 = [(backends[0].addr(), false)];
    let p1 = [(backends[1].addr(), true), (backends[2].addr(), true)];
    server.set(response(
        cluster::TYPE_URL,
        "3",
        &[eds_cluster("faults-cluster")],
    ));
    server.set(response(
        endpoint::TYPE_URL,
        "2",
        &[assignment_by_priority("faults-cluster", &[&p0, &p1])],
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let served = all_succeed(&mut client, 20).await;
        if !served.contains_key("b0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b0 still called 30 s after the restart: {served:?}"
        );
    }
    let served = all_succeed(&mut client, 100).await;
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["b1", "b2"],
        "{served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_hash_cluster_keeps_each_key_on_one_endpoint() {
    use waypost_integration::ads::build::api_listener_hashing;
    let backends = start_backends(3).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-ring").await;
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener_hashing("ring", "ring-cluster", Some("x-user"))],
    ));
    let mut ring = eds_cluster("ring-cluster");
    ring.lb_policy =
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::RingHash as i32;
    server.set(response(cluster::TYPE_URL, "1", &[ring]));
    let refs: Vec<&Backend> = backends.iter().collect();
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[assignment("ring-cluster", &refs)],
    ));
    let channel = waypost_balancer::Channel::builder("xds:///ring")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let mut used = std::collections::BTreeSet::new();
    for key in 0..30 {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let mut request = tonic::Request::new(MovieId { mid: 1 });
            request.set_timeout(Duration::from_secs(10));
            request
                .metadata_mut()
                .insert("x-user", format!("user-{key}").parse().unwrap());
            request
                .extensions_mut()
                .insert(waypost_balancer::WaitForReady(true));
            names.insert(
                client
                    .get_movie(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .served_by,
            );
        }
        assert_eq!(names.len(), 1, "user-{key} went to {names:?}");
        used.extend(names);
    }
    assert_eq!(used.len(), 3, "30 keys use every endpoint: {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_calls_by_header_and_by_weight_to_several_clusters() {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
    use envoy_types::pb::envoy::config::route::v3::{
        HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
        WeightedCluster,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use waypost_integration::ads::build::api_listener_with_routes;

    let backends = start_backends(2).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-routes").await;
    let route = |matcher: RouteMatch, cluster: ClusterSpecifier| Route {
        r#match: Some(matcher),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(cluster),
            ..Default::default()
        })),
        ..Default::default()
    };
    let weight = |name: &str, value: u32| ClusterWeight {
        name: name.into(),
        weight: Some(UInt32Value { value }),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: "split-routes".into(),
        virtual_hosts: vec![VirtualHost {
            domains: vec!["split".into()],
            routes: vec![
                // Gold callers go to cluster b…
                route(
                    RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix("/".into())),
                        headers: vec![HeaderMatcher {
                            name: "x-tier".into(),
                            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                                StringMatcher {
                                    match_pattern: Some(MatchPattern::Exact("gold".into())),
                                    ignore_case: false,
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    ClusterSpecifier::Cluster("b".into()),
                ),
                // …the rest split 80/20 between a and b.
                route(
                    RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(String::new())),
                        ..Default::default()
                    },
                    ClusterSpecifier::WeightedClusters(WeightedCluster {
                        clusters: vec![weight("a", 80), weight("b", 20)],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener_with_routes("split", routes)],
    ));
    server.set(response(
        cluster::TYPE_URL,
        "1",
        &[eds_cluster("a"), eds_cluster("b")],
    ));
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[
            assignment("a", &[&backends[0]]),
            assignment("b", &[&backends[1]]),
        ],
    ));
    let channel = waypost_balancer::Channel::builder("xds:///split")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    // Until both clusters are up, calls wait.
    let served = spread(&mut client, 1000).await;
    eprintln!("weighted 80/20: {served:?}");
    let a = served.get("b0").copied().unwrap_or(0) as f64;
    assert!(
        (750.0..=850.0).contains(&a),
        "cluster a got {a} of 1000: {served:?}"
    );
    for _ in 0..50 {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        request
            .metadata_mut()
            .insert("x-tier", "gold".parse().unwrap());
        let name = client
            .get_movie(request)
            .await
            .unwrap()
            .into_inner()
            .served_by;
        assert_eq!(name, "b1", "x-tier: gold goes to cluster b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_localities_weighted_three_to_one_split_calls_by_weight() {
    use waypost_integration::ads::build::{LocalitySpec, assignment_of};
    let backends = start_backends(3).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-localities").await;
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener("zones", "zones-cluster")],
    ));
    server.set(response(
        cluster::TYPE_URL,
        "1",
        &[eds_cluster("zones-cluster")],
    ));
    // Zone a (weight 3): b0 alone; zone b (weight 1): b1 and b2.
    let a = [(backends[0].addr(), true)];
    let b = [(backends[1].addr(), true), (backends[2].addr(), true)];
    let spec = |zone: &str, weight, endpoints| LocalitySpec {
        zone: zone.into(),
        weight,
        priority: 0,
        endpoints,
    };
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[assignment_of(
            "zones-cluster",
            &[spec("a", 3, &a[..]), spec("b", 1, &b[..])],
        )],
    ));
    let channel = waypost_balancer::Channel::builder("xds:///zones")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    // Until every locality is READY the split is not yet by weight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spread(&mut client, 50).await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every endpoint served"
        );
    }
    let served = spread(&mut client, 800).await;
    eprintln!("localities 3:1: {served:?}");
    let zone_a = served.get("b0").copied().unwrap_or(0) as f64 / 800.0;
    assert!(
        (0.65..=0.85).contains(&zone_a),
        "zone a (weight 3 of 4) got {:.1} %: {served:?}",
        zone_a * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_whose_backend_dies_hands_over_and_takes_back() {
    use waypost_integration::ads::build::assignment_by_priority;
    let backends = start_backends(2).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-failover").await;
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener("failover", "failover-cluster")],
    ));
    server.set(response(
        cluster::TYPE_URL,
        "1",
        &[eds_cluster("failover-cluster")],
    ));
    let p0 = [(backends[0].addr(), true)];
    let p1 = [(backends[1].addr(), true)];
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[assignment_by_priority("failover-cluster", &[&p0, &p1])],
    ));
    let channel = waypost_balancer::Channel::builder("xds:///failover")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let served = spread(&mut client, 20).await;
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["b0"],
        "priority 0 first: {served:?}"
    );

    // b0 dies: its connection fails, priority 1 takes the calls. (A call
    // already on b0's dying connection fails UNAVAILABLE, as gRPC says: the
    // transition tolerates those.)
    backends[0].stop().await;
    let settled = |expected: &'static str| {
        let mut client = client.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let mut served = BTreeMap::new();
                for _ in 0..10 {
                    let mut request = tonic::Request::new(MovieId { mid: 1 });
                    request.set_timeout(Duration::from_secs(10));
                    request
                        .extensions_mut()
                        .insert(waypost_balancer::WaitForReady(true));
                    match client.get_movie(request).await {
                        Ok(reply) => *served.entry(reply.into_inner().served_by).or_insert(0) += 1,
                        Err(status) => {
                            assert_eq!(status.code(), tonic::Code::Unavailable, "{status}")
                        }
                    }
                }
                if served.keys().collect::<Vec<_>>() == [expected] && served[expected] == 10 {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "calls not all on {expected} within 30 s: {served:?}"
                );
            }
        }
    };
    settled("b1").await;
    // b0 is back: priority 0 takes back over.
    backends[0].restart().await.unwrap();
    settled("b0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_on_one_target_share_one_ads_stream() {
    let backends = start_backends(1).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-shared").await;
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener("shared", "shared-cluster")],
    ));
    server.set(response(
        cluster::TYPE_URL,
        "1",
        &[eds_cluster("shared-cluster")],
    ));
    server.set(response(
        endpoint::TYPE_URL,
        "1",
        &[assignment("shared-cluster", &[&backends[0]])],
    ));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let channel = waypost_balancer::Channel::builder("xds:///shared")
            .resolvers(resolvers.clone())
            .build()
            .unwrap();
        let mut client = MoviesServiceClient::new(channel);
        assert_eq!(spread(&mut client, 3).await.get("b0"), Some(&3));
        clients.push(client);
    }
    assert_eq!(
        server.streams_opened(),
        1,
        "both channels on one ADS stream"
    );
}

/// A listener the management server never answers for: after the 15 s
/// does-not-exist timer (on a paused clock) the channel's calls fail
/// UNAVAILABLE naming it, as gRPC's do.
#[tokio::test(start_paused = true)]
async fn a_listener_never_sent_does_not_exist_after_15_s_and_calls_fail_naming_it() {
    let (server, resolvers) = ads_and_resolvers("node-silent").await;
    // The server has nothing of any type: it never answers.
    let channel = waypost_balancer::Channel::builder("xds:///silent")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let started = tokio::time::Instant::now();
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(60));
    let error = client.get_movie(request).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
    assert!(
        error.message().contains("listener silent does not exist"),
        "{error}"
    );
    assert!(
        (Duration::from_secs(15)..Duration::from_secs(20)).contains(&waited),
        "failed after {waited:?}"
    );
    // The request did reach the server (the silence was the server's).
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.type_url == listener::TYPE_URL && r.resource_names == ["silent"])
    );
}

/// A route's `max_stream_duration` (A31) and `retry_policy` (A44) reach
/// its calls: a slow call on the route with a 200 ms limit ends
/// DEADLINE_EXCEEDED, the same call on the other route completes; with one
/// of two backends failing every call UNAVAILABLE, the route retrying on
/// UNAVAILABLE loses no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_timeout_and_retry_policy_apply_to_its_calls() {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::{
        ClusterSpecifier, MaxStreamDuration,
    };
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::config::route::v3::{
        HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    };
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    use waypost_integration::ads::build::api_listener_with_routes;

    let backends = start_backends(2).await.unwrap();
    let (server, resolvers) = ads_and_resolvers("node-route-settings").await;
    let millis = |ms: i32| PbDuration {
        seconds: 0,
        nanos: ms * 1_000_000,
    };
    let slow = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            headers: vec![HeaderMatcher {
                name: "x-slow".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
            max_stream_duration: Some(MaxStreamDuration {
                max_stream_duration: Some(millis(200)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let retried = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
            retry_policy: Some(RetryPolicy {
                retry_on: "unavailable".into(),
                num_retries: Some(UInt32Value { value: 4 }),
                retry_back_off: Some(RetryBackOff {
                    base_interval: Some(millis(5)),
                    max_interval: Some(millis(20)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: "settings".into(),
        virtual_hosts: vec![VirtualHost {
            domains: vec!["*".into()],
            routes: vec![slow, retried],
            ..Default::default()
        }],
        ..Default::default()
    };
    server.set(response(
        listener::TYPE_URL,
        "1",
        &[api_listener_with_routes("settings", routes)],
    ));
    server.set(response(cluster::TYPE_URL, "1", &[eds_cluster("c")]));
    let refs: Vec<&Backend> = backends.iter().collect();
    server.set(response(endpoint::TYPE_URL, "1", &[assignment("c", &refs)]));
    let channel = waypost_balancer::Channel::builder("xds:///settings")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let call = |slow: bool| {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        request
            .extensions_mut()
            .insert(waypost_balancer::WaitForReady(true));
        if slow {
            request
                .metadata_mut()
                .insert("x-slow", "1".parse().unwrap());
        }
        request
    };
    client.get_movie(call(false)).await.unwrap();

    // Both backends take 1 s: the slow route's calls end at 200 ms.
    for backend in &backends {
        backend.set_delay(Duration::from_secs(1));
    }
    let started = tokio::time::Instant::now();
    let error = client.get_movie(call(true)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error}");
    assert!(
        waited < Duration::from_millis(900),
        "ended after {waited:?}"
    );
    client
        .get_movie(call(false))
        .await
        .expect("the other route has no limit");
    for backend in &backends {
        backend.set_delay(Duration::ZERO);
    }

    // b0 fails every call UNAVAILABLE: the retrying route loses none.
    backends[0].set_failing(100);
    let b0_before = backends[0].calls();
    for _ in 0..100 {
        let movie = client.get_movie(call(false)).await.unwrap().into_inner();
        assert_eq!(movie.served_by, backends[1].name());
    }
    assert!(
        backends[0].calls() > b0_before,
        "no call reached the failing backend, so nothing was retried"
    );
}

/// Nothing to call: building a channel registers the `xds` scheme, so an
/// `xds:///` target with no bootstrap in the environment fails on the
/// bootstrap — the xDS resolver's error — not as an unknown scheme.
#[tokio::test]
async fn the_xds_scheme_needs_no_registration_call() {
    let error = waypost_balancer::Channel::builder("xds:///orders")
        .build()
        .expect_err("no bootstrap in this test's environment");
    let text = error.to_string();
    assert!(text.contains("GRPC_XDS_BOOTSTRAP"), "{text}");
    assert!(!text.contains("not registered"), "{text}");
}
