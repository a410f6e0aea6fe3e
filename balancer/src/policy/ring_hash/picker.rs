//! The ring_hash picker (gRFC A42 as simplified by A61, and A76 for calls
//! without the hash header): an immutable ring plus every endpoint's state.

use std::sync::Arc;

use super::ring::{self, Ring};
use crate::connectivity::ConnectivityState;
use crate::picker::{Pick, PickInfo, Picker, Routed};
use crate::subchannel::{Connection, SubchannelHandle};

/// An endpoint as the picker sees it.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) state: ConnectivityState,
    pub(crate) connection: Option<Connection>,
    pub(crate) handle: SubchannelHandle,
    pub(crate) error: Option<Arc<str>>,
}

/// Where random hashes come from (a seeded source in tests).
pub type RandomHash = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Picks by the request's hash on the ring.
pub(crate) struct RingHashPicker {
    pub(crate) ring: Arc<Ring>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) header: Option<http::HeaderName>,
    /// Some endpoint is CONNECTING (a random-hash pick then asks for no
    /// other connection).
    pub(crate) connecting: bool,
    pub(crate) random: RandomHash,
}

impl RingHashPicker {
    /// The request's hash from its header (values joined by `,`), if the
    /// config names one and the call carries it.
    fn header_hash(&self, call: &PickInfo<'_>) -> Option<u64> {
        let name = self.header.as_ref()?;
        let mut values = call.headers.get_all(name).iter();
        let first = values.next()?;
        let Some(second) = values.next() else {
            // The usual case: one value, hashed in place.
            return Some(ring::hash(first.as_bytes()));
        };
        let mut joined = first.as_bytes().to_vec();
        for value in std::iter::once(second).chain(values) {
            joined.push(b',');
            joined.extend_from_slice(value.as_bytes());
        }
        Some(ring::hash(&joined))
    }

    fn failure(&self, first: usize) -> Pick {
        let slot = &self.slots[self.ring.entries()[first].endpoint];
        Pick::Unavailable(
            slot.error
                .clone()
                .unwrap_or_else(|| "ring_hash: every endpoint failed to connect".into()),
        )
    }
}

impl Picker for RingHashPicker {
    fn pick(&self, call: &PickInfo<'_>) -> Pick {
        if self.ring.entries().is_empty() {
            return Pick::Unavailable("ring_hash: no endpoints".into());
        }
        let (hash, random) = match self.header_hash(call) {
            Some(hash) => (hash, false),
            None => ((self.random)(), true),
        };
        let first = self.ring.find(hash);
        let ring = self.ring.entries();
        let len = ring.len();
        if !random {
            // The endpoint the key hashes to; past failed ones, the next.
            for i in 0..len {
                let slot = &self.slots[ring[(first + i) % len].endpoint];
                match slot.state {
                    ConnectivityState::Ready => {
                        if let Some(connection) = &slot.connection {
                            return Pick::Ready(Routed::to(connection.clone()));
                        }
                    }
                    ConnectivityState::Idle => {
                        slot.handle.connect();
                        return Pick::Queue;
                    }
                    ConnectivityState::Connecting => return Pick::Queue,
                    _ => {}
                }
            }
            return self.failure(first);
        }
        // No key: the first READY endpoint from a random place, waking at
        // most one IDLE one on the way (and none while one is connecting).
        let mut requested = self.connecting;
        for i in 0..len {
            let slot = &self.slots[ring[(first + i) % len].endpoint];
            match slot.state {
                ConnectivityState::Ready => {
                    if let Some(connection) = &slot.connection {
                        return Pick::Ready(Routed::to(connection.clone()));
                    }
                }
                ConnectivityState::Idle if !requested => {
                    slot.handle.connect();
                    requested = true;
                }
                _ => {}
            }
        }
        if requested {
            Pick::Queue
        } else {
            self.failure(first)
        }
    }
}
