//! The `etcd` resolver and endpoint registration, compatible with grpc-go's
//! etcd naming package.
//!
//! `etcd:///orders` resolves the endpoints registered under the key prefix
//! `orders/` through the client given to [`EtcdResolverBuilder::new`];
//! `etcd://127.0.0.1:2379,127.0.0.1:22379/orders` names the etcd endpoints
//! itself (the global registry serves that form). The resolver lists the
//! prefix, then watches it from the next revision. After a failure it
//! reconnects with backoff, keeping the last good endpoints meanwhile, and
//! resumes the watch from the last revision it saw; only if that history
//! was compacted does it list again. A value that does not parse is skipped, logged,
//! counted and reported — it never removes a good endpoint.
//!
//! [`Registration`] is the other side: it puts `<service>/<addr>` under a
//! lease and keeps the lease alive.

mod registrar;
mod value;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};

pub use self::registrar::{
    MAX_TTL, MIN_TTL, RegisterError, Registration, RegistrationOptions, RegistrationStatus,
};
pub use self::value::{MAX_VALUE_BYTES, ValueOp, encode_value, parse_value};
use crate::ResolveError;
use crate::backoff::{Backoff, BackoffConfig};
use crate::publish::Publisher;
use crate::registry::ResolverBuilder;
use crate::state::{Endpoint, ResolverState};
use crate::target::{Target, TargetError};

/// How long one list (GET) may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to etcd at `endpoints` (`host:port` or URLs) with keepalive
/// pings, so a dead etcd is noticed on idle watches too.
pub async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let urls: Vec<String> = endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    Client::connect(urls, Some(options)).await
}

/// Counters of one builder's resolvers.
#[derive(Debug, Default)]
pub struct EtcdStats {
    skipped_values: AtomicU64,
    lists: AtomicU64,
}

impl EtcdStats {
    /// Values that did not parse and were skipped.
    pub fn skipped_values(&self) -> u64 {
        self.skipped_values.load(Ordering::Relaxed)
    }

    /// Full listings of a prefix (the first, and each after a watch loss or
    /// compaction).
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }
}

/// Builds `etcd` resolvers.
#[derive(Clone)]
pub struct EtcdResolverBuilder {
    client: Option<Client>,
    backoff: BackoffConfig,
    stats: Arc<EtcdStats>,
}

impl std::fmt::Debug for EtcdResolverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdResolverBuilder")
            .field("has_client", &self.client.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl EtcdResolverBuilder {
    /// Resolves `etcd:///service` through `client`.
    pub fn new(client: Client) -> Self {
        EtcdResolverBuilder {
            client: Some(client),
            backoff: BackoffConfig::default(),
            stats: Arc::default(),
        }
    }

    /// Serves only `etcd://endpoints/service` (the global registry's).
    pub(crate) fn from_authority() -> Self {
        EtcdResolverBuilder {
            client: None,
            backoff: BackoffConfig::default(),
            stats: Arc::default(),
        }
    }

    /// Sets the reconnect backoff.
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// The counters shared by every resolver this builder made.
    pub fn stats(&self) -> Arc<EtcdStats> {
        self.stats.clone()
    }
}

enum ClientSource {
    /// A caller's client (boxed: an etcd `Client` is several KiB).
    Shared(Box<Client>),
    Endpoints(Vec<String>),
}

impl ResolverBuilder for EtcdResolverBuilder {
    fn scheme(&self) -> &str {
        "etcd"
    }

    fn build(&self, target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
        let service = target.endpoint().trim_end_matches('/');
        if service.is_empty() {
            return Err(TargetError::MissingEndpoint(target.as_str().to_owned()).into());
        }
        let source = match (target.authority(), &self.client) {
            (Some(list), _) => {
                ClientSource::Endpoints(list.split(',').map(str::to_owned).collect())
            }
            (None, Some(client)) => ClientSource::Shared(Box::new(client.clone())),
            (None, None) => {
                return Err(ResolveError::Unsupported {
                    scheme: "etcd".into(),
                    reason: format!(
                        "{target} names no etcd endpoints: write etcd://HOST:PORT[,HOST:PORT]/{service}, \
                         or register EtcdResolverBuilder::new(client)"
                    ),
                });
            }
        };
        let watcher = Watcher {
            source,
            client: None,
            prefix: format!("{service}/"),
            stats: self.stats.clone(),
            backoff: Backoff::new(self.backoff, crate::backoff::seeded_rng()),
            endpoints: BTreeMap::new(),
            revision: None,
        };
        tokio::spawn(watcher.run(publisher));
        Ok(())
    }
}

/// Why a watch session ended without an error.
enum SessionEnd {
    /// The watch revision was compacted away: list again at once.
    Compacted,
}

struct Watcher {
    source: ClientSource,
    client: Option<Client>,
    prefix: String,
    stats: Arc<EtcdStats>,
    backoff: Backoff<rand::rngs::SmallRng>,
    /// The endpoints by key, as of `revision`.
    endpoints: BTreeMap<String, Endpoint>,
    /// The store revision `endpoints` reflects; `None` until the first list
    /// and after a compaction, when only a new list can catch up.
    revision: Option<i64>,
}

fn etcd_error(context: &str, e: impl std::fmt::Display) -> ResolveError {
    ResolveError::Etcd {
        message: format!("{context}: {e}"),
    }
}

impl Watcher {
    async fn run(mut self, publisher: Publisher) {
        loop {
            let result = tokio::select! {
                _ = publisher.closed() => return,
                result = self.session(&publisher) => result,
            };
            match result {
                Ok(SessionEnd::Compacted) => {
                    tracing::info!(prefix = %self.prefix, "etcd watch revision compacted; listing again");
                    self.revision = None;
                }
                Err(error) => {
                    tracing::warn!(prefix = %self.prefix, %error, "etcd resolver; keeping the last good endpoints");
                    publisher.report_error(error);
                    // A shared client reconnects by itself; our own is rebuilt.
                    if matches!(self.source, ClientSource::Endpoints(_)) {
                        self.client = None;
                    }
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        _ = publisher.closed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn client(&mut self) -> Result<Client, ResolveError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = match &self.source {
            ClientSource::Shared(client) => (**client).clone(),
            ClientSource::Endpoints(endpoints) => connect(endpoints)
                .await
                .map_err(|e| etcd_error("connect", e))?,
        };
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Lists the prefix (unless a revision to resume from is known), then
    /// follows the watch until it ends. Resuming from the last revision
    /// after a watch loss replays what changed meanwhile without a full
    /// list; if that history was compacted, etcd cancels the watch and the
    /// next session lists.
    async fn session(&mut self, publisher: &Publisher) -> Result<SessionEnd, ResolveError> {
        let mut client = self.client().await?;
        let revision = match self.revision {
            Some(revision) => revision,
            None => self.list(&mut client, publisher).await?,
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(self.prefix.as_str(), Some(options))
            .await
            .map_err(|e| etcd_error("watch", e))?;
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(etcd_error("watch", "stream ended")),
                Err(e) => return Err(etcd_error("watch", e)),
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return Ok(SessionEnd::Compacted);
                }
                return Err(etcd_error("watch canceled", response.cancel_reason()));
            }
            if response.created() {
                // The watch is established: the connection works again.
                self.backoff.reset();
            }
            let mut changed = false;
            let mut skipped = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                self.revision = Some(self.revision.unwrap_or(0).max(kv.mod_revision()));
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Delete => changed |= self.endpoints.remove(&key).is_some(),
                    EventType::Put => match parse_value(kv.value()) {
                        Ok(ValueOp::Add(endpoint)) => {
                            changed |= self.endpoints.get(&key) != Some(&endpoint);
                            self.endpoints.insert(key, endpoint);
                        }
                        Ok(ValueOp::Delete) => changed |= self.endpoints.remove(&key).is_some(),
                        Err(reason) => skipped.push(ResolveError::BadEtcdValue { key, reason }),
                    },
                }
            }
            if changed || !skipped.is_empty() {
                self.publish(publisher, skipped);
            }
        }
    }

    /// Lists the prefix, replaces the endpoints, publishes them and returns
    /// the revision listed at.
    async fn list(
        &mut self,
        client: &mut Client,
        publisher: &Publisher,
    ) -> Result<i64, ResolveError> {
        let list = tokio::time::timeout(
            LIST_TIMEOUT,
            client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| etcd_error("list", format!("no answer within {LIST_TIMEOUT:?}")))?
        .map_err(|e| etcd_error("list", e))?;
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        let revision = list.header().map(|h| h.revision()).unwrap_or(0);
        self.endpoints.clear();
        let mut skipped = Vec::new();
        for kv in list.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match parse_value(kv.value()) {
                Ok(ValueOp::Add(endpoint)) => {
                    self.endpoints.insert(key, endpoint);
                }
                Ok(ValueOp::Delete) => {}
                Err(reason) => skipped.push(ResolveError::BadEtcdValue { key, reason }),
            }
        }
        self.revision = Some(revision);
        self.publish(publisher, skipped);
        self.backoff.reset();
        Ok(revision)
    }

    /// Publishes the endpoints and, in the same update, the first value
    /// that was skipped (all of them are counted and logged).
    fn publish(&self, publisher: &Publisher, skipped: Vec<ResolveError>) {
        for error in &skipped {
            self.stats.skipped_values.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "etcd resolver skipped a value");
        }
        publisher.publish(
            ResolverState::from_endpoints(self.endpoints.values().cloned()),
            skipped.into_iter().next(),
        );
    }
}
