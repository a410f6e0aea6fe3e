//! `ring_hash_experimental` (also `ring_hash`): consistent hashing, gRFC
//! A42 with A61's simplified picker and A76's `requestHashHeader`.
//!
//! - Each endpoint sits on a ring of XXH64 hashes (of its `hash_key`
//!   metadata, else its first address), as often as its `weight` metadata
//!   share asks; a call goes to the endpoint at or after the hash of its
//!   `requestHashHeader` value — the same key, the same backend — or, without
//!   the header, to the first READY endpoint from a random place.
//! - Subchannels start IDLE and connect only when a pick lands on them; a
//!   pick on an IDLE endpoint asks it to connect and queues, on a failed one
//!   walks on along the ring.
//! - An endpoint that failed stays TRANSIENT_FAILURE (retrying after its
//!   backoff) until it connects; one whose connection ends goes IDLE.
//! - The channel state follows A42's aggregation rules, and while it is
//!   CONNECTING or TRANSIENT_FAILURE with nothing connecting, one IDLE
//!   endpoint is asked to connect (A61), so the policy recovers without
//!   picks.
//!
//! ```json
//! {"loadBalancingConfig": [{"ring_hash_experimental": {
//!     "minRingSize": 1024, "maxRingSize": 4096, "requestHashHeader": "x-user"}}]}
//! ```

pub mod config;
mod picker;
pub mod ring;

use std::collections::HashMap;
use std::sync::Arc;

use waypost_resolver::{Address, ResolveError, ResolverState};

pub use self::config::RingHashConfig;
pub use self::picker::RandomHash;
use self::picker::{RingHashPicker, Slot};
use super::{Helper, Policy, PolicyBuilder};
use crate::connectivity::ConnectivityState;
use crate::picker::FailPicker;
use crate::subchannel::{Connection, SubchannelHandle, SubchannelId, SubchannelState};

/// Registers `ring_hash_experimental` and `ring_hash`.
pub(crate) struct RingHashBuilder {
    pub(crate) name: &'static str,
}

impl PolicyBuilder for RingHashBuilder {
    fn name(&self) -> &str {
        self.name
    }

    fn validate(&self, config: &serde_json::Value) -> Result<(), String> {
        config::parse(config).map(|_| ())
    }

    fn build(&self) -> Box<dyn Policy> {
        Box::new(RingHash::new(Arc::new(super::thread_random_u64)))
    }
}

struct Endpoint {
    addresses: Vec<Address>,
    key: String,
    weight: u32,
    handle: SubchannelHandle,
    /// As the picker and the aggregation see it.
    state: ConnectivityState,
    /// Failed and not READY since: stays TRANSIENT_FAILURE, retrying.
    failed: bool,
    connection: Option<Connection>,
    error: Option<Arc<str>>,
}

/// The `ring_hash` policy. See the [module docs](self).
pub struct RingHash {
    config: RingHashConfig,
    endpoints: Vec<Endpoint>,
    by_id: HashMap<SubchannelId, usize>,
    ring: Arc<ring::Ring>,
    random: RandomHash,
}

impl RingHash {
    /// A policy drawing random hashes (for calls without the hash header)
    /// from `random`.
    pub fn new(random: RandomHash) -> RingHash {
        RingHash {
            config: RingHashConfig::default(),
            endpoints: Vec::new(),
            by_id: HashMap::new(),
            ring: Arc::default(),
            random,
        }
    }

    /// A42's aggregation rules over the endpoints' states.
    fn aggregate(&self) -> ConnectivityState {
        let count = |s| self.endpoints.iter().filter(|e| e.state == s).count();
        let failed = count(ConnectivityState::TransientFailure);
        if count(ConnectivityState::Ready) > 0 {
            ConnectivityState::Ready
        } else if failed >= 2 {
            ConnectivityState::TransientFailure
        } else if count(ConnectivityState::Connecting) > 0
            || (failed == 1 && self.endpoints.len() > 1)
        {
            ConnectivityState::Connecting
        } else if count(ConnectivityState::Idle) > 0 {
            ConnectivityState::Idle
        } else {
            ConnectivityState::TransientFailure
        }
    }

    /// Publishes a picker for the current states, and keeps one endpoint
    /// connecting while the policy is CONNECTING or failing (A61).
    fn publish(&mut self, helper: &mut dyn Helper) {
        let state = self.aggregate();
        let connecting = self
            .endpoints
            .iter()
            .any(|e| e.state == ConnectivityState::Connecting);
        if matches!(
            state,
            ConnectivityState::Connecting | ConnectivityState::TransientFailure
        ) && !connecting
            && let Some(idle) = self
                .endpoints
                .iter()
                .find(|e| e.state == ConnectivityState::Idle)
        {
            idle.handle.connect();
        }
        let picker = RingHashPicker {
            ring: self.ring.clone(),
            slots: self
                .endpoints
                .iter()
                .map(|e| Slot {
                    state: e.state,
                    connection: e.connection.clone(),
                    handle: e.handle.clone(),
                    error: e.error.clone(),
                })
                .collect(),
            header: self.config.request_hash_header.clone(),
            connecting,
            random: self.random.clone(),
        };
        helper.update_picker(state, Arc::new(picker));
    }

    fn rebuild_ring(&mut self) {
        let keys: Vec<(String, u32)> = self
            .endpoints
            .iter()
            .map(|e| (e.key.clone(), e.weight))
            .collect();
        self.ring = Arc::new(ring::Ring::new(ring::build(
            &keys,
            self.config.min_ring_size,
            self.config.max_ring_size,
        )));
    }
}

/// An endpoint's weight (`weight` metadata, at least 1) and hash key
/// (`hash_key` metadata, else its first address).
fn weight_and_key(endpoint: &waypost_resolver::Endpoint) -> (u32, String) {
    let metadata = endpoint.metadata.as_ref();
    let weight = metadata
        .and_then(|m| m.get("weight"))
        .and_then(serde_json::Value::as_u64)
        .map_or(1, |w| w.clamp(1, u64::from(u32::MAX)) as u32);
    let key = metadata
        .and_then(|m| m.get("hash_key"))
        .and_then(serde_json::Value::as_str)
        .filter(|k| !k.is_empty())
        .map_or_else(|| endpoint.addresses[0].to_string(), str::to_owned);
    (weight, key)
}

impl Policy for RingHash {
    fn resolver_update(
        &mut self,
        state: &ResolverState,
        config: &serde_json::Value,
        helper: &mut dyn Helper,
    ) {
        // Validated before it got here; a bad one keeps the last.
        if let Ok(parsed) = config::parse(config) {
            self.config = parsed;
        }
        // One entry per address list; repeats add their weight (A42).
        let mut wanted: Vec<(Vec<Address>, u32, String)> = Vec::new();
        for endpoint in state.endpoints.iter().filter(|e| !e.addresses.is_empty()) {
            let (weight, key) = weight_and_key(endpoint);
            match wanted.iter_mut().find(|(a, _, _)| *a == endpoint.addresses) {
                Some(existing) => existing.1 = existing.1.saturating_add(weight),
                None => wanted.push((endpoint.addresses.clone(), weight, key)),
            }
        }
        let mut old: HashMap<Vec<Address>, Endpoint> = self
            .endpoints
            .drain(..)
            .map(|e| (e.addresses.clone(), e))
            .collect();
        for (addresses, weight, key) in wanted {
            let endpoint = match old.remove(&addresses) {
                Some(mut kept) => {
                    kept.weight = weight;
                    kept.key = key;
                    kept
                }
                None => {
                    // IDLE until a pick (or recovery) asks for it.
                    let handle = helper.new_subchannel(&addresses);
                    Endpoint {
                        addresses,
                        key,
                        weight,
                        handle,
                        state: ConnectivityState::Idle,
                        failed: false,
                        connection: None,
                        error: None,
                    }
                }
            };
            self.endpoints.push(endpoint);
        }
        for gone in old.into_values() {
            helper.remove_subchannel(gone.handle.id());
        }
        self.by_id = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.handle.id(), i))
            .collect();
        if self.endpoints.is_empty() {
            self.ring = Arc::default();
            helper.update_picker(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(
                    "ring_hash: the resolver produced no addresses".into(),
                )),
            );
            return;
        }
        self.rebuild_ring();
        self.publish(helper);
    }

    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        if self.endpoints.is_empty() {
            super::fail_resolution(error, helper);
        }
    }

    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) {
        let Some(&index) = self.by_id.get(&id) else {
            return;
        };
        let endpoint = &mut self.endpoints[index];
        endpoint.connection = state.connection.clone();
        if state.last_error.is_some() {
            endpoint.error = state.last_error.clone();
        }
        endpoint.state = match state.connectivity {
            ConnectivityState::Ready => {
                endpoint.failed = false;
                ConnectivityState::Ready
            }
            ConnectivityState::TransientFailure => {
                endpoint.failed = true;
                ConnectivityState::TransientFailure
            }
            ConnectivityState::Idle if endpoint.failed => {
                // Sticky failure: retry after the backoff just served.
                endpoint.handle.connect();
                ConnectivityState::TransientFailure
            }
            ConnectivityState::Connecting if endpoint.failed => ConnectivityState::TransientFailure,
            other => other,
        };
        self.publish(helper);
    }
}

#[cfg(test)]
mod tests;
