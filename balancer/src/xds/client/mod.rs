//! The XdsClient: one ADS stream to a management server, shared by every
//! watcher, with a cache so a second watcher of a resource is answered at
//! once. [`ads`] is its protocol as a pure state machine; this module is
//! the task that drives it over a waypost [`Channel`](crate::Channel).
//!
//! The stream is reopened with backoff when it fails; the cache is kept
//! and every subscription re-requested. The task ends when the client and
//! every watch are dropped.
//!
//! ```no_run
//! use waypost_balancer::xds::bootstrap::Bootstrap;
//! use waypost_balancer::xds::client::XdsClient;
//! use waypost_balancer::xds::resources::cluster::{self, ClusterUpdate};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = XdsClient::shared(&Bootstrap::from_env()?)?;
//! let mut watch = client.watch(cluster::TYPE_URL, "orders");
//! let state = watch.changed().await;
//! if let Some(cluster) = state.value_as::<ClusterUpdate>() {
//!     println!("orders: {:?}", cluster.policy);
//! }
//! # Ok(()) }
//! ```

pub mod ads;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use waypost_resolver::backoff::{Backoff, BackoffConfig, seeded_rng};

use self::ads::{AdsState, Event, ResourceStatus, ResourceType, Value};
use crate::xds::bootstrap::{Bootstrap, XdsServer};

/// The resource types every XdsClient knows.
pub fn resource_types() -> Vec<&'static ResourceType> {
    vec![
        &crate::xds::resources::listener::LDS,
        &crate::xds::resources::route::RDS,
        &crate::xds::resources::cluster::CDS,
        &crate::xds::resources::endpoint::EDS,
    ]
}

/// What a watcher knows of one resource.
#[derive(Clone, Default)]
pub struct WatchState {
    /// The accepted value, if any (kept when a later update is refused).
    pub value: Option<Value>,
    /// Why the last update was refused, if it was.
    pub error: Option<String>,
    /// The server says the resource does not exist (or never sent it).
    pub does_not_exist: bool,
}

impl WatchState {
    /// The value as its resource type's update (`None` if no value or
    /// another type).
    pub fn value_as<T: 'static>(&self) -> Option<&T> {
        self.value.as_ref()?.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for WatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchState")
            .field("has_value", &self.value.is_some())
            .field("error", &self.error)
            .field("does_not_exist", &self.does_not_exist)
            .finish()
    }
}

type Key = (String, String);

enum Command {
    Subscribe(Key),
    Unsubscribe(Key),
}

/// What the client's handles and its task share.
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    watchers: Mutex<HashMap<Key, watch::Sender<WatchState>>>,
    statuses: Mutex<Vec<(String, String, ResourceStatus)>>,
    server_uri: String,
}

/// A handle on an XdsClient. Cheap to clone.
#[derive(Clone)]
pub struct XdsClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("server_uri", &self.shared.server_uri)
            .finish_non_exhaustive()
    }
}

/// Why an XdsClient could not start.
#[derive(Debug, thiserror::Error)]
pub enum XdsClientError {
    /// The channel to the management server could not be built.
    #[error("xDS management server {server_uri}: {message}")]
    Channel {
        /// The server.
        server_uri: String,
        /// Why.
        message: String,
    },
}

/// The process's clients, by management server.
static CLIENTS: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> = LazyLock::new(Mutex::default);

impl XdsClient {
    /// The process's client for the bootstrap's management server, started
    /// if there is none yet: every channel shares one ADS stream per
    /// server (grpc-go does; C-core opens one per target). Needs a tokio
    /// runtime.
    pub fn shared(bootstrap: &Bootstrap) -> Result<XdsClient, XdsClientError> {
        let key = format!("{:?}", bootstrap.server());
        let mut clients = CLIENTS.lock();
        if let Some(shared) = clients.get(&key).and_then(Weak::upgrade) {
            return Ok(XdsClient { shared });
        }
        let client = XdsClient::new(bootstrap)?;
        clients.retain(|_, weak| weak.strong_count() > 0);
        clients.insert(key, Arc::downgrade(&client.shared));
        Ok(client)
    }

    /// A client of its own for the bootstrap's management server. Needs a
    /// tokio runtime.
    pub fn new(bootstrap: &Bootstrap) -> Result<XdsClient, XdsClientError> {
        let server = bootstrap.server().clone();
        let mut builder = crate::Channel::builder(server.server_uri.clone());
        if let Some(tls) = server.channel_creds.client_tls() {
            builder = builder.tls(tls);
        }
        let channel = builder.build().map_err(|e| XdsClientError::Channel {
            server_uri: server.server_uri.clone(),
            message: e.to_string(),
        })?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            commands,
            watchers: Mutex::default(),
            statuses: Mutex::default(),
            server_uri: server.server_uri.clone(),
        });
        let ads = AdsState::new(
            envoy_node(bootstrap),
            &resource_types(),
            server.ignores_resource_deletion(),
        );
        tokio::spawn(run(channel, server, ads, Arc::downgrade(&shared), receiver));
        Ok(XdsClient { shared })
    }

    /// Watches the resource `name` of `type_url` (a type from
    /// [`resource_types`]): the cached state at once, then every change.
    pub fn watch(&self, type_url: &str, name: &str) -> ResourceWatch {
        let key = (type_url.to_owned(), name.to_owned());
        let receiver = {
            let mut watchers = self.shared.watchers.lock();
            watchers
                .entry(key.clone())
                .or_insert_with(|| watch::Sender::new(WatchState::default()))
                .subscribe()
        };
        let _ = self.shared.commands.send(Command::Subscribe(key.clone()));
        ResourceWatch {
            receiver,
            key,
            shared: self.shared.clone(),
        }
    }

    /// Every subscribed resource and where it stands: (type URL, name,
    /// status) — what CSDS reports.
    pub fn statuses(&self) -> Vec<(String, String, ResourceStatus)> {
        self.shared.statuses.lock().clone()
    }
}

/// One resource's state in [`client_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceReport {
    /// The management server.
    pub server_uri: String,
    /// The resource type's URL.
    pub type_url: String,
    /// The resource's name.
    pub name: String,
    /// Where it stands.
    pub status: ResourceStatus,
}

/// What every XdsClient of the process (those made by
/// [`XdsClient::shared`]) knows of every resource it was asked for:
/// requested, ACKed at a version, NACKed with the error, or does not exist
/// — the data gRPC's CSDS (gRFC A40) reports.
pub fn client_status() -> Vec<ResourceReport> {
    let clients: Vec<Arc<Shared>> = CLIENTS.lock().values().filter_map(Weak::upgrade).collect();
    let mut reports = Vec::new();
    for shared in clients {
        for (type_url, name, status) in shared.statuses.lock().iter() {
            reports.push(ResourceReport {
                server_uri: shared.server_uri.clone(),
                type_url: type_url.clone(),
                name: name.clone(),
                status: status.clone(),
            });
        }
    }
    reports
}

/// One watcher of one resource; unsubscribes when dropped.
pub struct ResourceWatch {
    receiver: watch::Receiver<WatchState>,
    key: Key,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ResourceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceWatch")
            .field("type_url", &self.key.0)
            .field("name", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl ResourceWatch {
    /// The state now.
    pub fn current(&self) -> WatchState {
        self.receiver.borrow().clone()
    }

    /// Waits for the next change, and returns the state then.
    pub async fn changed(&mut self) -> WatchState {
        // The sender lives while the watch does (the task removes it only
        // after the last watcher unsubscribed); were it ever gone, there
        // would be no next change: wait forever rather than spin.
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.receiver.borrow_and_update().clone()
    }

    /// Waits until `condition` holds for the state, and returns it.
    pub async fn wait_for(&mut self, condition: impl FnMut(&WatchState) -> bool) -> WatchState {
        let found = self.receiver.wait_for(condition).await.map(|s| s.clone());
        found.unwrap_or_else(|_| self.current())
    }
}

impl Drop for ResourceWatch {
    fn drop(&mut self) {
        let _ = self
            .shared
            .commands
            .send(Command::Unsubscribe(self.key.clone()));
    }
}

/// The node this client sends: the bootstrap's, with gRPC's client fields.
fn envoy_node(bootstrap: &Bootstrap) -> EnvoyNode {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let node = &bootstrap.node;
    let locality = &node.locality;
    EnvoyNode {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        metadata: (!node.metadata.is_empty()).then(|| json_struct(&node.metadata)),
        locality: (!locality.region.is_empty()
            || !locality.zone.is_empty()
            || !locality.sub_zone.is_empty())
        .then(|| Locality {
            region: locality.region.clone(),
            zone: locality.zone.clone(),
            sub_zone: locality.sub_zone.clone(),
        }),
        user_agent_name: "waypost".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        // What gRPC clients send (XDS.md).
        client_features: vec![
            "envoy.lb.does_not_support_overprovisioning".into(),
            "xds.config.resource-in-sotw".into(),
        ],
        ..Default::default()
    }
}

/// A JSON object as a protobuf `Struct`.
fn json_struct(
    map: &serde_json::Map<String, serde_json::Value>,
) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
    fn value(v: &serde_json::Value) -> PbValue {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(ListValue {
                values: items.iter().map(value).collect(),
            }),
            serde_json::Value::Object(map) => Kind::StructValue(json_struct(map)),
        };
        PbValue { kind: Some(kind) }
    }
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    }
}

/// Applies events to the watchers and refreshes the statuses.
fn publish(shared: &Shared, ads: &AdsState, events: Vec<Event>) {
    let watchers = shared.watchers.lock();
    let sender = |type_url: String, name: String| watchers.get(&(type_url, name));
    for event in events {
        match event {
            Event::Changed {
                type_url,
                name,
                value,
            } => {
                if let Some(sender) = sender(type_url, name) {
                    sender.send_modify(|s| {
                        s.value = Some(value);
                        s.error = None;
                        s.does_not_exist = false;
                    });
                }
            }
            Event::DoesNotExist { type_url, name } => {
                if let Some(sender) = sender(type_url, name) {
                    sender.send_modify(|s| {
                        s.value = None;
                        s.does_not_exist = true;
                    });
                }
            }
            Event::Refused {
                type_url,
                name,
                error,
            } => {
                if let Some(sender) = sender(type_url, name) {
                    sender.send_modify(|s| s.error = Some(error));
                }
            }
        }
    }
    drop(watchers);
    *shared.statuses.lock() = ads.statuses();
}

/// Handles a watcher's command; a request to send, if any.
fn command(shared: &Shared, ads: &mut AdsState, command: Command) -> Option<DiscoveryRequest> {
    let now = tokio::time::Instant::now();
    match command {
        Command::Subscribe((type_url, name)) => {
            let (status, value, request) = ads.subscribe(&type_url, &name, now);
            if let Some(sender) = shared.watchers.lock().get(&(type_url.clone(), name)) {
                if status.is_none() {
                    // A type this client does not know: say so, once.
                    sender.send_modify(|s| {
                        s.error = Some(format!("unknown xDS resource type {type_url}"));
                    });
                    return None;
                }
                sender.send_if_modified(|s| {
                    let fresh = s.value.is_none() && value.is_some();
                    if fresh {
                        s.value = value;
                    }
                    let gone = status == Some(ResourceStatus::DoesNotExist);
                    let flipped = s.does_not_exist != gone;
                    s.does_not_exist = gone;
                    fresh || flipped
                });
            }
            *shared.statuses.lock() = ads.statuses();
            request
        }
        Command::Unsubscribe((type_url, name)) => {
            let request = ads.unsubscribe(&type_url, &name);
            // A watcher may have joined since this one left: the sender
            // goes only with its last receiver.
            let mut watchers = shared.watchers.lock();
            let key = (type_url, name);
            if watchers.get(&key).is_some_and(|s| s.receiver_count() == 0) {
                watchers.remove(&key);
            }
            drop(watchers);
            *shared.statuses.lock() = ads.statuses();
            request
        }
    }
}

/// The client's task: streams, reconnects, dispatches.
async fn run(
    channel: crate::Channel,
    server: XdsServer,
    mut ads: AdsState,
    shared: Weak<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Backoff::new(BackoffConfig::default(), seeded_rng());
    loop {
        let (requests, outgoing) = mpsc::unbounded_channel();
        for request in ads.stream_started(tokio::time::Instant::now()) {
            let _ = requests.send(request);
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
        let call = client.stream_aggregated_resources(
            tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing),
        );
        tokio::pin!(call);
        let mut responses: Option<
            tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
        > = None;
        let ended: Option<String> = loop {
            let deadline = ads.next_deadline();
            tokio::select! {
                next = commands.recv() => {
                    let Some(next) = next else { return };
                    let Some(shared) = shared.upgrade() else { return };
                    if let Some(request) = command(&shared, &mut ads, next) {
                        let _ = requests.send(request);
                    }
                }
                opened = &mut call, if responses.is_none() => match opened {
                    Ok(response) => responses = Some(response.into_inner()),
                    Err(status) => break Some(status.to_string()),
                },
                message = async { responses.as_mut().expect("guarded").message().await }, if responses.is_some() => {
                    match message {
                        Ok(Some(response)) => {
                            backoff.reset();
                            let (reply, events) = ads.response(response);
                            if let Some(error) = &reply.error_detail {
                                tracing::warn!(server = %server.server_uri, error = %error.message, "xDS: NACK");
                            }
                            let _ = requests.send(reply);
                            let Some(shared) = shared.upgrade() else { return };
                            publish(&shared, &ads, events);
                        }
                        Ok(None) => break Some("the server ended the stream".into()),
                        Err(status) => break Some(status.to_string()),
                    }
                }
                () = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let events = ads.expire(tokio::time::Instant::now());
                    let Some(shared) = shared.upgrade() else { return };
                    publish(&shared, &ads, events);
                }
            }
        };
        ads.stream_ended();
        if let Some(reason) = ended {
            tracing::info!(server = %server.server_uri, %reason, "xDS: ADS stream ended; reconnecting");
        }
        // Back off, still taking commands (they are sent on the next
        // stream's first requests).
        let pause = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                next = commands.recv() => {
                    let Some(next) = next else { return };
                    let Some(shared) = shared.upgrade() else { return };
                    let _ = command(&shared, &mut ads, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_knows_the_four_resource_types() {
        let urls: Vec<&str> = super::resource_types().iter().map(|t| t.type_url).collect();
        assert_eq!(
            urls,
            [
                crate::xds::resources::listener::TYPE_URL,
                crate::xds::resources::route::TYPE_URL,
                crate::xds::resources::cluster::TYPE_URL,
                crate::xds::resources::endpoint::TYPE_URL,
            ]
        );
    }
}
