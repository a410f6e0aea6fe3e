//! The Channel against real tonic backends (the harness's), end to end
//! through a generated tonic client.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio_stream::StreamExt;
use waypost_balancer::{ConnectivityState, KeepaliveConfig};
use waypost_integration::backend::{Backend, start_backends};
use waypost_integration::dns::DnsServer;
use waypost_integration::etcd::EtcdServer;
use waypost_proto::movies::v1::{MovieId, MovieQuery};
use waypost_resolver::ResolverRegistry;
use waypost_resolver::dns::{DnsOptions, DnsResolverBuilder};
use waypost_resolver::etcd::{EtcdResolverBuilder, Registration, RegistrationOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_calls_evenly() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0", "b1", "b2"]).await;
    assert_eq!(channel.state(), ConnectivityState::Ready);

    let before: Vec<u64> = backends.iter().map(Backend::calls).collect();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                call(&mut client, false, Duration::from_secs(5))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for (backend, before) in backends.iter().zip(before) {
        let served = backend.calls() - before;
        assert!(
            (900..=1100).contains(&served),
            "{} served {served} of 3000",
            backend.name()
        );
    }
}

#[tokio::test]
async fn pick_first_sticks_to_one_backend_and_moves_on_when_it_dies() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs)).build().unwrap();
    let mut client = Client::new(channel.clone());

    let mut served = BTreeMap::new();
    for _ in 0..100 {
        *served
            .entry(
                call(&mut client, true, Duration::from_secs(5))
                    .await
                    .unwrap(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(
        served,
        BTreeMap::from([("b0".to_owned(), 100)]),
        "pick_first uses the first address only"
    );

    backends[0].stop().await;
    let mut served = BTreeMap::new();
    for _ in 0..100 {
        *served
            .entry(
                call(&mut client, true, Duration::from_secs(5))
                    .await
                    .unwrap(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(
        served.len(),
        1,
        "it sticks to one backend again: {served:?}"
    );
    assert!(!served.contains_key("b0"));
}

/// Retry UNAVAILABLE on the movies service, as a deployment would for
/// idempotent reads.
fn retry_unavailable() -> serde_json::Value {
    json!({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": "movies.v1.MoviesService"}],
            "retryPolicy": {
                "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
            }
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    // Fail-fast calls on a plain round_robin channel; wait-for-ready calls on
    // one whose service config retries UNAVAILABLE. A call already sent on
    // the killed connection may have reached the server, so (as in grpc-go)
    // only a retry policy may send it again; calls never sent are re-picked
    // transparently on either channel.
    let fail_fast = builder(&ipv4_target(&refs))
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let waiting = builder(&ipv4_target(&refs))
        .default_service_config(retry_unavailable())
        .build()
        .unwrap();
    let mut warm = Client::new(fail_fast.clone());
    until_all_serve(&mut warm, &["b0", "b1", "b2"]).await;
    let mut warm = Client::new(waiting.clone());
    until_all_serve(&mut warm, &["b0", "b1", "b2"]).await;

    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let wait_for_ready = i % 2 == 0;
        let mut client = Client::new(if wait_for_ready {
            waiting.clone()
        } else {
            fail_fast.clone()
        });
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for _ in 0..300 {
                match call(&mut client, wait_for_ready, Duration::from_secs(10)).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        bad.push((wait_for_ready, status.code(), status.message().to_owned()))
                    }
                }
            }
            bad
        }));
    }
    // Kill b1 once the load is running.
    while ok.load(Ordering::Relaxed) < 300 {
        tokio::task::yield_now().await;
    }
    backends[1].stop().await;
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.iter().all(|(wfr, _, _)| !wfr),
        "wait-for-ready calls all succeed: {failures:?}"
    );
    assert!(
        failures
            .iter()
            .all(|(_, code, _)| *code == tonic::Code::Unavailable),
        "fail-fast calls fail only with UNAVAILABLE: {failures:?}"
    );

    // Restarted, it is used again.
    let before = backends[1].calls();
    backends[1].restart().await.unwrap();
    let mut client = Client::new(fail_fast.clone());
    until_all_serve(&mut client, &["b1"]).await;
    assert!(backends[1].calls() > before);
}

#[tokio::test]
async fn retries_follow_the_policy_and_stop_at_max_attempts() {
    let backends = start_backends(1).await.unwrap();
    let channel = builder(&ipv4_target(&[&backends[0]]))
        .default_service_config(retry_unavailable())
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0"]).await;

    // A listed code is retried, up to maxAttempts calls in all.
    let before = backends[0].calls();
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request
        .metadata_mut()
        .insert("x-fail-code", "14".parse().unwrap());
    let status = client.get_movie(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(backends[0].calls() - before, 3, "maxAttempts is 3");
    assert_eq!(channel.stats().retries, 2);

    // A code not listed is not retried.
    let before = backends[0].calls();
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request
        .metadata_mut()
        .insert("x-fail-code", "13".parse().unwrap());
    assert_eq!(
        client.get_movie(request).await.unwrap_err().code(),
        tonic::Code::Internal
    );
    assert_eq!(backends[0].calls() - before, 1);

    // Streaming responses that started are committed: never retried.
    let stream = client
        .query_movies(MovieQuery {
            query: String::new(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.collect::<Vec<_>>().await.len(), 2);
    assert_eq!(channel.stats().retries, 2);
}

#[tokio::test]
async fn a_backend_that_stops_answering_pings_is_dropped_within_keepalive_time_and_timeout() {
    let backends = start_backends(2).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let keepalive = KeepaliveConfig {
        time: Some(Duration::from_millis(300)),
        timeout: Duration::from_millis(300),
        permit_without_stream: true,
    };
    let channel = builder(&ipv4_target(&refs))
        .default_service_config(round_robin())
        .keepalive(keepalive)
        .min_connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0", "b1"]).await;

    backends[0].set_hanging(true);
    let hung_at = tokio::time::Instant::now();
    // Wait for the channel to see the connection fail (no sleeping: watch the counter).
    let disconnects = channel.stats().disconnects;
    while channel.stats().disconnects == disconnects {
        assert!(
            hung_at.elapsed() < Duration::from_secs(5),
            "the hung connection was not detected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detected = hung_at.elapsed();
    // time + timeout = 600 ms; allow one extra interval for timer granularity.
    assert!(
        detected <= Duration::from_millis(1000),
        "detected after {detected:?}"
    );

    // Calls go to b1 only now.
    for _ in 0..20 {
        assert_eq!(
            call(&mut client, false, Duration::from_secs(2))
                .await
                .unwrap(),
            "b1"
        );
    }
    backends[0].set_hanging(false);
}

#[tokio::test]
async fn without_permit_without_stream_an_idle_connection_is_not_pinged() {
    let backends = start_backends(1).await.unwrap();
    let keepalive = KeepaliveConfig {
        time: Some(Duration::from_millis(100)),
        timeout: Duration::from_millis(100),
        permit_without_stream: false,
    };
    let channel = builder(&ipv4_target(&[&backends[0]]))
        .keepalive(keepalive)
        .min_connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0"]).await;

    // A hung backend with no call open: no PING goes out, so nothing
    // notices for many keepalive intervals (a PING would fail it within
    // 200 ms).
    backends[0].set_hanging(true);
    let disconnects = channel.stats().disconnects;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(channel.stats().disconnects, disconnects, "idle: no PINGs");

    // A call opens a stream: now PINGs go out and the dead peer is found.
    let caller = {
        let mut client = client.clone();
        tokio::spawn(async move { call(&mut client, false, Duration::from_secs(3)).await })
    };
    let started = tokio::time::Instant::now();
    while channel.stats().disconnects == disconnects {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the hung connection was not detected once a call was open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        caller.await.unwrap().is_err(),
        "the call on the dead connection failed"
    );
    backends[0].set_hanging(false);
}

#[tokio::test]
async fn a_new_dns_record_brings_a_new_backend_into_use() {
    let b0 = Backend::start_at("b0", SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 0)))
        .await
        .unwrap();
    let port = b0.addr().port();
    let b1 = Backend::start_at("b1", SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port)))
        .await
        .unwrap();
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("movies.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 1)
        .await
        .unwrap();

    let resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(
        DnsOptions::default()
            .ttl_bounds(Duration::from_millis(200), Duration::from_secs(60))
            .lookups(false, false),
    ));
    let target = format!("dns://{}/movies.test:{port}", dns.addr());
    let channel = builder(&target)
        .resolvers(resolvers)
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    for _ in 0..10 {
        assert_eq!(
            call(&mut client, true, Duration::from_secs(5))
                .await
                .unwrap(),
            "b0"
        );
    }
    dns.set_a(
        "movies.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
        1,
    )
    .await
    .unwrap();
    until_all_serve(&mut client, &["b1"]).await;
    assert!(b1.calls() > 0);
}

#[tokio::test]
async fn an_etcd_registration_brings_a_new_backend_into_use() {
    let etcd = EtcdServer::start().await.unwrap();
    let etcd_client = waypost_resolver::etcd::connect(&[etcd.addr()])
        .await
        .unwrap();
    let backends = start_backends(2).await.unwrap();
    let _r0 = Registration::register(
        etcd_client.clone(),
        RegistrationOptions::new("movies", backends[0].addr().to_string()),
    )
    .await
    .unwrap();
    let resolvers = ResolverRegistry::new();
    resolvers.register(EtcdResolverBuilder::new(etcd_client.clone()));
    let channel = builder("etcd:///movies")
        .resolvers(resolvers)
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    for _ in 0..10 {
        assert_eq!(
            call(&mut client, true, Duration::from_secs(5))
                .await
                .unwrap(),
            "b0"
        );
    }
    let r1 = Registration::register(
        etcd_client.clone(),
        RegistrationOptions::new("movies", backends[1].addr().to_string()),
    )
    .await
    .unwrap();
    until_all_serve(&mut client, &["b1"]).await;
    // And a deregistration takes it out again.
    r1.shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let before = backends[1].calls();
        for _ in 0..20 {
            call(&mut client, true, Duration::from_secs(5))
                .await
                .unwrap();
        }
        if backends[1].calls() == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b1 still used after deregistration"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_channel_leaves_no_tasks_and_no_sockets() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();

    let channel = builder(&ipv4_target(&refs))
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0", "b1", "b2"]).await;
    assert!(backends.iter().all(|b| b.open_connections() == 1));
    assert!(metrics.num_alive_tasks() > tasks_before);
    let stats = channel.stats();
    assert_eq!(
        (
            stats.subchannels_ready,
            stats.subchannels_connecting,
            stats.subchannels_idle
        ),
        (3, 0, 0)
    );
    assert!(stats.picks >= 3 && stats.connects == 3, "{stats:?}");
    let mut registry = prometheus_client::registry::Registry::default();
    channel.register_stats(&mut registry, "movies");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("waypost_channel_subchannels{channel=\"movies\",state=\"READY\"} 3"),
        "{text}"
    );

    drop(client);
    drop(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backends.iter().any(|b| b.open_connections() > 0)
        || metrics.num_alive_tasks() > tasks_before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {} connections, {} tasks (was {tasks_before})",
            backends.iter().map(Backend::open_connections).sum::<u64>(),
            metrics.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_tonic_client_gets_metadata_deadlines_cancellation_and_streaming() {
    let backends = start_backends(1).await.unwrap();
    let channel = builder(&ipv4_target(&[&backends[0]])).build().unwrap();
    let mut client = Client::new(channel.clone());

    // Metadata both ways.
    let mut request = tonic::Request::new(MovieId { mid: 2 });
    request
        .metadata_mut()
        .insert("lb-token", "t-1".parse().unwrap());
    let response = client.get_movie(request).await.unwrap();
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "b0");
    assert_eq!(response.get_ref().movie_name, "Arrival");
    assert_eq!(backends[0].tokens_seen().get("t-1"), Some(&1));

    // A deadline shorter than the server's work ends in DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request
        .metadata_mut()
        .insert("x-delay-ms", "3000".parse().unwrap());
    request.set_timeout(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let status = client.get_movie(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A call dropped in flight does not hurt the channel.
    let mut slow = tonic::Request::new(MovieId { mid: 1 });
    slow.metadata_mut()
        .insert("x-delay-ms", "3000".parse().unwrap());
    let mut other = client.clone();
    let dropped = tokio::spawn(async move { other.get_movie(slow).await });
    tokio::task::yield_now().await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());

    // Server streaming.
    let stream = client
        .query_movies(MovieQuery {
            query: "space".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let movies: Vec<_> = stream.collect::<Result<Vec<_>, _>>().await.unwrap();
    assert_eq!(
        movies.iter().map(|m| m.mid).collect::<Vec<_>>(),
        vec![1, 2, 5]
    );

    // Errors from the server pass through untouched.
    assert_eq!(
        client
            .get_movie(MovieId { mid: 404 })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    assert_eq!(channel.state(), ConnectivityState::Ready);
}

#[tokio::test]
async fn fail_fast_calls_fail_and_wait_for_ready_calls_wait_while_nothing_is_up() {
    let backend = Backend::start("late").await.unwrap();
    backend.stop().await;
    let channel = builder(&ipv4_target(&[&backend])).build().unwrap();
    let mut client = Client::new(channel.clone());
    // Wait until the channel has failed to connect.
    let mut state = channel.state();
    while state != ConnectivityState::TransientFailure {
        state = tokio::time::timeout(Duration::from_secs(5), channel.wait_for_state_change(state))
            .await
            .unwrap();
    }
    let status = call(&mut client, false, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // A wait-for-ready call waits, bounded by its deadline...
    let status = call(&mut client, true, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    // ...and succeeds once the backend comes up.
    let mut waiting = client.clone();
    let pending =
        tokio::spawn(async move { call(&mut waiting, true, Duration::from_secs(10)).await });
    backend.restart().await.unwrap();
    assert_eq!(pending.await.unwrap().unwrap(), "late");
}

#[tokio::test]
async fn service_config_from_dns_txt_selects_the_policy() {
    let b0 = Backend::start_at("b0", SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 0)))
        .await
        .unwrap();
    let port = b0.addr().port();
    let _b1 = Backend::start_at("b1", SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), port)))
        .await
        .unwrap();
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a(
        "movies.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3)],
        60,
    )
    .await
    .unwrap();
    dns.set_txt(
        "_grpc_config.movies.test.",
        &format!("grpc_config=[{{\"serviceConfig\":{}}}]", round_robin()),
        60,
    )
    .await
    .unwrap();
    let resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(
        DnsOptions::default().lookups(false, true),
    ));
    let target = format!("dns://{}/movies.test:{port}", dns.addr());
    // No default config: round_robin comes from TXT (pick_first would use b0 only).
    let channel = builder(&target).resolvers(resolvers).build().unwrap();
    let mut client = Client::new(channel);
    until_all_serve(&mut client, &["b0", "b1"]).await;
    let _ = json!(null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_deadline_can_start_outside_the_runtime() {
    let backends = start_backends(1).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let channel = builder(&ipv4_target(&refs)).build().unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0"]).await;
    let before = backends[0].calls();

    // `Service::call` on a thread with no runtime: the call is picked and
    // sent there; its deadline's timer is made when the runtime polls it.
    let mut caller = channel.clone();
    let response = std::thread::spawn(move || {
        let frame = bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]); // MovieId{mid: 1}
        let request = http::Request::builder()
            .method("POST")
            .uri("/movies.v1.MoviesService/GetMovie")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "5S")
            .body(tonic::body::Body::new(http_body_util::Full::new(frame)))
            .unwrap();
        tower::Service::call(&mut caller, request)
    })
    .join()
    .expect("Service::call does not need a runtime")
    .await
    .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(backends[0].calls(), before + 1);
}

#[tokio::test]
async fn a_waiting_call_without_deadline_ends_when_the_channel_is_dropped() {
    use tower::Service;
    // Nothing listens there: the call waits for a READY backend.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut channel = builder(&format!("ipv4:{unused}")).build().unwrap();
    let request = http::Request::builder()
        .uri("/movies.v1.MoviesService/GetMovie")
        .header("content-type", "application/grpc")
        .extension(waypost_balancer::WaitForReady(true))
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = channel.call(request);
    let pending = tokio::spawn(response);
    // Let it start waiting, then drop the last handle.
    tokio::task::yield_now().await;
    drop(channel);
    let error = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the waiting call ended once the channel was dropped")
        .unwrap()
        .unwrap_err();
    let status = tonic::Status::from_error(error);
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("channel closed"), "{status:?}");
}
