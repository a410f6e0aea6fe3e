//! [`Channel`]: a client channel from a target URI, usable by any
//! tonic-generated client.
//!
//! ```no_run
//! use waypost_balancer::Channel;
//! use waypost_proto::movies::v1::{MovieId, movies_service_client::MoviesServiceClient};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Channel::builder("dns:///movies.internal:50051")
//!     .default_service_config(serde_json::json!({"loadBalancingConfig": [{"round_robin": {}}]}))
//!     .build()?;
//! let mut client = MoviesServiceClient::new(channel);
//! let movie = client.get_movie(MovieId { mid: 1 }).await?;
//! # Ok(()) }
//! ```

mod body;
mod call;
mod controller;
mod limits;
mod retry;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use waypost_resolver::backoff::BackoffConfig;
use waypost_resolver::{ResolveError, ResolverRegistry, Target};

pub use self::body::ChannelBody;
pub use self::call::{ResponseFuture, WaitForReady, parse_grpc_timeout};
pub use self::retry::MAX_REPLAY_BYTES;
use crate::connectivity::ConnectivityState;
use crate::picker::{ClosedPicker, Picker, QueuePicker};
use crate::policy::PolicyRegistry;
use crate::service_config::ServiceConfig;
use crate::subchannel::{ConnectOptions, KeepaliveConfig, SubchannelCounters};

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The target could not be resolved (malformed, or no resolver).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The default service config is invalid.
    #[error(transparent)]
    ServiceConfig(#[from] crate::service_config::ServiceConfigError),
    /// The TLS material cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The picker in force, numbered so waiting calls notice a newer one.
pub(crate) struct PickerState {
    pub(crate) picker: Arc<dyn Picker>,
    pub(crate) generation: u64,
}

/// Call and pick counters of one channel.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Calls sent to a connection.
    pub picks: AtomicU64,
    /// Times a call had to wait for a new picker.
    pub queued: AtomicU64,
    /// Calls re-picked because their connection closed before they were sent.
    pub transparent_retries: AtomicU64,
    /// Calls sent again under a service config retry policy.
    pub retries: AtomicU64,
}

/// A snapshot of a channel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Calls sent to a connection.
    pub picks: u64,
    /// Times a call waited for a new picker.
    pub queued: u64,
    /// Calls re-picked because their connection closed before they were sent.
    pub transparent_retries: u64,
    /// Calls sent again under a service config retry policy.
    pub retries: u64,
    /// Connection attempts.
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// READY connections that closed.
    pub disconnects: u64,
    /// GOAWAY "too_many_pings" received (each doubles that subchannel's
    /// keepalive interval).
    pub too_many_pings: u64,
    /// The longest keepalive interval in use after such doublings, in ms
    /// (0 if none happened).
    pub keepalive_interval_ms: u64,
    /// Times changed TLS files were loaded ([`ClientTlsConfig::from_files`](crate::tls::ClientTlsConfig::from_files)).
    pub tls_reloads: u64,
    /// Times changed TLS files could not be used (the last good material
    /// was kept).
    pub tls_reload_failures: u64,
    /// Subchannels now IDLE.
    pub subchannels_idle: u64,
    /// Subchannels now CONNECTING.
    pub subchannels_connecting: u64,
    /// Subchannels now READY.
    pub subchannels_ready: u64,
    /// Subchannels now in TRANSIENT_FAILURE.
    pub subchannels_transient_failure: u64,
}

impl ChannelStats {
    /// Writes the stats as metric families `waypost_channel_…`, each
    /// series labelled `channel="<name>"`.
    fn encode(&self, channel: &str, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let counters = [
            (
                "waypost_channel_picks",
                "Calls sent to a connection.",
                self.picks,
            ),
            (
                "waypost_channel_queued",
                "Times a call waited for a new picker.",
                self.queued,
            ),
            (
                "waypost_channel_transparent_retries",
                "Calls re-picked because their connection closed before they were sent.",
                self.transparent_retries,
            ),
            (
                "waypost_channel_retries",
                "Calls sent again under a retry policy.",
                self.retries,
            ),
            (
                "waypost_channel_connects",
                "Connection attempts.",
                self.connects,
            ),
            (
                "waypost_channel_connect_failures",
                "Failed connection attempts.",
                self.connect_failures,
            ),
            (
                "waypost_channel_disconnects",
                "READY connections that closed.",
                self.disconnects,
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric.encode_family(&[("channel", channel)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "waypost_channel_subchannels",
            "Subchannels by connectivity state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [
            ("IDLE", self.subchannels_idle),
            ("CONNECTING", self.subchannels_connecting),
            ("READY", self.subchannels_ready),
            ("TRANSIENT_FAILURE", self.subchannels_transient_failure),
        ] {
            ConstGauge::new(value as i64)
                .encode(metric.encode_family(&[("channel", channel), ("state", state)])?)?;
        }
        Ok(())
    }
}

/// A channel's [`ChannelStats`] in a prometheus-client registry, read at
/// each scrape while the channel lives.
#[derive(Debug)]
struct StatsCollector {
    name: String,
    shared: std::sync::Weak<Shared>,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        match self.shared.upgrade() {
            Some(shared) => stats_of(&shared).encode(&self.name, &mut encoder),
            None => Ok(()),
        }
    }
}

/// State shared by a channel's handles, its controller and its calls.
pub(crate) struct Shared {
    pub(crate) picker: ArcSwap<PickerState>,
    pub(crate) generation: watch::Sender<u64>,
    pub(crate) state: watch::Sender<ConnectivityState>,
    pub(crate) config: ArcSwap<ServiceConfig>,
    pub(crate) authority: http::uri::Authority,
    pub(crate) counters: ChannelCounters,
    pub(crate) subchannel_counters: Arc<SubchannelCounters>,
    pub(crate) tls_stats: Option<Arc<crate::tls::TlsStats>>,
    /// The channel's own call credentials.
    pub(crate) credentials: Option<Arc<dyn crate::credentials::CallCredentials>>,
    /// Whether connections are TLS (credentials that need it may be sent).
    pub(crate) secure: bool,
    /// The TLS settings, for channels policies open (grpclb's balancers).
    pub(crate) tls: Option<crate::tls::ClientTlsConfig>,
    /// Where calls record their metrics, if anywhere.
    pub(crate) metrics: Option<Arc<crate::metrics::ChannelMetrics>>,
}

impl Shared {
    pub(crate) fn publish(&self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let generation = self.picker.load().generation + 1;
        self.picker
            .store(Arc::new(PickerState { picker, generation }));
        self.generation.send_replace(generation);
        self.state
            .send_if_modified(|s| std::mem::replace(s, state) != state);
    }
}

/// Stops the controller when the last [`Channel`] clone is dropped, and
/// fails every call still waiting, wait-for-ready ones included (they hold
/// the shared state, not a `Channel`, so they see the closed picker).
struct ControllerGuard {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Drop for ControllerGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.shared
            .publish(ConnectivityState::Shutdown, Arc::new(ClosedPicker));
    }
}

/// A load-balanced gRPC client channel; see the module docs. Cheap to
/// clone; every clone shares the same subchannels. Dropping the last clone
/// stops the resolver and closes every connection.
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
    _guard: Arc<ControllerGuard>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("authority", &self.shared.authority)
            .field("state", &self.state())
            .finish()
    }
}

impl Channel {
    /// Starts building a channel to `target` (`dns:///host:port`,
    /// `etcd:///service`, `ipv4:…`, or any registered scheme).
    pub fn builder(target: impl Into<String>) -> ChannelBuilder {
        #[cfg(feature = "xds")]
        crate::xds::register_default();
        ChannelBuilder {
            target: target.into(),
            resolvers: ResolverRegistry::new(),
            policies: PolicyRegistry::new(),
            default_service_config: None,
            connect: ConnectOptions::default(),
            authority: None,
            tls: None,
            credentials: None,
            metrics: None,
        }
    }

    /// The channel's connectivity state.
    pub fn state(&self) -> ConnectivityState {
        *self.shared.state.borrow()
    }

    /// Waits until the state differs from `from` and returns the new state.
    pub async fn wait_for_state_change(&self, from: ConnectivityState) -> ConnectivityState {
        let mut rx = self.shared.state.subscribe();
        match rx.wait_for(|s| *s != from).await {
            Ok(state) => *state,
            Err(_) => ConnectivityState::Shutdown,
        }
    }

    /// What the current picker decides for a call to `path` right now,
    /// without sending anything: [`Pick::Ready`](crate::picker::Pick::Ready)
    /// with the connection, the header the call must carry (grpclb's
    /// `lb-token`) and the tracker to tell how it went; or queue, fail, or
    /// drop. This is the whole per-call balancing cost: one snapshot load
    /// and one pick. Consumers that send calls of their own (`waypost::rpc`
    /// data calls) use it.
    pub fn pick(&self, path: &str) -> crate::picker::Pick {
        self.pick_with(&crate::picker::PickInfo::path(path))
    }

    /// [`Channel::pick`] for a call with request headers (which a policy
    /// such as `ring_hash` may pick by).
    pub fn pick_with(&self, call: &crate::picker::PickInfo<'_>) -> crate::picker::Pick {
        self.shared.picker.load().picker.pick(call)
    }

    /// The number of the picker in force; it grows with every picker a
    /// policy publishes (see [`Channel::wait_for_picker_change`]).
    pub fn picker_generation(&self) -> u64 {
        self.shared.picker.load().generation
    }

    /// Waits until a picker newer than generation `from` is in force and
    /// returns its number: when a [`Channel::pick`] queued, the moment to
    /// pick again (the state may not change — a grpclb list does not).
    pub async fn wait_for_picker_change(&self, from: u64) -> u64 {
        let mut rx = self.shared.generation.subscribe();
        match rx.wait_for(|g| *g != from).await {
            Ok(generation) => *generation,
            // The sender lives in `shared`, which this channel holds.
            Err(_) => from,
        }
    }

    /// Its counters.
    pub fn stats(&self) -> ChannelStats {
        stats_of(&self.shared)
    }

    /// Adds the channel's [`ChannelStats`] to `registry` as
    /// `waypost_channel_…` families labelled `channel="<name>"`, read at
    /// each scrape while the channel lives. (gRPC's own client metrics are
    /// [`ChannelBuilder::metrics`].)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let channel = waypost_balancer::Channel::builder("ipv4:127.0.0.1:1").build().unwrap();
    /// let mut registry = prometheus_client::registry::Registry::default();
    /// channel.register_stats(&mut registry, "orders");
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains("waypost_channel_picks_total{channel=\"orders\"} 0"));
    /// # }
    /// ```
    pub fn register_stats(&self, registry: &mut prometheus_client::registry::Registry, name: &str) {
        registry.register_collector(Box::new(StatsCollector {
            name: name.to_owned(),
            shared: Arc::downgrade(&self.shared),
        }));
    }
}

fn stats_of(shared: &Shared) -> ChannelStats {
    let c = &shared.counters;
    let s = &shared.subchannel_counters;
    ChannelStats {
        picks: c.picks.load(Ordering::Relaxed),
        queued: c.queued.load(Ordering::Relaxed),
        transparent_retries: c.transparent_retries.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
        connects: s.connects.load(Ordering::Relaxed),
        connect_failures: s.connect_failures.load(Ordering::Relaxed),
        disconnects: s.disconnects.load(Ordering::Relaxed),
        too_many_pings: s.too_many_pings.load(Ordering::Relaxed),
        keepalive_interval_ms: s.keepalive_interval_ms.load(Ordering::Relaxed),
        tls_reloads: shared
            .tls_stats
            .as_ref()
            .map_or(0, |t| t.reloads.load(Ordering::Relaxed)),
        tls_reload_failures: shared
            .tls_stats
            .as_ref()
            .map_or(0, |t| t.reload_failures.load(Ordering::Relaxed)),
        subchannels_idle: gauge(&s.states[0]),
        subchannels_connecting: gauge(&s.states[1]),
        subchannels_ready: gauge(&s.states[2]),
        subchannels_transient_failure: gauge(&s.states[3]),
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<ChannelBody>;
    type Error = tower::BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Calls queue inside `call` until a picker can place them.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        call::start(self.shared.clone(), request)
    }
}

fn gauge(value: &std::sync::atomic::AtomicI64) -> u64 {
    value.load(Ordering::Relaxed).max(0) as u64
}

/// Builds a [`Channel`].
#[derive(Debug)]
pub struct ChannelBuilder {
    target: String,
    resolvers: ResolverRegistry,
    policies: PolicyRegistry,
    default_service_config: Option<serde_json::Value>,
    connect: ConnectOptions,
    authority: Option<String>,
    tls: Option<crate::tls::ClientTlsConfig>,
    credentials: Option<Arc<dyn crate::credentials::CallCredentials>>,
    metrics: Option<crate::metrics::ClientMetrics>,
}

impl ChannelBuilder {
    /// Records gRPC's client metrics (A66 per call and attempt, A94 per
    /// subchannel) for this channel's calls, labelled with its target —
    /// see [`crate::metrics`]. One [`ClientMetrics`](crate::metrics::ClientMetrics)
    /// serves any number of channels.
    pub fn metrics(mut self, metrics: crate::metrics::ClientMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adds `credentials`' metadata to every attempt of every call (see
    /// [`crate::credentials`]).
    pub fn call_credentials(
        mut self,
        credentials: Arc<dyn crate::credentials::CallCredentials>,
    ) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Speaks TLS to every backend (see [`crate::tls`]): verified for the
    /// channel's authority host unless the config names another, ALPN
    /// `h2`. Takes the place of a [`ChannelBuilder::dialer`].
    pub fn tls(mut self, config: crate::tls::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Resolver builders for this channel (consulted before the global ones).
    pub fn resolvers(mut self, registry: ResolverRegistry) -> Self {
        self.resolvers = registry;
        self
    }

    /// Policy builders for this channel (consulted before the global ones).
    pub fn policies(mut self, registry: PolicyRegistry) -> Self {
        self.policies = registry;
        self
    }

    /// The service config used when the resolver supplies none.
    pub fn default_service_config(mut self, config: serde_json::Value) -> Self {
        self.default_service_config = Some(config);
        self
    }

    /// HTTP/2 keepalive PINGs.
    pub fn keepalive(mut self, keepalive: KeepaliveConfig) -> Self {
        self.connect.keepalive = keepalive;
        self
    }

    /// Connection backoff (default gRPC's: 1 s × 1.6 ± 20 %, max 120 s).
    pub fn connect_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.connect.backoff = backoff;
        self
    }

    /// The least time a connection attempt may take (default 20 s).
    pub fn min_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect.min_connect_timeout = timeout;
        self
    }

    /// How subchannels open their byte streams (default: plain TCP or unix).
    pub fn dialer(mut self, dialer: std::sync::Arc<dyn crate::Dialer>) -> Self {
        self.connect.dialer = Some(dialer);
        self
    }

    /// The `:authority` of calls (default: the target's endpoint).
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Starts resolving and connecting. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Channel, ChannelError> {
        let default_config = match &self.default_service_config {
            Some(json) => Some(ServiceConfig::parse(json, &self.policies)?),
            None => None,
        };
        let authority = self
            .authority
            .clone()
            .or_else(|| {
                Target::parse(&self.target)
                    .ok()
                    .map(|t| t.endpoint().to_owned())
            })
            .and_then(|a| http::uri::Authority::try_from(a.as_str()).ok())
            .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
        let mut connect = self.connect;
        let mut tls_stats = None;
        if let Some(tls) = &self.tls {
            let host = authority.host();
            let dialer = crate::tls::TlsDialer::new(tls, host)?;
            tls_stats = Some(dialer.stats());
            connect.dialer = Some(std::sync::Arc::new(dialer));
        }
        let resolution = self.resolvers.resolve(&self.target)?;
        let subchannel_counters: Arc<SubchannelCounters> = Arc::default();
        let metrics = self
            .metrics
            .as_ref()
            .map(|m| m.for_channel(&self.target, &subchannel_counters));
        let shared = Arc::new(Shared {
            picker: ArcSwap::from_pointee(PickerState {
                picker: Arc::new(QueuePicker),
                generation: 0,
            }),
            generation: watch::Sender::new(0),
            state: watch::Sender::new(ConnectivityState::Idle),
            config: ArcSwap::from_pointee(default_config.clone().unwrap_or_default()),
            authority,
            counters: ChannelCounters::default(),
            subchannel_counters,
            metrics,
            tls_stats,
            secure: self.tls.is_some(),
            tls: self.tls.clone(),
            credentials: self.credentials,
        });
        let (controller, receivers) = controller::Controller::new(
            shared.clone(),
            resolution,
            self.policies,
            self.default_service_config,
            connect,
        );
        let task = tokio::spawn(controller.run(receivers));
        Ok(Channel {
            shared: shared.clone(),
            _guard: Arc::new(ControllerGuard { task, shared }),
        })
    }
}
