//! The grpclb policy end to end: a waypost channel finds a `waypost serve`
//! balancer through DNS SRV `_grpclb._tcp`, takes server lists from it and
//! calls three harness backends.

mod lbserve;
use lbserve::fast_serve_options;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use waypost_balancer::Channel;
use waypost_balancer::policy::grpclb::DROP_MESSAGE;
mod tls_balancer;
use tls_balancer::tls_balanced;
use waypost_integration::backend::{Backend, start_backends};
use waypost_integration::dns::DnsServer;
use waypost_lbserver::assign::token;
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{Running, start};
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_resolver::ResolverRegistry;
use waypost_resolver::backoff::BackoffConfig;
use waypost_resolver::dns::{DnsOptions, DnsResolverBuilder};

const SERVICE: &str = "movies.test";

async fn lbserver(listen: SocketAddr, backends: &[&Backend], extra: &str) -> Running {
    let source: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let text = format!(
        "listen = \"{listen}\"\n[[service]]\nname = \"{SERVICE}\"\nsource = \"{}\"\nhealth_service = \"\"\nclient_stats_interval = \"100ms\"\n{extra}",
        source.join(",")
    );
    start(
        Config::parse(&text, "test.toml").unwrap(),
        fast_serve_options(),
    )
    .await
    .unwrap()
}

/// DNS for the test: `movies.test` → 127.0.0.1 (the fallback backends, on
/// the target's port), `_grpclb._tcp.movies.test` → `lb.test:<lb_port>`.
async fn dns(lb_port: u16) -> DnsServer {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("movies.test.", &[Ipv4Addr::LOCALHOST], 1)
        .await
        .unwrap();
    dns.set_grpclb_balancer(&format!("{SERVICE}."), "lb.test.", lb_port, 1)
        .await
        .unwrap();
    dns
}

fn channel(dns: &DnsServer, port: u16, grpclb: serde_json::Value) -> Channel {
    let resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(
        DnsOptions::default()
            .ttl_bounds(Duration::from_millis(500), Duration::from_secs(60))
            .lookups(true, false),
    ));
    Channel::builder(format!("dns://{}/{SERVICE}:{port}", dns.addr()))
        .resolvers(resolvers)
        .default_service_config(json!({"loadBalancingConfig": [{"grpclb": grpclb}]}))
        .connect_backoff(BackoffConfig {
            base: Duration::from_millis(100),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_millis(500),
        })
        .build()
        .unwrap()
}

async fn call(
    client: &mut MoviesServiceClient<Channel>,
    wait_for_ready: bool,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(5));
    request
        .extensions_mut()
        .insert(waypost_balancer::WaitForReady(wait_for_ready));
    client
        .get_movie(request)
        .await
        .map(|r| r.into_inner().served_by)
}

/// Calls until `pred` holds for a batch of 30 (at most 20 s).
async fn until(
    client: &mut MoviesServiceClient<Channel>,
    pred: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = BTreeMap::new();
        for _ in 0..30 {
            if let Ok(name) = call(client, true).await {
                *seen.entry(name).or_default() += 1;
            }
        }
        if pred(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last batch: {seen:?}"
        );
        // Calls that fail at once never yield: let the rest of this
        // runtime (the balancer's probes) run between batches.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn calls_spread_over_the_list_and_carry_each_backends_token() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = lbserver("127.0.0.1:0".parse().unwrap(), &refs, "").await;
    let dns = dns(lb.listen.port()).await;
    let mut client = MoviesServiceClient::new(channel(&dns, backends[0].addr().port(), json!({})));
    until(&mut client, |seen| seen.len() == 3).await;

    let before: Vec<u64> = backends.iter().map(Backend::calls).collect();
    for _ in 0..300 {
        call(&mut client, true).await.unwrap();
    }
    for (backend, before) in backends.iter().zip(before) {
        let served = backend.calls() - before;
        assert!(
            (80..=120).contains(&served),
            "{} served {served} of 300",
            backend.name()
        );
        let tokens = backend.tokens_seen();
        assert_eq!(
            tokens.keys().collect::<Vec<_>>(),
            vec![&token(SERVICE, backend.addr())],
            "{}: {tokens:?}",
            backend.name()
        );
    }
}

#[tokio::test]
async fn a_quarter_of_calls_are_dropped_and_client_stats_add_up_exactly() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = lbserver(
        "127.0.0.1:0".parse().unwrap(),
        &refs,
        "drop_fraction = 0.25\n",
    )
    .await;
    let dns = dns(lb.listen.port()).await;
    let mut client = MoviesServiceClient::new(channel(&dns, backends[0].addr().port(), json!({})));
    until(&mut client, |seen| seen.len() == 3).await;

    // Let the warm-up's reports land, then count from here.
    let service = lb.registry.find(SERVICE).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (started0, finished0, received0) = (
        load(&service.stats.started),
        load(&service.stats.finished),
        load(&service.stats.known_received),
    );
    let drops0 = service.stats.drops.lock().get("drop").copied().unwrap_or(0);

    let (mut ok, mut dropped) = (0u64, 0u64);
    for _ in 0..2000 {
        match call(&mut client, false).await {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert_eq!(status.message(), DROP_MESSAGE);
                dropped += 1;
            }
        }
    }
    assert!(
        (400..=600).contains(&dropped),
        "{dropped} of 2000 dropped; expected 25 % ± 5 %"
    );

    // The balancer's totals grow by exactly what this client did.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while load(&service.stats.finished) - finished0 < 2000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(load(&service.stats.started) - started0, 2000);
    assert_eq!(load(&service.stats.finished) - finished0, 2000);
    assert_eq!(load(&service.stats.known_received) - received0, ok);
    assert_eq!(
        service.stats.drops.lock().get("drop").copied().unwrap_or(0) - drops0,
        dropped
    );
}

#[tokio::test]
async fn the_last_list_survives_the_balancer_and_a_new_one_is_taken() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = lbserver("127.0.0.1:0".parse().unwrap(), &refs, "").await;
    let lb_addr = lb.listen;
    let dns = dns(lb_addr.port()).await;
    let mut client = MoviesServiceClient::new(channel(&dns, backends[0].addr().port(), json!({})));
    until(&mut client, |seen| seen.len() == 3).await;

    lb.shutdown().await;
    // The balancer is gone: the client keeps its list and keeps working.
    for _ in 0..60 {
        call(&mut client, false).await.unwrap();
    }
    // It comes back with a different list: the client takes it.
    let _lb = lbserver(lb_addr, &[&backends[2]], "").await;
    until(&mut client, |seen| {
        seen.keys().collect::<Vec<_>>() == vec!["b2"]
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_balancer_means_fallback_after_the_timeout_until_it_appears() {
    let backends = start_backends(2).await.unwrap();
    let lb_port = free_port();
    let dns = dns(lb_port).await;
    // Fallback backend: b0, found by the A record on the target's port.
    let mut client = MoviesServiceClient::new(channel(
        &dns,
        backends[0].addr().port(),
        json!({"initialFallbackTimeout": "0.5s"}),
    ));
    let started = tokio::time::Instant::now();
    assert_eq!(call(&mut client, true).await.unwrap(), "b0");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "fallback came before the timeout: {:?}",
        started.elapsed()
    );

    // The balancer appears with b1: fallback ends.
    let _lb = lbserver(
        SocketAddr::from((Ipv4Addr::LOCALHOST, lb_port)),
        &[&backends[1]],
        "",
    )
    .await;
    until(&mut client, |seen| {
        seen.keys().collect::<Vec<_>>() == vec!["b1"]
    })
    .await;
}

#[tokio::test]
async fn child_policies_round_robin_and_pick_first_behave_as_configured() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = lbserver("127.0.0.1:0".parse().unwrap(), &refs, "").await;
    let dns = dns(lb.listen.port()).await;
    let port = backends[0].addr().port();
    let mut rr = MoviesServiceClient::new(channel(
        &dns,
        port,
        json!({"childPolicy": [{"round_robin": {}}]}),
    ));
    let mut pf = MoviesServiceClient::new(channel(
        &dns,
        port,
        json!({"childPolicy": [{"pick_first": {}}], "serviceName": SERVICE}),
    ));
    until(&mut rr, |seen| seen.len() == 3).await;
    until(&mut pf, |seen| seen.len() == 1).await;
    for _ in 0..3 {
        let seen = until(&mut pf, |_| true).await;
        assert_eq!(seen.len(), 1, "pick_first uses one backend: {seen:?}");
    }
}

#[tokio::test]
async fn a_fallback_response_sends_clients_to_their_own_backends_until_a_list_returns() {
    let backends = start_backends(2).await.unwrap();
    // The balancer lists b1, with fallback allowed; b0 is the fallback
    // backend (the target's A record and port).
    let lb = lbserver(
        "127.0.0.1:0".parse().unwrap(),
        &[&backends[1]],
        "fallback = true\n",
    )
    .await;
    let dns = dns(lb.listen.port()).await;
    let mut client = MoviesServiceClient::new(channel(&dns, backends[0].addr().port(), json!({})));
    until(&mut client, |seen| {
        seen.keys().collect::<Vec<_>>() == vec!["b1"]
    })
    .await;

    // b1 becomes unhealthy: no healthy backend, so the balancer sends
    // fallback_response and the client uses its own backend, b0.
    backends[1].set_serving(false);
    let service = lb.registry.find(SERVICE).unwrap();
    // Health here is the balancer's probe of the whole server ("").
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while service.current().backends != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b1 never left the list"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until(&mut client, |seen| {
        seen.keys().collect::<Vec<_>>() == vec!["b0"]
    })
    .await;

    // A new list ends fallback.
    backends[1].set_serving(true);
    until(&mut client, |seen| {
        seen.keys().collect::<Vec<_>>() == vec!["b1"]
    })
    .await;
}

/// grpclb over TLS: the channel's TLS settings reach the policy's balancer
/// channel, which verifies `waypost serve` as the SRV record's target
/// (`lb.test`, the only name in its certificate) even though the channel
/// names `movies.test` for its backends — the TLS grpcio backends, which
/// the balancer's own probes verify too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_balancer_is_verified_as_the_srv_target_and_the_backends_as_the_service() {
    use waypost_balancer::{Certificate, ClientTlsConfig};
    // (bound whole: the backends and files live as long as the test)
    let balanced = tls_balanced(SERVICE, &["a", "b", "c"], "", fast_serve_options()).await;
    let (pki, lb) = (&balanced.pki, &balanced.lb);
    let dns = dns(lb.listen.port()).await;
    let resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(
        DnsOptions::default().lookups(true, false),
    ));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name(SERVICE);
    // The name's own address has nothing listening: calls can only succeed
    // through the balancer's list.
    let channel = Channel::builder(format!("dns://{}/{SERVICE}:{}", dns.addr(), free_port()))
        .resolvers(resolvers)
        .default_service_config(json!({"loadBalancingConfig": [{"grpclb": {}}]}))
        .tls(tls)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let seen = until(&mut client, |seen| seen.len() == 3).await;
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let service = lb.registry.find(SERVICE).unwrap();
    assert_eq!(
        service.streams.load(Ordering::Relaxed),
        1,
        "one TLS BalanceLoad stream"
    );
}
