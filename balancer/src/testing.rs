//! A policy test kit: a fake [`Helper`] that records the subchannels a
//! policy creates and the pickers it publishes, and lets a test set each
//! subchannel's state — no sockets, no sleeps (like grpc-go's
//! `testutils.BalancerClientConn`). Behind the `testing` feature.
//!
//! ```
//! use waypost_balancer::ConnectivityState;
//! use waypost_balancer::policy::PolicyRegistry;
//! use waypost_balancer::testing::FakeHelper;
//! use waypost_resolver::{Endpoint, ResolverState};
//!
//! let mut policy = PolicyRegistry::global().get("round_robin").unwrap().build();
//! let mut helper = FakeHelper::new("movies.test");
//! let addrs: [std::net::SocketAddr; 2] = ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
//! let state = ResolverState::from_endpoints(addrs.map(Endpoint::new));
//! policy.resolver_update(&state, &serde_json::json!({}), &mut helper);
//! let first = helper.subchannel_ids()[0];
//! helper.set_state(&mut *policy, first, ConnectivityState::Ready);
//! assert_eq!(helper.state(), Some(ConnectivityState::Ready));
//! assert_eq!(helper.pick("/movies.v1.Movies/Get", &[]), Some(first));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Notify, watch};
use waypost_resolver::Address;

use crate::connectivity::ConnectivityState;
use crate::picker::{Pick, PickInfo, Picker};
use crate::policy::{Helper, Policy, PolicyEvents};
use crate::subchannel::{Connection, SubchannelHandle, SubchannelId, SubchannelState};

/// One subchannel a policy created.
#[derive(Debug)]
struct Fake {
    addresses: Vec<Address>,
    state: watch::Sender<SubchannelState>,
    connect: Arc<Notify>,
    removed: bool,
}

/// A [`Helper`] for tests. See the [module docs](self).
pub struct FakeHelper {
    authority: String,
    next_id: u64,
    subchannels: BTreeMap<SubchannelId, Fake>,
    pickers: Vec<(ConnectivityState, Arc<dyn Picker>)>,
    timers: Vec<(Duration, u64)>,
    resolve_now: usize,
    events: tokio::sync::mpsc::UnboundedSender<(u64, Box<dyn std::any::Any + Send>)>,
}

impl std::fmt::Debug for FakeHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHelper")
            .field("subchannels", &self.subchannels.len())
            .field("pickers", &self.pickers.len())
            .finish_non_exhaustive()
    }
}

impl FakeHelper {
    /// A helper for a channel whose authority is `authority`.
    pub fn new(authority: &str) -> FakeHelper {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        FakeHelper {
            authority: authority.to_owned(),
            next_id: 0,
            subchannels: BTreeMap::new(),
            pickers: Vec::new(),
            timers: Vec::new(),
            resolve_now: 0,
            events,
        }
    }

    /// The subchannels created and not removed, oldest first.
    pub fn subchannel_ids(&self) -> Vec<SubchannelId> {
        self.subchannels
            .iter()
            .filter(|(_, f)| !f.removed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The subchannel created (and not removed) for `address`.
    pub fn subchannel_for(&self, address: &Address) -> Option<SubchannelId> {
        self.subchannels
            .iter()
            .find(|(_, f)| !f.removed && f.addresses.first() == Some(address))
            .map(|(id, _)| *id)
    }

    /// Whether `id` was removed.
    pub fn removed(&self, id: SubchannelId) -> bool {
        self.subchannels.get(&id).is_some_and(|f| f.removed)
    }

    /// Whether a connection was asked of `id` since the last call (the
    /// request is consumed).
    pub fn take_connect_request(&self, id: SubchannelId) -> bool {
        self.subchannels
            .get(&id)
            .is_some_and(|f| f.connect.notified().now_or_never().is_some())
    }

    /// Sets `id`'s state (READY gets a connection that sends nothing) and
    /// tells `policy`, as the channel would.
    pub fn set_state(
        &mut self,
        policy: &mut dyn Policy,
        id: SubchannelId,
        connectivity: ConnectivityState,
    ) {
        let Some(fake) = self.subchannels.get(&id) else {
            panic!("no subchannel {id:?}");
        };
        let address = fake.addresses.first().cloned().expect("an address");
        let state = SubchannelState {
            connectivity,
            connection: (connectivity == ConnectivityState::Ready)
                .then(|| Connection::fake(id, address)),
            last_error: (connectivity == ConnectivityState::TransientFailure)
                .then(|| Arc::from(format!("subchannel {} failed", id.0))),
        };
        fake.state.send_replace(state.clone());
        policy.subchannel_update(id, &state, self);
    }

    /// The state of the last picker published.
    pub fn state(&self) -> Option<ConnectivityState> {
        self.pickers.last().map(|(state, _)| *state)
    }

    /// How many pickers were published.
    pub fn pickers_published(&self) -> usize {
        self.pickers.len()
    }

    /// The last picker's decision for a call to `path` with `headers`.
    pub fn pick_with(&self, path: &str, headers: &[(&str, &str)]) -> Pick {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                http::HeaderValue::from_str(value).expect("a header value"),
            );
        }
        let (_, picker) = self.pickers.last().expect("a picker was published");
        picker.pick(&PickInfo::new(path, &map))
    }

    /// The subchannel the last picker sends a call to, if it sends it.
    pub fn pick(&self, path: &str, headers: &[(&str, &str)]) -> Option<SubchannelId> {
        match self.pick_with(path, headers) {
            Pick::Ready(routed) => Some(routed.connection.id()),
            _ => None,
        }
    }

    /// Timers set, as (after, token), oldest first; the test fires one by
    /// calling the policy's `timer`.
    pub fn timers(&self) -> &[(Duration, u64)] {
        &self.timers
    }

    /// How many times re-resolution was asked for.
    pub fn resolve_now_calls(&self) -> usize {
        self.resolve_now
    }
}

impl Helper for FakeHelper {
    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle {
        self.next_id += 1;
        let id = SubchannelId(self.next_id);
        let (handle, state, connect) = SubchannelHandle::fake(id, addresses);
        self.subchannels.insert(
            id,
            Fake {
                addresses: addresses.to_vec(),
                state,
                connect,
                removed: false,
            },
        );
        handle
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        if let Some(fake) = self.subchannels.get_mut(&id) {
            fake.removed = true;
        }
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.pickers.push((state, picker));
    }

    fn resolve_now(&mut self) {
        self.resolve_now += 1;
    }

    fn set_timer(&mut self, after: Duration, token: u64) {
        self.timers.push((after, token));
    }

    fn events(&mut self) -> PolicyEvents {
        PolicyEvents {
            tx: self.events.clone(),
            generation: 0,
        }
    }

    fn authority(&self) -> String {
        self.authority.clone()
    }
}
