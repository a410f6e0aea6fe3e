//! `grpclb`: look-aside balancing. A client of an external balancer (`waypost
//! serve`, or any grpclb server) that speaks `grpc.lb.v1.BalanceLoad`.
//!
//! Selected by `{"loadBalancingConfig":[{"grpclb":{"childPolicy":[{"round_robin":{}}],"serviceName":"…"}}]}`.
//! Balancer addresses come from the resolver (DNS SRV `_grpclb._tcp.<host>`)
//! or from the config's `balancerAddresses` (a waypost extension). The
//! stream asks for `serviceName`, else the channel's authority. Calls walk
//! the balancer's list in order (drop entries fail the call; backends are
//! used when READY); each carries
//! `lb-token`. Removed backends' subchannels are kept for 10 s in case they
//! return. Fallback to the resolver's own addresses happens when no list
//! arrives within `initialFallbackTimeout` (10 s), when the stream breaks
//! while nothing is READY, or on a `fallback_response`; a new list ends it.

mod picker;
mod stats;
mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use waypost_proto::grpc::lb::v1::Server;
use waypost_resolver::backoff::BackoffConfig;
use waypost_resolver::{Address, BalancerAddress, ResolveError, ResolverState};

pub use self::picker::DROP_MESSAGE;
use self::picker::{Entry, GrpclbPicker};
pub use self::stats::GrpclbStats;
use self::stream::StreamEvent;
use super::{Helper, Policy, PolicyBuilder, PolicyEvents, RandomIndex};
use crate::connectivity::ConnectivityState;
use crate::picker::{FailPicker, QueuePicker};
use crate::subchannel::{SubchannelHandle, SubchannelId, SubchannelState};

/// How long a removed backend's subchannel is kept in case it returns.
pub const KEEP_REMOVED: Duration = Duration::from_secs(10);
/// The default initial fallback timeout.
pub const FALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

const FALLBACK_TIMER: u64 = 1;
const CLEANUP_TIMER: u64 = 2;

pub(super) struct GrpclbBuilder;

#[derive(Debug, Clone, PartialEq)]
struct GrpclbConfig {
    pick_first: bool,
    service_name: Option<String>,
    fallback_timeout: Duration,
    balancers: Vec<SocketAddr>,
}

/// The JSON shape (unknown fields ignored, as gRPC's grpclb parsers do).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    child_policy: Option<Vec<serde_json::Map<String, Value>>>,
    service_name: Option<String>,
    initial_fallback_timeout: Option<crate::service_config::raw::ProtoDuration>,
    balancer_addresses: Option<Vec<String>>,
}

fn parse_config(config: &Value) -> Result<GrpclbConfig, String> {
    let raw: RawConfig = crate::service_config::policy_config("grpclb", config)?;
    let known = raw
        .child_policy
        .iter()
        .flatten()
        .filter_map(|c| c.keys().next().cloned())
        .find(|n| n == "round_robin" || n == "pick_first");
    let balancers = raw
        .balancer_addresses
        .unwrap_or_default()
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|_| format!("grpclb: {text:?} is not ip:port"))
        })
        .collect::<Result<_, _>>()?;
    Ok(GrpclbConfig {
        pick_first: known.as_deref() == Some("pick_first"),
        service_name: raw.service_name.filter(|n| !n.is_empty()),
        fallback_timeout: raw
            .initial_fallback_timeout
            .map_or(FALLBACK_TIMEOUT, |d| d.0),
        balancers,
    })
}

impl PolicyBuilder for GrpclbBuilder {
    fn name(&self) -> &str {
        "grpclb"
    }

    fn validate(&self, config: &Value) -> Result<(), String> {
        parse_config(config).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(Grpclb::default())
    }
}

struct Sub {
    handle: SubchannelHandle,
    state: SubchannelState,
    unused_since: Option<Instant>,
}

/// The `grpclb` policy.
pub struct Grpclb {
    /// Where each picker starts its walk of the list.
    random: RandomIndex,
    config: Option<GrpclbConfig>,
    balancers: Vec<BalancerAddress>,
    /// The BalanceLoad stream's task (aborted when the policy goes).
    stream: Option<AbortOnDropHandle<()>>,
    resolver_backends: Vec<Address>,
    list: Option<Vec<Server>>,
    got_list: bool,
    fallback: bool,
    subchannels: HashMap<Address, Sub>,
    by_id: HashMap<SubchannelId, Address>,
    stats: Arc<GrpclbStats>,
    events: Option<PolicyEvents>,
}

fn server_address(server: &Server) -> Option<SocketAddr> {
    let ip = match server.ip_address.len() {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(server.ip_address.as_slice()).ok()?,
        )),
        16 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(server.ip_address.as_slice()).ok()?,
        )),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::try_from(server.port).ok()?))
}

impl Default for Grpclb {
    fn default() -> Self {
        Grpclb::seeded(super::thread_random())
    }
}

impl Grpclb {
    /// grpclb starting each picker's walk at a place drawn from `random`.
    pub fn seeded(random: RandomIndex) -> Grpclb {
        Grpclb {
            random,
            config: None,
            balancers: Vec::new(),
            stream: None,
            resolver_backends: Vec::new(),
            list: None,
            got_list: false,
            fallback: false,
            subchannels: HashMap::new(),
            by_id: HashMap::new(),
            stats: Arc::default(),
            events: None,
        }
    }

    fn start_stream(&mut self, helper: &mut dyn Helper) {
        let config = self
            .config
            .clone()
            .unwrap_or_else(|| parse_config(&Value::Null).expect("defaults"));
        let name = config
            .service_name
            .clone()
            .unwrap_or_else(|| helper.authority());
        let events = self.events.get_or_insert_with(|| helper.events()).clone();
        let backoff = BackoffConfig::default();
        let task = tokio::spawn(stream::run(
            self.balancers.clone(),
            helper.tls(),
            name,
            events,
            self.stats.clone(),
            backoff,
        ));
        self.stream = Some(AbortOnDropHandle::new(task));
    }

    /// The entries to use now: the balancer's list, or the fallback backends.
    fn wanted(&self) -> Vec<(Option<Address>, Option<String>, bool)> {
        if self.fallback || self.list.is_none() && self.balancers.is_empty() {
            return self
                .resolver_backends
                .iter()
                .map(|a| (Some(a.clone()), None, false))
                .collect();
        }
        match &self.list {
            Some(list) => list
                .iter()
                .filter_map(|s| {
                    let token = Some(s.load_balance_token.clone()).filter(|t| !t.is_empty());
                    if s.drop {
                        return Some((None, token, true));
                    }
                    server_address(s).map(|addr| (Some(Address::Tcp(addr)), token, false))
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Brings the subchannels in line with the wanted entries and publishes
    /// a picker.
    fn rebuild(&mut self, helper: &mut dyn Helper) {
        let wanted = self.wanted();
        let now = Instant::now();
        for sub in self.subchannels.values_mut() {
            sub.unused_since.get_or_insert(now);
        }
        for (address, _, _) in &wanted {
            let Some(address) = address else { continue };
            match self.subchannels.get_mut(address) {
                Some(sub) => sub.unused_since = None,
                None => {
                    let handle = helper.new_subchannel(std::slice::from_ref(address));
                    handle.connect();
                    self.by_id.insert(handle.id(), address.clone());
                    self.subchannels.insert(
                        address.clone(),
                        Sub {
                            state: handle.state(),
                            handle,
                            unused_since: None,
                        },
                    );
                }
            }
        }
        if self.subchannels.values().any(|s| s.unused_since.is_some()) {
            helper.set_timer(KEEP_REMOVED, CLEANUP_TIMER);
        }
        self.publish(helper, wanted);
    }

    fn publish(
        &self,
        helper: &mut dyn Helper,
        wanted: Vec<(Option<Address>, Option<String>, bool)>,
    ) {
        let entries: Vec<Entry> = wanted
            .into_iter()
            .map(|(address, token, drop)| {
                if drop {
                    return Entry::Drop(token.unwrap_or_default().into());
                }
                let connection = address
                    .and_then(|a| self.subchannels.get(&a))
                    .and_then(|s| s.state.connection.clone());
                let token = token.and_then(|t| http::HeaderValue::from_str(&t).ok());
                Entry::Backend { connection, token }
            })
            .collect();
        let ready = entries.iter().any(|e| {
            matches!(
                e,
                Entry::Backend {
                    connection: Some(_),
                    ..
                }
            )
        });
        let only_drops = !entries.is_empty() && entries.iter().all(|e| matches!(e, Entry::Drop(_)));
        let pick_first = self.config.as_ref().is_some_and(|c| c.pick_first);
        if ready || only_drops {
            let state = if ready {
                ConnectivityState::Ready
            } else {
                ConnectivityState::TransientFailure
            };
            let start = (self.random)(entries.len());
            let picker = GrpclbPicker {
                sequence: crate::sequence::Sequence::new(start),
                entries: entries.into(),
                stats: self.stats.clone(),
                pick_first,
                drop_message: DROP_MESSAGE.into(),
            };
            helper.update_picker(state, Arc::new(picker));
            return;
        }
        let backends: Vec<&Sub> = self
            .subchannels
            .values()
            .filter(|s| s.unused_since.is_none())
            .collect();
        if !backends.is_empty()
            && backends
                .iter()
                .all(|s| s.state.connectivity == ConnectivityState::TransientFailure)
        {
            let reason = backends
                .iter()
                .find_map(|s| s.state.last_error.clone())
                .unwrap_or_else(|| "grpclb: no backend is reachable".into());
            helper.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(reason)),
            );
        } else {
            helper.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker));
        }
    }
}

impl Policy for Grpclb {
    fn resolver_update(&mut self, state: &ResolverState, config: &Value, helper: &mut dyn Helper) {
        let first = self.config.is_none();
        let config =
            parse_config(config).unwrap_or_else(|_| parse_config(&Value::Null).expect("defaults"));
        let mut balancers = state.balancer_addresses.clone();
        balancers.extend(config.balancers.iter().map(|addr| BalancerAddress {
            addr: *addr,
            server_name: String::new(),
        }));
        self.resolver_backends = state.addresses().cloned().collect();
        let restart = self.config.as_ref() != Some(&config) || balancers != self.balancers;
        self.config = Some(config.clone());
        if restart {
            self.balancers = balancers;
            self.stream = None;
            if !self.balancers.is_empty() {
                self.start_stream(helper);
            }
        }
        if first {
            helper.set_timer(config.fallback_timeout, FALLBACK_TIMER);
        }
        self.rebuild(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.config.is_none() {
            super::fail_resolution(error, helper);
        }
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        let Some(address) = self.by_id.get(&id).cloned() else {
            return;
        };
        let Some(sub) = self.subchannels.get_mut(&address) else {
            return;
        };
        sub.state = state.clone();
        if state.connectivity == ConnectivityState::Idle && sub.unused_since.is_none() {
            sub.handle.connect();
        }
        let wanted = self.wanted();
        self.publish(helper, wanted);
    }

    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        match token {
            FALLBACK_TIMER if !self.got_list && !self.fallback => {
                tracing::info!("grpclb: no server list in time; using the resolver's backends");
                self.fallback = true;
                self.rebuild(helper);
            }
            CLEANUP_TIMER => {
                let now = Instant::now();
                let expired: Vec<Address> = self
                    .subchannels
                    .iter()
                    .filter(|(_, s)| {
                        s.unused_since
                            .is_some_and(|t| now.duration_since(t) >= KEEP_REMOVED)
                    })
                    .map(|(a, _)| a.clone())
                    .collect();
                for address in expired {
                    if let Some(sub) = self.subchannels.remove(&address) {
                        self.by_id.remove(&sub.handle.id());
                        helper.remove_subchannel(sub.handle.id());
                    }
                }
                if self.subchannels.values().any(|s| s.unused_since.is_some()) {
                    helper.set_timer(KEEP_REMOVED, CLEANUP_TIMER);
                }
            }
            _ => {}
        }
    }

    fn event(&mut self, event: Box<dyn std::any::Any + Send>, helper: &mut dyn Helper) {
        let Ok(event) = event.downcast::<StreamEvent>() else {
            return;
        };
        match *event {
            StreamEvent::List(servers) => {
                self.list = Some(servers);
                self.got_list = true;
                self.fallback = false;
                self.rebuild(helper);
            }
            StreamEvent::Fallback => {
                self.fallback = true;
                self.rebuild(helper);
            }
            // A balancer unreachable from the start is the fallback timer's
            // business; a working stream that breaks while nothing is READY
            // means fallback now.
            StreamEvent::Lost { established: false } => {}
            StreamEvent::Lost { established: true } => {
                let ready = self
                    .subchannels
                    .values()
                    .any(|s| s.unused_since.is_none() && s.state.connection.is_some());
                if !ready && !self.fallback {
                    self.fallback = true;
                    self.rebuild(helper);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use waypost_proto::grpc::lb::v1::Server;
    use waypost_resolver::{Endpoint, ResolverState};

    use super::*;
    use crate::connectivity::ConnectivityState::*;
    use crate::picker::Pick;
    use crate::testing::FakeHelper;

    const PATH: &str = "/movies.v1.MoviesService/GetMovie";

    fn server(last: u8, token: &str, drop: bool) -> Server {
        Server {
            ip_address: vec![10, 0, 0, last],
            port: 443,
            load_balance_token: token.into(),
            drop,
        }
    }

    fn address(last: u8) -> Address {
        Address::Tcp(format!("10.0.0.{last}:443").parse().unwrap())
    }

    /// A grpclb policy whose balancer (never reachable here) is given in
    /// the config, with one resolver backend for fallback.
    fn start(helper: &mut FakeHelper) -> Box<dyn Policy> {
        let mut policy = GrpclbBuilder.build();
        let state = ResolverState::from_endpoints([Endpoint::new(address(9))]);
        policy.resolver_update(
            &state,
            &json!({"balancerAddresses": ["127.0.0.1:1"], "initialFallbackTimeout": "10s"}),
            helper,
        );
        policy
    }

    #[tokio::test]
    async fn a_server_list_is_walked_in_order_with_tokens_and_drops() {
        let mut helper = FakeHelper::new("movies.test");
        let mut policy = start(&mut helper);
        policy.event(
            Box::new(StreamEvent::List(vec![
                server(1, "t1", false),
                server(0, "", true),
                server(2, "t2", false),
            ])),
            &mut helper,
        );
        let (one, two) = (
            helper.subchannel_for(&address(1)).unwrap(),
            helper.subchannel_for(&address(2)).unwrap(),
        );
        assert!(
            helper.subchannel_for(&address(9)).is_none(),
            "no fallback yet"
        );
        helper.set_state(&mut *policy, one, Ready);
        helper.set_state(&mut *policy, two, Ready);
        let mut seen = Vec::new();
        for _ in 0..6 {
            match helper.pick_with(PATH, &[]) {
                Pick::Ready(routed) => {
                    let (name, value) = routed.header.expect("an lb-token");
                    assert_eq!(name, "lb-token");
                    seen.push(value.to_str().unwrap().to_owned());
                }
                Pick::Drop(_) => seen.push("drop".into()),
                other => panic!("{other:?}"),
            }
        }
        // The list's order, drops included, over and over.
        let cycle: Vec<_> = seen
            .iter()
            .cycle()
            .skip_while(|s| *s != "t1")
            .take(3)
            .cloned()
            .collect();
        assert_eq!(cycle, ["t1", "drop", "t2"], "{seen:?}");
    }

    #[tokio::test]
    async fn without_a_list_in_time_the_resolvers_backends_are_used() {
        let mut helper = FakeHelper::new("movies.test");
        let mut policy = start(&mut helper);
        assert!(helper.subchannel_for(&address(9)).is_none());
        policy.timer(FALLBACK_TIMER, &mut helper);
        let fallback = helper
            .subchannel_for(&address(9))
            .expect("the fallback backend");
        helper.set_state(&mut *policy, fallback, Ready);
        assert_eq!(helper.state(), Some(Ready));
        assert_eq!(helper.pick(PATH, &[]), Some(fallback));
        // A list arriving later takes over.
        policy.event(
            Box::new(StreamEvent::List(vec![server(1, "t1", false)])),
            &mut helper,
        );
        let one = helper.subchannel_for(&address(1)).unwrap();
        helper.set_state(&mut *policy, one, Ready);
        assert_eq!(helper.pick(PATH, &[]), Some(one));
    }
}
