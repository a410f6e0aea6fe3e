//! The metrics in a prometheus-client registry: families per label set,
//! and a collector for the subchannel counters read at scrape time.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{
    ChannelEntry, Ended, LATENCY_BUCKETS, Label, SIZE_BUCKETS, code_name, subchannel_totals,
};

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Started {
    grpc_method: Label,
    grpc_target: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Finished {
    grpc_method: Label,
    grpc_target: Label,
    grpc_status: &'static str,
}

type Histograms = Family<Finished, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS[1..].iter().copied())
}

fn sizes() -> Histogram {
    Histogram::new(SIZE_BUCKETS[1..].iter().copied())
}

/// A family labelled by `grpc_target` only.
type TargetLabel = [(&'static str, Label); 1];
type TargetCounters = Family<TargetLabel, Counter>;

/// The registered families.
#[derive(Debug)]
pub(super) struct Instruments {
    pick_first_succeeded: TargetCounters,
    pick_first_failed: TargetCounters,
    pick_first_disconnections: TargetCounters,
    wrr_rr_fallback: TargetCounters,
    wrr_not_yet_usable: TargetCounters,
    wrr_stale: TargetCounters,
    wrr_weights: Family<TargetLabel, Histogram, fn() -> Histogram>,
    attempt_started: Family<Started, Counter>,
    attempt_duration: Histograms,
    attempt_sent: Histograms,
    attempt_received: Histograms,
    call_duration: Histograms,
}

impl Instruments {
    pub(super) fn register(
        registry: &mut Registry,
        channels: Arc<Mutex<Vec<ChannelEntry>>>,
    ) -> Instruments {
        let instruments = Instruments {
            pick_first_succeeded: Family::default(),
            pick_first_failed: Family::default(),
            pick_first_disconnections: Family::default(),
            wrr_rr_fallback: Family::default(),
            wrr_not_yet_usable: Family::default(),
            wrr_stale: Family::default(),
            wrr_weights: Family::new_with_constructor(weights),
            attempt_started: Family::default(),
            attempt_duration: Family::new_with_constructor(latency),
            attempt_sent: Family::new_with_constructor(sizes),
            attempt_received: Family::new_with_constructor(sizes),
            call_duration: Family::new_with_constructor(latency),
        };
        // `register` ends each help text with a period.
        registry.register(
            "grpc_client_attempt_started",
            "The number of client call attempts started (grpc.client.attempt.started)",
            instruments.attempt_started.clone(),
        );
        registry.register_with_unit(
            "grpc_client_attempt_duration",
            "End-to-end time taken to complete a client call attempt (grpc.client.attempt.duration)",
            Unit::Seconds,
            instruments.attempt_duration.clone(),
        );
        registry.register_with_unit(
            "grpc_client_attempt_sent_total_compressed_message_size",
            "Compressed message bytes sent per client call attempt (grpc.client.attempt.sent_total_compressed_message_size)",
            Unit::Bytes,
            instruments.attempt_sent.clone(),
        );
        registry.register_with_unit(
            "grpc_client_attempt_rcvd_total_compressed_message_size",
            "Compressed message bytes received per call attempt (grpc.client.attempt.rcvd_total_compressed_message_size)",
            Unit::Bytes,
            instruments.attempt_received.clone(),
        );
        registry.register_with_unit(
            "grpc_client_call_duration",
            "Time taken by gRPC to complete an RPC from the application's perspective (grpc.client.call.duration)",
            Unit::Seconds,
            instruments.call_duration.clone(),
        );
        for (name, help, family) in [
            (
                "grpc_lb_pick_first_connection_attempts_succeeded",
                "Successful pick_first connection attempts (grpc.lb.pick_first.connection_attempts_succeeded)",
                &instruments.pick_first_succeeded,
            ),
            (
                "grpc_lb_pick_first_connection_attempts_failed",
                "Failed pick_first connection attempts (grpc.lb.pick_first.connection_attempts_failed)",
                &instruments.pick_first_failed,
            ),
            (
                "grpc_lb_pick_first_disconnections",
                "Times pick_first's selected connection was lost (grpc.lb.pick_first.disconnections)",
                &instruments.pick_first_disconnections,
            ),
            (
                "grpc_lb_wrr_rr_fallback",
                "weighted_round_robin scheduler updates that fell back to round robin (grpc.lb.wrr.rr_fallback)",
                &instruments.wrr_rr_fallback,
            ),
            (
                "grpc_lb_wrr_endpoint_weight_not_yet_usable",
                "Endpoints without a usable weight yet, per scheduler update (grpc.lb.wrr.endpoint_weight_not_yet_usable)",
                &instruments.wrr_not_yet_usable,
            ),
            (
                "grpc_lb_wrr_endpoint_weight_stale",
                "Endpoints whose weight expired, per scheduler update (grpc.lb.wrr.endpoint_weight_stale)",
                &instruments.wrr_stale,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "grpc_lb_wrr_endpoint_weights",
            "Endpoint weights at each scheduler update, 0 for unusable ones (grpc.lb.wrr.endpoint_weights)",
            instruments.wrr_weights.clone(),
        );
        registry.register_collector(Box::new(Subchannels { channels }));
        instruments
    }

    /// The policies' series for one target, resolved once.
    pub(super) fn lb_series(&self, target: &Label) -> LbSeries {
        let labels = [("grpc_target", target.clone())];
        LbSeries {
            pick_first_succeeded: self.pick_first_succeeded.get_or_create(&labels).clone(),
            pick_first_failed: self.pick_first_failed.get_or_create(&labels).clone(),
            pick_first_disconnections: self
                .pick_first_disconnections
                .get_or_create(&labels)
                .clone(),
            wrr_rr_fallback: self.wrr_rr_fallback.get_or_create(&labels).clone(),
            wrr_not_yet_usable: self.wrr_not_yet_usable.get_or_create(&labels).clone(),
            wrr_stale: self.wrr_stale.get_or_create(&labels).clone(),
            wrr_weights: self.wrr_weights.get_or_create(&labels).clone(),
        }
    }

    /// One method's series on one target, resolved once: its counter
    /// now, its histograms per status when first needed.
    pub(super) fn series(&self, method: &Label, target: &Label) -> MethodSeries {
        MethodSeries {
            attempt_started: self
                .attempt_started
                .get_or_create(&Started {
                    grpc_method: method.clone(),
                    grpc_target: target.clone(),
                })
                .clone(),
            families: Arc::new(Families {
                attempt_duration: self.attempt_duration.clone(),
                attempt_sent: self.attempt_sent.clone(),
                attempt_received: self.attempt_received.clone(),
                call_duration: self.call_duration.clone(),
            }),
            method: method.clone(),
            target: target.clone(),
            by_status: Default::default(),
        }
    }
}

/// A78's series for one target.
#[derive(Debug)]
pub(super) struct LbSeries {
    pick_first_succeeded: Counter,
    pick_first_failed: Counter,
    pick_first_disconnections: Counter,
    wrr_rr_fallback: Counter,
    wrr_not_yet_usable: Counter,
    wrr_stale: Counter,
    wrr_weights: Histogram,
}

impl LbSeries {
    pub(super) fn pick_first_attempt(&self, succeeded: bool) {
        if succeeded {
            self.pick_first_succeeded.inc();
        } else {
            self.pick_first_failed.inc();
        }
    }

    pub(super) fn pick_first_disconnection(&self) {
        self.pick_first_disconnections.inc();
    }

    pub(super) fn wrr_update(&self, update: &super::WrrUpdate<'_>) {
        if update.rr_fallback {
            self.wrr_rr_fallback.inc();
        }
        self.wrr_not_yet_usable.inc_by(update.not_yet_usable);
        self.wrr_stale.inc_by(update.stale);
        for weight in update.weights {
            self.wrr_weights.observe(*weight);
        }
    }
}

fn weights() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 4.0, 12,
    ))
}

/// The histogram families, shared by every method's series.
#[derive(Debug)]
struct Families {
    attempt_duration: Histograms,
    attempt_sent: Histograms,
    attempt_received: Histograms,
    call_duration: Histograms,
}

/// One status's histograms of one method and target.
#[derive(Debug)]
struct StatusSeries {
    attempt_duration: Histogram,
    attempt_sent: Histogram,
    attempt_received: Histogram,
    call_duration: Histogram,
}

/// One method's series on one target (the handles share the registry's
/// state; recording is atomic adds and a bucket search).
#[derive(Debug)]
pub(super) struct MethodSeries {
    attempt_started: Counter,
    families: Arc<Families>,
    method: Label,
    target: Label,
    /// Indexed by status code (0–16).
    by_status: super::ByStatus<StatusSeries>,
}

impl MethodSeries {
    pub(super) fn attempt_started(&self) {
        self.attempt_started.inc();
    }

    fn status(&self, code: tonic::Code) -> &StatusSeries {
        self.by_status.get_or_init(code, || {
            let labels = Finished {
                grpc_method: self.method.clone(),
                grpc_target: self.target.clone(),
                grpc_status: code_name(code),
            };
            let f = &self.families;
            StatusSeries {
                attempt_duration: f.attempt_duration.get_or_create(&labels).clone(),
                attempt_sent: f.attempt_sent.get_or_create(&labels).clone(),
                attempt_received: f.attempt_received.get_or_create(&labels).clone(),
                call_duration: f.call_duration.get_or_create(&labels).clone(),
            }
        })
    }

    pub(super) fn attempt_ended(&self, ended: &Ended<'_>, sent: u64, received: u64) {
        let series = self.status(ended.status);
        series.attempt_duration.observe(ended.seconds);
        series.attempt_sent.observe(sent as f64);
        series.attempt_received.observe(received as f64);
    }

    pub(super) fn call_ended(&self, ended: &Ended<'_>) {
        self.status(ended.status)
            .call_duration
            .observe(ended.seconds);
    }
}

/// Reads one figure of a target's subchannel totals.
type ReadTotal = fn(&super::SubchannelTotals) -> u64;

/// A94's subchannel metrics, read from the live channels at scrape time.
#[derive(Debug)]
struct Subchannels {
    channels: Arc<Mutex<Vec<ChannelEntry>>>,
}

impl Collector for Subchannels {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let totals = subchannel_totals(&self.channels);
        let counters: [(&str, &str, ReadTotal); 3] = [
            (
                "grpc_subchannel_connection_attempts_succeeded",
                "Connection attempts that succeeded (grpc.subchannel.connection_attempts_succeeded).",
                |t| t.succeeded,
            ),
            (
                "grpc_subchannel_connection_attempts_failed",
                "Connection attempts that failed (grpc.subchannel.connection_attempts_failed).",
                |t| t.failed,
            ),
            (
                "grpc_subchannel_disconnections",
                "Times a connection was closed after it was established (grpc.subchannel.disconnections).",
                |t| t.disconnections,
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (target, t) in &totals {
                ConstCounter::new(value(t))
                    .encode(metric.encode_family(&[("grpc_target", target.as_str())])?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "grpc_subchannel_open_connections",
            "Open connections (grpc.subchannel.open_connections).",
            None,
            MetricType::Gauge,
        )?;
        for (target, t) in &totals {
            ConstGauge::new(t.open)
                .encode(metric.encode_family(&[("grpc_target", target.as_str())])?)?;
        }
        Ok(())
    }
}
