//! ORCA load reporting for servers (gRFC A51): tell clients running
//! `weighted_round_robin` how loaded this backend is, per call and out of
//! band.
//!
//! An [`OrcaReporter`] holds the backend's current figures, set from code
//! (CPU utilization, queries and errors per second, named metrics). Two
//! things send them:
//!
//! - [`OrcaReporter::layer`], a tower layer for a tonic server, adds the
//!   serialized report to every response's trailers as
//!   `endpoint-load-metrics-bin`. A handler may set figures for its own call
//!   through the [`CallMetrics`] in the request's extensions; they override
//!   the server's in that call's report.
//! - [`OrcaReporter::service`], the out-of-band service
//!   `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`, streams the
//!   server's figures at the interval each client asks for (never faster
//!   than the reporter's minimum interval).
//!
//! Reports are wire-compatible with grpc-go's, grpc-java's and C-core's.
//!
//! ```no_run
//! use std::time::Duration;
//! use waypost_proto::orca::OrcaReporter;
//!
//! # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//! let reporter = OrcaReporter::new().with_min_interval(Duration::from_secs(1));
//! reporter.set_cpu_utilization(0.4)?;
//! reporter.set_qps(120.0)?;
//! tonic::transport::Server::builder()
//!     .layer(reporter.layer())
//!     .add_routes(routes)
//!     .add_service(reporter.service())
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::xds::data::orca::v3::OrcaLoadReport;
use crate::xds::service::orca::v3::OrcaLoadReportRequest;
use crate::xds::service::orca::v3::open_rca_service_server::{
    OpenRcaService, OpenRcaServiceServer,
};

/// The trailer that carries a per-call report: a serialized
/// [`OrcaLoadReport`], base64 as every `-bin` header is.
pub const TRAILER: &str = "endpoint-load-metrics-bin";

/// The shortest out-of-band interval a reporter grants by default (grpc-go's
/// default too); a client asking for less gets this.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// A figure outside its range (negative, above 1 where a fraction is
/// meant, or not a number): it was not recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidMetric {
    /// The figure's name.
    pub name: String,
    /// The value refused.
    pub value: f64,
    /// What was expected.
    pub expected: &'static str,
}

impl std::fmt::Display for InvalidMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ORCA metric {} = {} refused: it must be {}",
            self.name, self.value, self.expected
        )
    }
}

impl std::error::Error for InvalidMetric {}

/// The figures recorded; `None`: not set.
#[derive(Debug, Clone, Default)]
struct Figures {
    cpu_utilization: Option<f64>,
    mem_utilization: Option<f64>,
    application_utilization: Option<f64>,
    qps: Option<f64>,
    eps: Option<f64>,
    utilization: BTreeMap<String, f64>,
    request_cost: BTreeMap<String, f64>,
    named_metrics: BTreeMap<String, f64>,
}

impl Figures {
    fn is_empty(&self) -> bool {
        self.cpu_utilization.is_none()
            && self.mem_utilization.is_none()
            && self.application_utilization.is_none()
            && self.qps.is_none()
            && self.eps.is_none()
            && self.utilization.is_empty()
            && self.request_cost.is_empty()
            && self.named_metrics.is_empty()
    }

    /// `self` with what `over` sets replacing it.
    fn overlaid(&self, over: &Figures) -> Figures {
        let mut merged = self.clone();
        merged.cpu_utilization = over.cpu_utilization.or(self.cpu_utilization);
        merged.mem_utilization = over.mem_utilization.or(self.mem_utilization);
        merged.application_utilization = over
            .application_utilization
            .or(self.application_utilization);
        merged.qps = over.qps.or(self.qps);
        merged.eps = over.eps.or(self.eps);
        for (into, from) in [
            (&mut merged.utilization, &over.utilization),
            (&mut merged.request_cost, &over.request_cost),
            (&mut merged.named_metrics, &over.named_metrics),
        ] {
            into.extend(from.iter().map(|(k, v)| (k.clone(), *v)));
        }
        merged
    }

    fn report(&self) -> OrcaLoadReport {
        let map = |m: &BTreeMap<String, f64>| m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        OrcaLoadReport {
            cpu_utilization: self.cpu_utilization.unwrap_or(0.0),
            mem_utilization: self.mem_utilization.unwrap_or(0.0),
            application_utilization: self.application_utilization.unwrap_or(0.0),
            rps_fractional: self.qps.unwrap_or(0.0),
            eps: self.eps.unwrap_or(0.0),
            utilization: map(&self.utilization),
            request_cost: map(&self.request_cost),
            named_metrics: map(&self.named_metrics),
            ..Default::default()
        }
    }
}

fn check(name: &str, value: f64, max: Option<f64>) -> Result<f64, InvalidMetric> {
    let fits = value.is_finite() && value >= 0.0 && max.is_none_or(|m| value <= m);
    if fits {
        Ok(value)
    } else {
        Err(InvalidMetric {
            name: name.to_owned(),
            value,
            expected: if max.is_some() {
                "a fraction in [0, 1]"
            } else {
                "a finite number ≥ 0"
            },
        })
    }
}

/// A backend's load figures, and what sends them. Cheap to clone; clones
/// share the figures. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct OrcaReporter {
    figures: Arc<Mutex<Figures>>,
    min_interval: Duration,
}

impl Default for OrcaReporter {
    fn default() -> Self {
        OrcaReporter::new()
    }
}

impl OrcaReporter {
    /// A reporter with nothing set (nothing is sent until something is),
    /// granting out-of-band intervals of at least [`DEFAULT_MIN_INTERVAL`].
    pub fn new() -> OrcaReporter {
        OrcaReporter {
            figures: Arc::default(),
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }

    /// The same figures, with out-of-band reports no more often than every
    /// `min_interval`.
    pub fn with_min_interval(mut self, min_interval: Duration) -> OrcaReporter {
        self.min_interval = min_interval;
        self
    }

    /// CPU utilization, a fraction of the CPU available (may exceed 1).
    pub fn set_cpu_utilization(&self, value: f64) -> Result<(), InvalidMetric> {
        let value = check("cpu_utilization", value, None)?;
        self.figures.lock().cpu_utilization = Some(value);
        Ok(())
    }

    /// Memory utilization, a fraction in [0, 1].
    pub fn set_mem_utilization(&self, value: f64) -> Result<(), InvalidMetric> {
        let value = check("mem_utilization", value, Some(1.0))?;
        self.figures.lock().mem_utilization = Some(value);
        Ok(())
    }

    /// The application's own utilization (may exceed 1); clients weigh by
    /// it instead of CPU utilization when it is set.
    pub fn set_application_utilization(&self, value: f64) -> Result<(), InvalidMetric> {
        let value = check("application_utilization", value, None)?;
        self.figures.lock().application_utilization = Some(value);
        Ok(())
    }

    /// Queries per second served (`rps_fractional`).
    pub fn set_qps(&self, value: f64) -> Result<(), InvalidMetric> {
        let value = check("rps_fractional", value, None)?;
        self.figures.lock().qps = Some(value);
        Ok(())
    }

    /// Errors per second served.
    pub fn set_eps(&self, value: f64) -> Result<(), InvalidMetric> {
        let value = check("eps", value, None)?;
        self.figures.lock().eps = Some(value);
        Ok(())
    }

    /// A named utilization, a fraction in [0, 1].
    pub fn set_utilization(&self, name: &str, value: f64) -> Result<(), InvalidMetric> {
        let value = check(name, value, Some(1.0))?;
        self.figures
            .lock()
            .utilization
            .insert(name.to_owned(), value);
        Ok(())
    }

    /// A named request cost (meant per call, through [`CallMetrics`]).
    pub fn set_request_cost(&self, name: &str, value: f64) -> Result<(), InvalidMetric> {
        let value = check(name, value, None)?;
        self.figures
            .lock()
            .request_cost
            .insert(name.to_owned(), value);
        Ok(())
    }

    /// A named application metric.
    pub fn set_named_metric(&self, name: &str, value: f64) -> Result<(), InvalidMetric> {
        let value = check(name, value, None)?;
        self.figures
            .lock()
            .named_metrics
            .insert(name.to_owned(), value);
        Ok(())
    }

    /// Forgets every figure: nothing is reported until one is set again.
    pub fn clear(&self) {
        *self.figures.lock() = Figures::default();
    }

    /// The report the figures make now.
    pub fn report(&self) -> OrcaLoadReport {
        self.figures.lock().report()
    }

    /// A tower layer adding each call's report to its trailers.
    pub fn layer(&self) -> OrcaLayer {
        OrcaLayer {
            server: self.clone(),
        }
    }

    /// The out-of-band reporting service, for a tonic server.
    pub fn service(&self) -> OpenRcaServiceServer<OrcaOobService> {
        OpenRcaServiceServer::new(OrcaOobService {
            reporter: self.clone(),
        })
    }
}

/// The figures of one call, in its request's extensions when the server
/// has an [`OrcaLayer`]: what a handler sets here overrides the server's
/// figures in that call's report.
///
/// ```
/// # fn handler(request: tonic::Request<()>) {
/// use waypost_proto::orca::CallMetrics;
/// if let Some(call) = request.extensions().get::<CallMetrics>() {
///     call.0.set_request_cost("db_rows", 42.0).unwrap();
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CallMetrics(pub OrcaReporter);

/// Adds `endpoint-load-metrics-bin` to every response; see
/// [`OrcaReporter::layer`].
#[derive(Debug, Clone)]
pub struct OrcaLayer {
    server: OrcaReporter,
}

impl<S> tower::Layer<S> for OrcaLayer {
    type Service = WithOrca<S>;

    fn layer(&self, inner: S) -> WithOrca<S> {
        WithOrca {
            inner,
            server: self.server.clone(),
        }
    }
}

/// A service whose responses carry ORCA reports.
#[derive(Debug, Clone)]
pub struct WithOrca<S> {
    inner: S,
    server: OrcaReporter,
}

impl<S, B> tower::Service<http::Request<B>> for WithOrca<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = OrcaFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let call = OrcaReporter::new();
        request.extensions_mut().insert(CallMetrics(call.clone()));
        OrcaFuture {
            inner: self.inner.call(request),
            report: Some(CallReport {
                server: self.server.clone(),
                call,
            }),
        }
    }
}

/// What makes one call's report when it ends.
struct CallReport {
    server: OrcaReporter,
    call: OrcaReporter,
}

impl CallReport {
    /// The call's report as a header value, or `None` when nothing is set.
    fn header(&self) -> Option<http::HeaderValue> {
        let figures = self
            .server
            .figures
            .lock()
            .overlaid(&self.call.figures.lock());
        if figures.is_empty() {
            return None;
        }
        let bytes = prost::Message::encode_to_vec(&figures.report());
        // gRPC senders leave out base64's padding; receivers take both.
        let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        http::HeaderValue::try_from(text).ok()
    }

    fn add_to(&self, headers: &mut http::HeaderMap) {
        if let Some(value) = self.header() {
            headers.insert(TRAILER, value);
        }
    }
}

pin_project_lite::pin_project! {
    /// [`WithOrca`]'s response future.
    pub struct OrcaFuture<F> {
        #[pin]
        inner: F,
        report: Option<CallReport>,
    }
}

impl<F, E> std::future::Future for OrcaFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        let Some(report) = this.report.take() else {
            return Poll::Ready(Ok(response));
        };
        if response.headers().contains_key("grpc-status") {
            // Trailers-only: the headers are the trailers.
            report.add_to(response.headers_mut());
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(response.map(|body| {
            tonic::body::Body::new(OrcaBody {
                inner: body,
                report: Some(report),
            })
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers get the call's report.
    struct OrcaBody {
        #[pin]
        inner: tonic::body::Body,
        report: Option<CallReport>,
    }
}

impl Body for OrcaBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let mut frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        if let Some(trailers) = frame.trailers_mut()
            && let Some(report) = this.report.take()
        {
            report.add_to(trailers);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `xds.service.orca.v3.OpenRcaService`, answering from an
/// [`OrcaReporter`]; see [`OrcaReporter::service`].
#[derive(Debug, Clone)]
pub struct OrcaOobService {
    reporter: OrcaReporter,
}

/// The stream of out-of-band reports.
pub type ReportStream = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

#[tonic::async_trait]
impl OpenRcaService for OrcaOobService {
    type StreamCoreMetricsStream = ReportStream;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        let asked = request
            .into_inner()
            .report_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        let interval = asked.max(self.reporter.min_interval);
        let reporter = self.reporter.clone();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream =
            tokio_stream::wrappers::IntervalStream::new(ticks).map(move |_| Ok(reporter.report()));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_out_of_range_are_refused() {
        let reporter = OrcaReporter::new();
        assert!(reporter.set_cpu_utilization(1.5).is_ok());
        assert!(reporter.set_cpu_utilization(-0.1).is_err());
        assert!(reporter.set_mem_utilization(1.5).is_err());
        assert!(reporter.set_qps(f64::NAN).is_err());
        assert!(reporter.set_utilization("disk", 2.0).is_err());
        let error = reporter.set_eps(f64::INFINITY).unwrap_err();
        assert_eq!(error.name, "eps");
        assert_eq!(reporter.report().cpu_utilization, 1.5);
    }

    #[test]
    fn a_call_overrides_the_server_in_its_own_report() {
        let server = OrcaReporter::new();
        server.set_cpu_utilization(0.5).unwrap();
        server.set_qps(100.0).unwrap();
        server.set_named_metric("queue", 3.0).unwrap();
        let call = OrcaReporter::new();
        call.set_cpu_utilization(0.7).unwrap();
        call.set_request_cost("rows", 12.0).unwrap();
        let report = CallReport {
            server: server.clone(),
            call,
        };
        let text = report.header().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.as_bytes())
            .unwrap();
        let decoded: OrcaLoadReport = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.cpu_utilization, 0.7);
        assert_eq!(decoded.rps_fractional, 100.0);
        assert_eq!(decoded.request_cost.get("rows"), Some(&12.0));
        assert_eq!(decoded.named_metrics.get("queue"), Some(&3.0));
        // The server's own figures are untouched.
        assert_eq!(server.report().cpu_utilization, 0.5);
    }

    #[test]
    fn nothing_set_sends_nothing() {
        let report = CallReport {
            server: OrcaReporter::new(),
            call: OrcaReporter::new(),
        };
        assert!(report.header().is_none());
    }
}
