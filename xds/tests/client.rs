//! The XdsClient against a real (scripted) ADS server: ACK and NACK on the
//! wire, the previous cluster kept after a NACK, deletion, the cache kept
//! across a server restart and everything re-requested, and one stream
//! shared by every watcher of the process's client.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use waypost_integration::ads::AdsServer;
use waypost_xds::bootstrap::Bootstrap;
use waypost_xds::client::XdsClient;
use waypost_xds::resources::cluster::{self, ClusterPolicy, ClusterUpdate};

fn eds_cluster(name: &str, policy: LbPolicy) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: format!("{name}-eds"),
        }),
        lb_policy: policy as i32,
        ..Default::default()
    }
}

fn cds(version: &str, clusters: &[Cluster]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: cluster::TYPE_URL.into(),
        resources: clusters
            .iter()
            .map(|c| Any {
                type_url: cluster::TYPE_URL.into(),
                value: c.encode_to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

async fn client_of(server: &AdsServer, node: &str) -> XdsClient {
    let bootstrap = Bootstrap::from_json(&server.bootstrap_json(node)).unwrap();
    XdsClient::new(&bootstrap).unwrap()
}

fn policy_of(state: &waypost_xds::client::WatchState) -> Option<ClusterPolicy> {
    state.value_as::<ClusterUpdate>().map(|c| c.policy.clone())
}

#[tokio::test]
async fn ack_nack_keep_the_last_good_cluster_and_delete_what_the_server_drops() {
    let server = AdsServer::start().await.unwrap();
    let client = client_of(&server, "node-ack").await;
    let mut watch = client.watch(cluster::TYPE_URL, "orders");
    let first = server
        .wait_for_request(|r| r.type_url == cluster::TYPE_URL)
        .await;
    assert_eq!(first.resource_names, ["orders"]);
    let node = first.node.expect("the first request carries the node");
    assert_eq!(node.id, "node-ack");
    assert_eq!(node.user_agent_name, "waypost");
    assert!(
        node.client_features
            .contains(&"xds.config.resource-in-sotw".to_owned())
    );

    server.set(cds("1", &[eds_cluster("orders", LbPolicy::RoundRobin)]));
    let state = watch.wait_for(|s| s.value.is_some()).await;
    let update = state.value_as::<ClusterUpdate>().unwrap();
    assert_eq!(update.eds_service_name, "orders-eds");
    server
        .wait_for_request(|r| {
            r.version_info == "1" && r.error_detail.is_none() && !r.response_nonce.is_empty()
        })
        .await;

    // MAGLEV is refused: NACK with the last accepted version; RR stays.
    server.set(cds("2", &[eds_cluster("orders", LbPolicy::Maglev)]));
    let nack = server.wait_for_request(|r| r.error_detail.is_some()).await;
    assert_eq!(nack.version_info, "1");
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("orders") && detail.message.contains("LB policy is not supported"),
        "{}",
        detail.message
    );
    let state = watch.wait_for(|s| s.error.is_some()).await;
    assert_eq!(policy_of(&state), Some(ClusterPolicy::RoundRobin));
    assert!(
        client
            .statuses()
            .iter()
            .any(|(_, name, status)| name == "orders"
                && matches!(
                    status,
                    waypost_xds::client::ads::ResourceStatus::Nacked { .. }
                ))
    );

    // The next valid version is ACKed and applied.
    server.set(cds("3", &[eds_cluster("orders", LbPolicy::RingHash)]));
    let state = watch
        .wait_for(|s| matches!(policy_of(s), Some(ClusterPolicy::RingHash { .. })))
        .await;
    assert!(state.error.is_none());
    server.wait_for_request(|r| r.version_info == "3").await;

    // CDS is full state: a response without "orders" deletes it.
    server.set(cds("4", &[eds_cluster("payments", LbPolicy::RoundRobin)]));
    let state = watch.wait_for(|s| s.does_not_exist).await;
    assert!(state.value.is_none());
}

#[tokio::test]
async fn a_restarted_server_is_asked_again_and_the_cache_serves_meanwhile() {
    let server = AdsServer::start().await.unwrap();
    let client = client_of(&server, "node-restart").await;
    let mut watch = client.watch(cluster::TYPE_URL, "orders");
    server.set(cds("1", &[eds_cluster("orders", LbPolicy::RoundRobin)]));
    watch.wait_for(|s| s.value.is_some()).await;
    server.wait_for_request(|r| r.version_info == "1").await;

    server.stop().await;
    // While it is down, a second watcher is served from the cache at once.
    let second = client.watch(cluster::TYPE_URL, "orders");
    assert_eq!(
        policy_of(&second.current()),
        Some(ClusterPolicy::RoundRobin)
    );

    let before = server.streams_opened();
    server.set(cds("2", &[eds_cluster("orders", LbPolicy::LeastRequest)]));
    server.restart().await.unwrap();
    // The new stream re-requests with the last accepted version, no nonce.
    let again = tokio::time::timeout(
        Duration::from_secs(30),
        server.wait_for_request(|r| {
            r.version_info == "1" && r.response_nonce.is_empty() && r.node.is_some()
        }),
    )
    .await
    .expect("re-requested within 30 s");
    assert_eq!(again.resource_names, ["orders"]);
    assert!(server.streams_opened() > before);
    let state = watch
        .wait_for(|s| matches!(policy_of(s), Some(ClusterPolicy::LeastRequest { .. })))
        .await;
    assert!(state.error.is_none());
}

#[tokio::test]
async fn one_stream_per_server_for_the_whole_process() {
    let server = AdsServer::start().await.unwrap();
    let bootstrap = Bootstrap::from_json(&server.bootstrap_json("node-shared")).unwrap();
    let a = XdsClient::shared(&bootstrap).unwrap();
    let b = XdsClient::shared(&bootstrap).unwrap();
    let mut orders = a.watch(cluster::TYPE_URL, "orders");
    let mut payments = b.watch(cluster::TYPE_URL, "payments");
    server.set(cds(
        "1",
        &[
            eds_cluster("orders", LbPolicy::RoundRobin),
            eds_cluster("payments", LbPolicy::RoundRobin),
        ],
    ));
    orders.wait_for(|s| s.value.is_some()).await;
    payments.wait_for(|s| s.value.is_some()).await;
    // Both names went out on the one stream.
    server
        .wait_for_request(|r| r.resource_names == ["orders", "payments"])
        .await;
    assert_eq!(server.streams_opened(), 1);
    // The process-wide status names both, ACKed at version 1.
    let reports: Vec<_> = waypost_xds::client::client_status()
        .into_iter()
        .filter(|r| r.server_uri == server.addr().to_string())
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports.iter().all(|r| r.status
        == waypost_xds::client::ads::ResourceStatus::Acked {
            version: "1".into()
        }));
}

#[tokio::test]
async fn a_type_the_client_does_not_know_is_an_error_not_a_crash() {
    let server = AdsServer::start().await.unwrap();
    let client = client_of(&server, "node-unknown").await;
    let mut unknown = client.watch("type.googleapis.com/not.a.Type", "x");
    let state = unknown.wait_for(|s| s.error.is_some()).await;
    assert!(state.error.unwrap().contains("unknown xDS resource type"));
    // The client still works.
    let mut watch = client.watch(cluster::TYPE_URL, "orders");
    server.set(cds("1", &[eds_cluster("orders", LbPolicy::RoundRobin)]));
    watch.wait_for(|s| s.value.is_some()).await;
}
