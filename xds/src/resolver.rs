//! The `xds` resolver — first slice: `xds:///name` for a listener whose
//! routes send every call of the target's virtual host to one cluster.
//!
//! It follows LDS `name` → its routes (inline or RDS) → the virtual host
//! for `name` → the cluster → CDS → EDS, and publishes the endpoints of the
//! most preferred priority that has a usable (HEALTHY or UNKNOWN) one, with
//! a service config naming the cluster's policy (`round_robin`,
//! `ring_hash_experimental` with the route's header hash policy as
//! `requestHashHeader`, or `least_request_experimental`). A resource that
//! does not exist, or was refused before any value came, is reported as a
//! resolution error naming it.
//!
//! The top policy is `xds_cluster_impl_experimental` (EDS drops, the
//! cluster's `max_requests`) over the leaf policy.
//!
//! Not yet (issue 17): routes to several clusters (per-call routing,
//! weighted clusters), locality weights, the priority policy's failover
//! timer, and registering the scheme without a call —
//! [`crate::register`] must be called once before building an `xds:///`
//! channel.

use std::sync::Arc;

use waypost_resolver::{
    Address, Endpoint, ResolveError, ResolverBuilder, ResolverRegistry, ResolverState, Target,
};

use crate::bootstrap::Bootstrap;
use crate::client::{ResourceWatch, WatchState, XdsClient};
use crate::resources::cluster::{self, ClusterPolicy, ClusterUpdate};
use crate::resources::endpoint::{self, EndpointsUpdate};
use crate::resources::listener::{self, ListenerUpdate, RouteSource};
use crate::resources::route::{self, HashPolicy, RouteAction, RouteConfigUpdate};

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
/// global resolver registry (see [`crate::register`], which also registers
/// the xDS policies the resolver's service configs name).
pub fn register() {
    ResolverRegistry::global().register(XdsResolverBuilder::new());
}

/// Waits for a change of an optional watch (forever when there is none).
async fn changed(watch: &mut Option<ResourceWatch>) {
    match watch {
        Some(watch) => {
            watch.changed().await;
        }
        None => std::future::pending().await,
    }
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
    let mut lds = Some(client.watch(listener::TYPE_URL, &name));
    let mut rds: Option<(String, ResourceWatch)> = None;
    let mut cds: Option<(String, ResourceWatch)> = None;
    let mut eds: Option<(String, ResourceWatch)> = None;
    let mut last: Option<Result<ResolverState, String>> = None;
    loop {
        // Where each level stands now.
        let outcome: Result<Option<ResolverState>, String> = (|| {
            let Some(listener) = value::<ListenerUpdate>(
                &lds.as_ref().expect("set").current(),
                &format!("listener {name}"),
            )?
            else {
                return Ok(None);
            };
            let routes: Arc<RouteConfigUpdate> = match &listener.routes {
                RouteSource::Inline(routes) => {
                    rewatch(&client, &mut rds, route::TYPE_URL, None);
                    routes.clone()
                }
                RouteSource::Rds(route_name) => {
                    rewatch(&client, &mut rds, route::TYPE_URL, Some(route_name));
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
            let host = route::virtual_host(&routes.virtual_hosts, &name).ok_or_else(|| {
                format!(
                    "no virtual host in route configuration {} matches {name}",
                    routes.name
                )
            })?;
            let mut clusters: Vec<&str> = Vec::new();
            let mut hash_header = None;
            for route in &host.routes {
                match &route.action {
                    RouteAction::Cluster(c) => clusters.push(c),
                    RouteAction::Weighted(weighted) => {
                        clusters.extend(weighted.iter().map(|(c, _)| c.as_str()))
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
            let cluster_name = match clusters.as_slice() {
                [one] => one.to_string(),
                [] => return Err(format!("the virtual host for {name} routes to no cluster")),
                several => {
                    return Err(format!(
                        "the virtual host for {name} routes to several clusters ({}); waypost routes to one cluster per target so far",
                        several.join(", ")
                    ));
                }
            };
            rewatch(&client, &mut cds, cluster::TYPE_URL, Some(&cluster_name));
            let (_, watch) = cds.as_ref().expect("just set");
            let Some(cluster) =
                value::<ClusterUpdate>(&watch.current(), &format!("cluster {cluster_name}"))?
            else {
                return Ok(None);
            };
            rewatch(
                &client,
                &mut eds,
                endpoint::TYPE_URL,
                Some(&cluster.eds_service_name),
            );
            let (_, watch) = eds.as_ref().expect("just set");
            let Some(assignment) = value::<EndpointsUpdate>(
                &watch.current(),
                &format!("endpoints {}", cluster.eds_service_name),
            )?
            else {
                return Ok(None);
            };
            Ok(Some(state(&cluster, &assignment, hash_header)?))
        })();
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
        let mut rds_watch = rds.as_mut().map(|(_, w)| w);
        let mut cds_watch = cds.as_mut().map(|(_, w)| w);
        let mut eds_watch = eds.as_mut().map(|(_, w)| w);
        tokio::select! {
            () = changed(&mut lds) => {}
            () = changed_ref(&mut rds_watch) => {}
            () = changed_ref(&mut cds_watch) => {}
            () = changed_ref(&mut eds_watch) => {}
        }
    }
}

async fn changed_ref(watch: &mut Option<&mut ResourceWatch>) {
    match watch {
        Some(watch) => {
            watch.changed().await;
        }
        None => std::future::pending().await,
    }
}

/// The resolver state for `cluster` with `assignment`: the most preferred
/// priority with a usable endpoint.
fn state(
    cluster: &ClusterUpdate,
    assignment: &EndpointsUpdate,
    hash_header: Option<String>,
) -> Result<ResolverState, String> {
    let chosen = assignment
        .priorities
        .iter()
        .find(|localities| {
            localities
                .iter()
                .any(|l| l.endpoints.iter().any(|e| e.usable))
        })
        .ok_or_else(|| format!("cluster {} has no usable endpoint", cluster.name))?;
    let endpoints = chosen
        .iter()
        .flat_map(|locality| locality.endpoints.iter().filter(|e| e.usable))
        .map(|e| {
            Endpoint::new(Address::Tcp(e.address))
                .with_metadata(serde_json::json!({"weight": e.weight}))
        })
        .collect();
    let mut leaf = cluster.policy.service_config();
    if let (ClusterPolicy::RingHash { .. }, Some(header)) = (&cluster.policy, hash_header)
        && let Some(config) = leaf
            .get_mut("ring_hash_experimental")
            .and_then(|c| c.as_object_mut())
    {
        config.insert("requestHashHeader".into(), header.into());
    }
    let drops: Vec<serde_json::Value> = assignment
        .drops
        .iter()
        .map(|d| serde_json::json!({"category": d.category, "requestsPerMillion": d.per_million}))
        .collect();
    let top = serde_json::json!({crate::policy::cluster_impl::NAME: {
        "cluster": cluster.name,
        "maxConcurrentRequests": cluster.max_requests,
        "dropCategories": drops,
        "childPolicy": [leaf],
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
    use crate::resources::endpoint::{Drop, EndpointInfo, LocalityEndpoints, LocalityName};

    #[test]
    fn the_service_config_parses_with_the_xds_policies_registered() {
        crate::register();
        let cluster = ClusterUpdate {
            name: "c".into(),
            eds_service_name: "c".into(),
            policy: ClusterPolicy::RoundRobin,
            max_requests: 1024,
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
        let parsed = waypost_balancer::service_config::ServiceConfig::parse(
            &json,
            waypost_balancer::PolicyRegistry::global(),
        );
        assert!(parsed.is_ok(), "{json}: {:?}", parsed.err());
    }
}
