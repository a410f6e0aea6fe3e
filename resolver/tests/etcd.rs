//! The `etcd` resolver and registrar against a real etcd server.

mod support;

use support::{addrs, wait_for};

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use serde_json::{Value, json};
use waypost_integration::etcd::EtcdServer;
use waypost_resolver::backoff::BackoffConfig;
use waypost_resolver::etcd::{EtcdResolverBuilder, Registration, RegistrationOptions};
use waypost_resolver::{Resolution, ResolveError, ResolverRegistry};

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_millis(100),
        multiplier: 2.0,
        jitter: 0.0,
        max: Duration::from_secs(1),
    }
}

async fn client(etcd: &EtcdServer) -> Client {
    waypost_resolver::etcd::connect(&[etcd.addr()])
        .await
        .unwrap()
}

fn resolve(client: &Client, target: &str) -> (Resolution, EtcdResolverBuilder) {
    let builder = EtcdResolverBuilder::new(client.clone()).with_backoff(fast_backoff());
    let registry = ResolverRegistry::new();
    registry.register(builder.clone());
    (registry.resolve(target).unwrap(), builder)
}

#[tokio::test]
async fn go_format_values_resolve_and_deletes_remove() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    // Exactly what grpc-go's etcd naming package writes (old and new forms).
    c.put(
        "orders/127.0.0.1:1",
        r#"{"Op":0,"Addr":"127.0.0.1:1","Metadata":null}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "orders/127.0.0.1:2",
        r#"{"Addr":"127.0.0.1:2","Metadata":{"zone":"b"}}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        "ordersX/127.0.0.1:9",
        r#"{"Op":0,"Addr":"127.0.0.1:9"}"#,
        None,
    )
    .await
    .unwrap();

    let (mut resolution, _) = resolve(&c, "etcd:///orders");
    let first = resolution.first().await;
    assert_eq!(
        addrs(&first),
        vec!["127.0.0.1:1", "127.0.0.1:2"],
        "only the orders/ prefix"
    );
    let state = first.state.unwrap();
    assert_eq!(state.endpoints[1].metadata, Some(json!({"zone":"b"})));

    c.put(
        "orders/127.0.0.1:3",
        r#"{"Op":0,"Addr":"127.0.0.1:3","Metadata":null}"#,
        None,
    )
    .await
    .unwrap();
    wait_for(&mut resolution, |u| addrs(u).len() == 3).await;
    c.delete("orders/127.0.0.1:1", None).await.unwrap();
    let update = wait_for(&mut resolution, |u| addrs(u).len() == 2).await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:2", "127.0.0.1:3"]);
    // Op 1 in a value removes too.
    c.put(
        "orders/127.0.0.1:2",
        r#"{"Op":1,"Addr":"127.0.0.1:2"}"#,
        None,
    )
    .await
    .unwrap();
    let update = wait_for(&mut resolution, |u| addrs(u).len() == 1).await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:3"]);
}

#[tokio::test]
async fn garbage_values_are_skipped_counted_and_never_remove_a_good_endpoint() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("orders/a", "not json", None).await.unwrap();
    c.put(
        "orders/127.0.0.1:1",
        r#"{"Op":0,"Addr":"127.0.0.1:1"}"#,
        None,
    )
    .await
    .unwrap();
    let (mut resolution, builder) = resolve(&c, "etcd:///orders");
    // The first answer carries the endpoints and the skipped value together
    // (they used to arrive as two updates, so a reader saw either).
    let first = resolution.first().await;
    assert_eq!(addrs(&first), vec!["127.0.0.1:1"]);
    assert!(
        matches!(&first.error, Some(ResolveError::BadEtcdValue { key, .. }) if key == "orders/a"),
        "{:?}",
        first.error
    );

    // A bad value over a good key keeps the good endpoint.
    c.put("orders/127.0.0.1:1", r#"{"Op":0}"#, None)
        .await
        .unwrap();
    let update = wait_for(&mut resolution, |u| {
        matches!(&u.error, Some(ResolveError::BadEtcdValue { key, .. }) if key == "orders/127.0.0.1:1")
    })
    .await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:1"]);
    assert_eq!(builder.stats().skipped_values(), 2);
    // The resolver still works afterwards.
    c.put(
        "orders/127.0.0.1:2",
        r#"{"Op":0,"Addr":"127.0.0.1:2"}"#,
        None,
    )
    .await
    .unwrap();
    wait_for(&mut resolution, |u| addrs(u).len() == 2).await;
}

#[tokio::test]
async fn registration_is_written_in_go_format_and_removed_on_shutdown() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    let options = RegistrationOptions::new("movies", "127.0.0.1:7001")
        .metadata(json!({"weight": 2}))
        .ttl(Duration::from_secs(5));
    let registration = Registration::register(c.clone(), options).await.unwrap();
    assert_eq!(registration.key(), "movies/127.0.0.1:7001");

    let got = c
        .get("movies/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1);
    let kv = &got.kvs()[0];
    assert_ne!(kv.lease(), 0, "bound to a lease");
    let value: Value = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(
        value,
        json!({"Op":0,"Addr":"127.0.0.1:7001","Metadata":{"weight":2}})
    );

    let (mut resolution, _) = resolve(&c, "etcd:///movies");
    assert_eq!(addrs(&resolution.first().await), vec!["127.0.0.1:7001"]);
    registration.shutdown().await.unwrap();
    wait_for(&mut resolution, |u| addrs(u).is_empty()).await;
    assert!(
        c.get("movies/127.0.0.1:7001", None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
}

#[tokio::test]
async fn a_registrar_that_dies_disappears_after_its_lease_ttl() {
    let etcd = EtcdServer::start().await.unwrap();
    let c = client(&etcd).await;
    let registration = Registration::register(
        c.clone(),
        RegistrationOptions::new("movies", "127.0.0.1:7002").ttl(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let (mut resolution, _) = resolve(&c, "etcd:///movies");
    assert_eq!(addrs(&resolution.first().await), vec!["127.0.0.1:7002"]);
    // No graceful shutdown: the keep-alive just stops, as if the process died.
    drop(registration);
    let started = tokio::time::Instant::now();
    wait_for(&mut resolution, |u| addrs(u).is_empty()).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "removed by lease expiry, not at once"
    );
}

#[tokio::test]
async fn a_lost_lease_is_registered_again() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    let options = RegistrationOptions::new("movies", "127.0.0.1:7003")
        .ttl(Duration::from_secs(3))
        .backoff(fast_backoff());
    let registration = Registration::register(c.clone(), options).await.unwrap();
    let mut status = registration.status();
    let lease = status.borrow().lease_id;
    // Revoking the lease is what an expiry after a partition looks like.
    c.lease_revoke(lease).await.unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.registrations >= 2),
    )
    .await
    .expect("registered again within 20 s")
    .unwrap()
    .clone();
    assert_ne!(status.lease_id, lease);
    assert_eq!(
        c.get("movies/127.0.0.1:7003", None)
            .await
            .unwrap()
            .kvs()
            .len(),
        1
    );
    registration.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_resolver_and_registrar_recover_from_an_etcd_restart() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put(
        "orders/127.0.0.1:1",
        r#"{"Op":0,"Addr":"127.0.0.1:1"}"#,
        None,
    )
    .await
    .unwrap();
    let registration = Registration::register(
        c.clone(),
        RegistrationOptions::new("orders", "127.0.0.1:2")
            .ttl(Duration::from_secs(4))
            .backoff(fast_backoff()),
    )
    .await
    .unwrap();
    let (mut resolution, builder) = resolve(&c, "etcd:///orders");
    assert_eq!(
        addrs(&resolution.first().await),
        vec!["127.0.0.1:1", "127.0.0.1:2"]
    );

    etcd.stop();
    let update = wait_for(&mut resolution, |u| {
        matches!(u.error, Some(ResolveError::Etcd { .. }))
    })
    .await;
    assert_eq!(
        addrs(&update),
        vec!["127.0.0.1:1", "127.0.0.1:2"],
        "the last good endpoints stay"
    );

    etcd.restart().await.unwrap();
    // Changes made while the resolver was cut off are caught up on.
    let mut c2 = client(&etcd).await;
    c2.delete("orders/127.0.0.1:1", None).await.unwrap();
    c2.put(
        "orders/127.0.0.1:3",
        r#"{"Op":0,"Addr":"127.0.0.1:3"}"#,
        None,
    )
    .await
    .unwrap();
    let update = wait_for(&mut resolution, |u| {
        u.error.is_none()
            && addrs(u).contains(&"127.0.0.1:3".to_owned())
            && !addrs(u).contains(&"127.0.0.1:1".to_owned())
    })
    .await;
    assert!(
        addrs(&update).contains(&"127.0.0.1:2".to_owned()),
        "the registration survived: {:?}",
        addrs(&update)
    );
    assert_eq!(
        builder.stats().lists(),
        1,
        "the watch resumed from its revision; no new list was needed"
    );

    // The registrar keeps its key alive across the restart.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let status = registration.status().borrow().clone();
            let present = !c
                .get("orders/127.0.0.1:2", None)
                .await
                .map(|r| r.kvs().is_empty())
                .unwrap_or(true);
            if present && status.last_error.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the registration is healthy again");
    registration.shutdown().await.unwrap();
}

#[tokio::test]
async fn etcd_targets_without_endpoints_are_rejected_clearly() {
    let err = ResolverRegistry::global()
        .resolve("etcd:///orders")
        .unwrap_err();
    assert!(err.to_string().contains("names no etcd endpoints"), "{err}");
    let err = ResolverRegistry::global()
        .resolve("etcd://127.0.0.1:1/")
        .unwrap_err();
    assert!(err.to_string().contains("missing endpoint"), "{err}");
}

#[tokio::test]
async fn the_authority_form_connects_by_itself() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put(
        "orders/127.0.0.1:1",
        r#"{"Op":0,"Addr":"127.0.0.1:1"}"#,
        None,
    )
    .await
    .unwrap();
    let mut resolution = ResolverRegistry::global()
        .resolve(&format!("etcd://{}/orders", etcd.addr()))
        .unwrap();
    let update = resolution.first().await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:1"]);
}

#[tokio::test]
async fn a_compacted_revision_makes_the_resolver_list_again() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put(
        "orders/127.0.0.1:1",
        r#"{"Op":0,"Addr":"127.0.0.1:1"}"#,
        None,
    )
    .await
    .unwrap();
    // A slow reconnect, so the history can be compacted before the resolver returns.
    let slow = BackoffConfig {
        base: Duration::from_secs(3),
        multiplier: 1.0,
        jitter: 0.0,
        max: Duration::from_secs(3),
    };
    let builder = EtcdResolverBuilder::new(c.clone()).with_backoff(slow);
    let registry = ResolverRegistry::new();
    registry.register(builder.clone());
    let mut resolution = registry.resolve("etcd:///orders").unwrap();
    assert_eq!(addrs(&resolution.first().await), vec!["127.0.0.1:1"]);

    etcd.stop();
    wait_for(&mut resolution, |u| {
        matches!(u.error, Some(ResolveError::Etcd { .. }))
    })
    .await;
    etcd.restart().await.unwrap();
    let mut c2 = client(&etcd).await;
    c2.delete("orders/127.0.0.1:1", None).await.unwrap();
    let put = c2
        .put(
            "orders/127.0.0.1:4",
            r#"{"Op":0,"Addr":"127.0.0.1:4"}"#,
            None,
        )
        .await
        .unwrap();
    let revision = put.header().unwrap().revision();
    c2.compact(revision, None).await.unwrap();

    let update = wait_for(&mut resolution, |u| {
        u.error.is_none() && addrs(u) == ["127.0.0.1:4"]
    })
    .await;
    assert_eq!(addrs(&update), vec!["127.0.0.1:4"]);
    assert_eq!(
        builder.stats().lists(),
        2,
        "the compacted watch forced a second list"
    );
}

#[tokio::test]
async fn a_registration_updates_its_metadata_under_the_same_lease() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    let options = RegistrationOptions::new("movies", "127.0.0.1:7002")
        .metadata(json!({"weight": 4}))
        .ttl(Duration::from_secs(5));
    let registration = Registration::register(c.clone(), options).await.unwrap();
    let (mut resolution, _) = resolve(&c, "etcd:///movies");
    let metadata = |u: &waypost_resolver::ResolverUpdate| {
        u.state
            .as_ref()
            .and_then(|s| s.endpoints.first())
            .and_then(|e| e.metadata.clone())
    };
    wait_for(&mut resolution, |u| {
        metadata(u) == Some(json!({"weight": 4}))
    })
    .await;

    // The backend reports its load: the resolver sees the new metadata.
    registration
        .update_metadata(Some(json!({"weight": 4, "load": 0.5})))
        .await
        .unwrap();
    wait_for(&mut resolution, |u| {
        metadata(u) == Some(json!({"weight": 4, "load": 0.5}))
    })
    .await;
    let got = c.get("movies/127.0.0.1:7002", None).await.unwrap();
    assert_eq!(
        got.kvs()[0].lease(),
        registration.status().borrow().lease_id,
        "still bound to the registration's lease"
    );
    registration.shutdown().await.unwrap();
    wait_for(&mut resolution, |u| addrs(u).is_empty()).await;
}

#[tokio::test]
async fn a_registration_key_deleted_while_its_lease_lives_is_put_back() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    let registration = Registration::register(
        c.clone(),
        RegistrationOptions::new("movies", "127.0.0.1:7005").ttl(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let mut status = registration.status();
    let lease = status.borrow().lease_id;

    let deleted = c.delete("movies/127.0.0.1:7005", None).await.unwrap();
    let deleted_at = deleted.header().unwrap().revision();
    // The registrar counts the restoration once its put is done.
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.registrations >= 2),
    )
    .await
    .unwrap_or_else(|_| panic!("put back within 20 s: {:?}", registration.status().borrow()))
    .unwrap();
    let got = c.get("movies/127.0.0.1:7005", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert!(
        kv.mod_revision() > deleted_at,
        "written again after the delete"
    );
    assert_eq!(kv.lease(), lease, "restored under the same lease");
    let (mut resolution, _) = resolve(&c, "etcd:///movies");
    assert_eq!(addrs(&resolution.first().await), vec!["127.0.0.1:7005"]);
    registration.shutdown().await.unwrap();
}

#[tokio::test]
async fn registrations_with_a_bad_address_or_ttl_are_refused() {
    let etcd = EtcdServer::start().await.unwrap();
    let c = client(&etcd).await;
    for (addr, ttl) in [
        ("garbage", 10),
        ("127.0.0.1", 10),
        ("127.0.0.1:99999", 10),
        ("127.0.0.1:1", 1),
        ("127.0.0.1:1", 1 << 63),
        ("127.0.0.1:1", 9_000_000_001),
    ] {
        let options = RegistrationOptions::new("movies", addr).ttl(Duration::from_secs(ttl));
        let error = Registration::register(c.clone(), options)
            .await
            .unwrap_err();
        assert!(
            matches!(error, waypost_resolver::etcd::RegisterError::Invalid(_)),
            "{addr} {ttl}: {error}"
        );
    }
}
