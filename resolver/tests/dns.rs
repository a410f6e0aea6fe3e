//! The `dns` resolver against a real DNS server (the harness's in-process
//! hickory server on 127.0.0.1).

mod support;

use support::{addrs, wait_for};

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_resolver::proto::rr::RecordType;
use serde_json::json;
use waypost_integration::dns::{DnsServer, SrvTarget};
use waypost_resolver::backoff::BackoffConfig;
use waypost_resolver::dns::{DnsOptions, DnsResolverBuilder};
use waypost_resolver::{DnsErrorKind, Resolution, ResolveError, ResolverRegistry};

/// Short TTL floors and fast backoff so the tests run in seconds.
fn options() -> DnsOptions {
    DnsOptions::default()
        .ttl_bounds(Duration::from_millis(200), Duration::from_secs(60))
        .backoff(BackoffConfig {
            base: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_secs(5),
        })
        .query_timeout(Duration::from_millis(300))
        .min_resolve_now_interval(Duration::from_secs(3600))
}

fn resolve(dns: &DnsServer, host_port: &str, options: DnsOptions) -> Resolution {
    let registry = ResolverRegistry::new();
    registry.register(DnsResolverBuilder::new(options));
    registry
        .resolve(&format!("dns://{}/{host_port}", dns.addr()))
        .unwrap()
}

#[tokio::test]
async fn a_and_aaaa_records_become_endpoints_with_the_port() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a(
        "orders.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
        60,
    )
    .await
    .unwrap();
    dns.set_aaaa("orders.test.", &[Ipv6Addr::LOCALHOST], 60)
        .await
        .unwrap();
    let mut resolution = resolve(&dns, "orders.test:50051", options());
    let update = resolution.first().await;
    assert!(update.error.is_none(), "{:?}", update.error);
    assert_eq!(
        addrs(&update),
        vec!["127.0.0.1:50051", "127.0.0.2:50051", "[::1]:50051"]
    );
    let state = update.state.unwrap();
    assert_eq!(state.service_config, None);
    assert!(state.balancer_addresses.is_empty());
}

#[tokio::test]
async fn a_changed_record_is_picked_up_after_its_ttl_without_resolve_now() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 1)
        .await
        .unwrap();
    let mut resolution = resolve(&dns, "orders.test:1", options());
    assert_eq!(addrs(&resolution.first().await), vec!["127.0.0.1:1"]);

    dns.set_a(
        "orders.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3)],
        1,
    )
    .await
    .unwrap();
    let update = wait_for(&mut resolution, |u| addrs(u).len() == 2).await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:1", "127.0.0.3:1"]);
}

#[tokio::test]
async fn srv_gives_balancer_addresses_and_txt_gives_the_service_config() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 60)
        .await
        .unwrap();
    dns.set_a("lb.test.", &[Ipv4Addr::new(127, 0, 0, 8)], 60)
        .await
        .unwrap();
    dns.set_srv(
        "_grpclb._tcp.orders.test.",
        &[SrvTarget {
            priority: 0,
            weight: 0,
            port: 9000,
            target: "lb.test.".into(),
        }],
        60,
    )
    .await
    .unwrap();
    // Longer than one 255-byte TXT string, and with a choice for another language first.
    let padding = "p".repeat(300);
    let txt = format!(
        r#"grpc_config=[{{"clientLanguage":["go"],"serviceConfig":{{"loadBalancingPolicy":"pick_first"}}}},{{"serviceConfig":{{"loadBalancingConfig":[{{"round_robin":{{}}}}],"pad":"{padding}"}}}}]"#
    );
    dns.set_txt("_grpc_config.orders.test.", &txt, 60)
        .await
        .unwrap();

    let mut resolution = resolve(&dns, "orders.test:50051", options());
    let update = resolution.first().await;
    assert!(update.error.is_none(), "{:?}", update.error);
    let state = update.state.unwrap();
    assert_eq!(state.balancer_addresses.len(), 1);
    assert_eq!(
        state.balancer_addresses[0].addr.to_string(),
        "127.0.0.8:9000"
    );
    assert_eq!(state.balancer_addresses[0].server_name, "lb.test");
    assert_eq!(
        state.service_config,
        Some(json!({"loadBalancingConfig":[{"round_robin":{}}],"pad":padding}))
    );
}

#[tokio::test]
async fn malformed_txt_is_reported_and_the_last_good_config_kept() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 1)
        .await
        .unwrap();
    dns.set_txt(
        "_grpc_config.orders.test.",
        r#"grpc_config=[{"serviceConfig":{"v":1}}]"#,
        1,
    )
    .await
    .unwrap();
    let mut resolution = resolve(&dns, "orders.test:1", options());
    let first = resolution.first().await;
    assert_eq!(first.state.unwrap().service_config, Some(json!({"v":1})));

    dns.set_txt(
        "_grpc_config.orders.test.",
        r#"grpc_config=[{"serviceConfig":{"v":2}"#,
        1,
    )
    .await
    .unwrap();
    let update = wait_for(&mut resolution, |u| {
        matches!(u.error, Some(ResolveError::ServiceConfig { .. }))
    })
    .await;
    assert_eq!(
        update.state.unwrap().service_config,
        Some(json!({"v":1})),
        "the good config is kept"
    );

    dns.set_txt(
        "_grpc_config.orders.test.",
        r#"grpc_config=[{"serviceConfig":{"v":3}}]"#,
        1,
    )
    .await
    .unwrap();
    let update = wait_for(&mut resolution, |u| {
        u.state
            .as_ref()
            .is_some_and(|s| s.service_config == Some(json!({"v":3})))
    })
    .await;
    assert!(update.error.is_none());
}

#[tokio::test]
async fn nxdomain_backs_off_and_keeps_nothing_it_never_had() {
    let dns = DnsServer::start("test.").await.unwrap();
    let mut resolution = resolve(&dns, "missing.test:1", options().lookups(false, false));
    let update = resolution.first().await;
    assert!(update.state.is_none());
    match update.error {
        Some(ResolveError::Dns { kind, .. }) => assert!(
            matches!(kind, DnsErrorKind::NxDomain | DnsErrorKind::NoRecords),
            "{kind:?}"
        ),
        other => panic!("expected a DNS error, got {other:?}"),
    }
    // Backoff 0.2 s, 0.4 s, 0.8 s, 1.6 s…: about 4 more queries in 2.5 s, not
    // hundreds. The sleep is the measurement window, not a wait for an event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let queries = dns.queries("missing.test.", RecordType::A);
    assert!((3..=7).contains(&queries), "{queries} queries in 2.5 s");
}

#[tokio::test]
async fn a_failed_or_empty_answer_keeps_the_last_good_addresses() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 1)
        .await
        .unwrap();
    let mut resolution = resolve(&dns, "orders.test:1", options().lookups(false, false));
    assert_eq!(addrs(&resolution.first().await), vec!["127.0.0.1:1"]);

    // Timeouts: the server goes silent.
    dns.set_silent(true);
    let update = wait_for(&mut resolution, |u| {
        matches!(
            u.error,
            Some(ResolveError::Dns {
                kind: DnsErrorKind::Timeout,
                ..
            })
        )
    })
    .await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:1"]);
    // Timeouts back off too: with 0.3 s query timeouts and 0.2, 0.4, 0.8 s
    // delays, a 2.5 s window sees a handful of queries, not a retry storm.
    let before = dns.queries("orders.test.", RecordType::A);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = dns.queries("orders.test.", RecordType::A) - before;
    assert!((1..=7).contains(&during), "{during} queries while silent");
    dns.set_silent(false);
    let update = wait_for(&mut resolution, |u| u.error.is_none()).await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:1"]);

    // An empty answer: the records are removed.
    dns.remove("orders.test.", RecordType::A).await.unwrap();
    let update = wait_for(&mut resolution, |u| u.error.is_some()).await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:1"]);
}

#[tokio::test]
async fn resolve_now_is_rate_limited() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 3600)
        .await
        .unwrap();

    // A one-hour minimum interval: hints cause no queries.
    let mut limited = resolve(&dns, "orders.test:1", options().lookups(false, false));
    limited.first().await;
    let before = dns.queries("orders.test.", RecordType::A);
    for _ in 0..20 {
        limited.resolve_now();
        tokio::task::yield_now().await;
    }
    // Nothing should happen; give it a window to (wrongly) happen in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dns.queries("orders.test.", RecordType::A), before);

    // No minimum: a hint re-resolves and the new answer arrives.
    let mut eager = resolve(
        &dns,
        "orders.test:2",
        options()
            .lookups(false, false)
            .min_resolve_now_interval(Duration::ZERO),
    );
    eager.first().await;
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 5)], 3600)
        .await
        .unwrap();
    eager.resolve_now();
    let update = wait_for(&mut eager, |u| addrs(u) == ["127.0.0.5:2"]).await;
    assert!(update.error.is_none());
}

#[tokio::test]
async fn dropping_the_resolution_stops_querying() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 0)
        .await
        .unwrap();
    let mut resolution = resolve(&dns, "orders.test:1", options().lookups(false, false));
    resolution.first().await;
    drop(resolution);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = dns.queries("orders.test.", RecordType::A);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        dns.queries("orders.test.", RecordType::A),
        after_drop,
        "no queries after drop"
    );
}

#[tokio::test]
async fn an_srv_target_that_does_not_resolve_is_skipped_and_the_others_kept() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 60)
        .await
        .unwrap();
    dns.set_a("lb1.test.", &[Ipv4Addr::new(127, 0, 0, 8)], 60)
        .await
        .unwrap();
    let target = |name: &str, port| SrvTarget {
        priority: 0,
        weight: 0,
        port,
        target: name.into(),
    };
    // lb2.test. has no address records.
    dns.set_srv(
        "_grpclb._tcp.orders.test.",
        &[target("lb1.test.", 9000), target("lb2.test.", 9001)],
        60,
    )
    .await
    .unwrap();
    let mut resolution = resolve(&dns, "orders.test:50051", options().lookups(true, false));
    let update = resolution.first().await;
    let state = update.state.expect("resolved");
    let balancers: Vec<String> = state
        .balancer_addresses
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(balancers, ["127.0.0.8:9000"]);
    assert_eq!(addrs_of(&state), ["127.0.0.1:50051"]);
    // The skipped target is reported in the same update, by name.
    let error = update
        .error
        .expect("the skipped target is reported")
        .to_string();
    assert!(error.contains("lb2.test"), "{error}");
    assert!(!error.contains("Query {"), "no Debug formatting: {error}");
}

fn addrs_of(state: &waypost_resolver::ResolverState) -> Vec<String> {
    state.addresses().map(ToString::to_string).collect()
}

#[tokio::test]
async fn an_invalid_txt_record_comes_with_the_endpoints_in_the_first_answer() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 60)
        .await
        .unwrap();
    dns.set_txt("_grpc_config.orders.test.", "grpc_config={", 60)
        .await
        .unwrap();
    // Every time: the first answer has both (it used to have one or the other).
    for _ in 0..10 {
        let mut resolution = resolve(&dns, "orders.test:1", options());
        let first = resolution.first().await;
        assert_eq!(addrs(&first), vec!["127.0.0.1:1"]);
        assert!(
            matches!(first.error, Some(ResolveError::ServiceConfig { .. })),
            "{:?}",
            first.error
        );
    }
}
