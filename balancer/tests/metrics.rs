//! gRPC's client metrics (A66, A94) from a real channel to real tonic
//! backends, read back through OpenTelemetry's in-memory exporter and a
//! prometheus-client registry: counts, status labels, durations and exact
//! message sizes after calls with known outcomes.

use std::collections::BTreeMap;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use prost::Message as _;
use waypost_balancer::Channel;
use waypost_balancer::metrics::ClientMetrics;
use waypost_integration::backend::{catalog, ipv4_target, start_backends};
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_proto::movies::v1::{Movie, MovieId, MovieQuery};

const GET: &str = "movies.v1.MoviesService/GetMovie";

/// One data point: its attributes, and its value (sums) or count and sum
/// (histograms).
#[derive(Debug, Clone)]
struct Point {
    attributes: BTreeMap<String, String>,
    count: u64,
    sum: f64,
}

fn points(exporter: &InMemoryMetricExporter) -> BTreeMap<String, Vec<Point>> {
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let resources = exporter.get_finished_metrics().unwrap();
    // Cumulative: the last export holds everything.
    let last = resources.last().expect("an export");
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            let entry = out.entry(metric.name().to_owned()).or_default();
            let attrs = |iter: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                iter.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect::<BTreeMap<_, _>>()
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        entry.push(Point {
                            attributes: attrs(&mut p.attributes()),
                            count: p.value(),
                            sum: p.value() as f64,
                        });
                    }
                }
                AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        entry.push(Point {
                            attributes: attrs(&mut p.attributes()),
                            count: p.value().max(0) as u64,
                            sum: p.value() as f64,
                        });
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        entry.push(Point {
                            attributes: attrs(&mut p.attributes()),
                            count: p.count(),
                            sum: p.sum(),
                        });
                    }
                }
                AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        entry.push(Point {
                            attributes: attrs(&mut p.attributes()),
                            count: p.count(),
                            sum: p.sum() as f64,
                        });
                    }
                }
                other => panic!("{}: unexpected data {other:?}", metric.name()),
            }
        }
    }
    out
}

/// The point of `name` whose attributes include every `(key, value)`.
fn find<'a>(all: &'a BTreeMap<String, Vec<Point>>, name: &str, with: &[(&str, &str)]) -> &'a Point {
    all.get(name)
        .unwrap_or_else(|| panic!("no {name} in {all:#?}"))
        .iter()
        .find(|p| {
            with.iter()
                .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} with {with:?} in {:#?}", all[name]))
}

/// A meter provider that is not the SDK's own type (it hands out the
/// SDK's meters): waypost records through it with attributes on every
/// measurement, not with bound instruments.
struct OtherProvider(SdkMeterProvider);

impl opentelemetry::metrics::MeterProvider for OtherProvider {
    fn meter_with_scope(
        &self,
        scope: opentelemetry::InstrumentationScope,
    ) -> opentelemetry::metrics::Meter {
        self.0.meter_with_scope(scope)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a66_metrics_count_calls_attempts_statuses_and_exact_sizes() {
    a66_metrics(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a66_metrics_are_the_same_through_a_provider_that_is_not_the_sdks() {
    a66_metrics(true).await;
}

/// N calls with known outcomes; the recorded counts, statuses and sizes
/// must match — with bound instruments (the SDK's provider) or without
/// (`other_provider`).
async fn a66_metrics(other_provider: bool) {
    let backends = start_backends(2).await.unwrap();
    let target = ipv4_target(&backends);
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let mut registry = prometheus_client::registry::Registry::default();
    let builder = ClientMetrics::builder()
        .methods([GET])
        .prometheus(&mut registry);
    let builder = if other_provider {
        builder.meter_provider(&OtherProvider(provider.clone()))
    } else {
        builder.meter_provider(&provider)
    };
    let metrics = builder.build();
    let channel = Channel::builder(target.clone())
        .default_service_config(serde_json::json!({"loadBalancingConfig": [{"round_robin": {}}]}))
        .metrics(metrics)
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel.clone());

    // 10 OK, 3 NOT_FOUND, 2 UNAVAILABLE (injected), 1 streaming call OK.
    for _ in 0..10 {
        client.get_movie(MovieId { mid: 1 }).await.unwrap();
    }
    for _ in 0..3 {
        let status = client.get_movie(MovieId { mid: 999 }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
    for _ in 0..2 {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request
            .metadata_mut()
            .insert("x-fail-code", "14".parse().unwrap());
        let status = client.get_movie(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    let mut stream = client
        .query_movies(MovieQuery::default())
        .await
        .unwrap()
        .into_inner();
    let mut streamed = 0;
    while stream.message().await.unwrap().is_some() {
        streamed += 1;
    }
    assert!(streamed > 0);
    drop(stream);

    provider.force_flush().unwrap();
    let all = points(&exporter);
    let get = [("grpc.method", GET), ("grpc.target", target.as_str())];
    assert_eq!(find(&all, "grpc.client.attempt.started", &get).count, 15);
    let with = |status: &'static str| {
        let mut labels = get.to_vec();
        labels.push(("grpc.status", status));
        labels
    };
    for (status, n) in [("OK", 10), ("NOT_FOUND", 3), ("UNAVAILABLE", 2)] {
        let call = find(&all, "grpc.client.call.duration", &with(status));
        assert_eq!(call.count, n, "{status}");
        assert!(
            call.sum > 0.0 && call.sum < 10.0 * n as f64,
            "{status}: {call:?}"
        );
        let attempt = find(&all, "grpc.client.attempt.duration", &with(status));
        assert_eq!(attempt.count, n, "{status}");
        // Every request carried one MovieId message.
        let sent = find(
            &all,
            "grpc.client.attempt.sent_total_compressed_message_size",
            &with(status),
        );
        assert_eq!(sent.count, n);
        assert_eq!(
            sent.sum,
            (n as usize
                * MovieId {
                    mid: if status == "NOT_FOUND" { 999 } else { 1 }
                }
                .encoded_len()) as f64,
            "{status}"
        );
    }
    // The OK answers: one Movie each, served by "b0" or "b1" (same length).
    let movie = Movie {
        served_by: "b0".into(),
        ..catalog()[0].clone()
    };
    let received = find(
        &all,
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        &with("OK"),
    );
    assert_eq!(received.sum, (10 * movie.encoded_len()) as f64);
    let failed = find(
        &all,
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        &with("NOT_FOUND"),
    );
    assert_eq!(failed.sum, 0.0);
    // A generated method not in the list is `other`.
    let other = find(
        &all,
        "grpc.client.call.duration",
        &[("grpc.method", "other"), ("grpc.status", "OK")],
    );
    assert_eq!(other.count, 1);
    // A94: two subchannels connected, both open.
    let target_only = [("grpc.target", target.as_str())];
    assert_eq!(
        find(
            &all,
            "grpc.subchannel.connection_attempts_succeeded",
            &target_only
        )
        .count,
        2
    );
    assert_eq!(
        find(&all, "grpc.subchannel.open_connections", &target_only).count,
        2
    );
    assert_eq!(
        find(&all, "grpc.subchannel.disconnections", &target_only).count,
        0
    );

    // The same through Prometheus, by the exporter's mapping of the names.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let expect = [
        format!(
            "grpc_client_attempt_started_total{{grpc_method=\"{GET}\",grpc_target=\"{target}\"}} 15"
        ),
        format!(
            "grpc_client_call_duration_seconds_count{{grpc_method=\"{GET}\",grpc_target=\"{target}\",grpc_status=\"NOT_FOUND\"}} 3"
        ),
        format!(
            "grpc_client_call_duration_seconds_count{{grpc_method=\"{GET}\",grpc_target=\"{target}\",grpc_status=\"OK\"}} 10"
        ),
        format!(
            "grpc_client_attempt_rcvd_total_compressed_message_size_bytes_sum{{grpc_method=\"{GET}\",grpc_target=\"{target}\",grpc_status=\"OK\"}} {}",
            (10 * movie.encoded_len()) as f64
        ),
        format!("grpc_subchannel_open_connections{{grpc_target=\"{target}\"}} 2"),
        "# TYPE grpc_client_attempt_duration_seconds histogram".to_owned(),
        "# UNIT grpc_client_attempt_duration_seconds seconds".to_owned(),
    ];
    for line in expect {
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
}

#[tokio::test]
async fn a_channel_without_metrics_records_nothing_and_a_dropped_channel_leaves_the_subchannel_metrics()
 {
    let backends = start_backends(1).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ClientMetrics::builder().prometheus(&mut registry).build();
    let plain = Channel::builder(ipv4_target(&backends)).build().unwrap();
    MoviesServiceClient::new(plain)
        .get_movie(MovieId { mid: 1 })
        .await
        .unwrap();
    let metered = Channel::builder(ipv4_target(&backends))
        .metrics(metrics)
        .build()
        .unwrap();
    MoviesServiceClient::new(metered.clone())
        .get_movie(MovieId { mid: 1 })
        .await
        .unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    // Without a list, the method's own name; only the metered call counted.
    assert!(
        text.contains(&format!(
            "grpc_client_attempt_started_total{{grpc_method=\"{GET}\",grpc_target=\"{}\"}} 1",
            ipv4_target(&backends)
        )),
        "{text}"
    );
    assert!(text.contains("grpc_subchannel_open_connections{"), "{text}");
    // Once the channel and its subchannels are gone (they close in the
    // background), so are its series.
    drop(metered);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut after = String::new();
        prometheus_client::encoding::text::encode(&mut after, &registry).unwrap();
        if !after.contains("grpc_subchannel_open_connections{") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{after}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The value of the Prometheus sample `line_start` (a name with labels).
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a78_pick_first_counts_attempts_and_disconnections_and_wrr_its_unusable_weights() {
    let backends = start_backends(2).await.unwrap();
    // An address nothing listens on: its attempt fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pf_target = format!("ipv4:{dead},{}", backends[0].addr());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ClientMetrics::builder().prometheus(&mut registry).build();
    let pick_first = Channel::builder(pf_target.clone())
        .default_service_config(serde_json::json!({"loadBalancingConfig": [{"pick_first": {}}]}))
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(pick_first.clone());
    client.get_movie(MovieId { mid: 1 }).await.unwrap();
    let text = encode(&registry);
    let label = format!("{{grpc_target=\"{pf_target}\"}}");
    assert_eq!(
        sample(
            &text,
            &format!("grpc_lb_pick_first_connection_attempts_failed_total{label}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("grpc_lb_pick_first_connection_attempts_succeeded_total{label}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("grpc_lb_pick_first_disconnections_total{label}")
        ),
        Some(0.0),
        "{text}"
    );
    // The selected backend goes away: one disconnection.
    backends[0].stop().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = encode(&registry);
        if sample(
            &text,
            &format!("grpc_lb_pick_first_disconnections_total{label}"),
        ) == Some(1.0)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // weighted_round_robin over backends that send no load reports: every
    // weight is not yet usable, so each scheduler falls back to round robin.
    let wrr_target = ipv4_target(&backends[1..]);
    let wrr = Channel::builder(wrr_target.clone())
        .default_service_config(
            serde_json::json!({"loadBalancingConfig": [{"weighted_round_robin": {}}]}),
        )
        .metrics(metrics)
        .build()
        .unwrap();
    MoviesServiceClient::new(wrr)
        .get_movie(MovieId { mid: 1 })
        .await
        .unwrap();
    let text = encode(&registry);
    let label = format!("{{grpc_target=\"{wrr_target}\"}}");
    let fallbacks = sample(&text, &format!("grpc_lb_wrr_rr_fallback_total{label}")).unwrap();
    assert!(fallbacks >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("grpc_lb_wrr_endpoint_weight_not_yet_usable_total{label}")
        ),
        Some(fallbacks),
        "one endpoint, not yet usable, per update: {text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("grpc_lb_wrr_endpoint_weight_stale_total{label}")
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("grpc_lb_wrr_endpoint_weights_count{label}")),
        Some(fallbacks),
        "{text}"
    );
}
