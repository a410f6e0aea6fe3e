//! The metrics as OpenTelemetry instruments of a user's meter provider,
//! by gRPC's own names and units.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    Counter, Histogram, MeterProvider, ObservableCounter, ObservableUpDownCounter,
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
}

impl Instruments {
    pub(super) fn new(
        provider: &dyn MeterProvider,
        channels: Arc<Mutex<Vec<ChannelEntry>>>,
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
