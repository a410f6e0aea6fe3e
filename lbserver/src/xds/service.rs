//! The ADS service:
//! `envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`
//! over a [`Registry`]. The balancer port runs each ADS stream in its
//! connection's task (`port/ads.rs`); as a tower service behind tonic's
//! router, [`AdsService`] answers the ADS service's other methods
//! (UNIMPLEMENTED).
//!
//! Each stream is an [`AdsResponses`], a [`Stream`] with no task of its
//! own: it reads the client's requests into an [`AdsStream`],
//! watches the services the client subscribed to, and yields the responses
//! that are due — pre-encoded pieces ([`Outgoing`]) written out as they
//! are. A stream ends with INVALID_ARGUMENT for a request it cannot accept
//! (no type URL, an unknown type, a name too long, a first request that
//! subscribes to nothing, bytes that are no DiscoveryRequest),
//! RESOURCE_EXHAUSTED for
//! too many names or a request over [`MAX_REQUEST_BYTES`],
//! DEADLINE_EXCEEDED when no request comes within
//! [`AdsOptions::first_request_timeout`], and UNAVAILABLE when the server
//! shuts down.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamMap};
use tonic::server::NamedService;
use tonic::{Status, Streaming};

use super::clients::{ClientGuard, MAX_SERVICES_PER_RECORD};
use super::encode::{EncodedResource, Outgoing};
use super::stream::{AdsStream, ProtocolError, Received, StreamLimits, Subscription};
use super::{ResourceType, ServiceResources};
use crate::registry::Registry;

/// The largest request a client may send (a subscription to
/// [`StreamLimits::max_names`] names of the longest length fits).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// The method's path.
pub const PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Requests handled in one poll before the stream lets others run.
const REQUESTS_PER_POLL: usize = 64;

/// ADS behaviour.
#[derive(Debug, Clone)]
pub struct AdsOptions {
    /// How long a new stream may take to send its first request.
    pub first_request_timeout: Duration,
    /// What one stream may subscribe to.
    pub limits: StreamLimits,
    /// How long a drained backend stays in assignments as DRAINING before
    /// it is left out.
    pub draining_grace: Duration,
}

impl Default for AdsOptions {
    fn default() -> Self {
        AdsOptions {
            first_request_timeout: Duration::from_secs(10),
            limits: StreamLimits::default(),
            draining_grace: Duration::from_secs(2),
        }
    }
}

/// The ADS service over a [`Registry`].
#[derive(Debug, Clone)]
pub struct AdsService {
    registry: Registry,
    options: AdsOptions,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl AdsService {
    /// A service answering from `registry`; its streams end with
    /// UNAVAILABLE once `stopping` turns true.
    pub fn new(
        registry: Registry,
        options: AdsOptions,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> AdsService {
        AdsService {
            registry,
            options,
            stopping,
        }
    }
}

impl AdsService {
    /// A stream answering the requests `inbound` yields (for a server that
    /// runs the stream itself).
    pub(crate) fn open(&self, inbound: Streaming<DiscoveryRequest>) -> AdsResponses {
        AdsResponses::new(
            self.registry.clone(),
            &self.options,
            inbound,
            self.stopping.clone(),
        )
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<B> tonic::codegen::Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PATH {
            let status = Status::unimplemented(format!(
                "{} is not a method of the ADS service",
                request.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = Method(self.clone());
        Box::pin(async move {
            // Small initial buffers: a server holds one stream per client.
            let codec =
                waypost_proto::codec::SmallMessageCodec::<Outgoing, DiscoveryRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), Some(usize::MAX));
            Ok(grpc.streaming(method, request).await)
        })
    }
}

struct Method(AdsService);

impl tonic::server::StreamingService<DiscoveryRequest> for Method {
    type Response = Outgoing;
    type ResponseStream = AdsResponses;
    type Future = std::future::Ready<Result<tonic::Response<AdsResponses>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let service = &self.0;
        std::future::ready(Ok(tonic::Response::new(AdsResponses::new(
            service.registry.clone(),
            &service.options,
            request.into_inner(),
            service.stopping.clone(),
        ))))
    }
}

/// One ADS stream: reads requests, watches subscribed services, yields
/// what is due. No task of its own.
pub struct AdsResponses {
    registry: Registry,
    state: AdsStream,
    record: ClientGuard,
    inbound: Streaming<DiscoveryRequest>,
    stopping: WatchStream<bool>,
    first_request: Option<Pin<Box<tokio::time::Sleep>>>,
    first_request_timeout: Duration,
    /// The services subscribed to, by position in the registry.
    watches: StreamMap<usize, WatchStream<Arc<ServiceResources>>>,
    /// The types (bits in [`ResourceType::ALL`]'s order) that may have a
    /// response due since they were last looked at.
    dirty: u8,
    /// The subscription generation the watches and record follow.
    followed: Option<u64>,
    ended: bool,
}

impl AdsResponses {
    fn new(
        registry: Registry,
        options: &AdsOptions,
        inbound: Streaming<DiscoveryRequest>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> AdsResponses {
        let record = registry.xds_clients().open();
        AdsResponses {
            state: AdsStream::new(options.limits),
            record,
            registry,
            inbound,
            stopping: WatchStream::new(stopping),
            first_request: Some(Box::pin(tokio::time::sleep(options.first_request_timeout))),
            first_request_timeout: options.first_request_timeout,
            watches: StreamMap::new(),
            dirty: 0,
            followed: None,
            ended: false,
        }
    }

    fn end(&mut self, last: Option<Status>) -> Poll<Option<Result<Outgoing, Status>>> {
        self.ended = true;
        if last
            .as_ref()
            .is_some_and(|s| s.code() != tonic::Code::Unavailable)
        {
            self.record
                .clients()
                .rejected
                .fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(last.map(Err))
    }

    /// Takes in one request; `Err` ends the stream.
    fn on_request(&mut self, request: &DiscoveryRequest) -> Result<(), Status> {
        self.first_request = None;
        let (ty, received) = self
            .state
            .on_request(request)
            .map_err(|error| match error {
                ProtocolError::TooManyNames(..) => Status::resource_exhausted(error.to_string()),
                _ => Status::invalid_argument(error.to_string()),
            })?;
        let counters = self.record.counters(ty);
        match &received {
            Received::Ack(_) => {
                counters.acks.fetch_add(1, Ordering::Relaxed);
            }
            Received::Nack(nack) => {
                counters.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node = self.state.node_id().unwrap_or(""),
                    r#type = ty.short(),
                    kept_version = %nack.version,
                    error = %nack.message,
                    "an xDS client rejected (NACKed) a response"
                );
            }
            Received::Subscription | Received::Stale => {}
        }
        self.dirty |= 1 << ty.index();
        let state = &self.state;
        self.record.update(|record| {
            if record.node_id.is_empty() {
                record.node_id = state.node_id().unwrap_or_default().to_owned();
                record.user_agent = state.user_agent().unwrap_or_default().to_owned();
            }
            match received {
                Received::Ack(version) => record.acked[ty.index()] = Some(version),
                Received::Nack(nack) => record.last_nack = Some(Box::new((ty, nack))),
                Received::Subscription | Received::Stale => {}
            }
        });
        // An ACK with the same subscription (the common case) is done.
        if self.followed == Some(self.state.generation()) {
            return Ok(());
        }
        self.followed = Some(self.state.generation());
        let services = self.subscribed_services();
        let registry = &self.registry;
        let mut names: Vec<String> = services
            .iter()
            .take(MAX_SERVICES_PER_RECORD)
            .map(|i| registry.services()[*i].config.name.clone())
            .collect();
        names.sort_unstable();
        self.record.update(|record| record.services = names);
        // Watch exactly the services subscribed to.
        let gone: Vec<usize> = self
            .watches
            .keys()
            .filter(|i| !services.contains(*i))
            .copied()
            .collect();
        for i in gone {
            self.watches.remove(&i);
        }
        for i in services {
            if !self.watches.contains_key(&i) {
                let watch = WatchStream::new(self.registry.services()[i].subscribe_xds());
                self.watches.insert(i, watch);
            }
        }
        Ok(())
    }

    /// The configured services any type's subscription names, by position.
    fn subscribed_services(&self) -> BTreeSet<usize> {
        let mut services = BTreeSet::new();
        for ty in ResourceType::ALL {
            match self.state.subscription(ty) {
                None => {}
                Some(Subscription::Wildcard) => {
                    services.extend(0..self.registry.services().len());
                }
                Some(Subscription::Names(names)) => {
                    services.extend(names.iter().filter_map(|n| self.registry.position(n)))
                }
            }
        }
        services
    }

    /// The next response due, of the types marked dirty (`None`: nothing
    /// is due; the marks are cleared as types are found to have nothing).
    fn next_due(&mut self) -> Option<Outgoing> {
        for ty in ResourceType::ALL {
            let bit = 1 << ty.index();
            if self.dirty & bit == 0 {
                continue;
            }
            if !self.state.may_send(ty) {
                self.dirty &= !bit;
                continue;
            }
            let found: Vec<Arc<ServiceResources>> = match self.state.subscription(ty) {
                None => continue,
                Some(Subscription::Wildcard) => {
                    let mut all: Vec<_> = self.registry.services().iter().collect();
                    all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
                    all.iter().map(|s| s.xds()).collect()
                }
                Some(Subscription::Names(names)) => names
                    .iter()
                    .filter_map(|n| self.registry.find_exact(n))
                    .map(|s| s.xds())
                    .collect(),
            };
            let current: Vec<&EncodedResource> = found.iter().map(|r| r.get(ty)).collect();
            match self.state.next_response(ty, &current) {
                Some(response) => {
                    self.record
                        .counters(ty)
                        .responses
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(response);
                }
                None => self.dirty &= !bit,
            }
        }
        None
    }
}

impl Stream for AdsResponses {
    type Item = Result<Outgoing, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        while let Poll::Ready(next) = Pin::new(&mut this.stopping).poll_next(cx) {
            match next {
                Some(false) => {}
                Some(true) => {
                    return this.end(Some(Status::unavailable("the balancer is shutting down")));
                }
                None => return this.end(None),
            }
        }
        if let Some(timer) = &mut this.first_request
            && timer.as_mut().poll(cx).is_ready()
        {
            return this.end(Some(Status::deadline_exceeded(format!(
                "no ADS request within {:?}",
                this.first_request_timeout
            ))));
        }
        let mut handled = 0;
        loop {
            if handled == REQUESTS_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
            match Pin::new(&mut this.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(request))) => {
                    handled += 1;
                    if let Err(status) = this.on_request(&request) {
                        return this.end(Some(status));
                    }
                }
                Poll::Ready(Some(Err(status))) if status.code() == tonic::Code::OutOfRange => {
                    return this.end(Some(Status::resource_exhausted(
                        status.message().to_owned(),
                    )));
                }
                Poll::Ready(Some(Err(status))) => {
                    // A request that is not a DiscoveryRequest.
                    let garbage = status.code() == tonic::Code::Internal;
                    return this.end(garbage.then(|| {
                        Status::invalid_argument(format!(
                            "unreadable request: {}",
                            status.message()
                        ))
                    }));
                }
                Poll::Ready(None) => return this.end(None),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(_)) = Pin::new(&mut this.watches).poll_next(cx) {
            this.dirty = 0b1111;
        }
        match this.next_due() {
            Some(response) => Poll::Ready(Some(Ok(response))),
            None => Poll::Pending,
        }
    }
}
