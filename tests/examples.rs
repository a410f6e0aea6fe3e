//! Runs the examples' scenarios, so the README's first command stays true.
// Each example includes the shared example server (`examples/support/`)
// as its own module, exactly as it does when built alone.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[tokio::test]
async fn the_quickstart_spreads_calls_and_avoids_the_unhealthy_backend() {
    let observed = quickstart::run().await.expect("the quickstart runs");
    assert_eq!(
        observed.healthy.len(),
        3,
        "all three backends serve: {:?}",
        observed.healthy
    );
    assert!(
        observed.healthy.values().all(|n| (8..=12).contains(n)),
        "round_robin spreads 30 calls evenly: {:?}",
        observed.healthy
    );
    assert!(
        !observed.after.contains_key("backend-2"),
        "the unhealthy backend gets no calls: {:?}",
        observed.after
    );
    assert_eq!(observed.after.values().sum::<usize>(), 30);
}

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/balancer_demo.rs"]
mod balancer_demo;

/// `n` ports free on 127.0.0.1 now, from 20000–32767 (below Linux's
/// default ephemeral range, 32768–60999).
fn free_ports_outside_the_ephemeral_range(n: usize) -> Vec<u16> {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..12_768u16)
        .map(|i| 20_000 + (start - 20_000 + i) % 12_768)
        .filter(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .take(n)
        .collect()
}

#[tokio::test]
async fn the_balancer_demo_spreads_calls_and_honours_a_drain() {
    // The demo's ports, but free ones, and `waypost serve`'s library form.
    // They are chosen below the kernel's ephemeral range: the balancer
    // probes them before the demo's backends listen, and a connection to a
    // local port in that range with nothing listening can be given the very
    // same port as its source (a TCP self-connection), which then holds it.
    let ports = free_ports_outside_the_ephemeral_range(3);
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}\"\nhealth_service = \"movies.v1.MoviesService\"\nclient_stats_interval = \"1s\"\n",
        ports[0], ports[1], ports[2]
    );
    let config = waypost_lbserver::config::Config::parse(&text, "test.toml").unwrap();
    let mut options = waypost_lbserver::server::ServeOptions::default();
    options.probe.backoff.base = std::time::Duration::from_millis(100);
    options.probe.backoff.max = std::time::Duration::from_millis(500);
    let lb = waypost_lbserver::server::start(config, options)
        .await
        .unwrap();
    let setup = balancer_demo::Setup {
        balancer: lb.listen,
        admin: lb.admin.unwrap(),
        backend_ports: [ports[0], ports[1], ports[2]],
    };
    let observed = balancer_demo::run(setup).await.expect("the demo runs");
    assert_eq!(observed.all.len(), 3, "{:?}", observed.all);
    assert!(
        observed.all.values().all(|n| (8..=12).contains(n)),
        "{:?}",
        observed.all
    );
    assert!(
        !observed.drained.contains_key("backend-2"),
        "{:?}",
        observed.drained
    );
}

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/movies_tour.rs"]
mod movies_tour;

#[tokio::test]
async fn the_movies_tour_shows_every_grpc_feature_through_waypost() {
    use waypost::proto::grpc::health::v1::health_check_response::ServingStatus;
    use waypost::proto::movies::v1::MovieErrorCode;

    let tour = movies_tour::run().await.expect("the tour runs");
    assert_eq!(tour.unary, ("Alien".to_owned(), "front".to_owned()));
    assert_eq!(tour.echoed, ("tour-1".to_owned(), vec![1, 2, 3, 250]));
    assert_eq!(tour.streamed, 6);
    assert_eq!(
        tour.not_found,
        (
            Some(tonic::Code::NotFound),
            Some(MovieErrorCode::MovieNotFound),
            vec![0xde, 0xad, 0xbe, 0xef]
        )
    );
    let (front, downstream) = tour.deadline_ms;
    assert!(
        (1000..=1500).contains(&front),
        "the server saw the client's deadline: {front} ms"
    );
    assert!(
        downstream > 0 && downstream + 100 <= front,
        "the downstream got a shorter one: {downstream} ms vs {front} ms"
    );
    assert_eq!(tour.expired, (Some(tonic::Code::DeadlineExceeded), true));
    assert!(
        tour.cancel_observed,
        "the server noticed the cancelled stream"
    );
    assert_eq!(tour.health, Some(ServingStatus::Serving));
    assert_eq!(
        tour.reflected,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "movies.v1.MoviesService"
        ]
    );
}

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/interceptors.rs"]
mod interceptors;

#[tokio::test]
async fn the_interceptors_authenticate_rate_limit_and_retry() {
    use tonic::Code;

    let seen = interceptors::run().await.expect("the example runs");
    assert_eq!(seen.without_token, Some(Code::Unauthenticated));
    assert_eq!(seen.forged_token, Some(Code::Unauthenticated));
    assert_eq!(seen.with_token.as_deref(), Some("Heat"));
    assert!(seen.health_without_token, "auth skips grpc.health.v1");
    let (ok, exhausted) = seen.burst;
    assert_eq!(ok + exhausted, 30);
    assert!(ok >= 4, "the burst allowance is served: {ok}");
    assert!(exhausted >= 20, "the rest is refused: {exhausted}");
    assert_eq!(seen.retried, (Some("Amélie".to_owned()), 3));
    assert_eq!(seen.not_retried, Some(Code::Unavailable));
}

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/etcd_registration.rs"]
mod etcd_registration;

/// The built `etcd_registration` example (cargo builds examples with the
/// tests; built here if it is missing).
fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building example {name}");
    }
    path
}

#[tokio::test]
async fn the_etcd_registration_backend_comes_and_goes_with_its_lease() {
    let program = example_binary("etcd_registration");
    let seen = etcd_registration::run(&program)
        .await
        .expect("the demo runs");
    assert!(seen.served_by.starts_with("backend-"), "{seen:?}");
    assert!(
        seen.gone_after_sigterm < std::time::Duration::from_secs(2),
        "SIGTERM deregisters at once: {seen:?}"
    );
    let ttl = etcd_registration::TTL;
    assert!(
        seen.gone_after_sigkill >= ttl - std::time::Duration::from_millis(500)
            && seen.gone_after_sigkill < ttl + std::time::Duration::from_secs(5),
        "SIGKILL: gone after the lease TTL: {seen:?}"
    );
}

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/file_transfer.rs"]
mod file_transfer;

#[tokio::test]
async fn the_file_transfer_arrives_intact_with_matching_checksums() {
    let seen = file_transfer::run().await.expect("the transfer runs");
    assert_eq!(seen.bytes, file_transfer::FILE_SIZE as u64);
    assert_eq!(seen.local_sha256.len(), 64);
    assert_eq!(seen.data_sha256, seen.local_sha256);
    assert_eq!(seen.result.sha256, seen.local_sha256);
    assert_eq!(seen.result.bytes, seen.bytes);
    assert!(seen.identical, "the written file equals the source");
    assert_eq!(seen.bad_ticket, Some(tonic::Code::PermissionDenied));
}

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/policies.rs"]
mod policies;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policies_example_keeps_users_on_one_backend_and_spares_the_slow_and_the_loaded_one() {
    let observed = policies::run().await.expect("the example runs");
    for (user, reached) in &observed.by_user {
        assert!(
            reached.iter().all(|b| *b == reached[0]),
            "{user}: {reached:?}"
        );
    }
    assert!(
        (15.0..=35.0).contains(&observed.slow_round_robin),
        "{}",
        observed.slow_round_robin
    );
    assert!(
        observed.slow_least_request < 15.0,
        "{}",
        observed.slow_least_request
    );
    // Weights 100/0.9, 100/0.3, 100/0.3: the loaded backend's share is
    // 1/7 ≈ 14 %; round_robin gives it a third.
    assert!(
        (28.0..=38.0).contains(&observed.loaded_round_robin),
        "{}",
        observed.loaded_round_robin
    );
    assert!(
        (10.0..=18.0).contains(&observed.loaded_weighted),
        "{}",
        observed.loaded_weighted
    );
}
