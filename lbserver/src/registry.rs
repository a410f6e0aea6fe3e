//! The registry: each service's backends, their health, weight and drain
//! state, and the server list published to its BalanceLoad streams.
//!
//! Every change republishes the service's list through a `watch`; streams
//! only send when the list actually changed. The encoded list is built once
//! per change and shared by every stream.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;
use waypost_proto::grpc::lb::v1::{
    ClientStats, LoadBalanceResponse, ServerList, load_balance_response::LoadBalanceResponseType,
};

use crate::assign::{Announced, BackendView, DROP_TOKEN, Placement, assign, token};
use crate::config::{ListPolicy, ServiceConfig, strip_port};
use crate::rates::ClientRates;
use crate::xds::clients::XdsClients;
use crate::xds::encode::EncodedResource;
use crate::xds::{ResourceType, ServiceResources, resources};

/// One published list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListSnapshot {
    /// The response to send (a server list, or a fallback response).
    pub response: LoadBalanceResponse,
    /// `response` framed as one gRPC message, shared by every stream that
    /// sends it.
    pub frame: bytes::Bytes,
    /// Backends in the list that are not drops.
    pub backends: usize,
    /// Increases with every change.
    pub version: u64,
}

#[derive(Debug)]
struct Backend {
    healthy: bool,
    weight: u32,
    load: f64,
    placement: Placement,
    /// Its health probe (aborted when the backend goes).
    _probe: Option<AbortOnDropHandle<()>>,
}

/// Aggregated ClientStats of one service.
#[derive(Debug, Default)]
pub struct ClientStatsTotals {
    /// Calls started.
    pub started: AtomicU64,
    /// Calls finished.
    pub finished: AtomicU64,
    /// Calls the client failed to send.
    pub failed_to_send: AtomicU64,
    /// Calls known to have reached a backend.
    pub known_received: AtomicU64,
    /// Calls dropped, by token (only tokens this balancer handed out).
    pub drops: Mutex<HashMap<String, u64>>,
    /// Reports accepted.
    pub reports: AtomicU64,
}

/// One balanced service.
#[derive(Debug)]
pub struct Service {
    /// Its configuration.
    pub config: ServiceConfig,
    backends: Mutex<BTreeMap<SocketAddr, Backend>>,
    drained: Mutex<BTreeSet<SocketAddr>>,
    list: watch::Sender<Arc<ListSnapshot>>,
    /// Client stats received for it.
    pub stats: ClientStatsTotals,
    /// BalanceLoad streams open for it now.
    pub streams: AtomicU64,
    /// Server lists sent to its clients.
    pub lists_sent: AtomicU64,
    /// Set once its source has given a first set of backends.
    answered: std::sync::atomic::AtomicBool,
    /// Numbers the clients of a `subset` service.
    pub(crate) next_client: AtomicU64,
    /// The call rate each client reports (calls started per second).
    rates: Mutex<ClientRates>,
    /// The tokens this service hands out, rebuilt when its backends
    /// change, so a report's tokens are checked in O(1) each.
    tokens: Mutex<Arc<HashSet<String>>>,
    /// Set while a debounce task coalesces changes (see [`Service::debounce`]).
    debouncing: std::sync::atomic::AtomicBool,
    pending: tokio::sync::Notify,
    /// Its xDS resources, republished with the list.
    xds: watch::Sender<Arc<ServiceResources>>,
    /// The backends the last published assignment listed as HEALTHY.
    xds_listed: Mutex<BTreeSet<SocketAddr>>,
    /// Set when an assignment shows a backend DRAINING (see
    /// [`Service::expire_draining`]).
    draining_shown: tokio::sync::Notify,
}

impl Service {
    fn new(config: ServiceConfig) -> Service {
        let response = list_response(Vec::new());
        let empty = Arc::new(ListSnapshot {
            frame: crate::balance::frames::encode(&response),
            response,
            backends: 0,
            version: 0,
        });
        let resources = ServiceResources {
            listener: EncodedResource::new(
                ResourceType::Listener,
                &config.name,
                &resources::listener(&config),
            ),
            route: EncodedResource::new(
                ResourceType::Route,
                &config.name,
                &resources::route_configuration(&config),
            ),
            cluster: EncodedResource::new(
                ResourceType::Cluster,
                &config.name,
                &resources::cluster(&config),
            ),
            endpoints: EncodedResource::new(
                ResourceType::Endpoints,
                &config.name,
                &resources::assignment(&config, &[], 0.0, &BTreeSet::new()).resource,
            ),
        };
        let service = Service {
            xds: watch::Sender::new(Arc::new(resources)),
            xds_listed: Mutex::default(),
            draining_shown: tokio::sync::Notify::new(),
            rates: Mutex::new(ClientRates::new(config.client_stats_interval)),
            tokens: Mutex::new(Arc::new(HashSet::from([DROP_TOKEN.to_owned()]))),
            config,
            backends: Mutex::default(),
            drained: Mutex::default(),
            list: watch::Sender::new(empty),
            stats: ClientStatsTotals::default(),
            streams: AtomicU64::new(0),
            lists_sent: AtomicU64::new(0),
            answered: std::sync::atomic::AtomicBool::new(false),
            next_client: AtomicU64::new(0),
            debouncing: std::sync::atomic::AtomicBool::new(false),
            pending: tokio::sync::Notify::new(),
        };
        service.republish();
        service
    }

    /// Watches the published list.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ListSnapshot>> {
        self.list.subscribe()
    }

    /// The list in force.
    pub fn current(&self) -> Arc<ListSnapshot> {
        self.list.borrow().clone()
    }

    /// Watches the xDS resources.
    pub fn subscribe_xds(&self) -> watch::Receiver<Arc<ServiceResources>> {
        self.xds.subscribe()
    }

    /// The xDS resources in force.
    pub fn xds(&self) -> Arc<ServiceResources> {
        self.xds.borrow().clone()
    }

    /// Replaces the backend set; `probe` starts a health probe for a new
    /// backend (it reports through [`Service::set_health`]).
    pub(crate) fn set_backends(
        self: &Arc<Self>,
        wanted: Vec<Announced>,
        probe: &dyn Fn(Arc<Service>, SocketAddr) -> Option<JoinHandle<()>>,
    ) {
        {
            let mut backends = self.backends.lock();
            let wanted_addrs: HashSet<SocketAddr> = wanted.iter().map(|a| a.addr).collect();
            backends.retain(|addr, _| wanted_addrs.contains(addr));
            for Announced {
                addr,
                weight,
                load,
                placement,
            } in wanted
            {
                match backends.get_mut(&addr) {
                    Some(existing) => {
                        existing.weight = weight;
                        existing.load = load;
                        existing.placement = placement;
                    }
                    None => {
                        let task = probe(self.clone(), addr);
                        let healthy = task.is_none();
                        backends.insert(
                            addr,
                            Backend {
                                healthy,
                                weight,
                                load,
                                placement,
                                _probe: task.map(AbortOnDropHandle::new),
                            },
                        );
                    }
                }
            }
            let tokens = backends
                .keys()
                .map(|addr| token(&self.config.name, *addr))
                .chain([DROP_TOKEN.to_owned()])
                .collect();
            *self.tokens.lock() = Arc::new(tokens);
        }
        self.changed();
    }

    /// Whether its source has answered once (with backends, or with an
    /// empty set): what `/readyz` waits for.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Records that its source has answered.
    pub(crate) fn mark_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// Records a probe's verdict.
    pub fn set_health(&self, addr: SocketAddr, healthy: bool) {
        let changed = match self.backends.lock().get_mut(&addr) {
            Some(backend) if backend.healthy != healthy => {
                backend.healthy = healthy;
                true
            }
            _ => false,
        };
        if changed {
            self.changed();
        }
    }

    /// Drains `addr` (or undoes it); returns whether the service has it.
    pub fn set_draining(&self, addr: SocketAddr, draining: bool) -> bool {
        if !self.backends.lock().contains_key(&addr) {
            return false;
        }
        {
            let mut drained = self.drained.lock();
            if draining {
                drained.insert(addr);
            } else {
                drained.remove(&addr);
            }
        }
        self.changed();
        true
    }

    /// The backends as assignment sees them.
    pub fn views(&self) -> Vec<BackendView> {
        let drained = self.drained.lock();
        self.backends
            .lock()
            .iter()
            .map(|(addr, b)| BackendView {
                addr: *addr,
                healthy: b.healthy,
                draining: drained.contains(addr),
                weight: b.weight,
                load: b.load,
                placement: b.placement.clone(),
            })
            .collect()
    }

    /// The call rate (calls/s) clients of this service report starting,
    /// trimmed so one client cannot dominate it (see [`crate::rates`]).
    pub fn observed_rate(&self) -> f64 {
        self.rates.lock().total(std::time::Instant::now())
    }

    /// Adds one client's ClientStats report to the service's totals
    /// (saturating) and to that client's call rate. Drops are counted only
    /// under tokens this service hands out; each token is looked up once,
    /// and the totals' lock is taken once, for the known tokens only.
    pub fn record_report(&self, client: u64, stats: &ClientStats) {
        let totals = &self.stats;
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        saturating_add(&totals.started, count(stats.num_calls_started));
        saturating_add(&totals.finished, count(stats.num_calls_finished));
        saturating_add(
            &totals.failed_to_send,
            count(stats.num_calls_finished_with_client_failed_to_send),
        );
        saturating_add(
            &totals.known_received,
            count(stats.num_calls_finished_known_received),
        );
        saturating_add(&totals.reports, 1);
        if self.config.capacity_per_weight.is_some() {
            self.rates.lock().report(
                client,
                count(stats.num_calls_started),
                std::time::Instant::now(),
            );
        }
        if stats.calls_finished_with_drop.is_empty() {
            return;
        }
        let known = self.tokens.lock().clone();
        let mut counted: HashMap<&str, u64> = HashMap::new();
        for per_token in &stats.calls_finished_with_drop {
            if let Some(known) = known.get(per_token.load_balance_token.as_str()) {
                let n = counted.entry(known.as_str()).or_default();
                *n = n.saturating_add(count(per_token.num_calls));
            }
        }
        if counted.is_empty() {
            return;
        }
        let mut drops = totals.drops.lock();
        for (token, n) in counted {
            let total = drops.entry(token.to_owned()).or_default();
            *total = total.saturating_add(n);
        }
    }

    /// A client's stream ended: its reported rate no longer counts.
    pub fn client_left(&self, client: u64) {
        let removed = self.rates.lock().remove(client);
        if removed {
            self.changed();
        }
    }

    /// The share of list entries dropped now: the configured fraction, or
    /// more when the reported call rate exceeds the spare capacity.
    pub fn drop_fraction(&self) -> f64 {
        self.drop_fraction_of(&self.views())
    }

    /// [`Service::drop_fraction`] for backends already read.
    fn drop_fraction_of(&self, views: &[BackendView]) -> f64 {
        let configured = self.config.drop_fraction;
        match self.config.capacity_per_weight {
            Some(capacity) => {
                let overload =
                    crate::assign::overload_drop_fraction(views, capacity, self.observed_rate());
                // Whole percents, so a jittery rate does not churn lists.
                configured.max((overload * 100.0).round() / 100.0)
            }
            None => configured,
        }
    }

    /// Feeds the clients' reported call rate into the list: every `every`,
    /// republishes (a no-op unless the drops change), so drops follow the
    /// rate as reports arrive and as silent clients age out. Runs for
    /// services with `capacity_per_weight`.
    pub async fn track_load(self: Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.changed();
        }
    }

    /// Coalesces changes: while this runs, a change after a quiet spell is
    /// published at once, and the changes that follow within `window` of a
    /// publication become one new list at the window's end — at most one
    /// list per `window`, each computed once for every stream.
    pub async fn debounce(self: Arc<Self>, window: std::time::Duration) {
        self.debouncing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        loop {
            // A change during the sleep below leaves a permit, so a burst
            // is published once more when its window ends.
            self.pending.notified().await;
            self.republish();
            tokio::time::sleep(window).await;
        }
    }

    /// Takes backends shown DRAINING to xDS clients out of the assignment
    /// `grace` after they were shown (Envoy's meaning of DRAINING: no new
    /// calls while existing ones finish; gRPC clients make none either way).
    /// A separate, later push keeps the removal from competing with the
    /// drain's own fan-out. Runs for every service.
    pub async fn expire_draining(self: Arc<Self>, grace: std::time::Duration) {
        loop {
            self.draining_shown.notified().await;
            tokio::time::sleep(grace).await;
            self.changed();
        }
    }

    /// Something changed: publish now, or let the debounce task do it.
    fn changed(&self) {
        if self.debouncing.load(std::sync::atomic::Ordering::SeqCst) {
            self.pending.notify_one();
        } else {
            self.republish();
        }
    }

    /// Recomputes the list and publishes it if it changed.
    fn republish(&self) {
        let views = self.views();
        // A subset service publishes the whole list without drops; each
        // stream narrows it to its client's subset and adds the drops.
        let drop_fraction = if self.config.policy == ListPolicy::Subset {
            0.0
        } else {
            self.drop_fraction_of(&views)
        };
        self.republish_xds(&views);
        let servers = assign(&self.config.name, &views, self.config.policy, drop_fraction);
        let backends = servers.iter().filter(|s| !s.drop).count();
        let response = if backends == 0 && self.config.fallback {
            LoadBalanceResponse {
                load_balance_response_type: Some(LoadBalanceResponseType::FallbackResponse(
                    Default::default(),
                )),
            }
        } else {
            list_response(servers)
        };
        self.list.send_if_modified(|current| {
            if current.response == response {
                return false;
            }
            *current = Arc::new(ListSnapshot {
                frame: crate::balance::frames::encode(&response),
                response,
                backends,
                version: current.version + 1,
            });
            true
        });
    }

    /// Recomputes the xDS assignment and publishes it if it changed. A
    /// backend shown DRAINING is left out by the next one (see
    /// [`Service::expire_draining`]).
    fn republish_xds(&self, views: &[BackendView]) {
        // xDS has no subsetting: a subset service's xDS clients get every
        // backend, and the drops.
        let drop_fraction = self.drop_fraction_of(views);
        let mut listed = self.xds_listed.lock();
        let assignment = resources::assignment(&self.config, views, drop_fraction, &listed);
        let endpoints = EncodedResource::new(
            ResourceType::Endpoints,
            &self.config.name,
            &assignment.resource,
        );
        *listed = assignment.listed;
        drop(listed);
        self.xds.send_if_modified(|current| {
            if current.endpoints == endpoints {
                return false;
            }
            let mut next = ServiceResources::clone(current);
            next.endpoints = endpoints;
            *current = Arc::new(next);
            true
        });
        if assignment.shows_draining {
            self.draining_shown.notify_one();
        }
    }

    /// Whether `token` is one this service hands out (so per-token counts
    /// stay bounded by the list, whatever clients send).
    pub fn knows_token(&self, token_value: &str) -> bool {
        self.tokens.lock().contains(token_value)
    }
}

/// Adds to a counter, stopping at `u64::MAX` instead of wrapping (clients
/// may report `i64::MAX`, again and again).
fn saturating_add(counter: &AtomicU64, value: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
        Some(current.saturating_add(value))
    });
}

fn list_response(servers: Vec<waypost_proto::grpc::lb::v1::Server>) -> LoadBalanceResponse {
    LoadBalanceResponse {
        load_balance_response_type: Some(LoadBalanceResponseType::ServerList(ServerList {
            servers,
        })),
    }
}

/// All services.
#[derive(Debug, Clone)]
pub struct Registry {
    services: Arc<Vec<Arc<Service>>>,
    /// Index into `services` by name.
    by_name: Arc<HashMap<String, usize>>,
    /// The xDS clients connected.
    xds_clients: Arc<XdsClients>,
}

impl Registry {
    /// A registry with these services and no backends yet.
    pub fn new(services: &[ServiceConfig]) -> Registry {
        let services: Vec<Arc<Service>> = services
            .iter()
            .cloned()
            .map(|c| Arc::new(Service::new(c)))
            .collect();
        let by_name = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        Registry {
            services: Arc::new(services),
            by_name: Arc::new(by_name),
            xds_clients: Arc::default(),
        }
    }

    /// The service a client's name refers to (with or without `:port`).
    pub fn find(&self, name: &str) -> Option<Arc<Service>> {
        let by_name = |wanted: &str| self.by_name.get(wanted).map(|i| self.services[*i].clone());
        by_name(name).or_else(|| by_name(strip_port(name)?))
    }

    /// The service named exactly `name` (xDS resource names).
    pub fn find_exact(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name).map(|i| &self.services[*i])
    }

    /// The position in [`Registry::services`] of the service named exactly
    /// `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The xDS clients connected.
    pub fn xds_clients(&self) -> &Arc<XdsClients> {
        &self.xds_clients
    }

    /// Whether every service's source has answered once: until then the
    /// balancer would hand out empty or partial lists.
    pub fn ready(&self) -> bool {
        self.services().iter().all(|s| s.answered())
    }

    /// Every service.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn listed(service: &Service) -> Vec<u16> {
        match &service.current().response.load_balance_response_type {
            Some(LoadBalanceResponseType::ServerList(list)) => {
                list.servers.iter().map(|s| s.port as u16).collect()
            }
            other => panic!("not a server list: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_goes_out_at_once_and_a_burst_once_per_window() {
        let text =
            "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"s\"\nsource = \"127.0.0.1:1\"\n";
        let config = Config::parse(text, "t.toml").unwrap();
        let registry = Registry::new(&config.services);
        let service = registry.find("s").unwrap();
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        service.set_backends(
            (1..=3).map(|p| Announced::plain(addr(p))).collect(),
            &|_, _| None,
        );
        let window = Duration::from_millis(50);
        let task = tokio::spawn(service.clone().debounce(window));
        while !service.debouncing.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let mut lists = service.subscribe();
        lists.borrow_and_update();
        let version = service.current().version;

        // After a quiet spell: published without waiting for the window.
        let start = tokio::time::Instant::now();
        service.set_draining(addr(1), true);
        lists.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(service.current().version, version + 1);
        assert_eq!(listed(&service), [2, 3]);

        // A burst right after: held, then sent as one list when the window ends.
        service.set_draining(addr(2), true);
        service.set_draining(addr(1), false);
        tokio::task::yield_now().await;
        assert_eq!(service.current().version, version + 1, "held in the window");
        lists.changed().await.unwrap();
        assert_eq!(start.elapsed(), window);
        assert_eq!(service.current().version, version + 2);
        assert_eq!(listed(&service), [1, 3]);
        task.abort();
    }
}
