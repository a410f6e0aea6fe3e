//! The public plugin surface: custom policies, resolver-driven service
//! configs, and re-resolution requests, driven through a manual resolver.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_balancer::picker::{Pick, PickInfo, Picker, QueuePicker};
use waypost_balancer::{
    ConnectivityState, Helper, Policy, PolicyBuilder, PolicyRegistry, SubchannelHandle,
    SubchannelId, SubchannelState,
};
use waypost_integration::backend::start_backends;
use waypost_resolver::{Endpoint, ManualResolver, ResolverRegistry, ResolverState};

/// `last_one`: sends every call to the last endpoint the resolver listed.
struct LastOne {
    current: Option<SubchannelHandle>,
}

struct LastOnePicker(waypost_balancer::Connection);

impl Picker for LastOnePicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        Pick::Ready(self.0.clone().into())
    }
}

impl Policy for LastOne {
    fn resolver_update(
        &mut self,
        state: &ResolverState,
        _config: &serde_json::Value,
        helper: &mut dyn Helper,
    ) {
        if let Some(old) = self.current.take() {
            helper.remove_subchannel(old.id());
        }
        let Some(last) = state.endpoints.last() else {
            return;
        };
        let handle = helper.new_subchannel(&last.addresses);
        handle.connect();
        self.current = Some(handle);
        helper.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker));
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        if self.current.as_ref().map(|h| h.id()) != Some(id) {
            return;
        }
        match &state.connection {
            Some(connection) => helper.update_picker(
                ConnectivityState::Ready,
                Arc::new(LastOnePicker(connection.clone())),
            ),
            None if state.connectivity == ConnectivityState::Idle => {
                self.current.as_ref().unwrap().connect()
            }
            None => {}
        }
    }
}

struct LastOneBuilder;

impl PolicyBuilder for LastOneBuilder {
    fn name(&self) -> &str {
        "last_one"
    }
    fn build(&self) -> Box<dyn Policy> {
        Box::new(LastOne { current: None })
    }
}

fn state(
    backends: &[&waypost_integration::backend::Backend],
    config: Option<serde_json::Value>,
) -> ResolverState {
    ResolverState {
        endpoints: backends.iter().map(|b| Endpoint::new(b.addr())).collect(),
        service_config: config,
        ..Default::default()
    }
}

/// A channel builder for `manual:///movies` resolved by `manual`, with the
/// test's own `last_one` policy registered.
fn manual_builder(manual: &ManualResolver) -> waypost_balancer::ChannelBuilder {
    let resolvers = ResolverRegistry::new();
    resolvers.register(manual.clone());
    let policies = PolicyRegistry::new();
    policies.register(LastOneBuilder);
    builder("manual:///movies")
        .resolvers(resolvers)
        .policies(policies)
}

#[tokio::test]
async fn a_custom_policy_registered_by_name_is_chosen_by_the_service_config() {
    let backends = start_backends(3).await.unwrap();
    let manual = ManualResolver::new("manual");
    manual.update(state(
        &[&backends[0], &backends[1], &backends[2]],
        Some(json!({"loadBalancingConfig": [{"last_one": {}}]})),
    ));
    let channel = manual_builder(&manual).build().unwrap();
    let mut client = Client::new(channel);
    for _ in 0..20 {
        assert_eq!(
            call(&mut client, true, Duration::from_secs(5))
                .await
                .unwrap(),
            "b2"
        );
    }
    // A new list: the custom policy follows it.
    manual.update(state(
        &[&backends[2], &backends[0]],
        Some(json!({"loadBalancingConfig": [{"last_one": {}}]})),
    ));
    until_all_serve(&mut client, &["b0"]).await;
}

#[tokio::test]
async fn an_invalid_service_config_keeps_the_previous_one() {
    let backends = start_backends(2).await.unwrap();
    let manual = ManualResolver::new("manual");
    manual.update(state(&[&backends[0], &backends[1]], Some(round_robin())));
    let channel = manual_builder(&manual).build().unwrap();
    let mut client = Client::new(channel);
    until_all_serve(&mut client, &["b0", "b1"]).await;

    // Invalid (unknown policy only): round_robin stays, so both still serve.
    manual.update(state(
        &[&backends[0], &backends[1]],
        Some(json!({"loadBalancingConfig": [{"nope": {}}]})),
    ));
    for _ in 0..3 {
        until_all_serve(&mut client, &["b0", "b1"]).await;
    }
    // A valid switch to pick_first is applied: only the first address serves.
    manual.update(state(
        &[&backends[1], &backends[0]],
        Some(json!({"loadBalancingPolicy": "pick_first"})),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let served: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..10 {
                v.push(
                    call(&mut client, true, Duration::from_secs(5))
                        .await
                        .unwrap(),
                );
            }
            v
        };
        if served.iter().all(|s| s == "b1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pick_first was not applied: {served:?}"
        );
    }
}

#[tokio::test]
async fn a_closed_transport_asks_the_resolver_to_resolve_again() {
    let backends = start_backends(1).await.unwrap();
    let manual = ManualResolver::new("manual");
    manual.update(state(&[&backends[0]], None));
    let channel = manual_builder(&manual).build().unwrap();
    let mut client = Client::new(channel.clone());
    call(&mut client, true, Duration::from_secs(5))
        .await
        .unwrap();
    let before = manual.resolve_now_count();

    backends[0].stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while manual.resolve_now_count() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no resolve_now after the transport closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
    drop(channel);
}

/// Starts a call that `backend` (the only one the channel can reach now)
/// answers after `delay_ms`; returns once the backend has it.
async fn slow_call(
    client: &Client,
    backend: &waypost_integration::backend::Backend,
    delay_ms: u64,
) -> tokio::task::JoinHandle<Result<String, tonic::Status>> {
    let calls_before = backend.calls();
    let mut slow = client.clone();
    let in_flight = tokio::spawn(async move {
        let mut request = tonic::Request::new(waypost_proto::movies::v1::MovieId { mid: 1 });
        request
            .metadata_mut()
            .insert("x-delay-ms", delay_ms.to_string().parse().unwrap());
        slow.get_movie(request)
            .await
            .map(|r| r.into_inner().served_by)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backend.calls() == calls_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call reached {}",
            backend.name()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    in_flight
}

#[tokio::test]
async fn a_removed_backend_finishes_its_calls_in_flight_then_its_connection_closes() {
    let backends = start_backends(2).await.unwrap();
    let manual = ManualResolver::new("manual");
    manual.update(state(&[&backends[0]], Some(round_robin())));
    let channel = manual_builder(&manual).build().unwrap();
    let mut client = Client::new(channel);
    until_all_serve(&mut client, &["b0"]).await;

    // A slow call in flight on b0...
    let in_flight = slow_call(&client, &backends[0], 400).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // ...when the resolver drops b0: the call still completes there.
    manual.update(state(&[&backends[1]], Some(round_robin())));
    until_all_serve(&mut client, &["b1"]).await;
    assert_eq!(in_flight.await.unwrap().unwrap(), "b0");

    // Then b0's connection is closed (drained, not cut).
    while backends[0].open_connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b0's connection was not closed after its last call"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            call(&mut client, false, Duration::from_secs(2))
                .await
                .unwrap(),
            "b1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_sends_goaway_is_left_at_once_while_its_calls_finish() {
    let backends = start_backends(2).await.unwrap();
    let manual = ManualResolver::new("manual");
    manual.update(state(&[&backends[0]], Some(round_robin())));
    let channel = manual_builder(&manual).build().unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0"]).await;

    // A slow call in flight on b0's connection...
    let in_flight = slow_call(&client, &backends[0], 2000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    manual.update(state(&[&backends[0], &backends[1]], Some(round_robin())));
    until_all_serve(&mut client, &["b0", "b1"]).await;

    // ...when b0 shuts down gracefully: GOAWAY, and its connection stays
    // open until that call is done. The subchannel leaves it as the GOAWAY
    // arrives (counted as a disconnect), not when it closes; new calls go
    // to b1 from then on (rr over both could not serve ten in a row there).
    let stats = || channel.stats();
    let disconnects = stats().disconnects;
    backends[0].drain();
    while stats().disconnects == disconnects {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the GOAWAY was not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut in_a_row = 0;
    for _ in 0..200 {
        let served = call(&mut client, false, Duration::from_secs(5))
            .await
            .unwrap();
        in_a_row = if served == "b1" { in_a_row + 1 } else { 0 };
        if in_a_row == 10 {
            break;
        }
    }
    assert_eq!(in_a_row, 10, "calls settled on b1");
    assert!(
        !in_flight.is_finished(),
        "b0's slow call was still running while the others went to b1"
    );
    assert_eq!(in_flight.await.unwrap().unwrap(), "b0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_round_robin_to_pick_first_under_load_fails_no_call() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use waypost_integration::proxy::Proxy;

    let backends = start_backends(3).await.unwrap();
    // Each backend behind a proxy, so new connections can be made slow.
    let mut proxies = Vec::new();
    for backend in &backends {
        proxies.push(Proxy::start(backend.addr()).await.unwrap());
    }
    let config = |policy: &str| {
        let endpoints = proxies.iter().map(|p| Endpoint::new(p.addr())).collect();
        ResolverState {
            endpoints,
            service_config: Some(json!({"loadBalancingConfig": [{policy: {}}]})),
            ..Default::default()
        }
    };
    let manual = ManualResolver::new("manual");
    manual.update(config("round_robin"));
    let channel = manual_builder(&manual).build().unwrap();
    let mut client = Client::new(channel.clone());
    until_all_serve(&mut client, &["b0", "b1", "b2"]).await;

    // From now on a new connection takes 1 s to reach its backend: the new
    // policy's connections are slow, the old policy's are up.
    for proxy in &proxies {
        proxy.set_connect_delay(Duration::from_secs(1));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut client = client.clone();
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            let mut first_failure = None;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Fail-fast, with a deadline far below the slow connect.
                match call(&mut client, false, Duration::from_millis(300)).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        first_failure.get_or_insert(status);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            first_failure
        }));
    }
    let until = |n: u64| {
        let ok = ok.clone();
        async move {
            while ok.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // Some calls under round_robin, then the switch; calls go on while
    // pick_first connects (1 s), then under pick_first.
    tokio::time::timeout(Duration::from_secs(10), until(200))
        .await
        .unwrap();
    manual.update(config("pick_first"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut served = std::collections::BTreeSet::new();
        for _ in 0..10 {
            if let Ok(name) = call(&mut client, false, Duration::from_secs(5)).await {
                served.insert(name);
            }
        }
        if served.len() == 1 {
            break; // pick_first took over
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pick_first never took over"
        );
    }
    let switched = ok.load(Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), until(switched + 200))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let first_failure = caller.await.unwrap();
        assert!(first_failure.is_none(), "{first_failure:?}");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    // round_robin's other subchannels are gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while channel.stats().subchannels_ready != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            channel.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
