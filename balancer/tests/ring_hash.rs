//! `ring_hash` over real backends found through a real DNS server: keys
//! stick to backends, a new backend takes about its share, a stopped
//! backend's keys — and only those — move.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_integration::backend::Backend;
use waypost_integration::dns::DnsServer;
use waypost_proto::movies::v1::MovieId;
use waypost_resolver::ResolverRegistry;
use waypost_resolver::dns::{DnsOptions, DnsResolverBuilder};

/// A call carrying `x-user: key` (wait-for-ready), answered by whom.
async fn call_as(client: &mut Client, key: &str) -> String {
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(10));
    request
        .metadata_mut()
        .insert("x-user", key.parse().unwrap());
    request
        .extensions_mut()
        .insert(waypost_balancer::WaitForReady(true));
    client
        .get_movie(request)
        .await
        .unwrap_or_else(|status| panic!("{key}: {status:?}"))
        .into_inner()
        .served_by
}

/// Who serves each of `keys`, checking that 5 calls per key agree.
async fn placement(client: &mut Client, keys: &[String]) -> BTreeMap<String, String> {
    let mut placed = BTreeMap::new();
    for key in keys {
        let first = call_as(client, key).await;
        for _ in 0..4 {
            assert_eq!(
                call_as(client, key).await,
                first,
                "{key} moved between calls"
            );
        }
        placed.insert(key.clone(), first);
    }
    placed
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stick_a_new_backend_takes_its_share_and_a_stopped_ones_keys_move() {
    // Backends on 127.0.0.2-5, one port, so DNS A records name them.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut backends = Vec::new();
    for last in 2..=5u8 {
        let addr = SocketAddr::new(ip(last).into(), port);
        backends.push(Backend::start_at(&format!("b{last}"), addr).await.unwrap());
    }
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("movies.test.", &[ip(2), ip(3), ip(4)], 1)
        .await
        .unwrap();
    let resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(
        DnsOptions::default()
            .ttl_bounds(Duration::from_millis(200), Duration::from_secs(60))
            .lookups(false, false),
    ));
    let channel = builder(&format!("dns://{}/movies.test:{port}", dns.addr()))
        .resolvers(resolvers)
        .default_service_config(json!({"loadBalancingConfig": [
            {"ring_hash_experimental": {"requestHashHeader": "x-user"}}]}))
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    let keys: Vec<String> = (0..60).map(|k| format!("user-{k}")).collect();

    // 60 keys × 5 calls stick; all three backends are used.
    let three = placement(&mut client, &keys).await;
    let used: std::collections::BTreeSet<_> = three.values().collect();
    assert_eq!(used.len(), 3, "{three:?}");

    // A fourth backend joins through DNS.
    dns.set_a("movies.test.", &[ip(2), ip(3), ip(4), ip(5)], 1)
        .await
        .unwrap();
    // Once the channel has a subchannel for it (IDLE until picked), the
    // ring has four endpoints.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = channel.stats();
        let total = stats.subchannels_idle
            + stats.subchannels_connecting
            + stats.subchannels_ready
            + stats.subchannels_transient_failure;
        if total == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        let seen = channel.picker_generation();
        let _ = tokio::time::timeout(Duration::from_secs(1), channel.wait_for_picker_change(seen))
            .await;
    }
    let four = placement(&mut client, &keys).await;
    assert!(four.values().any(|b| b == "b5"), "{four:?}");
    let moved: Vec<_> = keys.iter().filter(|k| three[*k] != four[*k]).collect();
    let between_old = moved.iter().filter(|k| four[**k] != "b5").count();
    assert!(moved.len() <= 36, "{} of 60 keys moved", moved.len());
    assert!(
        between_old <= 15,
        "{between_old} of 60 moved between the old backends"
    );

    // One backend stops: its keys move, no other does. (Measured once the
    // channel has seen the connection go: a call sent on it just before
    // fails UNAVAILABLE, as gRPC specifies.)
    let ready = channel.stats().subchannels_ready;
    backends[0].stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while channel.stats().subchannels_ready >= ready {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            channel.stats()
        );
        let seen = channel.picker_generation();
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            channel.wait_for_picker_change(seen),
        )
        .await;
    }
    let after = placement(&mut client, &keys).await;
    for key in &keys {
        if four[key] == "b2" {
            assert_ne!(after[key], "b2");
        } else {
            assert_eq!(
                after[key], four[key],
                "{key} moved though b2 was not its backend"
            );
        }
    }
}
