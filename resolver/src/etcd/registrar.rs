//! Registering an endpoint in etcd, the way grpc-go's etcd naming package
//! expects: key `<service>/<addr>`, value `{"Op":0,"Addr":…,"Metadata":…}`,
//! bound to a lease the registrant keeps alive.
//!
//! If the lease is lost (etcd restarted for longer than the TTL, or a
//! partition let it expire) the registrar registers again under a new lease,
//! with backoff. [`Registration::shutdown`] revokes the lease, which deletes
//! the key; dropping a [`Registration`] without it stops the keep-alive, and
//! the key disappears when the lease expires, as when the process dies.

use std::time::Duration;

use etcd_client::{Client, PutOptions, WatchOptions};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::value::encode_value;
use crate::backoff::{Backoff, BackoffConfig};

/// The shortest lease etcd grants.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// The longest lease etcd grants (its `MaxLeaseTTL`, 9·10⁹ s).
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// What to register.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistrationOptions {
    /// The service name: the key prefix.
    pub service: String,
    /// The address clients should dial (`ip:port` or `host:port`).
    pub addr: String,
    /// Metadata for the value's `Metadata` field.
    pub metadata: Option<Value>,
    /// The lease TTL (at least 2 s; default 10 s).
    pub ttl: Duration,
    /// Backoff between failed attempts to register again.
    pub backoff: BackoffConfig,
}

impl RegistrationOptions {
    /// Registers `addr` under `service` with the defaults.
    pub fn new(service: impl Into<String>, addr: impl Into<String>) -> Self {
        RegistrationOptions {
            service: service.into(),
            addr: addr.into(),
            metadata: None,
            ttl: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
        }
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the lease TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the backoff between failed re-registrations.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// The key: `<service>/<addr>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.service, self.addr)
    }
}

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The options are unusable.
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// How a registration is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The lease the key is bound to now (0 while not registered).
    pub lease_id: i64,
    /// How many times the key has been put (1 after the first).
    pub registrations: u64,
    /// The most recent failure, cleared by the next registration.
    pub last_error: Option<String>,
}

/// A live registration; see the module docs.
pub struct Registration {
    key: String,
    addr: String,
    client: Client,
    metadata: std::sync::Arc<parking_lot::Mutex<Option<Value>>>,
    status: watch::Receiver<RegistrationStatus>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Registration {
    /// Registers once (failing if etcd refuses), then keeps the lease alive
    /// in the background.
    pub async fn register(
        client: Client,
        options: RegistrationOptions,
    ) -> Result<Registration, RegisterError> {
        if options.service.is_empty() || options.service.contains('/') {
            return Err(RegisterError::Invalid(format!(
                "service name {:?} must be non-empty and contain no '/'",
                options.service
            )));
        }
        match crate::target::parse_host_port(&options.addr, 0) {
            Ok((_, port)) if port != 0 => {}
            Ok(_) => {
                return Err(RegisterError::Invalid(format!(
                    "address {} needs a port (host:port)",
                    crate::Quoted(&options.addr)
                )));
            }
            Err(e) => {
                return Err(RegisterError::Invalid(format!(
                    "address {} is not host:port: {e}",
                    crate::Quoted(&options.addr)
                )));
            }
        }
        if options.ttl < MIN_TTL || options.ttl > MAX_TTL {
            return Err(RegisterError::Invalid(format!(
                "TTL {} s is outside etcd's {} to {} s",
                options.ttl.as_secs(),
                MIN_TTL.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        let metadata = std::sync::Arc::new(parking_lot::Mutex::new(options.metadata.clone()));
        let mut keeper = Keeper {
            client: client.clone(),
            metadata: metadata.clone(),
            options,
            lease_id: 0,
            put_revision: 0,
        };
        keeper.put().await?;
        let (tx, status) = watch::channel(RegistrationStatus {
            lease_id: keeper.lease_id,
            registrations: 1,
            last_error: None,
        });
        let key = keeper.options.key();
        let addr = keeper.options.addr.clone();
        let task = tokio::spawn(keeper.run(tx));
        Ok(Registration {
            key,
            addr,
            client,
            metadata,
            status,
            task: Some(task),
        })
    }

    /// The registered key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Replaces the registered metadata (e.g. the `load` a backend reports
    /// to `waypost serve`'s weighted lists), under the current lease; kept
    /// across re-registrations.
    pub async fn update_metadata(&self, metadata: Option<Value>) -> Result<(), RegisterError> {
        *self.metadata.lock() = metadata.clone();
        let lease_id = self.status.borrow().lease_id;
        let value = encode_value(&self.addr, metadata.as_ref());
        let options = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        self.client
            .clone()
            .put(self.key.as_str(), value, options)
            .await?;
        Ok(())
    }

    /// The registration's status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Stops keeping the lease alive and removes the key (by revoking the
    /// lease, and deleting the key should that fail).
    pub async fn shutdown(mut self) -> Result<(), RegisterError> {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let lease_id = self.status.borrow().lease_id;
        let mut client = self.client.clone();
        if lease_id != 0 && client.lease_revoke(lease_id).await.is_ok() {
            return Ok(());
        }
        client.delete(self.key.as_str(), None).await?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Keeper {
    client: Client,
    metadata: std::sync::Arc<parking_lot::Mutex<Option<Value>>>,
    options: RegistrationOptions,
    lease_id: i64,
    /// The etcd revision of our latest put of the key.
    put_revision: i64,
}

impl Keeper {
    /// Grants a lease and puts the key under it.
    async fn put(&mut self) -> Result<(), etcd_client::Error> {
        // In range (checked at registration), so it fits an i64.
        let ttl = i64::try_from(self.options.ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = self.client.lease_grant(ttl, None).await?;
        self.lease_id = lease.id();
        self.put_key().await
    }

    /// Puts the key under the current lease (again, if it was deleted).
    async fn put_key(&mut self) -> Result<(), etcd_client::Error> {
        let metadata = self.metadata.lock().clone();
        let value = encode_value(&self.options.addr, metadata.as_ref());
        let put = self
            .client
            .put(
                self.options.key(),
                value,
                Some(PutOptions::new().with_lease(self.lease_id)),
            )
            .await?;
        if let Some(header) = put.header() {
            self.put_revision = header.revision();
        }
        Ok(())
    }

    /// Keeps the lease alive until it is lost or the stream fails, and puts
    /// the key back if someone deletes it while the lease lives; returns why
    /// it stopped.
    async fn keep_alive(&mut self, status: &watch::Sender<RegistrationStatus>) -> String {
        let (mut keeper, mut stream) = match self.client.lease_keep_alive(self.lease_id).await {
            Ok(pair) => pair,
            Err(e) => return e.to_string(),
        };
        let key = self.options.key();
        // From just after our put, so a delete that came before this watch
        // started is seen too.
        let from = WatchOptions::new().with_start_revision(self.put_revision + 1);
        let mut changes = match self.client.watch(key.as_str(), Some(from)).await {
            Ok(stream) => stream,
            Err(e) => return format!("watching {key}: {e}"),
        };
        // At most a third of the TTL (so two renewals can be missed), at
        // least half a second, and never longer than a day.
        let interval = (self.options.ttl / 3)
            .clamp(Duration::from_millis(500), Duration::from_secs(24 * 3600));
        let mut next_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_renewal) => {
                    if let Err(e) = keeper.keep_alive().await {
                        return e.to_string();
                    }
                    let answer_within = self.options.ttl.min(Duration::from_secs(60));
                    match tokio::time::timeout(answer_within, stream.message()).await {
                        Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => return "lease expired".into(),
                        Ok(Ok(None)) => return "keep-alive stream ended".into(),
                        Ok(Err(e)) => return e.to_string(),
                        Err(_) => return "no keep-alive answer in time".into(),
                    }
                    next_renewal = tokio::time::Instant::now() + interval;
                }
                change = changes.message() => match change {
                    Ok(Some(response)) => {
                        let deleted = response
                            .events()
                            .iter()
                            .any(|e| e.event_type() == etcd_client::EventType::Delete);
                        if deleted {
                            tracing::warn!(%key, "registration key deleted while its lease lives; putting it back");
                            if let Err(e) = self.put_key().await {
                                return format!("restoring {key}: {e}");
                            }
                            status.send_modify(|s| s.registrations += 1);
                        }
                    }
                    Ok(None) => return "key watch ended".into(),
                    Err(e) => return format!("watching {key}: {e}"),
                },
            }
        }
    }

    async fn run(mut self, status: watch::Sender<RegistrationStatus>) {
        let mut backoff = Backoff::new(self.options.backoff, crate::backoff::seeded_rng());
        loop {
            let lost = self.keep_alive(&status).await;
            tracing::warn!(key = %self.options.key(), reason = %lost, "etcd registration lost; registering again");
            status.send_modify(|s| s.last_error = Some(lost));
            loop {
                tokio::time::sleep(backoff.next_delay()).await;
                match self.put().await {
                    Ok(()) => {
                        backoff.reset();
                        status.send_modify(|s| {
                            s.lease_id = self.lease_id;
                            s.registrations += 1;
                            s.last_error = None;
                        });
                        break;
                    }
                    Err(e) => status.send_modify(|s| s.last_error = Some(e.to_string())),
                }
            }
        }
    }
}
