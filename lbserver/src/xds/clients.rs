//! Who is connected over ADS and how it is going: each stream's node id,
//! the services it subscribed to, the version of each type it last ACKed
//! and its last NACK (the data gRPC's CSDS reports from the client side),
//! and per-type counters for `/metrics`. A record lives as long as its
//! stream ([`ClientGuard`]).
//!
//! ```
//! use waypost_lbserver::xds::clients::XdsClients;
//!
//! let clients = std::sync::Arc::new(XdsClients::default());
//! let guard = clients.open();
//! guard.update(|record| record.node_id = "orders-7".into());
//! assert_eq!(clients.snapshot()[0].node_id, "orders-7");
//! drop(guard);
//! assert!(clients.snapshot().is_empty());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::ResourceType;
use super::encode::VersionInfo;
use super::stream::Nack;

/// One connected client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRecord {
    /// Its node id (empty if it sent none).
    pub node_id: String,
    /// Its `user_agent_name`.
    pub user_agent: String,
    /// Services it subscribed to (any type), sorted, at most
    /// [`MAX_SERVICES_PER_RECORD`].
    pub services: Vec<String>,
    /// The version of each type it last ACKed, in [`ResourceType::ALL`]'s
    /// order (`None`: no ACK yet).
    pub acked: [Option<VersionInfo>; 4],
    /// Its last NACK, and of which type.
    pub last_nack: Option<Box<(ResourceType, Nack)>>,
}

impl ClientRecord {
    /// The version of `ty` it last ACKed (`None`: no ACK yet).
    pub fn acked(&self, ty: ResourceType) -> Option<VersionInfo> {
        self.acked[ty.index()]
    }

    /// Whether it subscribed to `service`.
    pub fn subscribes(&self, service: &str) -> bool {
        self.services
            .binary_search_by(|s| s.as_str().cmp(service))
            .is_ok()
    }
}

/// How many service names a record keeps.
pub const MAX_SERVICES_PER_RECORD: usize = 64;

/// Per-type counters.
#[derive(Debug, Default)]
pub struct TypeCounters {
    /// Responses sent.
    pub responses: AtomicU64,
    /// ACKs received.
    pub acks: AtomicU64,
    /// NACKs received.
    pub nacks: AtomicU64,
}

/// Every ADS stream open now, and counters since start.
#[derive(Debug, Default)]
pub struct XdsClients {
    next_id: AtomicU64,
    /// Each stream's record, locked by its stream alone except when read.
    open: Mutex<BTreeMap<u64, Arc<Mutex<ClientRecord>>>>,
    counters: [TypeCounters; 4],
    /// Streams closed for a protocol error.
    pub rejected: AtomicU64,
}

impl XdsClients {
    /// Records a new stream; its record goes when the guard drops.
    pub fn open(self: &Arc<Self>) -> ClientGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(Mutex::new(ClientRecord::default()));
        self.open.lock().insert(id, record.clone());
        ClientGuard {
            clients: self.clone(),
            id,
            record,
        }
    }

    /// Every open stream's record (in the order they opened).
    pub fn snapshot(&self) -> Vec<ClientRecord> {
        self.open
            .lock()
            .values()
            .map(|r| r.lock().clone())
            .collect()
    }

    /// The records of streams subscribed to `service`, at most `limit`, and
    /// how many there are in all.
    pub fn of_service(&self, service: &str, limit: usize) -> (Vec<ClientRecord>, usize) {
        let open = self.open.lock();
        let mut total = 0;
        let mut records = Vec::new();
        for record in open.values() {
            let record = record.lock();
            if !record.subscribes(service) {
                continue;
            }
            total += 1;
            if records.len() < limit {
                records.push(record.clone());
            }
        }
        (records, total)
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.open.lock().len()
    }

    /// The counters of `ty`.
    pub fn counters(&self, ty: ResourceType) -> &TypeCounters {
        &self.counters[ty.index()]
    }
}

/// Keeps a stream's record; removes it when dropped.
#[derive(Debug)]
pub struct ClientGuard {
    clients: Arc<XdsClients>,
    id: u64,
    record: Arc<Mutex<ClientRecord>>,
}

impl ClientGuard {
    /// Changes the record.
    pub fn update(&self, change: impl FnOnce(&mut ClientRecord)) {
        change(&mut self.record.lock());
    }

    /// The counters of `ty`.
    pub fn counters(&self, ty: ResourceType) -> &TypeCounters {
        self.clients.counters(ty)
    }

    /// The registry of clients.
    pub fn clients(&self) -> &XdsClients {
        &self.clients
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.open.lock().remove(&self.id);
    }
}
