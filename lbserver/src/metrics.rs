//! The balancer's metrics: a [prometheus-client] registry whose one
//! collector reads the [`Registry`]'s live counters at scrape time, served
//! as OpenMetrics text on the admin port's `/metrics`.
//!
//! Names follow Prometheus' conventions: `waypost_lb_` prefix, base units
//! (seconds, ratios, calls per second), counters end in `_total` (added by
//! the encoder). Per-service families carry a `service` label, whose value
//! the encoder escapes (quotes, backslashes, newlines).
//!
//! ```
//! use waypost_lbserver::metrics::ServerMetrics;
//! use waypost_lbserver::registry::Registry;
//!
//! let metrics = ServerMetrics::new(Registry::new(&[]), None);
//! let text = metrics.render();
//! assert!(text.contains("# TYPE waypost_lb_ads_streams gauge"));
//! assert!(text.ends_with("# EOF\n"));
//! ```
//!
//! [prometheus-client]: https://docs.rs/prometheus-client

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use waypost_balancer::tls::TlsStats;

use crate::registry::{Registry, Service};
use crate::xds::ResourceType;
use crate::xds::clients::TypeCounters;

/// The `Content-Type` of [`ServerMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process's metrics registry, with the balancer's collector in it.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: prometheus_client::registry::Registry,
}

impl ServerMetrics {
    /// A registry collecting `registry`'s services and the listeners' TLS
    /// reloads (`tls`, when the balancer has `[tls]`).
    pub fn new(registry: Registry, tls: Option<Arc<TlsStats>>) -> ServerMetrics {
        let mut metrics = prometheus_client::registry::Registry::default();
        metrics.register_collector(Box::new(BalancerCollector { registry, tls }));
        ServerMetrics { registry: metrics }
    }

    /// The registry, to add more metrics to before serving.
    pub fn registry_mut(&mut self) -> &mut prometheus_client::registry::Registry {
        &mut self.registry
    }

    /// Everything, as OpenMetrics text (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
struct BalancerCollector {
    registry: Registry,
    tls: Option<Arc<TlsStats>>,
}

/// Writes one family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric, L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The label set of a family without labels.
const NO_LABELS: [(&str, &str); 0] = [];

type ServiceLabel<'a> = [(&'static str, &'a str); 1];

/// One sample per service, labelled with its name.
fn per_service<'a, M>(
    services: &'a [Arc<Service>],
    value: impl Fn(&Service) -> M + 'a,
) -> impl Iterator<Item = (ServiceLabel<'a>, M)> + 'a {
    services
        .iter()
        .map(move |s| ([("service", s.config.name.as_str())], value(s)))
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

impl Collector for BalancerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let services = self.registry.services();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;
        family(
            e,
            "waypost_lb_streams",
            "Open BalanceLoad (grpclb) streams.",
            Gauge,
            per_service(services, |s| gauge(load(&s.streams) as i64)),
        )?;
        let backends = services.iter().flat_map(|s| {
            let views = s.views();
            let count = |f: &dyn Fn(&crate::assign::BackendView) -> bool| {
                gauge(views.iter().filter(|b| f(b)).count() as i64)
            };
            let name = s.config.name.as_str();
            [
                ("healthy", count(&|b| b.healthy && !b.draining)),
                ("unhealthy", count(&|b| !b.healthy)),
                ("draining", count(&|b| b.draining)),
            ]
            .map(|(state, value)| ([("service", name), ("state", state)], value))
        });
        family(
            e,
            "waypost_lb_backends",
            "Backends by state: healthy (probes pass, not drained), unhealthy (probes fail), draining (drained by an operator).",
            Gauge,
            backends,
        )?;
        family(
            e,
            "waypost_lb_listed_backends",
            "Backends in the current server list.",
            Gauge,
            per_service(services, |s| gauge(s.current().backends as i64)),
        )?;
        family(
            e,
            "waypost_lb_lists_sent",
            "Server lists sent to grpclb clients.",
            Counter,
            per_service(services, |s| counter(load(&s.lists_sent))),
        )?;
        family(
            e,
            "waypost_lb_client_calls_started",
            "Calls grpclb clients reported started.",
            Counter,
            per_service(services, |s| counter(load(&s.stats.started))),
        )?;
        family(
            e,
            "waypost_lb_client_calls_finished",
            "Calls grpclb clients reported finished.",
            Counter,
            per_service(services, |s| counter(load(&s.stats.finished))),
        )?;
        family(
            e,
            "waypost_lb_client_reports",
            "ClientStats reports received.",
            Counter,
            per_service(services, |s| counter(load(&s.stats.reports))),
        )?;
        let drops: Vec<_> = services
            .iter()
            .flat_map(|s| {
                let name = s.config.name.as_str();
                s.stats
                    .drops
                    .lock()
                    .iter()
                    .map(|(token, n)| {
                        (
                            [("service", name.to_owned()), ("token", token.clone())],
                            counter(*n),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        family(
            e,
            "waypost_lb_client_drops",
            "Calls grpclb clients reported dropped, by load-balance token.",
            Counter,
            drops,
        )?;
        family(
            e,
            "waypost_lb_observed_call_rate",
            "Calls per second clients report starting (averaged over their reports).",
            Gauge,
            per_service(services, |s| ConstGauge::new(s.observed_rate())),
        )?;
        family(
            e,
            "waypost_lb_drop_ratio",
            "Share of server list entries that are drops (configured or for overload), 0 to 1.",
            Gauge,
            per_service(services, |s| ConstGauge::new(s.drop_fraction())),
        )?;

        let clients = self.registry.xds_clients();
        family(
            e,
            "waypost_lb_ads_streams",
            "Open ADS (xDS) streams.",
            Gauge,
            [(NO_LABELS, gauge(clients.streams() as i64))],
        )?;
        let per_type = |f: fn(&TypeCounters) -> &std::sync::atomic::AtomicU64| {
            ResourceType::ALL
                .map(|t| ([("type", t.short())], counter(load(f(clients.counters(t))))))
        };
        family(
            e,
            "waypost_lb_ads_responses",
            "ADS responses sent, by resource type.",
            Counter,
            per_type(|c| &c.responses),
        )?;
        family(
            e,
            "waypost_lb_ads_acks",
            "ADS responses clients ACKed, by resource type.",
            Counter,
            per_type(|c| &c.acks),
        )?;
        family(
            e,
            "waypost_lb_ads_nacks",
            "ADS responses clients rejected (NACKed), by resource type.",
            Counter,
            per_type(|c| &c.nacks),
        )?;
        family(
            e,
            "waypost_lb_ads_rejected_streams",
            "ADS streams closed for a protocol error.",
            Counter,
            [(NO_LABELS, counter(load(&clients.rejected)))],
        )?;
        if let Some(tls) = &self.tls {
            family(
                e,
                "waypost_lb_tls_reloads",
                "Times changed [tls] files were put in force.",
                Counter,
                [(NO_LABELS, counter(load(&tls.reloads)))],
            )?;
            family(
                e,
                "waypost_lb_tls_reload_failures",
                "Times changed [tls] files could not be used (the last good material was kept).",
                Counter,
                [(NO_LABELS, counter(load(&tls.reload_failures)))],
            )?;
        }
        Ok(())
    }
}
