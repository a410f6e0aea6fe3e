//! The `xds` resolver: `xds:///NAME` through LDS `NAME` → its routes
//! (inline or RDS) → the virtual host for `NAME` → every cluster its routes
//! name → CDS → EDS.
//!
//! Each cluster contributes its usable (HEALTHY or UNKNOWN) endpoints;
//! with several priorities, `priority_experimental` fails over between
//! them (A56); all under
//! `xds_cluster_impl_experimental` (EDS drops, the cluster's
//! `max_requests`) over the cluster's policy (`round_robin`,
//! `ring_hash_experimental` with the route's header hash policy as
//! `requestHashHeader`, or `least_request_experimental`). With one cluster
//! that is the service config; with several, the top policy is
//! `xds_cluster_manager_experimental`, whose picker routes each call by
//! the route table (path, headers, fraction, weighted clusters) to its
//! cluster's child. A resource that does not exist, or was refused before
//! any value came, is reported as a resolution error naming it.
//!
//! Several localities in the chosen priority share its calls by their
//! weights (`weighted_target_experimental`), except under ring_hash.
//!
//! Each call's timeout is its route's `max_stream_duration`, else the
//! listener's (A31), and its retry policy the route's, else the virtual
//! host's (A44): the cluster manager's per-call selector gives them to the
//! channel before the pick.
//!
//! [`crate::xds::register`] must be called once before building an `xds:///`
//! channel (without it the target fails saying so).

use std::collections::BTreeMap;
use std::sync::Arc;

use waypost_resolver::{
    Address, Endpoint, ResolveError, ResolverBuilder, ResolverRegistry, ResolverState, Target,
};

use crate::xds::bootstrap::Bootstrap;
use crate::xds::client::{ResourceWatch, WatchState, XdsClient};
use crate::xds::resources::cluster::{self, ClusterPolicy, ClusterUpdate};
use crate::xds::resources::endpoint::{self, EndpointsUpdate};
use crate::xds::resources::listener::{self, ListenerUpdate, RouteSource};
use crate::xds::resources::route::{self, HashPolicy, RouteAction, RouteConfigUpdate};

/// Why an `xds:///` target does not resolve.
#[derive(Debug, thiserror::Error)]
#[error("xDS: {0}")]
pub struct XdsResolveError(pub String);

fn failure(message: impl Into<String>) -> ResolveError {
    ResolveError::custom(XdsResolveError(message.into()))
}

/// Builds `xds` resolvers, from the environment's bootstrap or one given.
#[derive(Debug, Default)]
pub struct XdsResolverBuilder {
    bootstrap: Option<Bootstrap>,
}

impl XdsResolverBuilder {
    /// Resolvers reading the bootstrap from the environment
    /// (`GRPC_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP_CONFIG`) when they start.
    pub fn new() -> XdsResolverBuilder {
        XdsResolverBuilder::default()
    }

    /// Resolvers using `bootstrap`.
    pub fn with_bootstrap(bootstrap: Bootstrap) -> XdsResolverBuilder {
        XdsResolverBuilder {
            bootstrap: Some(bootstrap),
        }
    }
}

impl ResolverBuilder for XdsResolverBuilder {
    fn scheme(&self) -> &str {
        "xds"
    }

    fn build(
        &self,
        target: &Target,
        publisher: waypost_resolver::Publisher,
    ) -> Result<(), ResolveError> {
        let name = target.endpoint().to_owned();
        if name.is_empty() {
            return Err(failure("the target names no listener (xds:///NAME)"));
        }
        let client = match &self.bootstrap {
            Some(bootstrap) => XdsClient::shared(bootstrap),
            None => XdsClient::shared(&Bootstrap::from_env().map_err(ResolveError::custom)?),
        }
        .map_err(ResolveError::custom)?;
        tokio::spawn(async move {
            tokio::select! {
                () = resolve(client, name, &publisher) => {}
                () = publisher.closed() => {}
            }
        });
        Ok(())
    }
}

/// Registers the `xds` scheme (bootstrap from the environment) in the
/// global resolver registry (see [`crate::xds::register`], which also registers
/// the xDS policies the resolver's service configs name).
pub fn register() {
    ResolverRegistry::global().register(XdsResolverBuilder::new());
}

/// A watch's value as `T`, or why there is none (`Ok(None)`: waiting).
fn value<T: Send + Sync + 'static>(
    state: &WatchState,
    what: &str,
) -> Result<Option<Arc<T>>, String> {
    if state.does_not_exist {
        return Err(format!("{what} does not exist"));
    }
    match &state.value {
        Some(value) => Ok(value.clone().downcast::<T>().ok()),
        None => match &state.error {
            Some(error) => Err(format!("{what} was refused: {error}")),
            None => Ok(None),
        },
    }
}

/// Keeps `slot` watching `name` of `type_url` (a new watch when the name
/// changed; none when `name` is `None`).
fn rewatch(
    client: &XdsClient,
    slot: &mut Option<(String, ResourceWatch)>,
    type_url: &str,
    name: Option<&str>,
) {
    match name {
        Some(name) if slot.as_ref().is_some_and(|(n, _)| n == name) => {}
        Some(name) => *slot = Some((name.to_owned(), client.watch(type_url, name))),
        None => *slot = None,
    }
}

async fn resolve(client: XdsClient, name: String, publisher: &waypost_resolver::Publisher) {
    let mut lds = client.watch(listener::TYPE_URL, &name);
    let mut rds: Option<(String, ResourceWatch)> = None;
    let mut cds: BTreeMap<String, ResourceWatch> = BTreeMap::new();
    let mut eds: BTreeMap<String, ResourceWatch> = BTreeMap::new();
    let mut last: Option<Result<ResolverState, String>> = None;
    loop {
        let outcome = resolve_once(&client, &name, &lds, &mut rds, &mut cds, &mut eds);
        let outcome = match outcome {
            Ok(None) => None,
            Ok(Some(state)) => Some(Ok(state)),
            Err(error) => Some(Err(error)),
        };
        if outcome.is_some() && outcome != last {
            match &outcome {
                Some(Ok(state)) => publisher.update(state.clone()),
                Some(Err(error)) => publisher.report_error(failure(error.clone())),
                None => {}
            }
            last = outcome;
        }
        // Wait for any watch to change.
        let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> =
            Vec::new();
        waits.push(Box::pin(async {
            lds.changed().await;
        }));
        if let Some((_, watch)) = rds.as_mut() {
            waits.push(Box::pin(async move {
                watch.changed().await;
            }));
        }
        for watch in cds.values_mut().chain(eds.values_mut()) {
            waits.push(Box::pin(async move {
                watch.changed().await;
            }));
        }
        futures_util::future::select_all(waits).await;
    }
}

/// Where the resources stand now: a state to publish, `None` while waiting,
/// or why the target does not resolve. Starts and stops watches as the
/// names they need change.
fn resolve_once(
    client: &XdsClient,
    name: &str,
    lds: &ResourceWatch,
    rds: &mut Option<(String, ResourceWatch)>,
    cds: &mut BTreeMap<String, ResourceWatch>,
    eds: &mut BTreeMap<String, ResourceWatch>,
) -> Result<Option<ResolverState>, String> {
    let Some(listener) = value::<ListenerUpdate>(&lds.current(), &format!("listener {name}"))?
    else {
        return Ok(None);
    };
    let routes: Arc<RouteConfigUpdate> = match &listener.routes {
        RouteSource::Inline(routes) => {
            rewatch(client, rds, route::TYPE_URL, None);
            routes.clone()
        }
        RouteSource::Rds(route_name) => {
            rewatch(client, rds, route::TYPE_URL, Some(route_name));
            let (_, watch) = rds.as_ref().expect("just set");
            match value::<RouteConfigUpdate>(
                &watch.current(),
                &format!("route configuration {route_name}"),
            )? {
                Some(routes) => routes,
                None => return Ok(None),
            }
        }
    };
    let host = route::virtual_host(&routes.virtual_hosts, name).ok_or_else(|| {
        format!(
            "no virtual host in route configuration {} matches {name}",
            routes.name
        )
    })?;
    let mut clusters: Vec<String> = Vec::new();
    let mut hash_header = None;
    for route in &host.routes {
        match &route.action {
            RouteAction::Cluster(c) => clusters.push(c.clone()),
            RouteAction::Weighted(weighted) => {
                clusters.extend(weighted.iter().map(|(c, _)| c.clone()))
            }
            _ => {}
        }
        if hash_header.is_none() {
            hash_header = route.hash_policies.iter().find_map(|p| match p {
                HashPolicy::Header { name, .. } => Some(name.clone()),
                HashPolicy::ChannelId { .. } => None,
            });
        }
    }
    clusters.sort_unstable();
    clusters.dedup();
    if clusters.is_empty() {
        return Err(format!("the virtual host for {name} routes to no cluster"));
    }
    // Watch exactly the clusters the routes name, and their endpoints.
    cds.retain(|c, _| clusters.contains(c));
    let mut resolved = Vec::new();
    let mut wanted_eds = Vec::new();
    for cluster_name in &clusters {
        let watch = cds
            .entry(cluster_name.clone())
            .or_insert_with(|| client.watch(cluster::TYPE_URL, cluster_name));
        let Some(cluster) =
            value::<ClusterUpdate>(&watch.current(), &format!("cluster {cluster_name}"))?
        else {
            continue;
        };
        wanted_eds.push(cluster.eds_service_name.clone());
        let watch = eds
            .entry(cluster.eds_service_name.clone())
            .or_insert_with(|| client.watch(endpoint::TYPE_URL, &cluster.eds_service_name));
        if let Some(assignment) = value::<EndpointsUpdate>(
            &watch.current(),
            &format!("endpoints {}", cluster.eds_service_name),
        )? {
            resolved.push((cluster, assignment));
        }
    }
    eds.retain(|e, _| wanted_eds.contains(e));
    if resolved.len() < clusters.len() {
        return Ok(None);
    }
    // Per-call timeouts and retries need the cluster manager's selector,
    // even for one cluster.
    let default_timeout = listener.max_stream_duration;
    let per_call = default_timeout.is_some()
        || host
            .routes
            .iter()
            .any(|r| r.max_stream_duration.is_some() || r.retry_policy.is_some());
    if let [(cluster, assignment)] = resolved.as_slice()
        && !per_call
    {
        return Ok(Some(state(cluster, assignment, hash_header)?));
    }
    // Several clusters, or per-call settings: the cluster manager routes
    // each call.
    let mut endpoints = Vec::new();
    let mut children = serde_json::Map::new();
    for (cluster, assignment) in &resolved {
        let one = state(cluster, assignment, hash_header.clone())?;
        endpoints.extend(one.endpoints.into_iter().map(|e| {
            let mut metadata = e.metadata.clone().unwrap_or_else(|| serde_json::json!({}));
            metadata["cluster"] = serde_json::json!(cluster.name);
            e.with_metadata(metadata)
        }));
        let policy = one.service_config.expect("state sets it")["loadBalancingConfig"].clone();
        children.insert(
            cluster.name.clone(),
            serde_json::json!({"childPolicy": policy}),
        );
    }
    let top = serde_json::json!({crate::xds::policy::cluster_manager::NAME: {
        "routes": crate::xds::policy::route_table::routes_json(&host.routes, default_timeout),
        "children": children,
    }});
    Ok(Some(ResolverState {
        endpoints,
        service_config: Some(serde_json::json!({"loadBalancingConfig": [top]})),
        ..Default::default()
    }))
}

/// The endpoints (tagged with their locality) and the policy for one
/// priority's localities: `weighted_target` over them when there are
/// several (and the policy is not ring_hash), else `leaf` itself.
fn priority_tree(
    localities: &[crate::xds::resources::endpoint::LocalityEndpoints],
    leaf: &serde_json::Value,
    ring: bool,
) -> (Vec<Endpoint>, serde_json::Value) {
    let localities: Vec<_> = localities
        .iter()
        .filter(|l| l.endpoints.iter().any(|e| e.usable))
        .collect();
    let endpoints = localities
        .iter()
        .flat_map(|locality| {
            let name = locality.locality.to_string();
            locality
                .endpoints
                .iter()
                .filter(|e| e.usable)
                .map(move |e| {
                    Endpoint::new(Address::Tcp(e.address))
                        .with_metadata(serde_json::json!({"weight": e.weight, "locality": name}))
                })
        })
        .collect();
    if localities.len() > 1 && !ring {
        let targets: serde_json::Map<String, serde_json::Value> = localities
            .iter()
            .map(|l| {
                (
                    l.locality.to_string(),
                    serde_json::json!({"weight": l.weight, "childPolicy": [leaf.clone()]}),
                )
            })
            .collect();
        let tree =
            serde_json::json!({crate::xds::policy::weighted_target::NAME: {"targets": targets}});
        return (endpoints, tree);
    }
    (endpoints, leaf.clone())
}

/// The resolver state for `cluster` with `assignment`. One priority: its
/// tree. Several: `priority_experimental` over one tree per priority, so a
/// priority that cannot serve (no usable endpoint, every connection
/// failing, or still connecting after 10 s) hands over to the next.
fn state(
    cluster: &ClusterUpdate,
    assignment: &EndpointsUpdate,
    hash_header: Option<String>,
) -> Result<ResolverState, String> {
    if !assignment.priorities.iter().any(|localities| {
        localities
            .iter()
            .any(|l| l.endpoints.iter().any(|e| e.usable))
    }) {
        return Err(format!("cluster {} has no usable endpoint", cluster.name));
    }
    let mut leaf = cluster.policy.service_config();
    if let (ClusterPolicy::RingHash { .. }, Some(header)) = (&cluster.policy, hash_header)
        && let Some(config) = leaf
            .get_mut("ring_hash_experimental")
            .and_then(|c| c.as_object_mut())
    {
        config.insert("requestHashHeader".into(), header.into());
    }
    // A50: outlier detection over each priority's tree (its localities
    // and their endpoints), as gRPC places it.
    let with_od = |tree: serde_json::Value| match &cluster.outlier_detection {
        None => tree,
        Some(od) => {
            let mut config = od.clone();
            config["childPolicy"] = serde_json::json!([tree]);
            serde_json::json!({"outlier_detection_experimental": config})
        }
    };
    let ring = matches!(cluster.policy, ClusterPolicy::RingHash { .. });
    let (endpoints, tree) = if let [only] = assignment.priorities.as_slice() {
        let (endpoints, tree) = priority_tree(only, &leaf, ring);
        (endpoints, with_od(tree))
    } else {
        let mut endpoints = Vec::new();
        let mut children = serde_json::Map::new();
        let mut order = Vec::new();
        for (index, localities) in assignment.priorities.iter().enumerate() {
            let name = format!("p{index}");
            let (mut these, tree) = priority_tree(localities, &leaf, ring);
            for endpoint in &mut these {
                if let Some(metadata) = endpoint.metadata.as_mut() {
                    metadata["priority"] = serde_json::json!(name);
                }
            }
            endpoints.extend(these);
            children.insert(name.clone(), serde_json::json!({"config": [with_od(tree)]}));
            order.push(name);
        }
        let tree = serde_json::json!({crate::xds::policy::priority::NAME: {
            "children": children, "priorities": order}});
        (endpoints, tree)
    };
    let drops: Vec<serde_json::Value> = assignment
        .drops
        .iter()
        .map(|d| serde_json::json!({"category": d.category, "requestsPerMillion": d.per_million}))
        .collect();
    let top = serde_json::json!({crate::xds::policy::cluster_impl::NAME: {
        "cluster": cluster.name,
        "maxConcurrentRequests": cluster.max_requests,
        "dropCategories": drops,
        "childPolicy": [tree],
    }});
    Ok(ResolverState {
        endpoints,
        service_config: Some(serde_json::json!({"loadBalancingConfig": [top]})),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resources::endpoint::{Drop, EndpointInfo, LocalityEndpoints, LocalityName};

    #[test]
    fn the_service_config_parses_with_the_xds_policies_registered() {
        // (the global policy registry has them from the start)
        let cluster = ClusterUpdate {
            name: "c".into(),
            eds_service_name: "c".into(),
            policy: ClusterPolicy::RoundRobin,
            max_requests: 1024,
            outlier_detection: Some(serde_json::json!({"interval": "1s"})),
        };
        let assignment = EndpointsUpdate {
            name: "c".into(),
            priorities: vec![vec![LocalityEndpoints {
                locality: LocalityName::default(),
                weight: 1,
                endpoints: vec![EndpointInfo {
                    address: "10.0.0.1:80".parse().unwrap(),
                    weight: 1,
                    usable: true,
                }],
            }]],
            drops: vec![Drop {
                category: "lb".into(),
                per_million: 250_000,
            }],
        };
        let state = state(&cluster, &assignment, None).unwrap();
        let json = state.service_config.unwrap();
        let parsed =
            crate::service_config::ServiceConfig::parse(&json, crate::PolicyRegistry::global());
        assert!(parsed.is_ok(), "{json}: {:?}", parsed.err());
        // Outlier detection sits between cluster_impl and the leaf.
        let od = &json["loadBalancingConfig"][0]["xds_cluster_impl_experimental"]["childPolicy"][0]
            ["outlier_detection_experimental"];
        assert_eq!(od["interval"], "1s");
        assert_eq!(od["childPolicy"][0], serde_json::json!({"round_robin": {}}));
    }
}
