//! ring_hash on the fake helper: no sockets, no sleeps, a seeded random
//! hash.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use waypost_resolver::{Address, Endpoint, ResolverState};

use super::RingHash;
use crate::connectivity::ConnectivityState::{self, *};
use crate::picker::Pick;
use crate::policy::Policy;
use crate::subchannel::SubchannelId;
use crate::testing::FakeHelper;

const PATH: &str = "/movies.v1.MoviesService/GetMovie";

fn address(i: usize) -> Address {
    Address::Tcp(format!("10.0.0.{i}:443").parse().unwrap())
}

fn endpoints(n: usize) -> ResolverState {
    ResolverState::from_endpoints((1..=n).map(|i| Endpoint::new(address(i))))
}

/// A policy with a deterministic "random" hash sequence.
fn policy() -> RingHash {
    let next = Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15));
    RingHash::new(Arc::new(move || {
        next.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
    }))
}

fn config() -> serde_json::Value {
    json!({"requestHashHeader": "x-user"})
}

fn start(n: usize) -> (RingHash, FakeHelper, Vec<SubchannelId>) {
    let mut policy = policy();
    let mut helper = FakeHelper::new("movies.test");
    policy.resolver_update(&endpoints(n), &config(), &mut helper);
    let ids = (1..=n)
        .map(|i| helper.subchannel_for(&address(i)).unwrap())
        .collect();
    (policy, helper, ids)
}

fn user(helper: &FakeHelper, key: &str) -> Pick {
    helper.pick_with(PATH, &[("x-user", key)])
}

fn all_ready(policy: &mut RingHash, helper: &mut FakeHelper, ids: &[SubchannelId]) {
    for id in ids {
        helper.set_state(policy, *id, Ready);
    }
}

#[test]
fn subchannels_start_idle_and_a_pick_connects_only_the_one_it_lands_on() {
    let (_policy, helper, ids) = start(3);
    assert_eq!(helper.state(), Some(Idle));
    assert!(ids.iter().all(|id| !helper.take_connect_request(*id)));
    assert!(matches!(user(&helper, "alice"), Pick::Queue));
    let asked: Vec<_> = ids
        .iter()
        .filter(|id| helper.take_connect_request(**id))
        .collect();
    assert_eq!(asked.len(), 1, "one connection asked for");
}

#[test]
fn the_same_key_reaches_the_same_backend_and_all_backends_are_used() {
    let (mut policy, mut helper, ids) = start(3);
    all_ready(&mut policy, &mut helper, &ids);
    assert_eq!(helper.state(), Some(Ready));
    let mut used = std::collections::BTreeSet::new();
    for k in 0..60 {
        let key = format!("user-{k}");
        let first = helper.pick(PATH, &[("x-user", &key)]).unwrap();
        for _ in 0..5 {
            assert_eq!(helper.pick(PATH, &[("x-user", &key)]), Some(first));
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 3);
}

#[test]
fn a_failed_endpoint_is_walked_past_and_only_its_keys_move() {
    let (mut policy, mut helper, ids) = start(3);
    all_ready(&mut policy, &mut helper, &ids);
    let keys: Vec<String> = (0..60).map(|k| format!("user-{k}")).collect();
    let before: Vec<_> = keys
        .iter()
        .map(|k| helper.pick(PATH, &[("x-user", k)]).unwrap())
        .collect();
    helper.set_state(&mut policy, ids[0], TransientFailure);
    // One of three failed, two READY: still READY.
    assert_eq!(helper.state(), Some(Ready));
    for (key, was) in keys.iter().zip(&before) {
        let now = helper.pick(PATH, &[("x-user", key)]).unwrap();
        if *was == ids[0] {
            assert_ne!(now, ids[0]);
        } else {
            assert_eq!(now, *was, "{key} moved though its backend is up");
        }
    }
}

#[test]
fn aggregation_follows_a42() {
    let (mut policy, mut helper, ids) = start(3);
    // One failed, others IDLE: CONNECTING, and one IDLE one is woken.
    helper.set_state(&mut policy, ids[0], TransientFailure);
    assert_eq!(helper.state(), Some(Connecting));
    let woken = ids[1..]
        .iter()
        .filter(|id| helper.take_connect_request(**id))
        .count();
    assert_eq!(woken, 1);
    // Two failed: TRANSIENT_FAILURE.
    helper.set_state(&mut policy, ids[1], TransientFailure);
    assert_eq!(helper.state(), Some(TransientFailure));
    // A pick then walks to the last one and wakes it.
    assert!(matches!(user(&helper, "bob"), Pick::Queue));
    assert!(helper.take_connect_request(ids[2]));
    // All three failed: every pick fails, naming a failure.
    helper.set_state(&mut policy, ids[2], TransientFailure);
    match user(&helper, "bob") {
        Pick::Unavailable(why) => assert!(why.contains("failed"), "{why}"),
        other => panic!("{other:?}"),
    }
    // READY wins.
    helper.set_state(&mut policy, ids[2], Ready);
    assert_eq!(helper.state(), Some(Ready));
    assert_eq!(helper.pick(PATH, &[("x-user", "bob")]), Some(ids[2]));
}

#[test]
fn a_failed_endpoint_stays_failed_and_retries_until_it_connects() {
    let (mut policy, mut helper, ids) = start(2);
    helper.set_state(&mut policy, ids[0], TransientFailure);
    let _ = helper.take_connect_request(ids[0]);
    // Its backoff over, the subchannel reports IDLE: still failed to the
    // policy, and it is asked to connect again at once.
    helper.set_state(&mut policy, ids[0], Idle);
    assert!(helper.take_connect_request(ids[0]));
    helper.set_state(&mut policy, ids[0], Connecting);
    assert_eq!(
        helper.state(),
        Some(Connecting),
        "1 failed of 2: CONNECTING"
    );
    helper.set_state(&mut policy, ids[0], Ready);
    assert_eq!(helper.state(), Some(Ready));
    // A READY connection that ends goes IDLE and is not reconnected until
    // a pick needs it.
    helper.set_state(&mut policy, ids[0], Idle);
    assert_eq!(helper.state(), Some(Idle));
    assert!(!helper.take_connect_request(ids[0]));
}

#[test]
fn without_the_header_a_random_ready_endpoint_and_at_most_one_wake_up() {
    let (mut policy, mut helper, ids) = start(3);
    // Nothing READY: a pick wakes exactly one IDLE endpoint and queues.
    assert!(matches!(helper.pick_with(PATH, &[]), Pick::Queue));
    let woken: Vec<_> = ids
        .iter()
        .filter(|id| helper.take_connect_request(**id))
        .copied()
        .collect();
    assert_eq!(woken.len(), 1);
    // While one connects, picks wake no other.
    helper.set_state(&mut policy, woken[0], Connecting);
    assert!(matches!(helper.pick_with(PATH, &[]), Pick::Queue));
    assert!(ids.iter().all(|id| !helper.take_connect_request(*id)));
    // Once it is READY, calls without the header go to it.
    helper.set_state(&mut policy, woken[0], Ready);
    for _ in 0..20 {
        assert_eq!(helper.pick(PATH, &[]), Some(woken[0]));
    }
    // With all READY they spread (the random hash is drawn per call).
    all_ready(&mut policy, &mut helper, &ids);
    let spread: std::collections::BTreeSet<_> =
        (0..60).filter_map(|_| helper.pick(PATH, &[])).collect();
    assert_eq!(spread.len(), 3);
}

#[test]
fn a_fourth_endpoint_takes_about_a_quarter_of_the_keys() {
    let (mut policy, mut helper, ids) = start(3);
    all_ready(&mut policy, &mut helper, &ids);
    let keys: Vec<String> = (0..1000).map(|k| format!("user-{k}")).collect();
    let before: Vec<_> = keys
        .iter()
        .map(|k| helper.pick(PATH, &[("x-user", k)]).unwrap())
        .collect();
    policy.resolver_update(&endpoints(4), &config(), &mut helper);
    let fourth = helper.subchannel_for(&address(4)).unwrap();
    helper.set_state(&mut policy, fourth, Ready);
    let (mut moved, mut between_old) = (0, 0);
    for (key, was) in keys.iter().zip(&before) {
        let now = helper.pick(PATH, &[("x-user", key)]).unwrap();
        if now != *was {
            moved += 1;
            if now != fourth {
                between_old += 1;
            }
        }
    }
    assert!((200..=600).contains(&moved), "{moved} of 1000 moved");
    assert!(
        between_old <= 250,
        "{between_old} moved between the old backends"
    );
    // The three kept their subchannels.
    assert!(ids.iter().all(|id| !helper.removed(*id)));
}

#[test]
fn weights_and_hash_keys_come_from_metadata() {
    let mut first = policy();
    let mut helper = FakeHelper::new("movies.test");
    let state = ResolverState::from_endpoints([
        Endpoint::new(address(1)).with_metadata(json!({"weight": 3, "hash_key": "shard-a"})),
        Endpoint::new(address(2)),
    ]);
    first.resolver_update(&state, &config(), &mut helper);
    let heavy = first
        .ring
        .entries()
        .iter()
        .filter(|e| e.endpoint == 0)
        .count();
    assert_eq!(heavy * 4, first.ring.entries().len() * 3, "weight 3 of 4");
    // The same hash key places the endpoint identically whatever its address.
    let mut moved = policy();
    let mut other = FakeHelper::new("movies.test");
    let renamed = ResolverState::from_endpoints([
        Endpoint::new(address(9)).with_metadata(json!({"weight": 3, "hash_key": "shard-a"})),
        Endpoint::new(address(2)),
    ]);
    moved.resolver_update(&renamed, &config(), &mut other);
    assert_eq!(moved.ring.entries(), first.ring.entries());
}

#[test]
fn no_endpoints_fail_calls() {
    let mut policy = policy();
    let mut helper = FakeHelper::new("movies.test");
    policy.resolver_update(&ResolverState::default(), &config(), &mut helper);
    assert_eq!(helper.state(), Some(ConnectivityState::TransientFailure));
    assert!(matches!(helper.pick_with(PATH, &[]), Pick::Unavailable(_)));
}
