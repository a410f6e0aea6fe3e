//! Client metrics by gRPC's own names (gRFC A66 per-call and per-attempt
//! metrics, A78 policy metrics — see [`PolicyMetrics`] — and A94
//! subchannel metrics), recorded by every channel built with
//! [`ChannelBuilder::metrics`](crate::ChannelBuilder::metrics) and exported
//! two ways: into a [prometheus-client] registry (names mapped as
//! OpenTelemetry's Prometheus exporter maps them: `.` → `_`, the unit as a
//! suffix, counters `_total`), and, with the `otel` feature, through an
//! OpenTelemetry [`MeterProvider`](opentelemetry::metrics::MeterProvider).
//!
//! | gRPC name | kind | labels | Prometheus name |
//! |---|---|---|---|
//! | `grpc.client.attempt.started` | counter | method, target | `grpc_client_attempt_started_total` |
//! | `grpc.client.attempt.duration` | histogram, s | method, target, status | `grpc_client_attempt_duration_seconds` |
//! | `grpc.client.attempt.sent_total_compressed_message_size` | histogram, By | method, target, status | `grpc_client_attempt_sent_total_compressed_message_size_bytes` |
//! | `grpc.client.attempt.rcvd_total_compressed_message_size` | histogram, By | method, target, status | `grpc_client_attempt_rcvd_total_compressed_message_size_bytes` |
//! | `grpc.client.call.duration` | histogram, s | method, target, status | `grpc_client_call_duration_seconds` |
//! | `grpc.subchannel.connection_attempts_succeeded` | counter | target | `grpc_subchannel_connection_attempts_succeeded_total` |
//! | `grpc.subchannel.connection_attempts_failed` | counter | target | `grpc_subchannel_connection_attempts_failed_total` |
//! | `grpc.subchannel.disconnections` | counter | target | `grpc_subchannel_disconnections_total` |
//! | `grpc.subchannel.open_connections` | up-down counter | target | `grpc_subchannel_open_connections` |
//!
//! Labels are `grpc.method` (`grpc_method`), `grpc.target`, `grpc.status`
//! (`OK`, `UNAVAILABLE`, …). `grpc.method` is the method's full name
//! (`movies.v1.MoviesService/GetMovie`) for the methods named with
//! [`ClientMetricsBuilder::methods`] — the generated ones, as gRPC
//! intends — and `other` for the rest, so no caller can grow the label
//! set; without such a list the first [`MAX_METHODS`] distinct methods get
//! their names and later ones `other`. Histogram buckets are A66's.
//!
//! ```
//! use waypost_balancer::metrics::ClientMetrics;
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = ClientMetrics::builder()
//!     .methods(["movies.v1.MoviesService/GetMovie"])
//!     .prometheus(&mut registry)
//!     .build();
//! # let _ = metrics;
//! // Channel::builder("dns:///movies:50051").metrics(metrics.clone()).build()?;
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! // Families appear with their first series (the first call).
//! assert!(text.ends_with("# EOF\n"));
//! ```
//!
//! Recording costs nothing for a channel without metrics; with them, a
//! call costs a few label lookups and atomic adds (measured by
//! `waypost-bench rpc --metrics`, BENCHMARKS.md).
//!
//! [prometheus-client]: https://docs.rs/prometheus-client

mod framing;
#[cfg(feature = "otel")]
mod otel;
mod prometheus;
mod record;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

pub use framing::PayloadCounter;
#[cfg(feature = "otel")]
/// The OpenTelemetry API these metrics record through (the same version).
pub use opentelemetry;
/// The prometheus-client these metrics register into (the same version).
pub use prometheus_client;
pub(crate) use record::{
    AttemptRecord, CallRecord, CountingBody, GRPC_STATUS, status_in, status_of,
};

use crate::subchannel::SubchannelCounters;

/// Something per gRPC status code (0–16; anything above counts as 16),
/// made on first use: a method's series per `grpc.status`.
#[derive(Debug)]
pub(crate) struct ByStatus<T>([std::sync::OnceLock<T>; 17]);

impl<T> Default for ByStatus<T> {
    fn default() -> Self {
        ByStatus(std::array::from_fn(|_| std::sync::OnceLock::new()))
    }
}

impl<T> ByStatus<T> {
    /// The value for `code`, made by `make` the first time.
    pub(crate) fn get_or_init(&self, code: tonic::Code, make: impl FnOnce() -> T) -> &T {
        self.0[(code as usize).min(16)].get_or_init(make)
    }
}

/// How many distinct methods get their own label when no list was given.
pub const MAX_METHODS: usize = 256;

/// A label value shared without copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Label(Arc<str>);

impl Label {
    fn new(text: &str) -> Label {
        Label(Arc::from(text))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Metrics shared by every channel built with them (cheap to clone).
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    methods: Methods,
    prometheus: Option<prometheus::Instruments>,
    #[cfg(feature = "otel")]
    otel: Option<otel::Instruments>,
    /// Channels alive, for the subchannel metrics read at collection.
    channels: Arc<Mutex<Vec<ChannelEntry>>>,
}

/// One channel's subchannel counters, as the collectors see them.
#[derive(Debug, Clone)]
struct ChannelEntry {
    target: Label,
    counters: Weak<SubchannelCounters>,
}

/// A snapshot of one target's subchannel counters (A94), summed over
/// its channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SubchannelTotals {
    succeeded: u64,
    failed: u64,
    disconnections: u64,
    open: i64,
}

/// The live channels' subchannel totals per target (dead ones removed).
fn subchannel_totals(channels: &Mutex<Vec<ChannelEntry>>) -> Vec<(Label, SubchannelTotals)> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut channels = channels.lock();
    channels.retain(|c| c.counters.strong_count() > 0);
    let mut totals: Vec<(Label, SubchannelTotals)> = Vec::new();
    for entry in channels.iter() {
        let Some(c) = entry.counters.upgrade() else {
            continue;
        };
        let connects = c.connects.load(Relaxed);
        let failed = c.connect_failures.load(Relaxed);
        let index = match totals.iter().position(|(t, _)| *t == entry.target) {
            Some(i) => i,
            None => {
                totals.push((entry.target.clone(), SubchannelTotals::default()));
                totals.len() - 1
            }
        };
        let t = &mut totals[index].1;
        t.succeeded += connects.saturating_sub(failed);
        t.failed += failed;
        t.disconnections += c.disconnects.load(Relaxed);
        t.open += c.states[crate::subchannel::state_index(crate::ConnectivityState::Ready)]
            .load(Relaxed)
            .max(0);
    }
    totals
}

/// Which methods get their own `grpc.method` label.
#[derive(Debug)]
struct Methods {
    /// The named methods (without the leading `/`), if a list was given.
    named: Option<HashSet<Box<str>>>,
    /// Labels handed out (each at most once).
    labels: RwLock<HashMap<Box<str>, Label>>,
    other: Label,
}

impl Methods {
    fn label(&self, path: &str) -> Label {
        let name = path.strip_prefix('/').unwrap_or(path);
        if let Some(label) = self.labels.read().get(name) {
            return label.clone();
        }
        let well_formed = name.split_once('/').is_some_and(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        });
        let allowed = well_formed
            && match &self.named {
                Some(named) => named.contains(name),
                None => true,
            };
        if !allowed {
            return self.other.clone();
        }
        let mut labels = self.labels.write();
        if labels.len() >= MAX_METHODS && !labels.contains_key(name) {
            return self.other.clone();
        }
        labels
            .entry(name.into())
            .or_insert_with(|| Label::new(name))
            .clone()
    }
}

/// Builds [`ClientMetrics`].
#[derive(Debug, Default)]
pub struct ClientMetricsBuilder {
    named: Option<HashSet<Box<str>>>,
    prometheus: Option<prometheus::Instruments>,
    channels: Arc<Mutex<Vec<ChannelEntry>>>,
    #[cfg(feature = "otel")]
    otel: Option<otel::Instruments>,
}

impl ClientMetricsBuilder {
    /// The methods recorded by name (`package.Service/Method`, with or
    /// without the leading `/`): the generated ones. Every other method is
    /// recorded as `other`.
    pub fn methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let named = self.named.get_or_insert_with(HashSet::new);
        for m in methods {
            let m = m.as_ref();
            named.insert(m.strip_prefix('/').unwrap_or(m).into());
        }
        self
    }

    /// Registers the metrics in `registry` (serve it with
    /// `prometheus_client::encoding::text::encode`).
    pub fn prometheus(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.prometheus = Some(prometheus::Instruments::register(
            registry,
            self.channels.clone(),
        ));
        self
    }

    /// Records through OpenTelemetry instruments of `provider`'s meter
    /// `waypost` (feature `otel`).
    ///
    /// With the OpenTelemetry SDK's own `SdkMeterProvider`, each method's
    /// instruments are bound to their attributes once (the SDK's bound
    /// instruments), so a call records without looking its attributes up;
    /// any other provider gets every measurement with its attributes.
    #[cfg(feature = "otel")]
    pub fn meter_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::metrics::MeterProvider + 'static,
    {
        let sdk = (provider as &dyn std::any::Any)
            .downcast_ref::<opentelemetry_sdk::metrics::SdkMeterProvider>()
            .is_some();
        self.otel = Some(otel::Instruments::new(provider, self.channels.clone(), sdk));
        self
    }

    /// The metrics, to give to any number of channels.
    pub fn build(self) -> ClientMetrics {
        ClientMetrics {
            inner: Arc::new(Inner {
                methods: Methods {
                    named: self.named,
                    labels: RwLock::default(),
                    other: Label::new("other"),
                },
                prometheus: self.prometheus,
                #[cfg(feature = "otel")]
                otel: self.otel,
                channels: self.channels,
            }),
        }
    }
}

impl ClientMetrics {
    /// Starts building metrics.
    pub fn builder() -> ClientMetricsBuilder {
        ClientMetricsBuilder::default()
    }

    /// What a channel to `target` records with.
    pub(crate) fn for_channel(
        &self,
        target: &str,
        subchannels: &Arc<SubchannelCounters>,
    ) -> Arc<ChannelMetrics> {
        let target = Label::new(target);
        self.inner.channels.lock().push(ChannelEntry {
            target: target.clone(),
            counters: Arc::downgrade(subchannels),
        });
        Arc::new(ChannelMetrics {
            lb: self.inner.prometheus.as_ref().map(|p| p.lb_series(&target)),
            metrics: self.clone(),
            target,
            methods: RwLock::default(),
            id: NEXT_CHANNEL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }
}

/// One channel's recorder: the shared metrics, its target label, and the
/// series of each method it has called, resolved once.
#[derive(Debug)]
pub(crate) struct ChannelMetrics {
    metrics: ClientMetrics,
    target: Label,
    /// By call path; at most [`MAX_CACHED_PATHS`] (later paths are
    /// resolved on each call instead, so garbage paths cannot grow it).
    /// (foldhash: the keys are the application's own call paths, and a
    /// call looks its path up here, so the hash is on every call's path.)
    methods: RwLock<HashMap<Box<str>, Arc<MethodHandle>, foldhash::fast::RandomState>>,
    /// The policies' Prometheus series for this target (A78).
    lb: Option<prometheus::LbSeries>,
    /// Names this recorder in each thread's [`LAST_METHOD`] (never reused,
    /// unlike its address).
    id: u64,
}

static NEXT_CHANNEL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The method a thread looked up last, by channel and path.
struct LastMethod {
    channel: u64,
    /// Rewritten in place on a miss (no allocation once long enough).
    path: String,
    handle: Arc<MethodHandle>,
}

thread_local! {
    /// Each thread's last method lookup: a call and its attempt look the
    /// same path up one after the other on one thread, and most callers
    /// call few methods, so this answers most lookups without touching the
    /// shared map (its lock and a hash of the path).
    static LAST_METHOD: std::cell::RefCell<Option<LastMethod>> =
        const { std::cell::RefCell::new(None) };
}

/// How many call paths a channel keeps resolved.
const MAX_CACHED_PATHS: usize = 2 * MAX_METHODS;

/// A method as a channel records it: its label and, for Prometheus, its
/// series (so a call costs atomic adds, not map lookups).
#[derive(Debug)]
pub(crate) struct MethodHandle {
    /// Its `grpc.method` (read by OpenTelemetry's recording; Prometheus's
    /// series already carry it).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    label: Label,
    prometheus: Option<prometheus::MethodSeries>,
    /// Its OpenTelemetry instruments bound to its attributes (SDK
    /// providers only).
    #[cfg(feature = "otel")]
    otel: Option<otel::MethodSeries>,
}

impl ChannelMetrics {
    /// The method of a call to `path`.
    pub(crate) fn method(&self, path: &str) -> Arc<MethodHandle> {
        let last = LAST_METHOD.with_borrow(|last| {
            last.as_ref()
                .filter(|last| last.channel == self.id && last.path == path)
                .map(|last| last.handle.clone())
        });
        if let Some(handle) = last {
            return handle;
        }
        let handle = self.resolve(path);
        LAST_METHOD.with_borrow_mut(|last| match last {
            Some(last) => {
                last.channel = self.id;
                last.path.clear();
                last.path.push_str(path);
                last.handle = handle.clone();
            }
            None => {
                *last = Some(LastMethod {
                    channel: self.id,
                    path: path.to_owned(),
                    handle: handle.clone(),
                });
            }
        });
        handle
    }

    /// The method of `path` from the channel's map, added to it if new.
    fn resolve(&self, path: &str) -> Arc<MethodHandle> {
        if let Some(handle) = self.methods.read().get(path) {
            return handle.clone();
        }
        let inner = &self.metrics.inner;
        let label = inner.methods.label(path);
        let handle = Arc::new(MethodHandle {
            prometheus: inner
                .prometheus
                .as_ref()
                .map(|p| p.series(&label, &self.target)),
            #[cfg(feature = "otel")]
            otel: inner
                .otel
                .as_ref()
                .and_then(|o| o.series(&label, &self.target)),
            label,
        });
        let mut methods = self.methods.write();
        if methods.len() < MAX_CACHED_PATHS {
            methods.insert(path.into(), handle.clone());
        }
        handle
    }

    /// Records an attempt's start.
    pub(crate) fn attempt_started(&self, method: &MethodHandle) {
        if let Some(series) = &method.prometheus {
            series.attempt_started();
        }
        #[cfg(feature = "otel")]
        if let Some(series) = &method.otel {
            series.attempt_started();
        } else if let Some(o) = &self.metrics.inner.otel {
            o.attempt_started(&method.label, &self.target);
        }
    }

    /// Records an attempt's end.
    pub(crate) fn attempt_ended(&self, ended: &Ended<'_>, sent: u64, received: u64) {
        if let Some(series) = &ended.method.prometheus {
            series.attempt_ended(ended, sent, received);
        }
        #[cfg(feature = "otel")]
        if let Some(series) = &ended.method.otel {
            series.attempt_ended(ended, sent, received);
        } else if let Some(o) = &self.metrics.inner.otel {
            o.attempt_ended(ended, &self.target, sent, received);
        }
    }

    /// Records a call's end.
    pub(crate) fn call_ended(&self, ended: &Ended<'_>) {
        if let Some(series) = &ended.method.prometheus {
            series.call_ended(ended);
        }
        #[cfg(feature = "otel")]
        if let Some(series) = &ended.method.otel {
            series.call_ended(ended);
        } else if let Some(o) = &self.metrics.inner.otel {
            o.call_ended(ended, &self.target);
        }
    }
}

/// Where a policy records gRFC A78's metrics, labelled with its channel's
/// target; a policy gets it from [`Helper::metrics`](crate::policy::Helper::metrics).
///
/// | gRPC name | kind | Prometheus name |
/// |---|---|---|
/// | `grpc.lb.pick_first.connection_attempts_succeeded` | counter | `grpc_lb_pick_first_connection_attempts_succeeded_total` |
/// | `grpc.lb.pick_first.connection_attempts_failed` | counter | `grpc_lb_pick_first_connection_attempts_failed_total` |
/// | `grpc.lb.pick_first.disconnections` | counter | `grpc_lb_pick_first_disconnections_total` |
/// | `grpc.lb.wrr.rr_fallback` | counter | `grpc_lb_wrr_rr_fallback_total` |
/// | `grpc.lb.wrr.endpoint_weight_not_yet_usable` | counter | `grpc_lb_wrr_endpoint_weight_not_yet_usable_total` |
/// | `grpc.lb.wrr.endpoint_weight_stale` | counter | `grpc_lb_wrr_endpoint_weight_stale_total` |
/// | `grpc.lb.wrr.endpoint_weights` | histogram | `grpc_lb_wrr_endpoint_weights` |
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    channel: Arc<ChannelMetrics>,
}

/// One scheduler update of `weighted_round_robin`, as A78 counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrrUpdate<'a> {
    /// Fewer than two endpoints had usable weights: plain round robin.
    pub rr_fallback: bool,
    /// Endpoints without a usable weight yet (no report, or in blackout).
    pub not_yet_usable: u64,
    /// Endpoints whose last report is older than the expiration period.
    pub stale: u64,
    /// Every endpoint's weight (0 for the unusable ones).
    pub weights: &'a [f64],
}

impl PolicyMetrics {
    pub(crate) fn new(channel: Arc<ChannelMetrics>) -> PolicyMetrics {
        PolicyMetrics { channel }
    }

    /// A `pick_first` connection attempt ended.
    pub fn pick_first_attempt(&self, succeeded: bool) {
        if let Some(lb) = &self.channel.lb {
            lb.pick_first_attempt(succeeded);
        }
        #[cfg(feature = "otel")]
        if let Some(o) = &self.channel.metrics.inner.otel {
            o.pick_first_attempt(succeeded, &self.channel.target);
        }
    }

    /// `pick_first`'s READY connection was lost.
    pub fn pick_first_disconnection(&self) {
        if let Some(lb) = &self.channel.lb {
            lb.pick_first_disconnection();
        }
        #[cfg(feature = "otel")]
        if let Some(o) = &self.channel.metrics.inner.otel {
            o.pick_first_disconnection(&self.channel.target);
        }
    }

    /// `weighted_round_robin` built a scheduler.
    pub fn wrr_update(&self, update: &WrrUpdate<'_>) {
        if let Some(lb) = &self.channel.lb {
            lb.wrr_update(update);
        }
        #[cfg(feature = "otel")]
        if let Some(o) = &self.channel.metrics.inner.otel {
            o.wrr_update(update, &self.channel.target);
        }
    }
}

/// How an attempt or a call ended.
#[derive(Debug)]
pub(crate) struct Ended<'a> {
    pub(crate) method: &'a MethodHandle,
    pub(crate) status: tonic::Code,
    pub(crate) seconds: f64,
}

/// A66's latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// A66's size buckets, in bytes.
const SIZE_BUCKETS: [f64; 14] = [
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// A status code's name as gRPC writes it (`OK`, `UNAVAILABLE`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(named: Option<&[&str]>) -> Methods {
        Methods {
            named: named.map(|n| n.iter().map(|m| Box::from(*m)).collect()),
            labels: RwLock::default(),
            other: Label::new("other"),
        }
    }

    #[test]
    fn each_channel_gets_its_own_method_handles_on_one_thread() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = ClientMetrics::builder().prometheus(&mut registry).build();
        let counters = Arc::new(SubchannelCounters::default());
        let a = metrics.for_channel("a", &counters);
        let b = metrics.for_channel("b", &counters);
        let a_m = a.method("/s/M");
        let b_m = b.method("/s/M");
        assert!(
            !Arc::ptr_eq(&a_m, &b_m),
            "the thread's last lookup is per channel"
        );
        assert!(Arc::ptr_eq(&a_m, &a.method("/s/M")));
        let a_n = a.method("/s/N");
        assert!(!Arc::ptr_eq(&a_m, &a_n), "and per path");
        assert!(
            Arc::ptr_eq(&a_m, &a.method("/s/M")),
            "found again in the map"
        );
        // A channel made after another was dropped never sees its handles.
        drop((a, a_m, a_n));
        let c = metrics.for_channel("c", &counters);
        let c_m = c.method("/s/N");
        assert!(!Arc::ptr_eq(&c_m, &b_m));
    }

    #[test]
    fn only_named_methods_get_their_names() {
        let m = methods(Some(&["movies.v1.Movies/Get"]));
        assert_eq!(
            m.label("/movies.v1.Movies/Get").as_str(),
            "movies.v1.Movies/Get"
        );
        assert_eq!(m.label("/movies.v1.Movies/Other").as_str(), "other");
        assert_eq!(m.label("/not a method").as_str(), "other");
    }

    #[test]
    fn without_a_list_the_label_set_stays_bounded() {
        let m = methods(None);
        for i in 0..MAX_METHODS + 10 {
            m.label(&format!("/svc/M{i}"));
        }
        assert_eq!(m.labels.read().len(), MAX_METHODS);
        assert_eq!(m.label("/svc/M0").as_str(), "svc/M0");
        assert_eq!(
            m.label(&format!("/svc/M{}", MAX_METHODS + 5)).as_str(),
            "other"
        );
        assert_eq!(m.label("/a/b/c").as_str(), "other");
        assert_eq!(m.label("//x").as_str(), "other");
    }
}
