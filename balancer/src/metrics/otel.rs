//! The metrics as OpenTelemetry instruments of a user's meter provider,
//! by gRPC's own names and units.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, MeterProvider, ObservableCounter,
    ObservableUpDownCounter,
};
use parking_lot::Mutex;

use super::{
    ChannelEntry, Ended, LATENCY_BUCKETS, Label, SIZE_BUCKETS, code_name, subchannel_totals,
};

fn value(label: &Label) -> opentelemetry::Value {
    opentelemetry::Value::from(label.0.clone())
}

/// The instruments (the observable ones are kept so their callbacks stay
/// registered).
#[derive(Debug)]
pub(super) struct Instruments {
    attempt_started: Counter<u64>,
    attempt_duration: Histogram<f64>,
    attempt_sent: Histogram<u64>,
    attempt_received: Histogram<u64>,
    call_duration: Histogram<f64>,
    _counters: Vec<ObservableCounter<u64>>,
    _open: ObservableUpDownCounter<i64>,
    pick_first_succeeded: Counter<u64>,
    pick_first_failed: Counter<u64>,
    pick_first_disconnections: Counter<u64>,
    wrr_rr_fallback: Counter<u64>,
    wrr_not_yet_usable: Counter<u64>,
    wrr_stale: Counter<u64>,
    wrr_weights: Histogram<f64>,
    /// Whether the provider is the SDK's, whose bound instruments record
    /// what they are given (another provider's may drop it).
    bind: bool,
}

impl Instruments {
    pub(super) fn new(
        provider: &dyn MeterProvider,
        channels: Arc<Mutex<Vec<ChannelEntry>>>,
        bind: bool,
    ) -> Instruments {
        let meter = provider.meter("waypost");
        let sizes: Vec<f64> = SIZE_BUCKETS.to_vec();
        let latency: Vec<f64> = LATENCY_BUCKETS.to_vec();
        let counter = |name: &'static str,
                       description: &'static str,
                       read: fn(&super::SubchannelTotals) -> u64| {
            let channels = channels.clone();
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_unit("{attempt}")
                .with_callback(move |observer| {
                    for (target, totals) in subchannel_totals(&channels) {
                        observer.observe(
                            read(&totals),
                            &[KeyValue::new("grpc.target", value(&target))],
                        );
                    }
                })
                .build()
        };
        let counters = vec![
            counter(
                "grpc.subchannel.connection_attempts_succeeded",
                "Connection attempts that succeeded.",
                |t| t.succeeded,
            ),
            counter(
                "grpc.subchannel.connection_attempts_failed",
                "Connection attempts that failed.",
                |t| t.failed,
            ),
            counter(
                "grpc.subchannel.disconnections",
                "Times a connection was closed after it was established.",
                |t| t.disconnections,
            ),
        ];
        let open_channels = channels.clone();
        let open = meter
            .i64_observable_up_down_counter("grpc.subchannel.open_connections")
            .with_description("Open connections.")
            .with_unit("{connection}")
            .with_callback(move |observer| {
                for (target, totals) in subchannel_totals(&open_channels) {
                    observer.observe(totals.open, &[KeyValue::new("grpc.target", value(&target))]);
                }
            })
            .build();
        Instruments {
            attempt_started: meter
                .u64_counter("grpc.client.attempt.started")
                .with_description("The number of client call attempts started.")
                .with_unit("{attempt}")
                .build(),
            attempt_duration: meter
                .f64_histogram("grpc.client.attempt.duration")
                .with_description("End-to-end time taken to complete a client call attempt.")
                .with_unit("s")
                .with_boundaries(latency.clone())
                .build(),
            attempt_sent: meter
                .u64_histogram("grpc.client.attempt.sent_total_compressed_message_size")
                .with_description("Compressed message bytes sent per client call attempt.")
                .with_unit("By")
                .with_boundaries(sizes.clone())
                .build(),
            attempt_received: meter
                .u64_histogram("grpc.client.attempt.rcvd_total_compressed_message_size")
                .with_description("Compressed message bytes received per call attempt.")
                .with_unit("By")
                .with_boundaries(sizes)
                .build(),
            call_duration: meter
                .f64_histogram("grpc.client.call.duration")
                .with_description(
                    "Time taken by gRPC to complete an RPC from the application's perspective.",
                )
                .with_unit("s")
                .with_boundaries(latency)
                .build(),
            _counters: counters,
            _open: open,
            pick_first_succeeded: meter
                .u64_counter("grpc.lb.pick_first.connection_attempts_succeeded")
                .with_description("Successful pick_first connection attempts.")
                .with_unit("{attempt}")
                .build(),
            pick_first_failed: meter
                .u64_counter("grpc.lb.pick_first.connection_attempts_failed")
                .with_description("Failed pick_first connection attempts.")
                .with_unit("{attempt}")
                .build(),
            pick_first_disconnections: meter
                .u64_counter("grpc.lb.pick_first.disconnections")
                .with_description("Times pick_first's selected connection was lost.")
                .with_unit("{disconnection}")
                .build(),
            wrr_rr_fallback: meter
                .u64_counter("grpc.lb.wrr.rr_fallback")
                .with_description("Scheduler updates that fell back to round robin.")
                .with_unit("{update}")
                .build(),
            wrr_not_yet_usable: meter
                .u64_counter("grpc.lb.wrr.endpoint_weight_not_yet_usable")
                .with_description("Endpoints without a usable weight yet, per scheduler update.")
                .with_unit("{endpoint}")
                .build(),
            wrr_stale: meter
                .u64_counter("grpc.lb.wrr.endpoint_weight_stale")
                .with_description("Endpoints whose weight expired, per scheduler update.")
                .with_unit("{endpoint}")
                .build(),
            wrr_weights: meter
                .f64_histogram("grpc.lb.wrr.endpoint_weights")
                .with_description("Endpoint weights at each scheduler update.")
                .with_unit("{weight}")
                .build(),
            bind,
        }
    }

    /// Whether measurements go through bound instruments.
    #[cfg(test)]
    pub(super) fn binds(&self) -> bool {
        self.bind
    }

    /// A method's instruments bound to its attributes on `target`, when
    /// the provider binds.
    pub(super) fn series(&self, method: &Label, target: &Label) -> Option<MethodSeries> {
        if !self.bind {
            return None;
        }
        Some(MethodSeries {
            attempt_started: self.attempt_started.bind(&[
                KeyValue::new("grpc.method", value(method)),
                KeyValue::new("grpc.target", value(target)),
            ]),
            attempt_duration: self.attempt_duration.clone(),
            attempt_sent: self.attempt_sent.clone(),
            attempt_received: self.attempt_received.clone(),
            call_duration: self.call_duration.clone(),
            method: method.clone(),
            target: target.clone(),
            by_status: Default::default(),
        })
    }

    pub(super) fn pick_first_attempt(&self, succeeded: bool, target: &Label) {
        let counter = if succeeded {
            &self.pick_first_succeeded
        } else {
            &self.pick_first_failed
        };
        counter.add(1, &[KeyValue::new("grpc.target", value(target))]);
    }

    pub(super) fn pick_first_disconnection(&self, target: &Label) {
        self.pick_first_disconnections
            .add(1, &[KeyValue::new("grpc.target", value(target))]);
    }

    pub(super) fn wrr_update(&self, update: &super::WrrUpdate<'_>, target: &Label) {
        let attributes = [KeyValue::new("grpc.target", value(target))];
        if update.rr_fallback {
            self.wrr_rr_fallback.add(1, &attributes);
        }
        self.wrr_not_yet_usable
            .add(update.not_yet_usable, &attributes);
        self.wrr_stale.add(update.stale, &attributes);
        for weight in update.weights {
            self.wrr_weights.record(*weight, &attributes);
        }
    }

    pub(super) fn attempt_started(&self, method: &Label, target: &Label) {
        self.attempt_started.add(
            1,
            &[
                KeyValue::new("grpc.method", value(method)),
                KeyValue::new("grpc.target", value(target)),
            ],
        );
    }

    fn attributes(ended: &Ended<'_>, target: &Label) -> [KeyValue; 3] {
        [
            KeyValue::new("grpc.method", value(&ended.method.label)),
            KeyValue::new("grpc.target", value(target)),
            KeyValue::new("grpc.status", code_name(ended.status)),
        ]
    }

    pub(super) fn attempt_ended(
        &self,
        ended: &Ended<'_>,
        target: &Label,
        sent: u64,
        received: u64,
    ) {
        let attributes = Self::attributes(ended, target);
        self.attempt_duration.record(ended.seconds, &attributes);
        self.attempt_sent.record(sent, &attributes);
        self.attempt_received.record(received, &attributes);
    }

    pub(super) fn call_ended(&self, ended: &Ended<'_>, target: &Label) {
        self.call_duration
            .record(ended.seconds, &Self::attributes(ended, target));
    }
}

/// One method's instruments on one target, bound to their attributes
/// (per status code on first use): recording is the SDK's aggregation
/// alone, with no attribute hashing or lookup.
#[derive(Debug)]
pub(super) struct MethodSeries {
    attempt_started: BoundCounter<u64>,
    attempt_duration: Histogram<f64>,
    attempt_sent: Histogram<u64>,
    attempt_received: Histogram<u64>,
    call_duration: Histogram<f64>,
    method: Label,
    target: Label,
    /// Indexed by status code (0–16).
    by_status: super::ByStatus<StatusSeries>,
}

#[derive(Debug)]
struct StatusSeries {
    attempt_duration: BoundHistogram<f64>,
    attempt_sent: BoundHistogram<u64>,
    attempt_received: BoundHistogram<u64>,
    call_duration: BoundHistogram<f64>,
}

impl MethodSeries {
    pub(super) fn attempt_started(&self) {
        self.attempt_started.add(1);
    }

    fn status(&self, code: tonic::Code) -> &StatusSeries {
        self.by_status.get_or_init(code, || {
            let attributes = [
                KeyValue::new("grpc.method", value(&self.method)),
                KeyValue::new("grpc.target", value(&self.target)),
                KeyValue::new("grpc.status", code_name(code)),
            ];
            StatusSeries {
                attempt_duration: self.attempt_duration.bind(&attributes),
                attempt_sent: self.attempt_sent.bind(&attributes),
                attempt_received: self.attempt_received.bind(&attributes),
                call_duration: self.call_duration.bind(&attributes),
            }
        })
    }

    pub(super) fn attempt_ended(&self, ended: &Ended<'_>, sent: u64, received: u64) {
        let series = self.status(ended.status);
        series.attempt_duration.record(ended.seconds);
        series.attempt_sent.record(sent);
        series.attempt_received.record(received);
    }

    pub(super) fn call_ended(&self, ended: &Ended<'_>) {
        self.status(ended.status)
            .call_duration
            .record(ended.seconds);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use crate::metrics::ClientMetrics;

    struct Other(SdkMeterProvider);

    impl opentelemetry::metrics::MeterProvider for Other {
        fn meter_with_scope(
            &self,
            scope: opentelemetry::InstrumentationScope,
        ) -> opentelemetry::metrics::Meter {
            self.0.meter_with_scope(scope)
        }
    }

    #[test]
    fn only_the_sdks_own_provider_gets_bound_instruments() {
        let sdk = SdkMeterProvider::default();
        let bound = ClientMetrics::builder().meter_provider(&sdk).build();
        assert!(bound.inner.otel.as_ref().unwrap().binds());
        let other = ClientMetrics::builder().meter_provider(&Other(sdk)).build();
        assert!(!other.inner.otel.as_ref().unwrap().binds());
    }
}
